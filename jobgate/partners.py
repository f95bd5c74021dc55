"""Partners, their API keys and signing secrets: kept in the database, mirrored in Redis.

The database is the record (a Redis restarted without persistence loses nothing). Redis
holds a mirror the hot paths read in the round trips they already make: the partner hash
``<prefix>:partner:<id>`` (the delivery script reads its secrets) and
``<prefix>:partnerkey:<key hash>`` (auth). A mirror entry that is missing is rebuilt from
the database by whoever misses it, so a flushed Redis heals on first use.
"""

from __future__ import annotations

import secrets as random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import or_, select

from jobgate.db import Database
from jobgate.db.models import ApiKey, Partner, SigningSecret
from jobgate.store import KEY_CACHE_SIZE, KEY_CACHE_TTL, Store, hash_key, utcnow

MIRROR_FIELDS = ("id", "name", "created_at", "webhook_secret")


def iso_time(value: datetime | None) -> str | None:
    """A database time as the API writes times (ISO 8601 UTC, milliseconds, Z)."""
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite keeps no zone; jobgate writes UTC only
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_time(text: str) -> datetime:
    """An API time (``...Z``) as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def now_utc() -> datetime:
    return datetime.now(UTC)


class Partners:
    """Create, find and change partners (database first, then the Redis mirror)."""

    def __init__(self, store: Store, db: Database) -> None:
        self.store = store
        self.db = db
        self._key_cache: dict[str, tuple[float, dict[str, str]]] = {}

    # ---------------------------------------------------------------- writes
    def create(self, name: str, webhook_secret: str) -> tuple[dict[str, str], str]:
        """Create a partner; returns (its mirror record, its API key). Only the key's hash
        is stored anywhere."""
        partner_id = "ptn_" + uuid.uuid4().hex[:20]
        api_key = "jgp_" + random.token_urlsafe(32)
        created = now_utc()
        with self.db.session() as session:
            session.add(Partner(id=partner_id, name=name, created_at=created))
            session.flush()  # the partner row first: keys and secrets reference it
            session.add(
                ApiKey(key_hash=hash_key(api_key), partner_id=partner_id, created_at=created)
            )
            session.add(
                SigningSecret(partner_id=partner_id, secret=webhook_secret, created_at=created)
            )
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
            for old in session.scalars(
                select(SigningSecret).where(
                    SigningSecret.partner_id == partner_id,
                    or_(SigningSecret.expires_at.is_(None), SigningSecret.expires_at > now),
                )
            ):
                until = now + timedelta(seconds=grace)
                if old.expires_at is None or _aware(old.expires_at) > until:
                    old.expires_at = until
            session.add(SigningSecret(partner_id=partner_id, secret=new_secret, created_at=now))
        self.mirror(partner_id)
        return True

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
                session.add(Partner(id=partner_id, name=raw.get("name", ""), created_at=created))
                session.flush()
                if raw.get("key_hash"):
                    session.add(
                        ApiKey(key_hash=raw["key_hash"], partner_id=partner_id, created_at=created)
                    )
                if raw.get("webhook_secret"):
                    session.add(
                        SigningSecret(
                            partner_id=partner_id, secret=raw["webhook_secret"], created_at=created
                        )
                    )
                until = float(raw.get("previous_secret_until") or 0)
                if raw.get("previous_secret") and until > time.time():
                    session.add(
                        SigningSecret(
                            partner_id=partner_id,
                            secret=raw["previous_secret"],
                            created_at=created,
                            expires_at=datetime.fromtimestamp(until, UTC),
                        )
                    )
            imported += 1
            self.mirror(partner_id)
        return imported

    # ----------------------------------------------------------------- reads
    def get(self, partner_id: str) -> dict[str, str] | None:
        """The partner's mirror record (rebuilt from the database if Redis lost it)."""
        raw = cast(
            "dict[str, str]", self.store.redis.hgetall(self.store.key("partner", partner_id))
        )
        return raw or self.mirror(partner_id)

    def by_key(self, api_key: str) -> dict[str, str] | None:
        """The partner owning ``api_key``, None for an unknown or expired key.

        Auth runs on every request: a found key is cached in-process for KEY_CACHE_TTL s,
        then Redis's mirror answers, then the database (which also rebuilds the mirror).
        """
        hashed = hash_key(api_key)
        hit = self._key_cache.get(hashed)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        redis = self.store.redis
        partner_id = cast("str | None", redis.get(self.store.key("partnerkey", hashed)))
        partner = self.get(partner_id) if partner_id else self._by_key_in_db(hashed)
        if partner is not None:
            if len(self._key_cache) >= KEY_CACHE_SIZE:
                self._key_cache.clear()
            self._key_cache[hashed] = (time.monotonic() + KEY_CACHE_TTL, partner)
        return partner

    def _by_key_in_db(self, hashed: str) -> dict[str, str] | None:
        with self.db.session() as session:
            key = session.get(ApiKey, hashed)
            if key is None or (key.expires_at is not None and _aware(key.expires_at) <= now_utc()):
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
                    or_(SigningSecret.expires_at.is_(None), SigningSecret.expires_at > now),
                )
                .order_by(SigningSecret.id.desc())
            ).all()
            record = _public(partner)
        current = [s for s in live if s.expires_at is None]
        rotated = [s for s in live if s.expires_at is not None]
        record["webhook_secret"] = current[0].secret if current else ""
        if rotated:
            record["previous_secrets"] = ",".join(s.secret for s in rotated)
            record["previous_secrets_until"] = ",".join(
                str(_aware(s.expires_at).timestamp()) for s in rotated if s.expires_at
            )
        pipe = self.store.redis.pipeline()
        name = self.store.key("partner", partner_id)
        pipe.delete(name)
        pipe.hset(name, mapping=record)  # type: ignore[arg-type]  # see Store.create_batch
        for key in keys:
            live_key = key.expires_at is None or _aware(key.expires_at) > now
            partnerkey = self.store.key("partnerkey", key.key_hash)
            if live_key:
                pipe.set(partnerkey, partner_id)
                if key.expires_at is not None:
                    pipe.expireat(partnerkey, _aware(key.expires_at))
            else:
                pipe.delete(partnerkey)
        pipe.execute()
        return record


def _public(partner: Partner) -> dict[str, str]:
    return {
        "id": partner.id,
        "name": partner.name,
        "created_at": iso_time(partner.created_at) or "",
    }


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
