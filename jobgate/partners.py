"""Partners, their API keys and signing secrets: kept in the database, mirrored in Redis.

The database is the record (a Redis restarted without persistence loses nothing). Redis
holds a mirror the hot paths read in the round trips they already make: the partner hash
``<prefix>:partner:<id>`` (the delivery script reads its secrets) and
``<prefix>:partnerkey:<key hash>`` (auth). A mirror entry that is missing is rebuilt from
the database by whoever misses it, so a flushed Redis heals on first use.
"""

from __future__ import annotations

import contextlib
import logging
import secrets as random
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from jobgate.db import Database
from jobgate.db.models import ApiKey, Endpoint, Job, Partner, SigningSecret
from jobgate.store import KEY_CACHE_SIZE, KEY_CACHE_TTL, Store, hash_key
from jobgate.times import aware, iso_time, now_utc, parse_time, utcnow

log = logging.getLogger(__name__)

# Published on ``<prefix>:partners:changed`` whenever a partner's keys stop or start
# working (disable, enable, rotate-key): every gateway process drops its key cache.
CHANGED_CHANNEL = "partners:changed"
# While the change feed is down, subscribing again waits 1 s, then 2, 4, up to this.
FEED_RETRY_MAX = 8.0


class Partners:
    """Create, find and change partners (database first, then the Redis mirror)."""

    def __init__(self, store: Store, db: Database) -> None:
        self.store = store
        self.db = db
        self._key_cache: dict[str, tuple[float, dict[str, str]]] = {}
        # Bumped on every invalidation: a lookup that began before one never caches.
        self._generation = 0
        self._listener: threading.Thread | None = None
        self._listener_lock = threading.Lock()
        self._closed = threading.Event()

    # ---------------------------------------------------------------- writes
    def create(self, name: str, webhook_secret: str) -> tuple[dict[str, str], str]:
        """Create a partner; returns (its mirror record, its API key). Only the key's hash
        is stored anywhere."""
        partner_id = "ptn_" + uuid.uuid4().hex[:20]
        api_key = "jgp_" + random.token_urlsafe(32)
        created = now_utc()
        sealed = self.store.sealer.seal(webhook_secret)
        with self.db.session() as session:
            _add_partner(session, partner_id, name, created, hash_key(api_key), [(sealed, None)])
        record = self.mirror(partner_id)
        assert record is not None
        return record, api_key

    def rotate_secret(self, partner_id: str, new_secret: str, grace: int) -> bool:
        """A new signing secret; every secret still current signs for ``grace`` more
        seconds (not only the last one). False if there is no such partner."""
        now = now_utc()
        with self.db.session() as session:
            if session.get(Partner, partner_id) is None:
                return False
            own = (SigningSecret.partner_id == partner_id) & SigningSecret.endpoint_id.is_(None)
            expire_live(session, SigningSecret, own, now, grace)
            sealed = self.store.sealer.seal(new_secret)
            session.add(SigningSecret(partner_id=partner_id, secret=sealed, created_at=now))
        self.mirror(partner_id)
        return True

    def set_disabled(self, partner_id: str, disabled: bool) -> dict[str, str] | None:
        """Disable (or enable) a partner: its keys answer 401 at once on every gateway
        process; its queued jobs still run and their events are still sent. None if there
        is no such partner."""
        with self.db.session() as session:
            partner = session.get(Partner, partner_id)
            if partner is None:
                return None
            if disabled and partner.disabled_at is None:
                partner.disabled_at = now_utc()
            elif not disabled:
                partner.disabled_at = None
        record = self.mirror(partner_id)
        self.changed(partner_id)
        return record

    def set_limits(
        self, partner_id: str, changes: Mapping[str, int | None]
    ) -> dict[str, int] | None:
        """Change a partner's own limits (``None`` resets one to its default) on every
        gateway process and in the dispatcher's mirror; its own limits after, None if
        there is no such partner."""
        with self.db.session() as session:
            partner = session.get(Partner, partner_id)
            if partner is None:
                return None
            own = dict(partner.limits or {})
            for name, value in changes.items():
                if value is None:
                    own.pop(name, None)
                else:
                    own[name] = int(value)
            partner.limits = own
        self.mirror(partner_id)
        self.changed(partner_id)
        return own

    def rotate_key(self, partner_id: str, grace: int) -> str | None:
        """A new API key; every key still working keeps working for ``grace`` more seconds
        (0: it stops now). None if there is no such partner."""
        api_key = "jgp_" + random.token_urlsafe(32)
        now = now_utc()
        with self.db.session() as session:
            if session.get(Partner, partner_id) is None:
                return None
            expire_live(session, ApiKey, ApiKey.partner_id == partner_id, now, grace)
            session.add(ApiKey(key_hash=hash_key(api_key), partner_id=partner_id, created_at=now))
        self.mirror(partner_id)
        self.changed(partner_id)
        return api_key

    def changed(self, partner_id: str = "") -> None:
        """Tell every gateway process to forget the keys it cached (pub/sub); the message
        names the partner (``"1"``: any), whose open streams check their key again."""
        self._forget()
        self.store.redis.publish(self.store.key(CHANGED_CHANNEL), partner_id or "1")

    def import_from_redis(self) -> int:
        """Copy partners that exist only in Redis (created before the database) into it;
        returns how many. Idempotent: a partner already in the database is skipped."""
        redis = self.store.redis
        ids = cast("list[str]", redis.zrange(self.store.key("partners"), 0, -1))
        imported = 0
        for partner_id in ids:
            raw = cast("dict[str, str]", redis.hgetall(self.store.key("partner", partner_id)))
            if not raw:
                continue
            with self.db.session() as session:
                if session.get(Partner, partner_id) is not None:
                    continue
                created = parse_time(raw.get("created_at") or utcnow())
                signing: list[tuple[str, datetime | None]] = []
                seal = self.store.sealer.seal
                if raw.get("webhook_secret"):
                    signing.append((seal(raw["webhook_secret"]), None))
                until = float(raw.get("previous_secret_until") or 0)
                if raw.get("previous_secret") and until > time.time():
                    signing.append(
                        (seal(raw["previous_secret"]), datetime.fromtimestamp(until, UTC))
                    )
                _add_partner(
                    session, partner_id, raw.get("name", ""), created, raw.get("key_hash"), signing
                )
            imported += 1
            self.mirror(partner_id)
        return imported

    # ----------------------------------------------------------------- reads
    def get(self, partner_id: str) -> dict[str, str] | None:
        """The partner's mirror record (rebuilt from the database if Redis lost it)."""
        key = self.store.key("partner", partner_id)
        raw = cast("dict[str, str]", self.store.redis.hgetall(key))
        return raw or self.mirror(partner_id)

    def known(self, api_key: str) -> bool:
        """Did this process find ``api_key`` lately (its cache; nothing asked of Redis)?
        A guess never did: only keys that were found are cached."""
        hit = self._key_cache.get(hash_key(api_key))
        return hit is not None and hit[0] > time.monotonic()

    def by_key(self, api_key: str, *, cached: bool = True) -> dict[str, str] | None:
        """The partner owning ``api_key``, None for an unknown or expired key
        (``cached=False``: asks Redis even if this process cached the key).

        Auth runs on every request: a found key is cached in-process for KEY_CACHE_TTL s
        (never past the key's own expiry), then Redis's mirror answers, then the database
        (which also rebuilds the mirror).
        A disabled partner's keys find nothing. The in-process cache is dropped whenever
        any process publishes a change (``changed``) and whenever this process
        (re)subscribes to them, so a disabled partner or a rotated key stops working at
        once everywhere.
        """
        self._listen()
        hashed = hash_key(api_key)
        hit = self._key_cache.get(hashed) if cached else None
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        generation = self._generation
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.get(self.store.key("partnerkey", hashed))
        pipe.pttl(self.store.key("partnerkey", hashed))
        partner_id, ttl_ms = pipe.execute()
        partner = self.get(partner_id) if partner_id else self._by_key_in_db(hashed)
        if partner is not None and partner.get("disabled"):
            return None
        if partner is not None and generation == self._generation:
            if len(self._key_cache) >= KEY_CACHE_SIZE:
                self._key_cache.clear()
            ttl = KEY_CACHE_TTL if not ttl_ms or ttl_ms < 0 else min(KEY_CACHE_TTL, ttl_ms / 1000)
            self._key_cache[hashed] = (time.monotonic() + ttl, partner)
        return partner

    def _forget(self) -> None:
        self._generation += 1
        self._key_cache.clear()

    def _listen(self) -> None:
        """Start (once per process) the thread that drops the key cache on changes."""
        if self._listener is not None and self._listener.is_alive():
            return
        with self._listener_lock:
            if self._closed.is_set() or (self._listener is not None and self._listener.is_alive()):
                return
            self._listener = threading.Thread(
                target=_follow_changes,
                args=(weakref.ref(self),),
                name="jobgate-partner-changes",
                daemon=True,
            )
            self._listener.start()

    def close(self) -> None:
        """Stop following changes (within a second); the key cache is no longer used."""
        self._closed.set()
        self._forget()

    def state(self, partner_id: str) -> dict[str, Any] | None:
        """``{"id", "name", "created_at", "enabled", "disabled_at"}``, None if unknown."""
        with self.db.session() as session:
            partner = session.get(Partner, partner_id)
            if partner is None:
                return None
            return {
                **_public(partner),
                "enabled": partner.disabled_at is None,
                "disabled_at": iso_time(partner.disabled_at),
            }

    def own_limits(self, partner_id: str) -> dict[str, int]:
        """The limits set for this partner itself (``jobgate.limits``), by name."""
        with self.db.session() as session:
            partner = session.get(Partner, partner_id)
            return dict(partner.limits or {}) if partner is not None else {}

    def job_counts(self, partner_id: str) -> dict[str, int]:
        """The partner's archived jobs by status (``PENDING``: not ended and not started)."""
        with self.db.session() as session:
            rows = session.execute(
                select(Job.status, func.count())
                .where(Job.partner_id == partner_id)
                .group_by(Job.status)
            ).all()
        return {(status or "PENDING"): int(count) for status, count in rows}

    def _by_key_in_db(self, hashed: str) -> dict[str, str] | None:
        with self.db.session() as session:
            key = session.get(ApiKey, hashed)
            if key is None or (key.expires_at is not None and aware(key.expires_at) <= now_utc()):
                return None
            partner_id = key.partner_id
        return self.mirror(partner_id)

    def all(self) -> list[dict[str, str]]:
        """Every partner, oldest first (id, name, created_at)."""
        with self.db.session() as session:
            rows = session.scalars(select(Partner).order_by(Partner.created_at, Partner.id))
            return [_public(row) for row in rows]

    # ---------------------------------------------------------------- mirror
    def mirror(self, partner_id: str) -> dict[str, str] | None:
        """Write the partner's Redis mirror from the database; returns it (None: no such
        partner, and its mirror is removed)."""
        now = now_utc()
        with self.db.session() as session:
            partner = session.get(Partner, partner_id)
            if partner is None:
                self.store.redis.delete(self.store.key("partner", partner_id))
                return None
            keys = session.scalars(select(ApiKey).where(ApiKey.partner_id == partner_id)).all()
            live = session.scalars(
                select(SigningSecret)
                .where(
                    SigningSecret.partner_id == partner_id,
                    SigningSecret.endpoint_id.is_(None),
                    or_(SigningSecret.expires_at.is_(None), SigningSecret.expires_at > now),
                )
                .order_by(SigningSecret.id.desc())
            ).all()
            # Disabled endpoints count: their events are kept as held messages.
            endpoints = session.scalar(
                select(func.count()).select_from(Endpoint).where(Endpoint.partner_id == partner_id)
            )
            record = _public(partner)
            # The partner's own limits, by name (jobgate.limits; dispatch.lua reads some).
            record.update({name: str(value) for name, value in (partner.limits or {}).items()})
            if partner.disabled_at is not None:
                record["disabled"] = iso_time(partner.disabled_at) or "1"
        current = [s for s in live if s.expires_at is None]
        rotated = [s for s in live if s.expires_at is not None]
        record["webhook_secret"] = current[0].secret if current else ""
        # Read by job_finish.lua / batch_count.lua: 0 means no fan-out step is queued.
        record["endpoints"] = str(endpoints or 0)
        if rotated:
            record["previous_secrets"] = ",".join(s.secret for s in rotated)
            record["previous_secrets_until"] = ",".join(
                str(aware(s.expires_at).timestamp()) for s in rotated if s.expires_at
            )
        pipe = self.store.redis.pipeline()
        name = self.store.key("partner", partner_id)
        pipe.delete(name)
        pipe.hset(name, mapping=record)  # type: ignore[arg-type]  # see Store.create_batch
        for key in keys:
            live_key = key.expires_at is None or aware(key.expires_at) > now
            partnerkey = self.store.key("partnerkey", key.key_hash)
            if live_key:
                pipe.set(partnerkey, partner_id)
                if key.expires_at is not None:
                    pipe.expireat(partnerkey, aware(key.expires_at))
            else:
                pipe.delete(partnerkey)
        pipe.execute()
        return record


def reseal_all(partners: Partners, endpoints: Any, chunk: int = 500) -> int:
    """Seal every signing secret again with the store's first key (``jobgate.sealing``),
    a chunk of rows per transaction, then rewrite every partner's and endpoint's mirror;
    returns the rows resealed."""
    sealer, last_id, done = partners.store.sealer, 0, 0
    while True:
        with partners.db.session() as session:
            rows = session.scalars(
                select(SigningSecret)
                .where(SigningSecret.id > last_id)
                .order_by(SigningSecret.id)
                .limit(chunk)
            ).all()
            for row in rows:
                row.secret = sealer.reseal(row.secret)
        if not rows:
            break
        last_id, done = rows[-1].id, done + len(rows)
    with partners.db.session() as session:
        partner_ids = list(session.scalars(select(Partner.id)))
        endpoint_ids = list(session.scalars(select(Endpoint.id)))
    for partner_id in partner_ids:
        partners.mirror(partner_id)
    for endpoint_id in endpoint_ids:
        endpoints.mirror(endpoint_id)
    return done


def expire_live(session: Any, model: Any, condition: Any, now: datetime, grace: int) -> None:
    """Every key or secret (``model``: ApiKey or SigningSecret) matching ``condition``
    that still works stops ``grace`` s from ``now``, unless it stops sooner already."""
    until = now + timedelta(seconds=grace)
    live = or_(model.expires_at.is_(None), model.expires_at > now)
    for row in session.scalars(select(model).where(condition, live)):
        if row.expires_at is None or aware(row.expires_at) > until:
            row.expires_at = until


def _public(partner: Partner) -> dict[str, str]:
    return {
        "id": partner.id,
        "name": partner.name,
        "created_at": iso_time(partner.created_at) or "",
    }


def _add_partner(
    session: Session,
    partner_id: str,
    name: str,
    created: datetime,
    key_hash: str | None,
    signing: list[tuple[str, datetime | None]],
) -> None:
    """A partner's rows: the partner, its key hash (if any) and its signing secrets, each
    (secret, expires_at or None for the current one)."""
    session.add(Partner(id=partner_id, name=name, created_at=created))
    session.flush()  # the partner row first: keys and secrets reference it
    if key_hash:
        session.add(ApiKey(key_hash=key_hash, partner_id=partner_id, created_at=created))
    for secret, expires_at in signing:
        session.add(
            SigningSecret(
                partner_id=partner_id, secret=secret, created_at=created, expires_at=expires_at
            )
        )


def _follow_changes(ref: weakref.ReferenceType[Partners]) -> None:
    """Drop the key cache on every published change, and whenever Redis confirms the
    subscription (first, or again after redis-py reconnected by itself): a change
    published while it was down would otherwise be missed. A lost
    subscription keeps the cache (while Redis is down nothing can change, and known keys
    keep being served).

    Holds its ``Partners`` only weakly, and returns within a second of it being closed
    or collected, so an app that is done with does not leave a thread polling a Redis
    that may be gone. One outage logs one traceback, not one a second.
    """
    delay = 1.0
    while (partners := ref()) is not None and not partners._closed.is_set():
        channel = partners.store.key(CHANGED_CHANNEL)
        # Subscribe confirmations are kept: redis-py resubscribes by itself after a lost
        # connection, and its confirmation is the only sign that the feed had a gap.
        pubsub = partners.store.redis.pubsub(ignore_subscribe_messages=False)  # type: ignore[no-untyped-call,unused-ignore]
        del partners
        try:
            pubsub.subscribe(channel)
            while True:
                message = pubsub.get_message(timeout=1.0)
                partners = ref()
                if partners is None or partners._closed.is_set():
                    return
                if message is not None:  # a change, or a (re)subscription confirmed
                    if delay > 1.0:
                        log.info("partner change feed back")
                        delay = 1.0
                    partners._forget()
                del partners
        except Exception:  # noqa: BLE001 - Redis went away: subscribe again later
            log.warning(
                "partner change feed lost; subscribing again in %.0f s",
                delay,
                exc_info=delay == 1.0,
            )
            time.sleep(delay)
            delay = min(delay * 2, FEED_RETRY_MAX)
        finally:
            with contextlib.suppress(Exception):
                pubsub.close()
