"""A real gateway, worker and receiver on each database: every kind of job ends, is
archived, and reads the same from Redis and from the database once Redis forgot it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from config import Settings
from jobgate import history
from tests.conftest import ADMIN_KEY
from tests.helpers import WorkerProcess, gateway_for, wait_for_status, wait_until
from tests.webhooks.conftest import Receiver, Slow


@pytest.fixture(scope="module")
def world(settings: Settings, redis_client: Any, db_url: str) -> Iterator[SimpleNamespace]:
    """A gateway and a ``jobgate worker`` on ``db_url``, in a key prefix and queues of
    their own (the session's worker never takes their messages)."""
    tag = f"e2e-{uuid.uuid4().hex[:8]}"
    own = settings.with_overrides(
        database_url=db_url, key_prefix=tag, queue_jobs=f"{tag}-jobs", queue_webhooks=f"{tag}-h"
    )
    client, partner, svc = gateway_for(own, ADMIN_KEY)
    worker = WorkerProcess(own, concurrency=2, name=tag).start()
    receiver = Receiver()
    yield SimpleNamespace(client=client, partner=partner, svc=svc, receiver=receiver)
    receiver.stop()
    worker.stop()


def test_every_job_reads_the_same_from_redis_and_from_the_database(world) -> None:
    client, partner, svc = world.client, world.partner, world.svc
    headers = partner["headers"]
    hook = world.receiver.url
    bodies = [
        {"task": "demo.sleep", "params": {"seconds": 0, "steps": 2}, "callback_url": hook},
        {"task": "demo.fail", "params": {"message": "no"}, "callback_url": hook},
        {"task": "demo.sleep", "params": {"seconds": 0}, "metadata": {"order": 1}},
        {"task": "texts.embed", "params": {"texts": ["a", "b"], "dimensions": 8}},
    ]
    ids = []
    for body in bodies:
        response = client.post("/v1/jobs", json=body, headers=headers)
        assert response.status_code == 202, response.get_json()
        ids.append(response.get_json()["job_id"])
    batch = client.post(
        "/v1/batches",
        json={"jobs": [{"task": "demo.sleep", "params": {"seconds": 0}}] * 2, "callback_url": hook},
        headers=headers,
    ).get_json()
    for job_id in ids:
        wait_for_status(client, job_id, headers, timeout=30)

    def settled() -> bool:
        views = [client.get(f"/v1/jobs/{j}", headers=headers).get_json() for j in ids]
        done = client.get(f"/v1/batches/{batch['batch_id']}", headers=headers).get_json()
        return done["status"] == "COMPLETED" and all(
            v["webhook"]["state"] in ("none", "delivered") for v in views
        )

    wait_until(settled, 30, message="every job ended and its webhook delivered")
    from_redis = {j: client.get(f"/v1/jobs/{j}", headers=headers).get_json() for j in ids}
    batch_from_redis = client.get(f"/v1/batches/{batch['batch_id']}", headers=headers).get_json()

    store = svc.store

    def archived() -> bool:
        rows = history.jobs(svc.db, ids)
        return all(rows.get(j) == store.job(j) for j in ids) and (
            (history.batch(svc.db, batch["batch_id"]) or {}).get("finished_at")
        )

    wait_until(archived, 30, message="the worker's archiver to catch up")
    # The cache expires: drop every key Redis holds for these jobs and the batch.
    for key in store.redis.scan_iter(f"{store.prefix}:*"):
        if any(j in key for j in [*ids, batch["batch_id"]]) or ":batch:" in key:
            store.redis.delete(key)
    for job_id in ids:
        assert store.job(job_id) is None
        from_db = client.get(f"/v1/jobs/{job_id}", headers=headers).get_json()
        assert from_db == from_redis[job_id]
    batch_from_db = client.get(f"/v1/batches/{batch['batch_id']}", headers=headers).get_json()
    assert batch_from_db == batch_from_redis
    listed = client.get("/v1/jobs?limit=100", headers=headers).get_json()["jobs"]
    assert {job["job_id"] for job in listed} >= set(ids)
    attempts = history.attempts(svc.db, ids[0])
    assert [a["outcome"] for a in attempts] == ["delivered"]
    logged = client.get(f"/v1/jobs/{ids[0]}/deliveries", headers=headers).get_json()
    assert logged["deliveries"] == attempts and logged["webhook"]["state"] == "delivered"
    # A redelivery of a job only the database holds: the same id arrives again, signed.
    before = len(world.receiver.requests)
    again = client.post(f"/v1/jobs/{ids[0]}/redeliver", headers=headers)
    assert again.status_code == 202, again.get_json()
    [request] = world.receiver.wait_for(before + 1)[before:]
    assert request.webhook_id == again.get_json()["webhook_id"]
    request.verify(partner["webhook_secret"])


def test_a_jobs_row_keeps_its_run_and_worker_from_the_end_alone(world) -> None:
    """The end commits the run's start, count and worker with the status: a row whose
    record Redis then loses (an old primary discarding its writes) still says who ran it
    and how often. Read while its webhook's first attempt is held by the receiver, before
    anything is on the archive stream for the archiver to copy."""
    client, partner, svc = world.client, world.partner, world.svc
    world.receiver.answer(Slow(2.0))
    job_id = client.post(
        "/v1/jobs",
        json={
            "task": "demo.sleep",
            "params": {"seconds": 0},
            "callback_url": world.receiver.url,
        },
        headers=partner["headers"],
    ).get_json()["job_id"]
    wait_until(lambda: world.receiver.held >= 1, 30, message="the first attempt held")
    row = history.job(svc.db, job_id) or {}
    assert row.get("status") == "SUCCESS", row
    assert row.get("runs") == "1" and row.get("worker"), row
    assert row.get("started_at") and row["started_at"] <= row["finished_at"]
