"""Registered webhook endpoints (issue 10): kept in the database, mirrored in Redis.

A partner registers endpoints; an event about a job (or batch) that has no
``callback_url`` of its own goes to every enabled endpoint of its partner whose
``event_types`` match (none: every event), and is held for every disabled one (kept, sent
by ``recover``). Each (event, endpoint) is one *message*, a row of ``messages``: its own
subject of kind ``msg`` (``jobgate.events.MESSAGE``) whose id, derived from the event and
the endpoint, is its ``webhook-id``; it has its own claims, attempts log, retry schedule
and open-set bookkeeping, exactly like a job's callback delivery.

The end of a job queues one fan-out step in its own script (``job_finish.lua``); the step
(``fan_out``, the worker's ``jobgate.fan_out`` task) creates the messages and queues their
first attempts in one script (``fan_out.lua``), once, whatever number of times it runs.

Redis mirror (what the hot paths read, rebuilt from the database on a miss):
``<prefix>:endpoint:<id>`` (url, event types, disabled, signing secrets in the partner
mirror's format, failing_since), ``<prefix>:endpoints:<partner id>`` (the partner's
endpoint ids, plus ``-`` once built), ``<prefix>:endpoint:<id>:msgs`` (its messages by
time) and ``<prefix>:endpoint:<id>:attempts`` (every attempt to it, by sequence).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from functools import cache
from typing import Any, cast

from redis.exceptions import WatchError
from sqlalchemy import Table, func, or_, select, update

from jobgate import handoff, history
from jobgate.batches import batch_view
from jobgate.db import Database, insert_statement
from jobgate.db.models import Endpoint, Message, Partner, SigningSecret
from jobgate.events import (
    MESSAGE,
    SUBJECTS,
    build_body,
    delivery_call,
    endpoint_message_id,
    event_body,
    job_body,
)
from jobgate.messages import AUTO_CHAIN, DELIVER_TASK, Messenger
from jobgate.partners import Partners, expire_live
from jobgate.store import Store
from jobgate.times import aware, iso_time, now_utc, parse_time, utcnow
from jobgate.webhooks.ledger import Deliveries

log = logging.getLogger(__name__)

BUILT = "-"  # member of a partner's endpoint index once it was built from the database
DISABLE_AFTER = 5 * 86400  # default: disabled after failing every attempt this long
PAGE_SCAN = 1000  # attempts looked at per page at most when filtering


def matches(mirror: dict[str, str], event: str) -> bool:
    """Does the endpoint (mirror hash) take ``event``? No event types: every event."""
    wanted = [name for name in (mirror.get("event_types") or "").split(",") if name]
    return not wanted or event in wanted


def view(row: Endpoint) -> dict[str, Any]:
    """An endpoint as the API shows it (never its secrets)."""
    return {
        "id": row.id,
        "partner_id": row.partner_id,
        "url": row.url,
        "description": row.description,
        "event_types": list(row.event_types or []),
        "enabled": row.disabled_at is None,
        "disabled_at": iso_time(row.disabled_at),
        "disabled_reason": row.disabled_reason,
        "failing_since": iso_time(row.failing_since),
        "created_at": iso_time(row.created_at),
        "updated_at": iso_time(row.updated_at),
    }


class TooManyEndpoints(Exception):
    """The partner has its ``max_endpoints`` (``jobgate.limits``) registered already."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


class Endpoints:
    """Create, change and find endpoints (database first, then the Redis mirror), fan an
    event out to them, and keep their delivery health."""

    def __init__(
        self,
        store: Store,
        db: Database,
        partners: Partners,
        *,
        disable_after: float = DISABLE_AFTER,
    ) -> None:
        self.store = store
        self.db = db
        self.partners = partners
        self.disable_after = disable_after

    # ---------------------------------------------------------------- writes
    def create(
        self,
        partner_id: str,
        url: str,
        secret: str,
        *,
        description: str = "",
        event_types: Iterable[str] = (),
        limit: int = 0,
    ) -> dict[str, Any] | None:
        """Register an endpoint; None if there is no such partner. ``TooManyEndpoints``
        if the partner has ``limit`` endpoints already (0: no limit), enabled or not;
        the partner's row is locked meanwhile, so two at once cannot both pass it."""
        endpoint_id = "ep_" + uuid.uuid4().hex[:20]
        now = now_utc()
        with self.db.session() as session:
            if session.get(Partner, partner_id, with_for_update=bool(limit)) is None:
                return None
            if limit:
                held = session.scalar(
                    select(func.count())
                    .select_from(Endpoint)
                    .where(Endpoint.partner_id == partner_id)
                )
                if (held or 0) >= limit:
                    raise TooManyEndpoints(limit)
            row = Endpoint(
                id=endpoint_id,
                partner_id=partner_id,
                url=url,
                description=description,
                event_types=list(event_types),
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            session.add(
                SigningSecret(
                    partner_id=partner_id, endpoint_id=endpoint_id, secret=secret, created_at=now
                )
            )
            shown = view(row)
        self._changed(partner_id, endpoint_id)
        return shown

    def update(
        self, endpoint_id: str, owner: str | None, changes: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Change url, description, event_types or enabled; None if not found (or not
        ``owner``'s). Enabling clears the failure history the disable came from."""
        with self.db.session() as session:
            row = self._row(session, endpoint_id, owner)
            if row is None:
                return None
            for name in ("url", "description", "event_types"):
                if name in changes:
                    setattr(
                        row, name, list(changes[name]) if name == "event_types" else changes[name]
                    )
            if changes.get("enabled") is True:
                row.disabled_at, row.disabled_reason, row.failing_since = None, None, None
            elif changes.get("enabled") is False and row.disabled_at is None:
                row.disabled_at, row.disabled_reason = now_utc(), "disabled through the API"
            row.updated_at = now_utc()
            shown, partner_id = view(row), row.partner_id
        self._changed(partner_id, endpoint_id)
        return shown

    def delete(self, endpoint_id: str, owner: str | None) -> bool:
        with self.db.session() as session:
            row = self._row(session, endpoint_id, owner)
            if row is None:
                return False
            partner_id = row.partner_id
            session.delete(row)
        self._changed(partner_id, endpoint_id)
        return True

    def rotate_secret(self, endpoint_id: str, owner: str | None, secret: str, grace: int) -> bool:
        """A new signing secret; every secret still current signs ``grace`` s more."""
        now = now_utc()
        with self.db.session() as session:
            row = self._row(session, endpoint_id, owner)
            if row is None:
                return False
            partner_id = row.partner_id
            expire_live(
                session, SigningSecret, SigningSecret.endpoint_id == endpoint_id, now, grace
            )
            session.add(
                SigningSecret(
                    partner_id=partner_id, endpoint_id=endpoint_id, secret=secret, created_at=now
                )
            )
        self._changed(partner_id, endpoint_id)
        return True

    def disable(self, endpoint_id: str, reason: str) -> bool:
        """Disable an endpoint (a 410, a failing period); False if gone or already off."""
        with self.db.session() as session:
            row = session.get(Endpoint, endpoint_id)
            if row is None or row.disabled_at is not None:
                return False
            row.disabled_at, row.disabled_reason = now_utc(), reason[:300]
            row.updated_at = now_utc()
            partner_id = row.partner_id
        log.warning("endpoint %s disabled: %s", endpoint_id, reason)
        self._changed(partner_id, endpoint_id)
        return True

    def _changed(self, partner_id: str, endpoint_id: str) -> None:
        self.mirror(endpoint_id)
        index = self.store.key("endpoints", partner_id)
        pipe = self.store.redis.pipeline()
        pipe.incr(index + ":gen")
        pipe.delete(index)
        pipe.execute()
        self.partners.mirror(partner_id)  # its count of endpoints

    # ----------------------------------------------------------------- reads
    @staticmethod
    def _row(session: Any, endpoint_id: str, owner: str | None) -> Endpoint | None:
        row = session.get(Endpoint, endpoint_id)
        if row is None or (owner is not None and row.partner_id != owner):
            return None
        return cast("Endpoint", row)

    def get(self, endpoint_id: str, owner: str | None = None) -> dict[str, Any] | None:
        with self.db.session() as session:
            row = self._row(session, endpoint_id, owner)
            return view(row) if row is not None else None

    def find(self, owner: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        """Endpoints oldest first: ``owner``'s (every partner's for None); ``state``
        ``disabled`` or ``failing`` (enabled, failing since some time) narrows them."""
        query = select(Endpoint).order_by(Endpoint.created_at, Endpoint.id)
        if owner is not None:
            query = query.where(Endpoint.partner_id == owner)
        if state == "disabled":
            query = query.where(Endpoint.disabled_at.is_not(None))
        elif state == "failing":
            query = query.where(Endpoint.disabled_at.is_(None), Endpoint.failing_since.is_not(None))
        elif state == "enabled":
            query = query.where(Endpoint.disabled_at.is_(None))
        with self.db.session() as session:
            return [view(row) for row in session.scalars(query)]

    def mirrored(self, endpoint_id: str) -> dict[str, str]:
        """The endpoint's mirror hash (rebuilt from the database on a miss; {} if none)."""
        raw = cast(
            "dict[str, str]", self.store.redis.hgetall(self.store.key("endpoint", endpoint_id))
        )
        return raw or self.mirror(endpoint_id) or {}

    def for_partner(self, partner_id: str) -> list[dict[str, str]]:
        """Every endpoint of the partner, as mirrored (index rebuilt on a miss)."""
        index = self.store.key("endpoints", partner_id)
        ids = cast("set[str]", self.store.redis.smembers(index))
        if BUILT not in ids:
            with self.store.redis.pipeline() as pipe:
                # A change between the read and the write (its _changed bumps the
                # generation) must not leave the index without the changed endpoint.
                pipe.watch(index + ":gen")  # type: ignore[no-untyped-call]
                with self.db.session() as session:
                    query = select(Endpoint.id).where(Endpoint.partner_id == partner_id)
                    ids = set(session.scalars(query))
                pipe.multi()
                pipe.sadd(index, BUILT, *ids)
                with contextlib.suppress(WatchError):  # used once, rebuilt next time
                    pipe.execute()
        pipe = self.store.redis.pipeline(transaction=False)
        ordered = sorted(i for i in ids if i != BUILT)
        for endpoint_id in ordered:
            pipe.hgetall(self.store.key("endpoint", endpoint_id))
        found = []
        for endpoint_id, raw in zip(ordered, pipe.execute(), strict=True):
            raw = raw or self.mirror(endpoint_id)
            if raw:
                found.append(raw)
        return found

    # ---------------------------------------------------------------- mirror
    def mirror(self, endpoint_id: str) -> dict[str, str] | None:
        """Write the endpoint's Redis mirror from the database; None (and no mirror) if
        it does not exist."""
        now = now_utc()
        name = self.store.key("endpoint", endpoint_id)
        with self.db.session() as session:
            row = session.get(Endpoint, endpoint_id)
            if row is None:
                self.store.redis.delete(name)
                return None
            live = session.scalars(
                select(SigningSecret)
                .where(
                    SigningSecret.endpoint_id == endpoint_id,
                    or_(SigningSecret.expires_at.is_(None), SigningSecret.expires_at > now),
                )
                .order_by(SigningSecret.id.desc())
            ).all()
            record = {
                "id": row.id,
                "partner_id": row.partner_id,
                "url": row.url,
                "event_types": ",".join(row.event_types or []),
                "disabled": (row.disabled_reason or "disabled") if row.disabled_at else "",
            }
            if row.failing_since is not None:
                record["failing_since"] = str(aware(row.failing_since).timestamp())
        current = [s for s in live if s.expires_at is None]
        rotated = [s for s in live if s.expires_at is not None]
        record["webhook_secret"] = current[0].secret if current else ""
        record["previous_secrets"] = ",".join(s.secret for s in rotated)
        record["previous_secrets_until"] = ",".join(
            str(aware(s.expires_at).timestamp()) for s in rotated if s.expires_at
        )
        pipe = self.store.redis.pipeline()
        pipe.delete(name)
        pipe.hset(name, mapping=record)  # type: ignore[arg-type]  # see Store.create_batch
        pipe.execute()
        return record

    # ------------------------------------------------------------- delivery
    def gone(self, endpoint_id: str) -> None:
        """The endpoint answered ``410 Gone``: disable it."""
        self.disable(endpoint_id, "the endpoint answered 410 Gone")

    def attempted(self, endpoint_id: str, delivered: bool, now: float | None = None) -> None:
        """Keep the endpoint's health after an attempt: a delivery clears its failing
        period, a failure starts one (or, past ``disable_after``, disables it). One Redis
        round trip; the database only when the state changes."""
        now = time.time() if now is None else now
        name = self.store.key("endpoint", endpoint_id)
        pipe = self.store.redis.pipeline()
        pipe.exists(name)
        pipe.hget(name, "failing_since")
        if delivered:
            pipe.hdel(name, "failing_since")
        exists, since_raw, *_ = pipe.execute()
        if not exists:
            return  # the mirror is gone (deleted endpoint, flushed Redis): nothing to keep
        since = float(since_raw) if since_raw else None
        if delivered:
            if since is not None:
                self._set_failing(endpoint_id, None)
            return
        if since is None:
            if self.store.redis.hsetnx(name, "failing_since", str(now)):
                self._set_failing(endpoint_id, now)
            return
        if now - since >= self.disable_after:
            self.disable(
                endpoint_id,
                f"every attempt failed for {int(now - since)} s "
                f"(limit {int(self.disable_after)} s)",
            )

    def _set_failing(self, endpoint_id: str, since: float | None) -> None:
        with self.db.session() as session:
            row = session.get(Endpoint, endpoint_id)
            if row is not None:
                row.failing_since = datetime.fromtimestamp(since, UTC) if since else None


# -------------------------------------------------------------------- fan-out
def fan_out(
    store: Store,
    messenger: Messenger,
    registry: Endpoints,
    kind: str,
    subject_id: str,
    event: str,
    fan_task_id: str,
) -> list[str]:
    """Create one message per endpoint of the subject's partner whose event types match
    and queue each first attempt; idempotent. Every message is first committed as a row
    (``messages``); one to a disabled endpoint is *held*: kept, not sent, until
    ``recover``. Returns the ``webhook-id``s queued now."""
    subject = SUBJECTS[kind]
    raw = cast("dict[str, str]", store.redis.hgetall(subject.record_key(store, subject_id)))
    partner_id = raw.get("partner_id") if raw else None
    targets = [
        e for e in (registry.for_partner(partner_id) if partner_id else []) if matches(e, event)
    ]
    books = Deliveries(store)
    if not targets:
        store.redis.zrem(store.open_key, fan_task_id)
        _fanned(store, kind, subject_id, raw)
        return []
    body = store.redis.get(books.body_key(subject_id, event))
    if body is None:
        built = build_body(store, kind, subject_id, event, raw)
        if built is None:
            store.redis.zrem(store.open_key, fan_task_id)
            return []
        body = books.store_body(subject_id, event, built)
    occurred = json.loads(body).get("timestamp") or utcnow()
    grace = store.open_grace if messenger.inline else store.handoff_grace
    args: list[Any] = [
        fan_task_id,
        store.retention,
        time.time() + grace,
        body,
        time.time(),
    ]
    rows: dict[str, dict[str, Any]] = {
        endpoint["id"]: {
            "msg_id": endpoint_message_id(subject_id, event, endpoint["id"]),
            "partner_id": partner_id,
            "endpoint_id": endpoint["id"],
            "kind": kind,
            "subject_id": subject_id,
            "event": event,
            "created_at": parse_time(occurred),
            "held": bool(endpoint.get("disabled")),
        }
        for endpoint in targets
    }
    # The rows first: Redis holds nothing they do not. A step that runs again keeps what
    # its first run decided (held or sent), whatever the endpoint's state is now.
    held = keep_messages(registry.db, list(rows.values()))
    for endpoint_id, row in rows.items():
        msg_id: str = row["msg_id"]
        task_id, call_args, kwargs = delivery_call(MESSAGE, msg_id, event, AUTO_CHAIN, 0)
        fields = _message_record(row, occurred)
        envelope = ""
        if messenger.inline and msg_id not in held:
            envelope = messenger.envelope(
                DELIVER_TASK,
                task_id,
                queue=messenger.webhooks_queue,
                args=call_args,
                kwargs=kwargs,
            )
        args += [
            store.key("msg", msg_id),
            json.dumps({**fields, "held": "1"} if msg_id in held else fields),
            books.body_key(msg_id, event),
            store.key("endpoint", endpoint_id, "msgs"),
            task_id,
            envelope,
            "1" if msg_id in held else "",
        ]
    created = cast(
        "list[str]",
        store.scripts["fan_out"](
            keys=[store.open_key, messenger.webhooks_queue, store.key("msgs", subject_id)],
            args=args,
        ),
    )
    if not messenger.inline:
        for task_id in created:
            _, call_args, kwargs = delivery_call(
                MESSAGE, task_id.split(":")[2], event, AUTO_CHAIN, 0
            )
            handoff.send_delivery(
                store, messenger, DELIVER_TASK, task_id, args=call_args, kwargs=kwargs
            )
    _fanned(store, kind, subject_id, raw)
    log.info("fanned %s of %s %s out to %d endpoint(s)", event, kind, subject_id, len(created))
    return [task_id.split(":")[2] for task_id in created]


def _fanned(store: Store, kind: str, subject_id: str, raw: dict[str, str]) -> None:
    """The step has run: the job's record may now leave Redis once archived (the archiver
    keeps a record whose ``fanout`` is ``queued``: this step reads it)."""
    if kind != "job" or raw.get("fanout") != "queued":
        return
    pipe = store.redis.pipeline()
    pipe.hset(store.key("job", subject_id), "fanout", "done")
    pipe.xadd(store.archive_key, {"s": f"job:{subject_id}"})
    pipe.execute()


# ----------------------------------------------------------- attempts, recover
def attempts(
    store: Store,
    endpoint_id: str,
    *,
    status: str | None = None,
    since: str | None = None,
    limit: int = 50,
    cursor: int | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """Attempts to the endpoint, newest first: (page, next cursor or None).

    ``status`` keeps one outcome (``delivered``, ``retry``, ``failed``), ``since`` (ISO)
    attempts made then or later. A page reads at most PAGE_SCAN entries when filtering.
    """
    key = store.key("endpoint", endpoint_id, "attempts")
    top = f"({cursor}" if cursor is not None else "+inf"
    rows = cast(
        "list[tuple[str, float]]",
        store.redis.zrevrangebyscore(key, top, "-inf", start=0, num=PAGE_SCAN, withscores=True),
    )
    page: list[dict[str, Any]] = []
    last: int | None = None
    for raw, score in rows:
        entry = json.loads(raw)
        if since and entry.get("at", "") < since:
            return page, None
        last = int(score)
        if status and entry.get("outcome") != status:
            continue
        page.append(entry)
        if len(page) >= limit:
            return page, last
    return page, (last if len(rows) >= PAGE_SCAN else None)


def recover(
    store: Store, messenger: Messenger, db: Database, endpoint_id: str, since: str
) -> list[str]:
    """Send again every message to the endpoint that ended ``failed`` at ``since`` or
    later, and, once it is enabled, every message held for it (made while it was
    disabled) at ``since`` or later: same ``webhook-id``s, a fresh schedule. Returns
    their ids."""
    from jobgate.webhooks.attempt import redeliver  # attempts imports this module's callers

    ids = cast("list[str]", store.redis.zrange(store.key("endpoint", endpoint_id, "msgs"), 0, -1))
    pipe = store.redis.pipeline(transaction=False)
    for msg_id in ids:
        pipe.hmget(store.key("webhook", msg_id), "state", "last_attempt_at", "event")
    recovered = []
    for msg_id, (state, at, event) in zip(ids, pipe.execute(), strict=True):
        if state == "failed" and at and at >= since and event:
            recovered.append(redeliver(store, messenger, MESSAGE, msg_id, event))
    if _disabled(db, endpoint_id):
        return recovered  # held messages wait for the endpoint to be enabled
    for row in held_messages(db, endpoint_id, since):
        if not _hold_in_redis(store, db, row):
            log.warning("recover: the held message %s has no body to send", row.msg_id)
            continue
        store.redis.hdel(store.key("msg", row.msg_id), "held")
        recovered.append(redeliver(store, messenger, MESSAGE, row.msg_id, row.event))
        # Released right away: a recover running beside this one, or after a crash here,
        # sends it again only while this delivery is open, which redeliver makes one.
        db.write(update(Message).where(Message.msg_id == row.msg_id).values(held=False))
    return recovered


def _disabled(db: Database, endpoint_id: str) -> bool:
    found = db.read(select(Endpoint.disabled_at).where(Endpoint.id == endpoint_id))
    return bool(found) and found[0][0] is not None


def keep_messages(db: Database, rows: list[dict[str, Any]]) -> set[str]:
    """Commit messages' rows (``Message``'s columns); one kept already is left as it is.
    Returns the ids of those held, as their rows say (a row kept earlier decides)."""
    if not rows:
        return set()
    columns = [column.name for column in Message.__table__.c]
    db.write(_keep_statement(), [{name: row[name] for name in columns} for row in rows])
    ids = [row["msg_id"] for row in rows]
    return {
        msg_id
        for msg_id, held in db.read(
            select(Message.msg_id, Message.held).where(Message.msg_id.in_(ids))
        )
        if held
    }


@cache
def _keep_statement() -> Any:
    return insert_statement(cast(Table, Message.__table__), "ON CONFLICT (msg_id) DO NOTHING")


def held_messages(db: Database, endpoint_id: str, since: str) -> list[Any]:
    """The endpoint's held messages made at ``since`` or later, oldest first."""
    return db.read(
        select(Message)
        .where(
            Message.endpoint_id == endpoint_id,
            Message.held.is_(True),
            Message.created_at >= parse_time(since),
        )
        .order_by(Message.created_at)
    )


def _message_record(row: Mapping[str, Any], occurred_at: str) -> dict[str, str]:
    """A message's Redis record (``<prefix>:msg:<id>``) from its row's fields."""
    names = ("msg_id", "partner_id", "endpoint_id", "kind", "subject_id", "event")
    return {**{name: row[name] for name in names}, "occurred_at": occurred_at}


def _body_from_rows(store: Store, db: Database, row: Any) -> str | None:
    """A held message's body when Redis has forgotten it: a job's from the job's row, a
    completed batch's from the batch's row and its members' records (Redis's, else their
    rows); None if the database does not hold the end."""
    if row.kind == "job":
        record = history.job(db, row.subject_id)
        return job_body(row.event, record) if record else None
    batch = history.batch(db, row.subject_id) if row.kind == "batch" else None
    if batch is None or not batch.get("finished_at"):
        return None
    view = batch_view(
        store, row.subject_id, record=batch, archived=lambda ids: history.jobs(db, ids)
    )
    return event_body(row.event, view, batch["finished_at"])


def _hold_in_redis(store: Store, db: Database, row: Any) -> bool:
    """Make sure Redis holds a held message's record and body (it forgets both after the
    hold, or loses them): rebuilt from its row, its body from the database's rows."""
    books = Deliveries(store)
    key, body_key = store.key("msg", row.msg_id), books.body_key(row.msg_id, row.event)
    if store.redis.exists(key, body_key) == 2:
        return True
    body = store.redis.get(books.body_key(row.subject_id, row.event)) or _body_from_rows(
        store, db, row
    )
    if body is None:
        return False
    fields = _message_record(row._mapping, iso_time(row.created_at) or "")
    pipe = store.redis.pipeline()
    pipe.hset(key, mapping=cast(Any, fields))
    pipe.expire(key, store.retention)
    pipe.set(body_key, body, ex=store.retention, nx=True)
    pipe.zadd(store.key("endpoint", row.endpoint_id, "msgs"), {row.msg_id: time.time()})
    pipe.sadd(store.key("msgs", row.subject_id), row.msg_id)  # the job's deliveries list it
    pipe.execute()
    return True


def message_summaries(store: Store, subject_id: str) -> list[dict[str, Any]]:
    """The endpoint messages of a job or batch: ``{"webhook_id", "endpoint_id", "event",
    "state", "attempts"}`` each; ``held`` is the state of one made while its endpoint was
    disabled, until ``recover`` sends it."""
    ids = sorted(cast("set[str]", store.redis.smembers(store.key("msgs", subject_id))))
    pipe = store.redis.pipeline(transaction=False)
    for msg_id in ids:
        pipe.hmget(store.key("msg", msg_id), "endpoint_id", "event", "held")
        pipe.hmget(store.key("webhook", msg_id), "state", "attempts")
    values = pipe.execute()
    found = []
    for index, msg_id in enumerate(ids):
        (endpoint_id, event, held), (state, count) = values[2 * index], values[2 * index + 1]
        found.append(
            {
                "webhook_id": msg_id,
                "endpoint_id": endpoint_id,
                "event": event,
                "state": state or ("held" if held else "pending"),
                "attempts": int(count or 0),
            }
        )
    return found


def failing_messages(store: Store, endpoint_ids: Iterable[str]) -> int:
    """Messages to these endpoints whose delivery is now ``retrying`` or ``failed``."""
    ids = [
        msg_id
        for endpoint_id in endpoint_ids
        for msg_id in cast(
            "list[str]", store.redis.zrange(store.key("endpoint", endpoint_id, "msgs"), 0, -1)
        )
    ]
    pipe = store.redis.pipeline(transaction=False)
    for msg_id in ids:
        pipe.hget(store.key("webhook", msg_id), "state")
    return sum(1 for state in pipe.execute() if state in ("retrying", "failed"))


def ping_body(endpoint_id: str) -> tuple[str, str]:
    """(webhook-id, body) of a ``ping`` event to an endpoint (a new id each time)."""
    msg_id = "msg_" + uuid.uuid4().hex
    now = utcnow()
    return msg_id, event_body("ping", {"endpoint_id": endpoint_id, "sent_at": now}, now)


__all__ = [
    "DISABLE_AFTER",
    "Endpoints",
    "attempts",
    "fan_out",
    "matches",
    "message_summaries",
    "ping_body",
    "recover",
    "view",
]
