"""``jobgate.handoff`` against a real Redis, with a messenger that records what it would
send to a broker apart (RabbitMQ): the handed marks, the sweeper's re-sends, and the
start script's refusal of a job's second message. tests/faults/test_handoff.py kills
real processes with a real RabbitMQ."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from jobgate import handoff, lifecycle
from jobgate.due import entry
from jobgate.events import delivery_call, delivery_task_id
from jobgate.messages import AUTO_CHAIN, DELIVER_TASK
from jobgate.store import Store
from jobgate.sweeper import sweep
from jobgate.times import utcnow
from jobgate.webhooks.ledger import Deliveries
from tests.helpers import Recorder

pytestmark = pytest.mark.integration


@pytest.fixture
def world(redis_client) -> Any:
    tag = uuid.uuid4().hex[:8]
    store = Store(
        redis_client,
        prefix=f"handoff-{tag}",
        retention=600,
        open_grace=5,
        dispatch_window=100,
        handoff_grace=10,
    )
    yield store, Recorder()
    for key in redis_client.scan_iter(f"handoff-{tag}:*"):
        redis_client.delete(key)


def dispatched(store: Store, messenger: Recorder) -> str:
    job_id = str(uuid.uuid4())
    record = {
        "job_id": job_id,
        "task_id": job_id,
        "task": "demo.sleep",
        "partner_id": "ptn_x",
        "params": {"seconds": 0},
        "created_at": utcnow(),
    }
    lifecycle.queue_job(store, messenger, record)
    return job_id


def test_a_job_sent_and_marked_is_left_to_the_broker(world):
    store, messenger = world
    job_id = dispatched(store, messenger)
    [(task, options)] = messenger.sent
    record = store.job(job_id)
    assert record is not None and record["sent"] == record["send"]
    assert options["headers"] == {handoff.SEND_HEADER: record["send"]}
    assert sweep(store, messenger, stale_after=30, now=time.time() + 3600) == {}
    assert len(messenger.sent) == 1


def test_a_job_never_marked_is_sent_again_under_a_new_token_until_it_starts(world):
    store, messenger = world
    job_id = dispatched(store, messenger)
    store.redis.hdel(store.key("job", job_id), "sent")  # its sender died before the mark
    first = messenger.sent[0][1]["headers"][handoff.SEND_HEADER]
    assert sweep(store, messenger, stale_after=30, now=time.time()) == {}  # not stale yet
    assert sweep(store, messenger, stale_after=30, now=time.time() + 60) == {"job_requeued": 1}
    second = messenger.sent[1][1]["headers"][handoff.SEND_HEADER]
    assert second != first and store.job(job_id)["sent"] == second

    # Two messages: the old token's is refused, the last one's runs, once.
    assert store.start_job(job_id, "w1", send=first)[:2] == ("stale", 0)
    assert store.start_job(job_id, "w1", send=second)[:2] == (None, 1)
    store.redis.hdel(store.key("job", job_id), "sent")
    assert sweep(store, messenger, stale_after=30, now=time.time() + 60) == {}  # started
    assert not handoff.send_job(store, messenger, store.job(job_id))
    assert len(messenger.sent) == 2


def test_a_message_without_a_token_starts_the_job(world):
    """The Redis broker's messages (pushed by the scripts) carry no token."""
    store, messenger = world
    job_id = dispatched(store, messenger)
    assert store.start_job(job_id, "w1")[:2] == (None, 1)


def test_an_open_delivery_never_handed_is_sent_again_and_then_left(world):
    store, messenger = world
    job_id = str(uuid.uuid4())
    task_id, _, _ = delivery_call("job", job_id, "job.succeeded", AUTO_CHAIN, 0)
    handoff.opening(store, messenger, task_id)  # its sender died here, before the send
    deadline = store.redis.zscore(store.open_key, task_id)
    assert deadline == pytest.approx(time.time() + store.handoff_grace, abs=2)
    assert sweep(store, messenger, stale_after=30, now=time.time()) == {}
    assert sweep(store, messenger, stale_after=30, now=deadline + 1) == {"delivery_requeued": 1}
    [(name, options)] = messenger.sent
    assert (name, options["task_id"]) == (DELIVER_TASK, task_id)
    handed = store.redis.zscore(store.open_key, task_id)
    assert handed == pytest.approx(time.time() + store.handed_grace, abs=2)
    assert sweep(store, messenger, stale_after=30, now=deadline + 1) == {}

    # An attempt that fails unrecorded (its message acked) is due for the sweeper again.
    Deliveries(store).release(job_id, "token", task_id)
    back = store.redis.zscore(store.open_key, task_id)
    assert back == pytest.approx(time.time() + store.open_grace, abs=2)


def test_an_open_delivery_waiting_on_the_due_set_is_not_sent(world):
    store, messenger = world
    job_id = str(uuid.uuid4())
    task_id = delivery_task_id("job", job_id, "job.succeeded", AUTO_CHAIN, 1)
    _, args, kwargs = delivery_call("job", job_id, "job.succeeded", AUTO_CHAIN, 1)
    row = entry(DELIVER_TASK, task_id, queue="webhooks", args=args, kwargs=kwargs)
    store.redis.zadd(store.due_key, {row: time.time() + 600})
    store.mark_open(task_id, time.time() - 1)
    assert sweep(store, messenger, stale_after=30) == {}
    assert messenger.sent == []
    assert store.redis.zscore(store.open_key, task_id) > time.time()


def test_a_started_jobs_committed_end_that_redis_never_took_is_recorded(world, database_url):
    """With a broker apart, a worker whose end retries ran out has its message acked: no
    run comes again. The sweeper finds the end committed to the row, records it and sends
    its webhook, once."""
    from jobgate.db import Database
    from jobgate.ends import commit_end
    from jobgate.outbox import accept
    from jobgate.store import as_stored

    store, messenger = world
    db = Database(database_url)
    job_id = str(uuid.uuid4())
    record = as_stored(
        {
            "job_id": job_id,
            "task_id": job_id,
            "task": "demo.sleep",
            "partner_id": "ptn_x",
            "params": {"seconds": 0},
            "callback_url": "https://partner.example/hook",
            "created_at": utcnow(),
        }
    )
    accept(db, store.prefix, [record])
    lifecycle.queue_job(store, messenger, record)
    assert store.start_job(job_id, "w1")[0] is None
    end = {"status": "SUCCESS", "finished_at": utcnow(), "result": {"ok": 1}}
    commit_end(db, job_id, end)  # committed; then Redis refused the end for too long
    sent = len(messenger.sent)
    later = time.time() + 3600
    assert sweep(store, messenger, stale_after=30, now=later, db=db) == {"job_end_recorded": 1}
    recorded = store.job(job_id)
    assert (recorded["status"], recorded["result"]) == ("SUCCESS", {"ok": 1})
    assert recorded["finished_at"] == end["finished_at"]
    [(task, _)] = messenger.sent[sent:]
    assert task == DELIVER_TASK  # job.succeeded, built from the committed end
    assert sweep(store, messenger, stale_after=30, now=later, db=db) == {}
    db.dispose()


class Refusing(Recorder):
    """A broker apart that is down: every send raises."""

    def send(self, name: str, **options: Any) -> None:
        raise ConnectionError("the broker is down")


def test_a_send_the_broker_refuses_leaves_the_job_to_the_sweeper(world):
    """An accepted job is never ended for an outage: its send fails, it stays dispatched
    and unmarked, and the sweeper sends it once the broker is back."""
    store, messenger = world
    job_id = dispatched(store, Refusing())  # no exception reaches the submit
    record = store.job(job_id)
    assert "status" not in record and record.get("sent") != record.get("send")
    repairs = sweep(store, messenger, stale_after=30, now=time.time() + 3600)
    assert repairs == {"job_requeued": 1}
    [(task, options)] = messenger.sent
    assert options["task_id"] == job_id and store.job(job_id)["sent"] == store.job(job_id)["send"]


def test_the_database_down_does_not_stop_the_resends(world, tmp_path):
    """The sweeper reads committed ends from the database; unreachable, the re-sends that
    need only Redis still happen."""
    from jobgate.db import Database

    store, messenger = world
    job_id = dispatched(store, Refusing())
    started = dispatched(store, Refusing())
    store.start_job(started, "w1")  # started: its end is looked for in the database
    down = Database("postgresql+psycopg://postgres@127.0.0.1:1/none")
    repairs = sweep(store, messenger, stale_after=30, now=time.time() + 3600, db=down)
    assert repairs == {"job_requeued": 1}
    assert [options["task_id"] for _, options in messenger.sent] == [job_id]
    down.dispose()


def test_one_partners_unsent_jobs_do_not_hold_back_anothers_resend(world):
    """The sweeper is one loop for every partner: A's many jobs that were never handed to
    the broker and B's one are all sent again in the same pass (the window bounds the live
    jobs a pass looks at, below its LIMIT), so B waits for no pass of its own."""
    store, messenger = world

    def unsent(partner: str) -> str:
        job_id = str(uuid.uuid4())
        record = {
            "job_id": job_id,
            "task_id": job_id,
            "task": "demo.sleep",
            "partner_id": partner,
            "params": {"seconds": 0},
            "created_at": utcnow(),
        }
        lifecycle.queue_job(store, Refusing(), record)  # dispatched, never handed over
        return job_id

    flood = [unsent("ptn_a") for _ in range(60)]
    late = unsent("ptn_b")  # the newest: the last the pass reaches
    repairs = sweep(store, messenger, stale_after=30, now=time.time() + 3600)
    assert repairs == {"job_requeued": 61}
    sent = {options["task_id"] for _, options in messenger.sent}
    assert late in sent and set(flood) <= sent
