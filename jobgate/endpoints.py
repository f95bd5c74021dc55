"""Registered webhook endpoints (the registry): kept in the database, mirrored in Redis.

A partner registers endpoints; an event about a job (or batch) that has no
``callback_url`` of its own goes to every enabled endpoint of its partner whose
``event_types`` match (``matches``; none: every event). The messages themselves (fan-out,
held messages, ``recover``) are ``jobgate.webhooks.fanout``'s.

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
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, cast

from redis.exceptions import WatchError
from sqlalchemy import func, or_, select

from jobgate.db import Database
from jobgate.db.models import Endpoint, Partner, SigningSecret
from jobgate.events import (
    event_body,
)
from jobgate.partners import Partners, expire_live
from jobgate.store import Store
from jobgate.times import aware, iso_time, now_utc, utcnow

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
        rate_limit: int | None = None,
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
                rate_limit=rate_limit,
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
        """Change url, description, event_types, rate_limit or enabled; None if not found (or not
        ``owner``'s). Enabling clears the failure history the disable came from."""
        with self.db.session() as session:
            row = self._row(session, endpoint_id, owner)
            if row is None:
                return None
            for name in ("url", "description", "event_types", "rate_limit"):
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
                "rate_limit": str(row.rate_limit or ""),
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


__all__ = [
    "DISABLE_AFTER",
    "Endpoints",
    "attempts",
    "matches",
    "ping_body",
    "view",
]
