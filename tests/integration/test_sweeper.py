"""The sweeper against a real Redis: what it repairs, and what it leaves alone.

Each test builds the disagreement a crash would leave (a record without its message, an
open delivery with nothing queued, an ended member never counted) in a store and queues
of its own, runs one pass as a worker would once the record is stale, and looks at what
reached the queues.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from base64 import b64decode
from functools import partial
from typing import Any

import pytest

from jobgate import batches, sweeper
from jobgate.due import entry, move_due
from jobgate.events import delivery_task_id, fan_out_task_id
from jobgate.messages import DELIVER_TASK, FAN_OUT_TASK
from jobgate.store import Store
from jobgate.times import utcnow
from tasks.publish import CeleryMessenger
from tasks.transport import RedisQueues

pytestmark = pytest.mark.integration

sweep = partial(sweeper.sweep, broker=RedisQueues())  # as a worker's upkeep gives it
LATER = 3600.0  # a pass "an hour from now": every record is stale, every deadline past


@pytest.fixture
def world(app, redis_client) -> Any:
    """A store with its own prefix and a messenger with its own queues (same Redis)."""
    svc = app.extensions["jobgate"]
    tag = uuid.uuid4().hex[:8]
    # A fixed dispatch window: jobs are dispatched (live) as they are created.
    store = Store(
        redis_client, prefix=f"sweep-{tag}", retention=600, open_grace=5, dispatch_window=100
    )
    messenger = CeleryMessenger(
        svc.celery, jobs_queue=f"sweep-jobs-{tag}", webhooks_queue=f"sweep-hooks-{tag}", inline=True
    )
    yield store, messenger
    redis_client.delete(messenger.jobs_queue, messenger.webhooks_queue)
    for key in redis_client.scan_iter(f"sweep-{tag}:*"):
        redis_client.delete(key)


def a_job(**extra: Any) -> dict[str, Any]:
    job_id = str(uuid.uuid4())
    return {
        "job_id": job_id,
        "task_id": job_id,
        "task": "demo.sleep",
        "partner_id": "ptn_x",
        "params": {"seconds": 0.5, "steps": 1},
        "created_at": utcnow(),
        **extra,
    }


def queued(store: Store, queue: str) -> list[dict[str, Any]]:
    """The task messages on ``queue``: headers plus decoded args and kwargs."""
    found = []
    for raw in store.redis.lrange(queue, 0, -1):
        envelope = json.loads(raw)
        args, kwargs, _ = json.loads(b64decode(envelope["body"]))
        found.append({**envelope["headers"], "args": args, "kwargs": kwargs})
    return found


def test_a_live_job_whose_message_is_nowhere_is_queued_again_once(world):
    store, messenger = world
    job = a_job()
    store.create_job(job)  # the record without its message: a crash took the message
    repairs = sweep(store, messenger, stale_after=30, now=time.time() + LATER)
    assert repairs == {"job_requeued": 1}
    [message] = queued(store, messenger.jobs_queue)
    assert (message["id"], message["task"]) == (job["job_id"], "demo.sleep")
    assert message["kwargs"] == job["params"]
    # Found queued now: a second pass leaves it alone.
    assert sweep(store, messenger, stale_after=30, now=time.time() + LATER) == {}
    assert store.redis.hget(store.key("repairs"), "job_requeued") == "1"


def test_a_queued_job_and_a_fresh_one_are_left_alone(world):
    store, messenger = world
    queue = messenger.jobs_queue
    waiting = a_job()
    store.create_job(
        waiting,
        message=(
            queue,
            messenger.envelope(
                "demo.sleep", waiting["task_id"], queue=queue, kwargs=waiting["params"]
            ),
        ),
    )
    store.create_job(a_job())  # no message, but younger than stale_after
    assert sweep(store, messenger, stale_after=30) == {}
    assert sweep(store, messenger, stale_after=30, now=time.time() + LATER) == {"job_requeued": 1}
    assert len(queued(store, queue)) == 2


def test_an_old_record_without_params_ends_failed_with_its_reason(world):
    store, messenger = world
    job = a_job()
    del job["params"]
    store.create_job(job)
    assert sweep(store, messenger, stale_after=30, now=time.time() + LATER) == {
        "job_failed_lost": 1
    }
    record = store.job(job["job_id"])
    assert record["status"] == "FAILURE" and record["error"].startswith("lost:")
    assert store.redis.zscore(store.key("live"), job["job_id"]) is None


def test_the_end_the_sweeper_gives_a_job_is_committed_to_its_row_first(world, app):
    """A job whose row exists (the gateway's) and whose Redis record lost its params: its
    ``lost`` end is the database's too, as every end is before it is announced."""
    from jobgate.ends import committed_end
    from jobgate.outbox import accept
    from jobgate.store import as_stored

    store, messenger = world
    db = app.extensions["jobgate"].db
    job = as_stored(a_job())
    accept(db, store.prefix, [job])
    store.create_job({k: v for k, v in job.items() if k != "params"}, committed=True)
    repairs = sweep(store, messenger, stale_after=30, now=time.time() + LATER, db=db)
    assert repairs == {"job_failed_lost": 1}
    end = committed_end(db, job["job_id"])
    assert end is not None and end["status"] == "FAILURE" and end["error"].startswith("lost:")
    assert store.job(job["job_id"])["finished_at"] == end["finished_at"]


def test_an_open_delivery_with_nothing_queued_is_queued_again_with_its_task_id(world):
    store, messenger = world
    task_id = delivery_task_id("job", str(uuid.uuid4()), "job.succeeded", "auto", 2)
    store.mark_open(task_id)
    assert sweep(store, messenger, stale_after=30, now=time.time() + LATER) == {
        "delivery_requeued": 1
    }
    [message] = queued(store, messenger.webhooks_queue)
    assert (message["id"], message["task"]) == (task_id, DELIVER_TASK)
    assert message["kwargs"] == {"retry": 2, "chain": "auto"}
    assert message["args"] == ["job", task_id.split(":")[2], "job.succeeded"]
    # Still open (until an attempt records it), and found queued by the next pass.
    assert store.redis.zscore(store.open_key, task_id) is not None
    assert sweep(store, messenger, stale_after=30, now=time.time() + LATER) == {}


def test_a_scheduled_retry_is_not_mistaken_for_a_lost_one(world):
    store, messenger = world
    task_id = delivery_task_id("job", str(uuid.uuid4()), "job.failed", "auto", 1)
    store.redis.zadd(
        store.due_key,
        {entry(DELIVER_TASK, task_id, queue=messenger.webhooks_queue): time.time() + 60},
    )
    store.mark_open(task_id, deadline=time.time() - 1)
    assert sweep(store, messenger, stale_after=30) == {}
    assert queued(store, messenger.webhooks_queue) == []


def test_ended_members_never_counted_complete_the_batch_with_its_event(world):
    store, messenger = world
    batch_id = str(uuid.uuid4())
    members = [a_job(batch_id=batch_id), a_job(batch_id=batch_id)]
    store.create_batch(
        {
            "batch_id": batch_id,
            "partner_id": "ptn_x",
            "callback_url": "https://hooks.example/b",
            "created_at": utcnow(),
            "total": 2,
            "completed": 0,
            "succeeded": 0,
            "failed": 0,
            "revoked": 0,
            "metadata": "{}",
        },
        members,
    )
    for job in members:  # ended, but the process died before counting them
        assert store.finish_job(job["job_id"], "SUCCESS", result={})
    assert sweep(store, messenger, stale_after=30, now=time.time() + LATER) == {
        "batch_member_counted": 2
    }
    record = batches.batch_record(store, batch_id)
    assert record["finished_at"] and (record["completed"], record["succeeded"]) == (2, 2)
    [message] = queued(store, messenger.webhooks_queue)
    assert message["args"] == ["batch", batch_id, "batch.completed"]
    assert store.redis.zscore(store.open_key, message["id"]) is not None
    assert store.redis.zscore(store.key("batches", "live"), batch_id) is None
    assert sweep(store, messenger, stale_after=30, now=time.time() + LATER) == {}


def test_due_entries_are_queued_once_however_many_workers_move_them(world):
    store, messenger = world
    queue = messenger.webhooks_queue
    due = [
        entry(
            DELIVER_TASK,
            f"whk:job:j{n}:job.failed:auto:1",
            queue=queue,
            args=["job", f"j{n}", "job.failed"],
            kwargs={"retry": 1, "chain": "auto"},
        )
        for n in range(50)
    ]
    store.redis.zadd(store.due_key, dict.fromkeys(due, time.time() - 1))
    later = entry(DELIVER_TASK, "whk:job:later:job.failed:auto:1", queue=queue)
    store.redis.zadd(store.due_key, {later: time.time() + 60})
    moved: list[int] = []
    movers = [
        threading.Thread(target=lambda: moved.append(move_due(store, messenger))) for _ in range(4)
    ]
    for mover in movers:
        mover.start()
    for mover in movers:
        mover.join()
    assert sum(moved) == 50
    ids = [message["id"] for message in queued(store, queue)]
    assert sorted(ids) == sorted(json.loads(row)["id"] for row in due)
    assert store.redis.zrange(store.due_key, 0, -1) == [later]


def test_an_open_fan_out_step_with_nothing_queued_is_queued_again(world):
    store, messenger = world
    task_id = fan_out_task_id("job", str(uuid.uuid4()), "job.succeeded")
    store.mark_open(task_id)
    assert sweep(store, messenger, stale_after=30, now=time.time() + LATER) == {
        "delivery_requeued": 1
    }
    [message] = queued(store, messenger.webhooks_queue)
    assert (message["id"], message["task"]) == (task_id, FAN_OUT_TASK)
    assert message["args"] == ["job", task_id.split(":")[2], "job.succeeded"]
