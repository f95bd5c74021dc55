"""Endpoint messages: an event fanned out to the partner's matching endpoints (one
message each, a row committed before Redis holds it), held while an endpoint is
disabled, and sent again by ``recover``; what a job's deliveries list shows of them."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from functools import cache
from typing import Any, cast

from sqlalchemy import Table, select, update

from jobgate import handoff, history
from jobgate.batches import batch_view
from jobgate.db import Database, insert_statement
from jobgate.db.models import Endpoint, Message
from jobgate.endpoints import Endpoints
from jobgate.events import (
    MESSAGE,
    OPERATIONAL_SUBJECT,
    SUBJECTS,
    build_body,
    delivery_call,
    endpoint_message_id,
    event_body,
    fan_out_task_id,
    job_body,
)
from jobgate.messages import AUTO_CHAIN, DELIVER_TASK, Messenger
from jobgate.store import Store
from jobgate.times import iso_time, parse_time, utcnow
from jobgate.webhooks import operational
from jobgate.webhooks.attempt import redeliver
from jobgate.webhooks.ledger import Deliveries

log = logging.getLogger(__name__)


def fan_out(
    store: Store, messenger: Messenger, registry: Endpoints, kind: str, subject_id: str, event: str
) -> list[str]:
    """Create one message per endpoint of the subject's partner whose event types match
    and queue each first attempt; idempotent. Every message is first committed as a row
    (``messages``); one to a disabled endpoint is *held*: kept, not sent, until
    ``recover``. Returns the ``webhook-id``s queued now."""
    fan_task_id = fan_out_task_id(kind, subject_id, event)  # this step's, open until it ran
    subject = SUBJECTS[kind]
    raw = cast("dict[str, str]", store.redis.hgetall(subject.record_key(store, subject_id)))
    partner_id = raw.get("partner_id") if raw else None
    exclude = raw.get("exclude", "") if kind == OPERATIONAL_SUBJECT else ""
    targets = operational.subscribers(registry, partner_id, event, exclude) if partner_id else []
    books = Deliveries(store)
    if not targets:
        store.redis.zrem(store.open_key, fan_task_id)
        _fanned(store, kind, subject_id, raw, registry.db)
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
    args: list[Any] = [fan_task_id, store.retention, time.time() + grace, body, time.time()]
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
        if raw.get("traceparent"):  # the subject's trace (jobgate.tracing) goes with it
            fields["traceparent"] = raw["traceparent"]
        envelope = ""
        if messenger.inline and msg_id not in held:
            envelope = messenger.envelope(
                DELIVER_TASK, task_id, queue=messenger.webhooks_queue, args=call_args, kwargs=kwargs
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
    _fanned(store, kind, subject_id, raw, registry.db)
    log.info("fanned %s of %s %s out to %d endpoint(s)", event, kind, subject_id, len(created))
    return [task_id.split(":")[2] for task_id in created]


def _fanned(store: Store, kind: str, subject_id: str, raw: dict[str, str], db: Database) -> None:
    """The step has run: the job's record may now leave Redis once archived (the archiver
    keeps a record whose ``fanout`` is ``queued``: this step reads it); an operational
    event's row is settled (its messages are rows of their own)."""
    if kind == OPERATIONAL_SUBJECT and raw:
        operational.settle(db, subject_id)
        return
    if kind != "job" or raw.get("fanout") != "queued":
        return
    pipe = store.redis.pipeline()
    pipe.hset(store.key("job", subject_id), "fanout", "done")
    pipe.xadd(store.archive_key, {"s": f"job:{subject_id}"})
    pipe.execute()


def recover(
    store: Store, messenger: Messenger, db: Database, endpoint_id: str, since: str
) -> list[str]:
    """Send again every message to the endpoint that ended ``failed`` at ``since`` or
    later, and, once it is enabled, every message held for it (made while it was
    disabled) at ``since`` or later: same ``webhook-id``s, a fresh schedule. Returns
    their ids."""
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
    query = select(Message.msg_id).where(Message.msg_id.in_(ids), Message.held.is_(True))
    return {msg_id for (msg_id,) in db.read(query)}


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
    if row.kind == OPERATIONAL_SUBJECT:
        return operational.body_of(db, row.subject_id)
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


def message_summaries(
    store: Store, subject_id: str, ids: set[str] | None = None
) -> list[dict[str, Any]]:
    """The endpoint messages of a job or batch: ``{"webhook_id", "endpoint_id", "event",
    "state", "attempts"}`` each; ``held`` is the state of one made while its endpoint was
    disabled, until ``recover`` sends it. ``ids``: its set of messages, if already read."""
    if ids is None:
        ids = cast("set[str]", store.redis.smembers(store.key("msgs", subject_id)))
    if not ids:
        return []
    ordered = sorted(ids)
    pipe = store.redis.pipeline(transaction=False)
    for msg_id in ordered:
        pipe.hmget(store.key("msg", msg_id), "endpoint_id", "event", "held")
        pipe.hmget(store.key("webhook", msg_id), "state", "attempts")
    values = pipe.execute()
    return [
        {
            "webhook_id": msg_id,
            "endpoint_id": endpoint_id,
            "event": event,
            "state": state or ("held" if held else "pending"),
            "attempts": int(count or 0),
        }
        for msg_id, (endpoint_id, event, held), (state, count) in zip(
            ordered, values[::2], values[1::2], strict=True
        )
    ]
