"""Partners in the database, mirrored into Redis: keys, secrets, rotation, a lost mirror."""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid

import pytest
import redis

from jobgate.partners import Partners
from jobgate.signing import generate_secret
from jobgate.store import Store, secrets_of
from tests.helpers import EmbeddedRedis, free_port, wait_until


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


def _feeds() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "jobgate-partner-changes"]


def test_the_change_feed_ends_when_its_partners_are_closed_or_collected(
    redis_client: redis.Redis, db
) -> None:
    """An app that is done with must not leave a thread behind polling its Redis."""
    before = set(_feeds())
    closed = Partners(Store(redis_client, prefix="ptn-" + uuid.uuid4().hex[:8]), db)
    closed.by_key("jgp_unknown")
    dropped = Partners(Store(redis_client, prefix="ptn-" + uuid.uuid4().hex[:8]), db)
    dropped.by_key("jgp_unknown")
    started = set(_feeds()) - before
    assert len(started) == 2
    closed.close()
    del dropped
    gc.collect()
    wait_until(lambda: not any(t.is_alive() for t in started), timeout=5)


def test_a_lost_change_feed_logs_one_traceback_per_outage(
    db, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listens on the port: the feed retries with a growing pause, and only the
    first failure carries a traceback (formatting one a second is noise, and on CPython
    3.11 it races other threads' parsing, gh-106905)."""
    nowhere = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    partners = Partners(Store(nowhere, prefix="ptn-" + uuid.uuid4().hex[:8]), db)
    caplog.set_level(logging.WARNING, logger="jobgate.partners")
    try:
        partners._listen()
        lost = lambda: [r for r in caplog.records if "change feed lost" in r.getMessage()]  # noqa: E731
        wait_until(lambda: len(lost()) >= 2, timeout=10)
        assert [bool(r.exc_info) for r in lost()[:2]] == [True, False]
        assert "again in 2 s" in lost()[1].getMessage()
    finally:
        partners.close()


def test_a_restarted_redis_drops_the_key_cache_once_resubscribed(db) -> None:
    """A change published while the feed was down was missed, so the cache is dropped
    when the subscription is back, whether redis-py raised (the loop subscribes again)
    or reconnected and resubscribed by itself inside get_message (seen with a plain
    client in a probe; the feed now forgets on every subscribe confirmation)."""
    server = EmbeddedRedis().start()
    client = redis.Redis.from_url(
        server.url,
        decode_responses=True,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=30,
    )
    partners = Partners(Store(client, prefix="ptn-" + uuid.uuid4().hex[:8]), db)
    try:
        partners.by_key("jgp_unknown")
        wait_until(lambda: partners._generation >= 1, timeout=5)
        before = partners._generation
        server.stop()
        time.sleep(2.5)  # down for as long as a restart takes: redis-py retries meanwhile
        server.start()
        wait_until(lambda: partners._generation > before, timeout=15)
    finally:
        partners.close()
        server.close()
