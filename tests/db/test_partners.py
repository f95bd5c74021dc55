"""Partners in the database, mirrored into Redis: keys, secrets, rotation, a lost mirror."""

from __future__ import annotations

import uuid

import pytest
import redis

from jobgate.partners import Partners
from jobgate.signing import generate_secret
from jobgate.store import Store, secrets_of


@pytest.fixture
def partners(redis_client: redis.Redis, db) -> Partners:
    return Partners(Store(redis_client, prefix="ptn-" + uuid.uuid4().hex[:8]), db)


def test_a_new_partner_is_found_by_its_key_and_only_its_hash_is_kept(partners: Partners) -> None:
    record, api_key = partners.create("acme", generate_secret())
    assert partners.by_key(api_key)["id"] == record["id"]
    assert partners.by_key("jgp_wrong") is None
    mirror = partners.store.redis.hgetall(partners.store.key("partner", record["id"]))
    assert api_key not in mirror.values()
    assert record["id"] in {p["id"] for p in partners.all()}


def test_a_lost_mirror_is_rebuilt_from_the_database(partners: Partners) -> None:
    """Redis restarted without persistence: keys and secrets still work."""
    record, api_key = partners.create("acme", secret := generate_secret())
    store = partners.store
    for key in store.redis.scan_iter(f"{store.prefix}:*"):
        store.redis.delete(key)
    fresh = Partners(store, partners.db)  # a new process: no in-process cache
    assert fresh.by_key(api_key)["id"] == record["id"]
    assert secrets_of(fresh.get(record["id"])) == [secret]
    assert store.redis.exists(store.key("partner", record["id"]))


def test_every_secret_within_grace_signs_not_only_the_last(partners: Partners) -> None:
    record, _ = partners.create("acme", first := generate_secret())
    assert partners.rotate_secret(record["id"], second := generate_secret(), grace=600)
    assert partners.rotate_secret(record["id"], third := generate_secret(), grace=600)
    assert set(secrets_of(partners.get(record["id"]))) == {first, second, third}
    assert secrets_of(partners.get(record["id"]))[0] == third
    assert partners.rotate_secret(record["id"], fourth := generate_secret(), grace=0)
    assert secrets_of(partners.get(record["id"])) == [fourth]
    assert not partners.rotate_secret("ptn_missing", generate_secret(), grace=0)


def test_partners_created_in_redis_before_the_database_are_imported(partners: Partners) -> None:
    store = partners.store
    store.redis.hset(
        store.key("partner", "ptn_old"),
        mapping={
            "id": "ptn_old",
            "name": "legacy",
            "created_at": "2025-01-02T03:04:05.678Z",
            "key_hash": "ab" * 32,
            "webhook_secret": "whsec_old",
        },
    )
    store.redis.set(store.key("partnerkey", "ab" * 32), "ptn_old")
    store.redis.zadd(store.key("partners"), {"ptn_old": 1.0})
    assert partners.import_from_redis() == 1
    assert partners.import_from_redis() == 0  # idempotent
    assert {"id": "ptn_old", "name": "legacy", "created_at": "2025-01-02T03:04:05.678Z"} in (
        partners.all()
    )
    store.redis.delete(store.key("partner", "ptn_old"))
    assert secrets_of(partners.get("ptn_old")) == ["whsec_old"]
