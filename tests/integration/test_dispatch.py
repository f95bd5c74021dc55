"""Fair dispatch, per-partner limits and delayed jobs, with real workers (issue 24).

Each test has a world of its own (key prefix and queues), so its dispatcher sees only
its own partners; starts are read from the job records, in the order the one job-pool
process of the worker took them.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import WorkerProcess, gateway_for, wait_for_status, wait_until

pytestmark = pytest.mark.integration

SLEEP = {"task": "demo.sleep", "params": {"seconds": 0.2, "steps": 1}}


@pytest.fixture
def world(settings, redis_client):
    """Settings of a world of this test's own."""
    tag = f"dispatch-{uuid.uuid4().hex[:8]}"
    return settings.with_overrides(queue_jobs=tag, queue_webhooks=tag + "-h", key_prefix=tag)


def add_partner(client, admin_headers, name, **limits):
    created = client.post("/v1/partners", json={"name": name}, headers=admin_headers)
    partner = created.get_json()
    partner["headers"] = {"Authorization": f"Bearer {partner['api_key']}"}
    if limits:
        changed = client.patch(
            f"/v1/partners/{partner['id']}", json={"limits": limits}, headers=admin_headers
        )
        assert changed.status_code == 200, changed.get_json()
    return partner


def submit(client, partner, **extra):
    response = client.post("/v1/jobs", json={**SLEEP, **extra}, headers=partner["headers"])
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def start_order(store, job_ids):
    """Job ids by the time their run started (all must have started)."""
    records = dict(zip(job_ids, store.jobs(job_ids), strict=True))
    return sorted(job_ids, key=lambda job_id: records[job_id]["started_at"])


def all_ended(client, store, job_ids, timeout=60.0):
    wait_until(
        lambda: all(
            r is not None and r.get("finished_at") is not None for r in store.jobs(job_ids)
        ),
        timeout,
        0.1,
        f"{len(job_ids)} jobs to end",
    )


def test_a_backlog_does_not_hold_back_another_partner(world, admin_headers, workers):
    """A queues 20 jobs, then B one: between B's submit and B's start at most one of A's
    jobs starts (one already handed to the one-process pool's window), not all twenty."""
    client, _, svc = gateway_for(world, admin_headers["Authorization"].split()[1])
    a = add_partner(client, admin_headers, "a")
    b = add_partner(client, admin_headers, "b")
    workers.append(WorkerProcess(world, concurrency=1, name="fair").start())
    a_jobs = [submit(client, a)["job_id"] for _ in range(20)]
    b_job = submit(client, b)["job_id"]
    assert wait_for_status(client, b_job, b["headers"], timeout=30)["status"] == "SUCCESS"
    b_record = svc.store.job(b_job)
    between = [
        r["job_id"]
        for r in svc.store.jobs(a_jobs)
        if r.get("started_at") and b_record["created_at"] < r["started_at"] < b_record["started_at"]
    ]
    assert len(between) <= 1, f"{len(between)} of A's jobs started while B waited"
    all_ended(client, svc.store, a_jobs)
    # Within A: submission order.
    assert [j for j in start_order(svc.store, [*a_jobs, b_job]) if j != b_job] == a_jobs


def test_weights_share_the_pool(world, admin_headers, workers):
    """With A at weight 3 and B at weight 1, both backlogged, A gets three starts of four."""
    client, _, svc = gateway_for(world, admin_headers["Authorization"].split()[1])
    a = add_partner(client, admin_headers, "a", weight=3)
    b = add_partner(client, admin_headers, "b")
    # No worker yet: the window is 0 and every job waits in its partner's queue.
    a_jobs = [submit(client, a, params={"seconds": 0.05, "steps": 1})["job_id"] for _ in range(24)]
    b_jobs = [submit(client, b, params={"seconds": 0.05, "steps": 1})["job_id"] for _ in range(8)]
    assert svc.store.waiting(a["id"])["queued"] == 24
    workers.append(WorkerProcess(world, concurrency=1, name="weights").start())
    all_ended(client, svc.store, a_jobs + b_jobs)
    first = start_order(svc.store, a_jobs + b_jobs)[:16]
    from_a = sum(1 for job_id in first if job_id in set(a_jobs))
    assert 11 <= from_a <= 13, f"A had {from_a} of the first 16 starts (12 expected)"


def test_three_partners_take_turns(world, admin_headers, workers):
    client, _, svc = gateway_for(world, admin_headers["Authorization"].split()[1])
    partners = [add_partner(client, admin_headers, name) for name in ("a", "b", "c")]
    fast = {"params": {"seconds": 0, "steps": 1}}
    jobs = {p["id"]: [submit(client, p, **fast)["job_id"] for _ in range(6)] for p in partners}
    workers.append(WorkerProcess(world, concurrency=1, name="three").start())
    every = [job_id for ids in jobs.values() for job_id in ids]
    all_ended(client, svc.store, every)
    owner = {job_id: pid for pid, ids in jobs.items() for job_id in ids}
    order = [owner[job_id] for job_id in start_order(svc.store, every)]
    for start in range(0, 18, 3):  # each round of three starts holds each partner once
        assert len(set(order[start : start + 3])) == 3, order


def test_priority_first_within_a_partner(world, admin_headers, workers):
    client, _, svc = gateway_for(world, admin_headers["Authorization"].split()[1])
    a = add_partner(client, admin_headers, "a")
    low = [submit(client, a, priority=1)["job_id"] for _ in range(3)]
    high = submit(client, a, priority=9)["job_id"]
    default = submit(client, a)["job_id"]
    view = client.get(f"/v1/jobs/{high}", headers=a["headers"]).get_json()
    assert view["priority"] == 9 and view["status"] == "PENDING"
    workers.append(WorkerProcess(world, concurrency=1, name="priority").start())
    all_ended(client, svc.store, [*low, high, default])
    assert start_order(svc.store, [*low, high, default]) == [high, default, *low]


def test_max_running_jobs_holds_and_others_go_on(world, admin_headers, workers):
    """A partner at max_running_jobs=1 never has two jobs running on a two-process pool,
    while another partner's job runs beside them."""
    client, _, svc = gateway_for(world, admin_headers["Authorization"].split()[1])
    a = add_partner(client, admin_headers, "a", max_running_jobs=1)
    b = add_partner(client, admin_headers, "b")
    detail = client.get(f"/v1/partners/{a['id']}", headers=admin_headers).get_json()
    assert detail["limits"]["max_running_jobs"] == 1
    workers.append(WorkerProcess(world, concurrency=2, name="maxrun").start())
    a_jobs = [submit(client, a, params={"seconds": 0.4, "steps": 1})["job_id"] for _ in range(4)]
    b_job = submit(client, b)["job_id"]
    assert wait_for_status(client, b_job, b["headers"], timeout=30)["status"] == "SUCCESS"
    a_done = svc.store.jobs(a_jobs)
    assert sum(1 for r in a_done if r and r.get("finished_at")) <= 1, "B waited for A's jobs"
    all_ended(client, svc.store, a_jobs)
    spans = sorted((r["started_at"], r["finished_at"]) for r in svc.store.jobs(a_jobs))
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, f"two of A's jobs ran at once: {spans}"
    # Raising the limit lets waiting jobs start without waiting for an end.
    more = [submit(client, a, params={"seconds": 1, "steps": 1})["job_id"] for _ in range(2)]
    client.patch(
        f"/v1/partners/{a['id']}",
        json={"limits": {"max_running_jobs": None}},
        headers=admin_headers,
    )
    wait_until(
        lambda: all(r.get("started_at") for r in svc.store.jobs(more)),
        10,
        message="both jobs running at once",
    )


def test_max_queued_jobs_refuses_and_creates_nothing(world, admin_headers):
    """No worker: jobs wait. Past max_queued_jobs a submit (or a batch) is 429
    limit_exceeded, creates nothing, and leaves its Idempotency-Key free; another partner
    is not affected."""
    client, _, svc = gateway_for(world, admin_headers["Authorization"].split()[1])
    a = add_partner(client, admin_headers, "a", max_queued_jobs=3)
    b = add_partner(client, admin_headers, "b")
    for _ in range(3):
        submit(client, a)
    headers = {**a["headers"], "Idempotency-Key": "k-1"}
    refused = client.post("/v1/jobs", json=SLEEP, headers=headers)
    assert refused.status_code == 429
    error = refused.get_json()["error"]
    assert error["code"] == "limit_exceeded"
    assert error["details"] == {"limit": "max_queued_jobs", "value": 3}
    assert int(refused.headers["Retry-After"]) > 0
    over = client.post("/v1/batches", json={"jobs": [SLEEP, SLEEP]}, headers=a["headers"])
    assert over.status_code == 429
    assert svc.store.waiting(a["id"])["queued"] == 3
    submit(client, b)
    # The key was not taken: with room again, the same key creates the job.
    client.patch(
        f"/v1/partners/{a['id']}", json={"limits": {"max_queued_jobs": 4}}, headers=admin_headers
    )
    accepted = client.post("/v1/jobs", json=SLEEP, headers=headers)
    assert accepted.status_code == 202, accepted.get_json()
    assert svc.store.waiting(a["id"])["queued"] == 4


def test_limits_are_checked(world, admin_headers):
    client, _, _ = gateway_for(world, admin_headers["Authorization"].split()[1])
    a = add_partner(client, admin_headers, "a")
    for limits in ({"weight": 0}, {"max_running_jobs": -1}, {"nope": 1}, {"weight": "2"}):
        answer = client.patch(
            f"/v1/partners/{a['id']}", json={"limits": limits}, headers=admin_headers
        )
        assert answer.status_code == 422, limits
        assert answer.get_json()["error"]["details"]["limits"]
    assert client.patch(f"/v1/partners/{a['id']}", json={"limits": {}}, headers=a["headers"])
    missing = client.patch("/v1/partners/ptn_none", json={"limits": {}}, headers=admin_headers)
    assert missing.status_code == 404


def test_revoked_while_waiting_never_starts(world, admin_headers, workers):
    client, _, svc = gateway_for(world, admin_headers["Authorization"].split()[1])
    a = add_partner(client, admin_headers, "a")
    job = submit(client, a)["job_id"]
    revoked = client.post(f"/v1/jobs/{job}/revoke", json={}, headers=admin_headers)
    assert revoked.get_json()["status"] == "REVOKED", revoked.get_json()
    assert svc.store.waiting(a["id"])["queued"] == 0
    after = submit(client, a)["job_id"]
    workers.append(WorkerProcess(world, concurrency=1, name="revoked").start())
    assert wait_for_status(client, after, a["headers"], timeout=30)["status"] == "SUCCESS"
    record = svc.store.job(job)
    assert record["status"] == "REVOKED" and not record.get("started_at")


def test_delayed_job_waits_and_survives_a_worker_restart(world, admin_headers, workers):
    client, _, svc = gateway_for(world, admin_headers["Authorization"].split()[1])
    a = add_partner(client, admin_headers, "a")
    first = WorkerProcess(world, concurrency=1, name="delay1").start()
    workers.append(first)
    submitted = time.time()
    job = submit(client, a, delay_seconds=4)["job_id"]
    at = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    by_time = submit(client, a, run_at=at)["job_id"]
    view = client.get(f"/v1/jobs/{job}", headers=a["headers"]).get_json()
    assert view["status"] == "PENDING" and view["run_at"]
    assert svc.store.waiting(a["id"])["delayed"] == 2
    first.stop()
    workers.append(WorkerProcess(world, concurrency=1, name="delay2").start())
    for job_id in (job, by_time):
        assert wait_for_status(client, job_id, a["headers"], timeout=30)["status"] == "SUCCESS"
    started = datetime.fromisoformat(svc.store.job(job)["started_at"].replace("Z", "+00:00"))
    assert started.timestamp() >= submitted + 4 - 0.01
    assert svc.store.job(by_time)["started_at"] >= svc.store.job(by_time)["run_at"]


def test_delayed_job_can_be_revoked(world, admin_headers):
    client, _, svc = gateway_for(world, admin_headers["Authorization"].split()[1])
    a = add_partner(client, admin_headers, "a")
    job = submit(client, a, delay_seconds=600)["job_id"]
    revoked = client.post(f"/v1/jobs/{job}/revoke", json={}, headers=admin_headers)
    assert revoked.get_json()["status"] == "REVOKED"
    assert svc.store.waiting(a["id"])["delayed"] == 0
    assert svc.store.redis.zscore(svc.store.key("delayed"), job) is None


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"delay_seconds": -1}, "delay_seconds"),
        ({"delay_seconds": 30 * 86400 + 1}, "delay_seconds"),
        ({"run_at": "2020-01-01T00:00:00Z"}, "run_at"),
        ({"run_at": (datetime.now(UTC) + timedelta(days=31)).isoformat()}, "run_at"),
        ({"run_at": "2030-01-01T00:00:00"}, "run_at"),  # no offset
        ({"delay_seconds": 5, "run_at": "2030-01-01T00:00:00Z"}, "run_at"),
        ({"priority": 10}, "priority"),
    ],
)
def test_bad_schedules_are_422(client, partner, extra, field):
    answer = client.post("/v1/jobs", json={**SLEEP, **extra}, headers=partner["headers"])
    assert answer.status_code == 422
    assert field in answer.get_json()["error"]["details"]


RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


def test_dispatch_with_rabbitmq_as_the_broker(world, admin_headers, workers):
    """With a broker apart from the store (RabbitMQ), dispatched jobs are sent from the
    step that dispatched them; partners still take turns, and every job runs once."""
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        pytest.skip("no RabbitMQ on 127.0.0.1:5672")
    own = world.with_overrides(broker_url=RABBITMQ)
    client, _, svc = gateway_for(own, admin_headers["Authorization"].split()[1])
    assert not svc.messenger.inline
    a = add_partner(client, admin_headers, "a")
    b = add_partner(client, admin_headers, "b")
    workers.append(WorkerProcess(own, concurrency=1, name="amqp").start())
    fast = {"params": {"seconds": 0.05, "steps": 1}}
    a_jobs = [submit(client, a, **fast)["job_id"] for _ in range(12)]
    b_job = submit(client, b, **fast)["job_id"]
    all_ended(client, svc.store, [*a_jobs, b_job])
    assert {r["status"] for r in svc.store.jobs([*a_jobs, b_job])} == {"SUCCESS"}
    assert all(int(r["runs"]) == 1 for r in svc.store.jobs([*a_jobs, b_job]))
    assert start_order(svc.store, [*a_jobs, b_job]).index(b_job) <= 3
    assert not any(svc.store.waiting(a["id"]).values())


def test_an_end_dispatches_one_job_and_the_window_holds(world, redis_client):
    """With a window of 2 and a backlog, each end hands Celery's queue one job more: the
    live set and the queue never grow past the window (the end's own script dispatches
    with the window, not with its other arguments)."""
    from jobgate.store import Store
    from jobgate.times import utcnow

    store = Store(redis_client, prefix=world.key_prefix, dispatch_window=2)
    queue = world.queue_jobs
    ids = [str(uuid.uuid4()) for _ in range(6)]
    for job_id in ids:
        record = {"job_id": job_id, "task": "demo.sleep", "partner_id": "p", "created_at": utcnow()}
        store.create_job(record, (queue, f"message-{job_id}"))
    assert redis_client.zcard(store.key("live")) == 2 and redis_client.llen(queue) == 2
    assert store.waiting("p") == {"queued": 4, "delayed": 0, "running": 2}
    ended = store.finish_job(ids[0], "SUCCESS", result=None)
    assert ended is not None and ended["dispatched"] == []
    assert redis_client.zcard(store.key("live")) == 2 and redis_client.llen(queue) == 3
    assert store.waiting("p") == {"queued": 3, "delayed": 0, "running": 2}
    scores = redis_client.zrange(store.key("live"), 0, -1, withscores=True)
    assert all(abs(score - time.time()) < 60 for _, score in scores), scores
    redis_client.delete(queue)
