"""Registered webhook endpoints (the registry): kept in the database, mirrored in Redis.

A partner registers endpoints; an event about a job (or batch) that has no
``callback_url`` of its own goes to every enabled endpoint of its partner whose
``event_types`` match (``matches``; none: every event). The messages themselves (fan-out,
held messages, ``recover``) are ``jobgate.webhooks.fanout``'s.

Redis mirror (what the hot paths read, rebuilt from the database on a miss):
``<prefix>:endpoint:<id>`` (url, event types, disabled, signing secrets in the partner
mirror's format, failing_since, the partner's own ``headers`` as JSON: their bounds are
``jobgate.endpoint_headers``'s), ``<prefix>:endpoints:<partner id>`` (the partner's
endpoint ids, plus ``-`` once built), ``<prefix>:endpoint:<id>:msgs`` (its messages by
time) and ``<prefix>:endpoint:<id>:attempts`` (every attempt to it, by sequence).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, cast

from redis.exceptions import WatchError
from sqlalchemy import func, or_, select

from jobgate.db import Database
from jobgate.db.models import Endpoint, Partner, SigningSecret
from jobgate.events import ENDPOINT_DISABLED, ENDPOINT_ENABLED, OPERATIONAL, event_body
from jobgate.logs import loggable
from jobgate.messages import Messenger
from jobgate.partners import Partners, expire_live
from jobgate.store import Store
from jobgate.times import aware, iso_time, now_utc, utcnow
from jobgate.webhooks import operational

log = logging.getLogger(__name__)

BUILT = "-"  # member of a partner's endpoint index once it was built from the database
DISABLE_AFTER = 5 * 86400  # default: disabled after failing every attempt this long
PAGE_SCAN = 1000  # attempts looked at per page at most when filtering

# Only what the fan-out reads from each of a partner's endpoints (not its headers).
LISTED = ("id", "partner_id", "url", "event_types", "disabled")


def matches(mirror: dict[str, str], event: str) -> bool:
    """Does the endpoint (mirror hash) take ``event``? No event types: every job and
    batch event; an operational event (``jobgate.events.OPERATIONAL``) only when named."""
    wanted = [name for name in (mirror.get("event_types") or "").split(",") if name]
    return event in wanted or (not wanted and event not in OPERATIONAL)


def view(row: Endpoint) -> dict[str, Any]:
    """An endpoint as the API shows it (never its secrets)."""
    return {
        "id": row.id,
        "partner_id": row.partner_id,
        "url": row.url,
        "description": row.description,
        "event_types": list(row.event_types or []),
        "headers": dict(row.headers or {}),
        "signature_scheme": row.signature_scheme or "hmac",
        "enabled": row.disabled_at is None,
        "disabled_at": iso_time(row.disabled_at),
        "disabled_reason": row.disabled_reason,
        "failing_since": iso_time(row.failing_since),
        "rate_limit": row.rate_limit,
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
        messenger: Messenger | None = None,
    ) -> None:
        self.store = store
        self.db = db
        self.partners = partners
        self.disable_after = disable_after
        # How endpoint.disabled / endpoint.enabled are queued (None: not announced).
        self.messenger = messenger

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
        headers: dict[str, str] | None = None,
        signature_scheme: str = "hmac",
        rate_limit: int | None = None,
    ) -> dict[str, Any] | None:
        """Register an endpoint, ``secret`` signing its webhooks (a ``whsec_``, or a
        ``whsk_`` for ``signature_scheme`` ed25519); None if there is no such partner.
        ``TooManyEndpoints`` if the partner has ``limit`` endpoints already (0: no limit),
        enabled or not; the partner's row is locked meanwhile, so two at once cannot both
        pass it."""
        endpoint_id = "ep_" + uuid.uuid4().hex[:20]
        now = now_utc()
        with self.db.session() as session:
            if session.get(Partner, partner_id, with_for_update=bool(limit)) is None:
                return None
            if limit:
                held = select(func.count(Endpoint.id)).where(Endpoint.partner_id == partner_id)
                if (session.scalar(held) or 0) >= limit:
                    raise TooManyEndpoints(limit)
            row = Endpoint(
                id=endpoint_id,
                partner_id=partner_id,
                url=url,
                description=description,
                event_types=list(event_types),
                headers=dict(headers) if headers else None,
                signature_scheme=signature_scheme,
                rate_limit=rate_limit,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            self._add_secret(session, row, secret, now)
            shown = view(row)
        self._changed(partner_id, endpoint_id)
        return shown

    def update(
        self, endpoint_id: str, owner: str | None, changes: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Change url, description, event_types, headers (the whole set; {}: none),
        rate_limit or enabled; None if not found (or not ``owner``'s). Enabling clears the
        failure history the disable came from. Disabling or enabling announces it
        (``endpoint.disabled`` to the partner's other subscribed endpoints,
        ``endpoint.enabled``), committed with the change."""
        by = "partner" if owner is not None else "admin"
        with self.db.session() as session:
            row = self._row(session, endpoint_id, owner)
            if row is None:
                return None
            was_disabled = row.disabled_at is not None
            for name in ("url", "description", "event_types", "rate_limit"):
                if name in changes:
                    setattr(
                        row, name, list(changes[name]) if name == "event_types" else changes[name]
                    )
            if "headers" in changes:
                row.headers = dict(changes["headers"]) or None
            announcement = None
            if changes.get("enabled") is True:
                row.disabled_at, row.disabled_reason, row.failing_since = None, None, None
                if was_disabled:
                    announcement = self._announcement(session, row, ENDPOINT_ENABLED, by)
            elif changes.get("enabled") is False and row.disabled_at is None:
                row.disabled_at, row.disabled_reason = now_utc(), "disabled through the API"
                announcement = self._announcement(session, row, ENDPOINT_DISABLED, by)
            row.updated_at = now_utc()
            shown, partner_id = view(row), row.partner_id
        self._changed(partner_id, endpoint_id)
        self._publish(announcement)
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

    def scheme(self, endpoint_id: str, owner: str | None) -> str | None:
        """The endpoint's ``signature_scheme``; None if not found (or not ``owner``'s)."""
        shown = self.get(endpoint_id, owner)
        return shown["signature_scheme"] if shown is not None else None

    def rotate_secret(
        self,
        endpoint_id: str,
        owner: str | None,
        secret: str,
        grace: int,
        scheme: str | None = None,
    ) -> bool:
        """A new signing secret; every secret still current signs ``grace`` s more. With
        ``scheme``, False (nothing changed) unless the endpoint signs with that scheme."""
        now = now_utc()
        with self.db.session() as session:
            row = self._row(session, endpoint_id, owner)
            if row is None or (scheme is not None and (row.signature_scheme or "hmac") != scheme):
                return False
            partner_id = row.partner_id
            expire_live(
                session, SigningSecret, SigningSecret.endpoint_id == endpoint_id, now, grace
            )
            self._add_secret(session, row, secret, now)
        self._changed(partner_id, endpoint_id)
        return True

    def _add_secret(self, session: Any, row: Endpoint, secret: str, now: datetime) -> None:
        """Add ``secret`` (sealed) as the endpoint's current signing secret."""
        sealed = self.store.sealer.seal(secret)
        session.add(
            SigningSecret(
                partner_id=row.partner_id, endpoint_id=row.id, secret=sealed, created_at=now
            )
        )

    def disable(self, endpoint_id: str, reason: str) -> bool:
        """Disable an endpoint (a 410, a failing period); False if gone or already off.
        ``endpoint.disabled`` (``disabled_by: jobgate``) is committed with it."""
        with self.db.session() as session:
            row = session.get(Endpoint, endpoint_id)
            if row is None or row.disabled_at is not None:
                return False
            row.disabled_at, row.disabled_reason = now_utc(), reason[:300]
            row.updated_at = now_utc()
            partner_id = row.partner_id
            announcement = self._announcement(session, row, ENDPOINT_DISABLED, "jobgate")
        log.warning("endpoint %s disabled: %s", endpoint_id, reason)
        self._changed(partner_id, endpoint_id)
        self._publish(announcement)
        return True

    def _announcement(
        self, session: Any, row: Endpoint, event: str, by: str
    ) -> operational.Announcement | None:
        """The ``endpoint.*`` event of the change ``row`` holds, committed in ``session``
        (with the change: both or neither), if any other endpoint of the partner listens
        (the disabled one itself never gets its own disabling)."""
        if self.messenger is None:
            return None
        endpoint = {"id": row.id, "url": loggable(row.url)}  # no token to other receivers
        if event == ENDPOINT_DISABLED:
            at, exclude = iso_time(row.disabled_at) or utcnow(), row.id
            data = {
                "endpoint": endpoint,
                "disabled_by": by,
                "reason": row.disabled_reason,
                "disabled_at": at,
            }
        else:
            at, exclude = utcnow(), ""
            data = {"endpoint": endpoint, "enabled_by": by, "enabled_at": at}
        key = (row.id, at)
        found = operational.prepare(self, row.partner_id, event, data, key, exclude=exclude, at=at)
        if found is not None:
            operational.commit(self.db, self.store.prefix, found, session)
        return found

    def _publish(self, announcement: operational.Announcement | None) -> None:
        """Hand a committed ``endpoint.*`` event to Redis (the relay does it should this
        fail: its row is committed)."""
        if announcement is None or self.messenger is None:
            return
        try:
            operational.publish(self.store, self.messenger, self.db, announcement)
        except Exception:  # noqa: BLE001 - committed: the relay hands it over later
            log.warning(
                "announcing %s failed; the relay sends it", announcement.op_id, exc_info=True
            )

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
            # The fields the fan-out reads, not the partner's headers: an event of a
            # partner with many endpoints does not read all their headers.
            pipe.hmget(self.store.key("endpoint", endpoint_id), LISTED)
        found = []
        for endpoint_id, values in zip(ordered, pipe.execute(), strict=True):
            listed = {name: value for name, value in zip(LISTED, values, strict=True) if value}
            raw = listed if listed.get("id") else self.mirror(endpoint_id)
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
                "headers": json.dumps(row.headers, separators=(",", ":")) if row.headers else "",
                "rate_limit": str(row.rate_limit or ""),
            }
            if row.failing_since is not None:
                record["failing_since"] = str(aware(row.failing_since).timestamp())
        rotated = [s for s in live if s.expires_at is not None]
        record["webhook_secret"] = next((s.secret for s in live if s.expires_at is None), "")
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
    def attempted(self, endpoint_id: str, delivered: bool) -> None:
        """Keep the endpoint's health after an attempt: a delivery clears its failing
        period, a failure starts one (or, past ``disable_after``, disables it). One Redis
        round trip; the database only when the state changes."""
        now = time.time()
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
