"""The archiver against a real Redis and each database: idempotent upserts, newer rows
never overwritten, the Redis side forgotten only once archived and final, retention."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from jobgate import history
from jobgate.archive import Archiver, _chunk, lag, revision
from jobgate.db import Database
from jobgate.db.models import DeadLetter, Message
from jobgate.retention import prune
from jobgate.store import Store
from jobgate.times import utcnow
from jobgate.webhooks.ledger import Deliveries
from tests.conftest import ADMIN_KEY
from tests.helpers import count_rows, drain, free_port


@pytest.fixture
def store(redis_client: redis.Redis) -> Store:
    # A fixed dispatch window: no worker counts its slots here, and a restored job must
    # be handed to the broker at once.
    prefix = "arch-" + uuid.uuid4().hex[:8]
    return Store(redis_client, prefix=prefix, cache_ttl=120, dispatch_window=100)


@pytest.fixture
def archiver(store: Store, db) -> Archiver:
    return Archiver(store, db, consumer="test", batch=50)


def new_job(store: Store, **fields: Any) -> str:
    job_id = str(uuid.uuid4())
    store.create_job(
        {
            "job_id": job_id,
            "task_id": job_id,
            "task": "demo.sleep",
            "partner_id": "ptn_a",
            "params": {"seconds": 1},
            "metadata": {"order": 7},
            "created_at": utcnow(),
            **fields,
        }
    )
    return job_id


def test_created_then_finished_is_one_row_with_the_end(store, archiver, db) -> None:
    job_id = new_job(store)
    assert drain(archiver) == 1
    assert history.job(db, job_id)["job_id"] == job_id
    assert history.job(db, job_id).get("status") is None
    assert store.finish_job(job_id, "SUCCESS", result={"n": 1})
    assert drain(archiver) == 1
    row = history.job(db, job_id)
    assert row == store.job(job_id)  # the record as Redis holds it, field for field
    assert row["status"] == "SUCCESS" and row["result"] == {"n": 1}
    assert count_rows(db)["jobs"] >= 1
    assert store.redis.xlen(store.archive_key) == 0  # acknowledged and removed


def test_a_job_archived_twice_is_one_row(store, archiver, db) -> None:
    job_id = new_job(store)
    store.redis.xadd(store.archive_key, {"s": f"job:{job_id}"})
    store.redis.xadd(store.archive_key, {"s": f"job:{job_id}"})
    assert drain(archiver) == 3
    before = count_rows(db)["jobs"]
    archiver.archive([job_id, job_id], [])
    assert count_rows(db)["jobs"] == before


def test_an_older_read_never_overwrites_a_newer_row(store, archiver, db) -> None:
    """Two archivers read the same job at different times and commit in the other order."""
    job_id = new_job(store)
    stale = store.job(job_id)
    assert store.finish_job(job_id, "FAILURE", error="boom")
    drain(archiver)
    assert history.job(db, job_id)["status"] == "FAILURE"
    # The stale (live) read commits last: it must not take the end back.
    store.redis.delete(store.key("job", job_id))
    store.redis.hset(
        store.key("job", job_id),
        mapping={k: str(v) for k, v in stale.items() if not isinstance(v, dict)},
    )
    archiver.archive([job_id], [])
    assert history.job(db, job_id)["status"] == "FAILURE"


def test_a_job_named_only_by_create_and_end_entries_has_no_attempt_log_read() -> None:
    """A created or ended job's entry says no attempt changed; an attempt's entry, and an
    entry that does not say (an older writer's), has the log read."""
    chunk = _chunk(
        [
            ("1-0", {"s": "job:a", "a": "0"}),
            ("2-0", {"s": "job:a", "a": "0"}),
            ("3-0", {"s": "job:b", "a": "0"}),
            ("4-0", {"s": "job:b"}),
            ("5-0", {"s": "job:c"}),
            ("6-0", None),  # an entry deleted while pending (XAUTOCLAIM gives no fields)
        ]
    )
    assert chunk.jobs == ["a", "b", "c"]
    assert chunk.records_only == frozenset({"a"})
    assert chunk.ids == ["1-0", "2-0", "3-0", "4-0", "5-0", "6-0"]


def test_an_attempt_in_the_same_chunk_as_the_jobs_end_is_archived(store, archiver, db) -> None:
    job_id = new_job(store, callback_url="https://example.test/hook")
    assert store.finish_job(job_id, "SUCCESS", result={})
    entry = {"webhook_id": "msg_y", "event": "job.succeeded", "at": utcnow(), "outcome": "failed"}
    Deliveries(store).record(job_id, entry, "retrying", "job")
    assert drain(archiver) == 3  # created, ended, attempted: one chunk
    assert [a["outcome"] for a in history.attempts(db, job_id)] == ["failed"]


def test_revision_orders_ends_attempts_and_final_states() -> None:
    assert revision(None, "none", 0) < revision("SUCCESS", "pending", 0)
    assert revision("SUCCESS", "retrying", 1) < revision("SUCCESS", "retrying", 2)
    assert revision("SUCCESS", "retrying", 2) < revision("SUCCESS", "failed", 2)


def test_redis_forgets_a_finished_job_only_once_archived_and_final(store, archiver, db) -> None:
    job_id = new_job(store, callback_url="https://example.test/hook")
    assert store.finish_job(job_id, "SUCCESS", result={})
    key = store.key("job", job_id)
    hold = store.redis.ttl(key)
    drain(archiver)
    assert store.redis.ttl(key) == hold or store.redis.ttl(key) > store.cache_ttl, (
        "webhook still pending: Redis keeps the record for its attempts"
    )
    books = Deliveries(store)
    books.store_body(job_id, "job.succeeded", '{"type": "job.succeeded"}')
    entry = {
        "webhook_id": "msg_x",
        "event": "job.succeeded",
        "at": utcnow(),
        "outcome": "delivered",
    }
    books.record(job_id, entry, "delivered", "job")
    drain(archiver)
    assert 0 < store.redis.ttl(key) <= store.cache_ttl
    body = books.body_key(job_id, "job.succeeded")
    for name in (store.key("webhook", job_id), store.key("deliveries", job_id), body):
        assert 0 < store.redis.ttl(name) <= store.cache_ttl, name
    assert [a["outcome"] for a in history.attempts(db, job_id)] == ["delivered"]


def test_a_job_without_callback_is_forgotten_once_archived(store, archiver, db) -> None:
    job_id = new_job(store)
    assert store.finish_job(job_id, "REVOKED", revoked_by="admin")
    drain(archiver)
    assert 0 < store.redis.ttl(store.key("job", job_id)) <= store.cache_ttl


def test_archiving_again_never_lengthens_a_shorter_ttl(store, archiver, db) -> None:
    job_id = new_job(store)
    assert store.finish_job(job_id, "REVOKED", revoked_by="admin")
    drain(archiver)
    key = store.key("job", job_id)
    store.redis.expire(key, 5)
    store.redis.xadd(store.archive_key, {"s": f"job:{job_id}"})
    assert drain(archiver) == 1
    assert 0 < store.redis.ttl(key) <= 5
    assert store.redis.xlen(store.archive_key) == 0


def test_a_failed_transaction_keeps_the_entries_for_the_next_try(store, db, monkeypatch) -> None:
    """The database refuses a chunk: nothing is acknowledged, the next run archives it."""
    archiver = Archiver(store, db, consumer="flaky")
    job_id = new_job(store)

    def broken(*_: Any) -> list[str]:
        raise RuntimeError("database down")

    monkeypatch.setattr(archiver, "archive", broken)
    with pytest.raises(RuntimeError):
        archiver.run_once()
    assert store.redis.xlen(store.archive_key) == 1
    monkeypatch.undo()
    assert archiver.run_once() == 1  # its own pending entry first
    assert history.job(db, job_id) is not None


def test_a_dead_archivers_entries_are_claimed_by_another(store, db, monkeypatch) -> None:
    monkeypatch.setattr("jobgate.archive.CLAIM_IDLE", 0.05)
    job_id = new_job(store)
    dead = Archiver(store, db, consumer="dead")
    assert dead.read().jobs == [job_id]  # read, then "killed" before committing
    time.sleep(0.1)  # the entry's idle time must pass CLAIM_IDLE: that is what is tested
    alive = Archiver(store, db, consumer="alive")
    assert alive.run_once() == 1
    assert history.job(db, job_id) is not None


def test_lag_reports_waiting_entries_and_the_oldest_age(store, archiver) -> None:
    assert lag(store) == (0, 0.0)
    new_job(store)
    waiting, age = lag(store)
    assert waiting == 1 and 0 <= age < 60


def test_prune_deletes_jobs_and_attempts_past_retention_in_chunks(store, archiver, db) -> None:
    old = [new_job(store) for _ in range(3)]
    for job_id in old:
        store.finish_job(job_id, "SUCCESS", result={})
    drain(archiver)
    fresh = new_job(store)
    store.finish_job(fresh, "SUCCESS", result={})
    drain(archiver)
    # Everything finished just now: a retention of one hour keeps all, of -1 h deletes all.
    assert prune(db, 3600, chunk=2) == 0
    deleted = prune(db, 1, chunk=2, now=time.time() + 3600)
    assert deleted >= 4
    assert all(history.job(db, job_id) is None for job_id in [*old, fresh])


def test_an_archiver_recreates_its_group_after_redis_lost_it(store, archiver, db) -> None:
    new_job(store)
    assert drain(archiver) == 1
    store.redis.delete(store.archive_key)  # Redis restarted empty: stream and group gone
    job_id = new_job(store)
    assert drain(archiver) == 1
    assert history.job(db, job_id) is not None


def test_a_job_whose_fan_out_step_has_not_run_stays_in_redis(store, archiver) -> None:
    """The fan-out step to the partner's endpoints reads the job's record in Redis: the
    record keeps its hold until the step has run (jobgate.endpoints._fanned)."""
    job_id = new_job(store)
    assert store.finish_job(job_id, "SUCCESS", result={})
    store.redis.hset(store.key("job", job_id), "fanout", "queued")  # as job_finish.lua does
    drain(archiver)
    assert store.redis.ttl(store.key("job", job_id)) > store.cache_ttl
    store.redis.hset(store.key("job", job_id), "fanout", "done")
    store.redis.xadd(store.archive_key, {"s": f"job:{job_id}"})
    drain(archiver)
    assert 0 < store.redis.ttl(store.key("job", job_id)) <= store.cache_ttl


def test_an_endpoint_messages_attempts_reach_the_database(store, archiver, db) -> None:
    msg_id = "msg_" + uuid.uuid4().hex
    entry = {"webhook_id": msg_id, "event": "job.succeeded", "at": utcnow(), "outcome": "retry"}
    books = Deliveries(store)
    books.record(msg_id, entry, "retrying", "msg")
    books.record(msg_id, {**entry, "outcome": "delivered"}, "delivered", "msg")
    drain(archiver)
    assert [a["outcome"] for a in history.attempts(db, msg_id)] == ["retry", "delivered"]


# ------------------------------------------------------------------ dead letters
# Records written straight into Redis (no gateway) that a database refuses: PostgreSQL's
# JSONB takes no NUL and no lone surrogate (SQLite stores both); a time that does not
# parse is refused before any database sees it.
POISONS = {
    "nul-in-metadata": ({"metadata": '{"note": "\\u0000"}'}, "postgresql"),
    "surrogate-in-metadata": ({"metadata": '{"note": "\\ud800"}'}, "postgresql"),
    "unreadable-created-at": ({"created_at": "yesterday"}, "every database"),
}


def poison_job(store: Store, fields: dict[str, str]) -> str:
    """A job of another partner whose Redis record is then overwritten with ``fields``."""
    job_id = new_job(store, partner_id="ptn_poison")
    store.redis.hset(store.key("job", job_id), mapping=fields)
    return job_id


def letters(db: Database, store: Store) -> list[Any]:
    """This store's dead letters (the module's database holds other tests' too)."""
    query = select(DeadLetter).where(DeadLetter.keyspace == store.prefix).order_by(DeadLetter.id)
    with db.session() as session:
        return list(session.scalars(query))


def counted(store: Store) -> int:
    return int(store.redis.hget(store.key("stats"), "dead_letters") or 0)


@pytest.mark.parametrize("poison", POISONS)
def test_a_record_the_database_refuses_is_set_aside_and_the_rest_archives(
    store, archiver, db, poison
) -> None:
    """Found in review: one job whose metadata held "\\u0000" stopped the archive for
    every partner, forever. It is now tried alone, set aside, and the chunk goes on."""
    fields, refused_by = POISONS[poison]
    refused = refused_by == "every database" or not db.is_sqlite
    others = [new_job(store) for _ in range(3)]
    bad = poison_job(store, fields)
    others += [new_job(store) for _ in range(3)]
    assert drain(archiver) == 7  # one chunk of seven entries, every one acknowledged
    assert all(history.job(db, job_id) is not None for job_id in others)
    assert store.redis.xlen(store.archive_key) == 0
    if refused:
        (letter,) = letters(db, store)
        assert (letter.kind, letter.subject_id) == ("job", bad)
        assert letter.error
        assert json.loads(letter.record) == store.redis.hgetall(store.key("job", bad))
        assert history.job(db, bad) is None
        assert counted(store) == 1
    else:
        assert letters(db, store) == [] and history.job(db, bad) is not None
    later = new_job(store)  # and the archive goes on with the entries after it
    assert drain(archiver) == 1
    assert history.job(db, later) is not None


def test_its_every_later_entry_is_set_aside_too(store, archiver, db) -> None:
    bad = poison_job(store, {"created_at": "yesterday"})
    drain(archiver)
    assert store.finish_job(bad, "SUCCESS", result={})  # the job ends: a new entry
    assert drain(archiver) == 1
    assert [letter.subject_id for letter in letters(db, store)] == [bad, bad]
    assert counted(store) == 2


def test_prune_deletes_dead_letters_past_retention(store, archiver, db) -> None:
    poison_job(store, {"created_at": "yesterday"})
    drain(archiver)
    prune(db, 3600)
    assert len(letters(db, store)) == 1
    prune(db, 1, now=time.time() + 3600)
    assert letters(db, store) == []


def test_prune_deletes_endpoint_messages_past_retention_by_their_time(db) -> None:
    from datetime import UTC, datetime, timedelta

    from jobgate.webhooks.fanout import keep_messages

    now = datetime.now(UTC)
    rows = [
        {
            "msg_id": f"msg_{uuid.uuid4().hex}",
            "endpoint_id": "ep_prune",
            "partner_id": "ptn_prune",
            "kind": "job",
            "subject_id": str(uuid.uuid4()),
            "event": "job.succeeded",
            "created_at": at,
            "held": True,
        }
        for at in (now - timedelta(hours=2), now)
    ]
    keep_messages(db, rows)
    keep_messages(db, rows)  # kept once
    prune(db, 3600)
    left = db.read(select(Message.msg_id).where(Message.endpoint_id == "ep_prune"))
    assert [r.msg_id for r in left] == [rows[1]["msg_id"]]


def unreachable(db: Database, tmp_path) -> Database:
    """The same kind of database, down: nothing listens on its port, or its file's
    directory is gone."""
    if db.is_sqlite:
        return Database(f"sqlite:///{tmp_path / 'gone' / 'jobgate.sqlite3'}")
    return Database(make_url(db.url).set(port=free_port()).render_as_string(False))


@pytest.mark.parametrize("with_others", [True, False], ids=["in-a-chunk", "alone"])
def test_a_database_outage_is_retried_never_set_aside(store, db, tmp_path, with_others) -> None:
    """Tried alone, a poison record fails as before; with the database down, every write
    fails, the dead letter's too: the entries wait, and are sorted out once it answers."""
    bad = poison_job(store, {"created_at": "yesterday"})
    good = [new_job(store)] if with_others else []
    down = Database(unreachable(db, tmp_path).url)
    for _ in range(3):
        with pytest.raises(OperationalError):
            Archiver(store, down, consumer="outage").run_once()
    down.dispose()
    assert store.redis.xlen(store.archive_key) == 1 + len(good)
    assert letters(db, store) == [] and counted(store) == 0
    assert Archiver(store, db, consumer="outage").run_once() == 1 + len(good)
    assert [letter.subject_id for letter in letters(db, store)] == [bad]
    assert all(history.job(db, job_id) is not None for job_id in good)


def test_dead_letters_are_counted_in_metrics_and_listed_for_admins(
    store, archiver, db, settings
) -> None:
    from gateway import create_app

    app = create_app(settings.with_overrides(database_url=db.url, key_prefix=store.prefix))
    client, admin = app.test_client(), {"Authorization": f"Bearer {ADMIN_KEY}"}
    bad = poison_job(store, {"created_at": "yesterday"})
    drain(archiver)
    assert "jobgate_archive_dead_letters_total 1.0" in client.get("/metrics").get_data(True)
    listed = client.get("/v1/archive/dead-letters", headers=admin)
    assert listed.status_code == 200, listed.get_json()
    newest = listed.get_json()["dead_letters"][0]
    assert (newest["kind"], newest["subject_id"], newest["keyspace"]) == ("job", bad, store.prefix)
    assert newest["record"]["created_at"] == "yesterday" and "yesterday" in newest["error"]
    page = client.get("/v1/archive/dead-letters?limit=1", headers=admin).get_json()
    assert page["dead_letters"] == [newest] and page["next_cursor"] == newest["id"]
    partner = client.post("/v1/partners", json={"name": "nosy"}, headers=admin).get_json()
    as_partner = {"Authorization": f"Bearer {partner['api_key']}"}
    assert client.get("/v1/archive/dead-letters", headers=as_partner).status_code == 403


# ------------------------------------------------------------------ the message log
def test_a_messages_body_and_its_attempts_answers_are_archived_once_and_pruned_with_them(
    store, archiver, db
) -> None:
    """The message log in the database (issue 28): the body once per message, each
    attempt's answer in its row, even one PostgreSQL would refuse as text (a receiver's
    NUL), all gone when the attempts are pruned."""
    from jobgate.db.models import WebhookBody
    from jobgate.webhooks.http import logged_response

    msg_id = "msg_" + uuid.uuid4().hex
    body = json.dumps({"type": "job.succeeded", "data": {"note": "été"}}, ensure_ascii=False)
    books = Deliveries(store)
    assert books.store_body(msg_id, "job.succeeded", body) == body
    entry = {
        "webhook_id": msg_id,
        "event": "job.succeeded",
        "at": utcnow(),
        "outcome": "retry",
        "status_code": 500,
        "request": {"headers": {"webhook-id": msg_id}},
    }
    answers = [
        logged_response({"X-A": "1"}, b"nul \x00 here", False),
        logged_response({"X-B": "2"}, b"ok", False),
    ]
    books.record(msg_id, entry, "retrying", "msg", response=answers[0])
    books.record(msg_id, {**entry, "status_code": 200}, "delivered", "msg", response=answers[1])
    drain(archiver)
    archived = history.attempts(db, msg_id)
    assert [a["response"] for a in archived] == answers
    # Copied, the answers keep only the cache's time in Redis (a receiver answering 64 KiB
    # to every attempt fills no partner's share of Redis for the message's whole hold).
    ttl = store.redis.ttl(books.responses_key(msg_id))
    assert 0 < ttl <= store.cache_ttl < store.retention
    assert answers[0]["body"] == "nul \ufffd here"
    assert all(a["request"]["body"] == body for a in archived)
    assert all(a["request"]["headers"] == {"webhook-id": msg_id} for a in archived)
    rows = db.read(select(WebhookBody.webhook_id).where(WebhookBody.subject_id == msg_id))
    assert len(rows) == 1  # once per message, however many attempts
    assert not letters(db, store)
    prune(db, 1, now=time.time() + 3600)
    assert history.attempts(db, msg_id) == []
    assert not db.read(select(WebhookBody.webhook_id).where(WebhookBody.subject_id == msg_id))


def test_endpoint_headers_redis_lost_before_the_archive_are_rebuilt_from_the_endpoints_row(
    store, archiver, db
) -> None:
    """An endpoint's own headers an attempt sent are kept once in Redis
    (``messagelog.sent_apart``); lost before the archive wrote the attempt, they are
    the endpoint's row's while that holds the same set (the digest says so), and never
    another set's."""
    from datetime import UTC, datetime

    from sqlalchemy import update

    from jobgate.db.models import Endpoint, Partner
    from jobgate.webhooks.messagelog import headers_key, sent_apart

    tag = uuid.uuid4().hex[:8]
    partner_id, endpoint_id = f"ptn_{tag}", f"ep_{tag}"
    theirs = {"X-Tenant": "acme", "Authorization": "Bearer token-28", "X-Zone": "eu"}
    now = datetime.now(UTC)
    with db.session() as session:
        session.add(Partner(id=partner_id, name="p", created_at=now))
        session.flush()
        session.add(
            Endpoint(
                id=endpoint_id,
                partner_id=partner_id,
                url="http://127.0.0.1:9/hook",
                event_types=[],
                created_at=now,
                updated_at=now,
                headers=theirs,
            )
        )
    books = Deliveries(store)

    def attempt_lost_its_headers() -> tuple[str, dict[str, str]]:
        msg_id = "msg_" + uuid.uuid4().hex
        sent = {**theirs, "webhook-id": msg_id, "Content-Type": "application/json"}
        entry: dict[str, Any] = {
            "webhook_id": msg_id,
            "event": "job.succeeded",
            "at": utcnow(),
            "outcome": "delivered",
            "status_code": 200,
            "endpoint_id": endpoint_id,
        }
        entry["request"], text = sent_apart(sent, theirs)
        assert text is not None and "X-Tenant" not in entry["request"]["headers"]
        books.store_body(msg_id, "job.succeeded", "{}")
        books.record(
            msg_id,
            entry,
            "delivered",
            "msg",
            endpoint_headers=(key := headers_key(store, entry) or "", text),
        )
        assert store.redis.exists(key) == 1
        store.redis.delete(key)  # Redis lost them before the archive ran
        return msg_id, sent

    msg_id, sent = attempt_lost_its_headers()
    drain(archiver)
    [archived] = history.attempts(db, msg_id)
    assert archived["request"]["headers"] == sent  # whole: the row's set is the one sent

    msg_id, sent = attempt_lost_its_headers()
    with db.session() as session:  # the endpoint's headers changed since that attempt
        session.execute(
            update(Endpoint).where(Endpoint.id == endpoint_id).values(headers={"X-Tenant": "b"})
        )
    drain(archiver)
    [archived] = history.attempts(db, msg_id)
    assert archived["request"]["headers"] == {
        "webhook-id": msg_id,
        "Content-Type": "application/json",
    }
    assert archived["request"]["headers_incomplete"] is True  # said, not passed off as whole
