"""The database as the record (jobgate.outbox) against a real Redis and each database:
rows committed at submit, the Idempotency-Key kept with them, and the relay that gives
Redis back every unsettled job it does not hold, batches included."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from sqlalchemy import select, update

from jobgate import outbox
from jobgate.archive import Archiver
from jobgate.batches import batch_record, member_ids
from jobgate.db.models import Job
from jobgate.lifecycle import count_batch_member
from jobgate.messages import DELIVER_TASK
from jobgate.outbox import IdempotencyKey, KeyTaken, accept, relay, withdraw
from jobgate.store import IDEMPOTENCY_TTL, Store, as_stored
from jobgate.times import utcnow
from tests.helpers import Recorder, drain


@pytest.fixture
def store(redis_client: redis.Redis) -> Store:
    # A fixed dispatch window: no worker counts its slots here, and a job given back must
    # be handed to the broker at once.
    prefix = "outbox-" + uuid.uuid4().hex[:8]
    return Store(redis_client, prefix=prefix, cache_ttl=120, dispatch_window=100)


@pytest.fixture
def archiver(store: Store, db) -> Archiver:
    return Archiver(store, db, consumer="test", batch=50)


def record(partner: str = "ptn_a", **fields: Any) -> dict[str, Any]:
    job_id = str(uuid.uuid4())
    return as_stored(
        {
            "job_id": job_id,
            "task_id": job_id,
            "task": "demo.sleep",
            "partner_id": partner,
            "params": {"seconds": 1},
            "metadata": {"order": 7},
            "created_at": utcnow(),
            **fields,
        }
    )


def submitted(store: Store, db, **fields: Any) -> str:
    """A job as the gateway takes it: its row committed, then handed to Redis."""
    job = record(**fields)
    accept(db, store.prefix, [job])
    store.create_job(job, committed=True)
    return job["job_id"]


def wipe(store: Store) -> None:
    """Redis lost everything under the store's prefix."""
    for key in store.redis.scan_iter(f"{store.prefix}:*"):
        store.redis.delete(key)


def test_a_job_accepted_and_lost_before_any_archiver_comes_back(store, db) -> None:
    """The row committed at submit is the record: Redis lost the job before anything
    archived it, and the relay queues it again."""
    job_id = submitted(store, db)
    wipe(store)
    messenger = Recorder()
    assert relay(store, db, messenger, older_than=-60) == 1
    assert store.job(job_id) is not None
    assert store.waiting("ptn_a")["running"] == 1  # dispatched again (the window is 100)
    assert [(name, o.get("task_id")) for name, o in messenger.sent] == [("demo.sleep", job_id)]
    assert relay(store, db, messenger, older_than=-60) == 0  # Redis has it again


def test_a_committed_job_needs_no_archive_entry_one_made_outside_gets_one(
    store, archiver, db
) -> None:
    """The gateway committed the row: its creation costs the archiver nothing (no entry,
    no read, no statement). A job made without a row still reaches the database."""
    job_id = submitted(store, db)
    assert store.redis.xlen(store.archive_key) == 0
    outside = record()
    store.create_job(outside)
    assert store.redis.xlen(store.archive_key) == 1
    assert archiver.run_once() == 1
    rows = dict(
        db.read(select(Job.job_id, Job.task).where(Job.job_id.in_([job_id, outside["job_id"]])))
    )
    assert rows == {job_id: "demo.sleep", outside["job_id"]: "demo.sleep"}


def test_relay_gives_back_what_redis_lost_and_nothing_settled(store, archiver, db) -> None:
    """A queued job is queued again, an ended job whose webhook was pending gets its
    record and its event back; a settled one stays in the database only."""
    queued = submitted(store, db, started_at=utcnow(), runs="1")
    pending = submitted(store, db, callback_url="https://example.test/hook")
    assert store.finish_job(pending, "SUCCESS", result={"n": 2})
    settled = submitted(store, db)
    assert store.finish_job(settled, "SUCCESS", result={})
    drain(archiver)
    wipe(store)
    messenger = Recorder()
    # The module's database also holds other tests' unsettled jobs, under other key
    # prefixes: only this store's come back.
    assert relay(store, db, messenger, older_than=-60) == 2
    again = store.job(queued)
    assert again is not None and "started_at" not in again and "runs" not in again
    assert store.job(pending)["status"] == "SUCCESS"
    assert store.job(settled) is None
    sent = {(name, options.get("task_id")) for name, options in messenger.sent}
    assert ("demo.sleep", queued) in sent
    assert any(name == DELIVER_TASK and pending in task_id for name, task_id in sent)
    assert relay(store, db, messenger, older_than=-60) == 0


def test_relay_reads_past_any_number_of_live_jobs(store, db, monkeypatch) -> None:
    """Unsettled jobs Redis still holds (a failing receiver keeps them so for a day) fill
    pages; the lost job after them is still found."""
    monkeypatch.setattr(outbox, "PAGE", 3)
    for _ in range(7):
        submitted(store, db)
    time.sleep(0.01)  # created after them
    lost = submitted(store, db)
    store.redis.delete(store.key("job", lost))
    assert relay(store, db, Recorder(), older_than=-60) == 1
    assert store.job(lost) is not None


def test_relay_leaves_jobs_younger_than_older_than(store, db) -> None:
    job = record()
    accept(db, store.prefix, [job])  # committed; its gateway has not handed it over yet
    assert relay(store, db, Recorder(), older_than=60) == 0
    assert store.job(job["job_id"]) is None


def test_a_job_handed_over_twice_is_queued_once(store) -> None:
    job = record()
    store.create_job(job)
    store.create_job(job)
    assert store.waiting("ptn_a")["running"] == 1
    assert int(store.redis.hget(store.key("stats"), "submitted")) == 1


def test_a_lost_batch_comes_back_with_its_ended_members_counted(store, archiver, db) -> None:
    """Rebuilt from its row: the member that ended is counted again, the others count as
    they end, and the last one completes the batch."""
    batch_id = uuid.uuid4().hex
    members = [record(batch_id=batch_id) for _ in range(3)]
    batch = {
        "batch_id": batch_id,
        "partner_id": "ptn_a",
        "callback_url": "",
        "created_at": utcnow(),
        "total": 3,
        "completed": 0,
        "succeeded": 0,
        "failed": 0,
        "revoked": 0,
        "metadata": {"run": 1},
        "member_ids": [m["job_id"] for m in members],
    }
    accept(db, store.prefix, members, batch=batch)
    store.create_batch({**batch, "metadata": '{"run": 1}', "member_ids": None}, members)
    first = members[0]["job_id"]
    assert store.finish_job(first, "FAILURE", error="boom")
    drain(archiver)
    wipe(store)
    assert relay(store, db, Recorder(), older_than=-60) == 2  # the ended one is settled
    again = batch_record(store, batch_id)
    assert again is not None
    assert (again["total"], again["completed"], again["failed"]) == (3, 1, 1)
    assert again["metadata"] == {"run": 1}
    assert member_ids(store, batch_id) == [m["job_id"] for m in members]
    assert store.redis.sismember(f"{store.prefix}:batch:{batch_id}:done", first)
    for member in members[1:]:
        assert store.finish_job(member["job_id"], "SUCCESS", result={})
        count_batch_member(Recorder(), store, {**member, "status": "SUCCESS"})
    done = batch_record(store, batch_id)
    assert (
        done is not None
        and done["finished_at"]
        and (done["completed"], done["succeeded"]) == (3, 2)
    )


def test_a_lost_batch_whose_members_all_ended_completes(store, archiver, db) -> None:
    """Every member's end reached the database, the batch's completion did not: rebuilt,
    it completes and queues its event."""
    batch_id = uuid.uuid4().hex
    members = [record(batch_id=batch_id, callback_url="") for _ in range(2)]
    batch = {
        "batch_id": batch_id,
        "partner_id": "ptn_a",
        "callback_url": "https://example.test/batch",
        "created_at": utcnow(),
        "total": 2,
        "completed": 0,
        "metadata": {},
        "member_ids": [m["job_id"] for m in members],
    }
    accept(db, store.prefix, members, batch=batch)
    store.create_batch({**batch, "metadata": "{}", "member_ids": None}, members)
    for member in members:  # ended, each with a webhook still to go: not settled
        store.finish_job(member["job_id"], "SUCCESS", result={}, callback_url="https://x.test/")
    drain(archiver)
    wipe(store)
    messenger = Recorder()
    assert relay(store, db, messenger, older_than=-60) == 2
    again = batch_record(store, batch_id)
    assert again is not None and again["finished_at"] and again["succeeded"] == 2
    assert any(batch_id in (o.get("task_id") or "") for _, o in messenger.sent)


def test_an_idempotency_key_is_kept_with_its_job(store, db) -> None:
    key = IdempotencyKey("ptn_a", uuid.uuid4().hex, "digest-1")
    first = record()
    accept(db, store.prefix, [first], idempotency=key)
    with pytest.raises(KeyTaken) as taken:
        accept(db, store.prefix, [record()], idempotency=key)
    assert (taken.value.job_id, taken.value.digest) == (first["job_id"], "digest-1")
    # Another partner's same key is its own.
    accept(
        db, store.prefix, [record("ptn_b")], idempotency=IdempotencyKey("ptn_b", key.key_hash, "d")
    )
    # A key older than its 24 h is free again.
    old = datetime.fromtimestamp(time.time() - IDEMPOTENCY_TTL - 60, UTC)
    with db.session() as session:
        session.execute(update(Job).where(Job.job_id == first["job_id"]).values(created_at=old))
    accept(db, store.prefix, [record()], idempotency=key)


def test_withdraw_deletes_a_refused_submit(store, db) -> None:
    job = record()
    accept(db, store.prefix, [job])
    withdraw(db, [job["job_id"]])
    assert relay(store, db, Recorder(), older_than=-60) == 0


def test_concurrent_submits_are_committed_together_each_with_its_own_outcome(store, db) -> None:
    """Jobs accepted at the same moment by one process share transactions (group
    commit); a key already taken fails its own submit only."""
    groups: list[int] = []
    write = db.write

    def counting_write(statement: Any, params: Any = None) -> int:
        groups.append(len(params) if isinstance(params, list) else 1)
        return write(statement, params)

    db.write = counting_write  # the real write, counted
    taken = IdempotencyKey("ptn_a", uuid.uuid4().hex, "digest-1")
    accept(db, store.prefix, [record()], idempotency=taken)
    groups.clear()
    jobs = [record() for _ in range(40)]
    outcomes: dict[int, BaseException | None] = {}
    start = threading.Barrier(len(jobs))

    def submit(n: int) -> None:
        start.wait()
        try:
            accept(db, store.prefix, [jobs[n]], idempotency=taken if n == 7 else None)
            outcomes[n] = None
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcomes[n] = exc

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert isinstance(outcomes.pop(7), KeyTaken)
    assert set(outcomes.values()) == {None}
    ids = [job["job_id"] for n, job in enumerate(jobs) if n != 7]
    stored = {r.job_id for r in db.read(select(Job.job_id).where(Job.job_id.in_(ids)))}
    assert stored == set(ids)
    assert not db.read(select(Job.job_id).where(Job.job_id == jobs[7]["job_id"]))
    assert max(groups) > 1  # rows shared a transaction (the group with key 7 then one by one)
