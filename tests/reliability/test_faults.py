"""Injected faults: a worker SIGKILLed mid-job, a receiver that is down, Redis restarted.

Each test runs its own worker on queues of its own, so the fault never reaches the
session's worker, and checks what the issue promises: the job finishes once, exactly one
terminal webhook-id arrives (duplicates of that id are counted, not failed), every
webhook arrives with its attempts recorded, and queued jobs and records survive Redis.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import redis

from config import Settings
from jobgate.events import webhook_id
from tests.helpers import WorkerProcess, gateway_for, job_status, wait_for_status, wait_until
from tests.reliability.conftest import OwnRedis, WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

# Figures each test reports (pytest -s shows them; docs/reliability.md quotes a run).
FIGURES: dict[str, Any] = {}


def own_queues(settings: Settings, name: str, **changes: Any) -> Settings:
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    return settings.with_overrides(
        queue_jobs=tag, queue_webhooks=tag + "-hooks", key_prefix=tag, **changes
    )


def submit(client, partner, body: dict[str, Any]) -> str:
    response = client.post("/v1/jobs", json=body, headers=partner["headers"])
    assert response.status_code == 202, response.get_json()
    return response.get_json()["job_id"]


def deliveries(client, partner, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}/deliveries", headers=partner["headers"])
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def unacked_since(redis_client: redis.Redis, job_id: str) -> float | None:
    """When the broker handed out the job's message, if it is still unacknowledged."""
    for tag, raw in redis_client.hgetall("unacked").items():
        if job_id in raw:
            return redis_client.zscore("unacked_index", tag)
    return None


def test_worker_sigkilled_mid_job_finishes_once_with_one_terminal_webhook(
    settings, redis_client, receiver: WebhookReceiver, workers
):
    kill_settings = own_queues(settings, "kill", visibility_timeout=3)
    client, partner, _ = gateway_for(kill_settings, settings.admin_keys[0])
    receiver.secrets = [partner["webhook_secret"]]
    doomed = WorkerProcess(kill_settings, concurrency=1, name="doomed").start()
    workers.append(doomed)
    job_id = submit(
        client,
        partner,
        {"task": "demo.sleep", "params": {"seconds": 2, "steps": 4}, "callback_url": receiver.url},
    )
    wait_until(
        lambda: job_status(client, job_id, partner["headers"])["status"] == "PROCESSING",
        20,
        0.02,
        "the job to be running",
    )
    doomed.kill()
    killed = job_status(client, job_id, partner["headers"])
    assert killed["status"] == "PROCESSING" and killed["finished_at"] is None

    # kombu re-queues an unacked message once it is older than the visibility timeout,
    # on a worker's start and on its periodic sweep: start the heir past that point.
    handed_out = unacked_since(redis_client, job_id)
    assert handed_out is not None, "the killed worker's message must still be unacked"
    wait_until(
        lambda: time.time() > handed_out + kill_settings.visibility_timeout + 0.5,
        10,
        0.1,
        "the message to outlive the visibility timeout",
    )
    workers.append(WorkerProcess(kill_settings, concurrency=1, name="heir").start())

    done = wait_for_status(client, job_id, partner["headers"], timeout=30)
    assert done["status"] == "SUCCESS"
    assert done["result"] == {"slept": 2.0, "steps": 4}
    wait_until(lambda: receiver.terminal_ids(job_id), 20, 0.05, "the terminal webhook")
    # Quiet: nothing left queued or unacked for this job, its delivery recorded.
    wait_until(
        lambda: (
            unacked_since(redis_client, job_id) is None
            and redis_client.llen(kill_settings.queue_jobs) == 0
            and redis_client.llen(kill_settings.queue_webhooks) == 0
            and deliveries(client, partner, job_id)["webhook"]["state"] == "delivered"
        ),
        20,
        0.1,
        "the job and its webhook to settle",
    )

    ids = receiver.terminal_ids(job_id)
    assert list(ids) == [webhook_id(job_id, "job.succeeded")], ids
    events = [d.payload["type"] for d in receiver.accepted(job_id)]
    assert set(events) == {"job.succeeded"}
    record = redis_client.hgetall(f"{kill_settings.key_prefix}:job:{job_id}")
    assert record["status"] == "SUCCESS" and record["finished_at"] == done["finished_at"]
    FIGURES["sigkill"] = {
        "terminal_ids": len(ids),
        "deliveries": sum(ids.values()),
        "duplicates": sum(ids.values()) - len(ids),
    }
    print("sigkill:", FIGURES["sigkill"])


def test_receiver_down_then_up_gets_every_webhook_with_attempts_recorded(
    settings, receiver: WebhookReceiver, workers
):
    down_settings = own_queues(
        settings, "down", webhook_retry_delays=(0.3, 0.6, 1.2, 2.4, 4.8, 4.8)
    )
    client, partner, _ = gateway_for(down_settings, settings.admin_keys[0])
    receiver.secrets = [partner["webhook_secret"]]
    receiver.stop()
    workers.append(WorkerProcess(down_settings, concurrency=2, name="down").start())
    job_ids = [
        submit(
            client,
            partner,
            {
                "task": "demo.sleep",
                "params": {"seconds": 0},
                "callback_url": receiver.url,
                "metadata": {"n": n},
            },
        )
        for n in range(6)
    ]

    def failed_twice(job_id: str) -> bool:
        tries = deliveries(client, partner, job_id)["deliveries"]
        return len(tries) >= 2 and all(t["status_code"] is None and t["error"] for t in tries)

    wait_until(
        lambda: all(failed_twice(j) for j in job_ids),
        20,
        0.1,
        "two refused attempts per webhook while the receiver is down",
    )
    assert receiver.deliveries == []
    receiver.start()
    wait_until(
        lambda: all(receiver.terminal_ids(j) for j in job_ids),
        30,
        0.1,
        "every webhook after the receiver came back",
    )

    attempts = 0
    duplicates = 0
    for job_id in job_ids:
        wait_until(
            lambda j=job_id: deliveries(client, partner, j)["webhook"]["state"] == "delivered",
            10,
            0.05,
            "the delivery to be recorded",
        )
        log = deliveries(client, partner, job_id)
        tries = log["deliveries"]
        assert [t["attempt"] for t in tries] == list(range(1, len(tries) + 1))
        assert len(tries) >= 3 and log["webhook"]["attempts"] == len(tries)
        assert tries[-1]["status_code"] == 200 and tries[-1]["error"] is None
        assert all(t["status_code"] is None for t in tries[:-1])
        assert {t["webhook_id"] for t in tries} == {webhook_id(job_id, "job.succeeded")}
        ids = receiver.terminal_ids(job_id)
        assert list(ids) == [webhook_id(job_id, "job.succeeded")]
        attempts += len(tries)
        duplicates += sum(ids.values()) - 1
        assert job_status(client, job_id, partner["headers"])["webhook"] == {
            "state": "delivered",
            "attempts": len(tries),
        }
    FIGURES["receiver_down"] = {
        "webhooks": len(job_ids),
        "received": len(job_ids),
        "attempts": attempts,
        "duplicates": duplicates,
    }
    print("receiver down:", FIGURES["receiver_down"])


def test_redis_restart_keeps_queued_jobs_and_records_and_answers_503_meanwhile(
    settings, fresh_own_redis: OwnRedis, workers
):
    own = own_queues(settings.with_overrides(redis_url=fresh_own_redis.url), "restart")
    client, partner, _ = gateway_for(own, settings.admin_keys[0])
    job_ids = [
        submit(
            client,
            partner,
            {"task": "texts.embed", "params": {"texts": [f"text {n}"], "dimensions": 8}},
        )
        for n in range(5)
    ]
    store = fresh_own_redis.client()
    before = {j: store.hgetall(f"{own.key_prefix}:job:{j}") for j in job_ids}
    assert store.zcard(f"{own.key_prefix}:waiting:{partner['id']}") == len(job_ids)

    fresh_own_redis.stop()
    outage: dict[int, int] = {}
    try:
        # A submit is kept once its row is committed: the database answers, so it is
        # accepted, and the relay queues it when Redis is back. (With a rate limit or an
        # Idempotency-Key, Redis is asked first, and the answer is 503.)
        kept = client.post("/v1/jobs", json={"task": "demo.sleep"}, headers=partner["headers"])
        assert kept.status_code == 202, kept.get_json()
        with_key = client.post(
            "/v1/jobs",
            json={"task": "demo.sleep"},
            headers={**partner["headers"], "Idempotency-Key": "during-the-outage"},
        )
        assert with_key.status_code == 503, with_key.get_json()
        for method, path, body in (
            # (Listings page from the database, which still answers: not part of this.)
            ("get", f"/v1/jobs/{job_ids[0]}", None),
            ("get", f"/v1/jobs/{job_ids[0]}/deliveries", None),
            ("get", "/readyz", None),
        ):
            response = getattr(client, method)(path, json=body, headers=partner["headers"])
            outage[response.status_code] = outage.get(response.status_code, 0) + 1
            assert response.status_code == 503, (path, response.status_code)
            if path != "/readyz":
                assert response.get_json()["error"]["code"] == "unavailable"
        # A key the gateway has not seen cannot be checked: 503, never a 401 or a 500.
        unknown = client.get("/v1/tasks", headers={"Authorization": "Bearer jgp_unseen"})
        assert unknown.status_code == 503
        assert unknown.get_json()["error"]["code"] == "unavailable"
        # The catalog needs no Redis once the caller's key is known (auth cache): served.
        catalog = client.get("/v1/tasks", headers=partner["headers"])
        assert catalog.status_code == 200
        assert "texts.embed" in {task["name"] for task in catalog.get_json()}
    finally:
        fresh_own_redis.start()

    wait_until(
        lambda: client.get(f"/v1/jobs/{job_ids[0]}", headers=partner["headers"]).status_code == 200,
        10,
        0.1,
        "the gateway to reconnect",
    )
    assert {j: store.hgetall(f"{own.key_prefix}:job:{j}") for j in job_ids} == before
    assert store.zcard(f"{own.key_prefix}:waiting:{partner['id']}") == len(job_ids)

    workers.append(WorkerProcess(own, concurrency=2, name="restart").start())
    for job_id in job_ids:
        done = wait_for_status(client, job_id, partner["headers"], timeout=30)
        assert done["status"] == "SUCCESS", done
        assert len(done["result"]["embeddings"][0]) == 8
    # The job accepted during the outage, relayed from the database.
    relayed = wait_for_status(client, kept.get_json()["job_id"], partner["headers"], timeout=60)
    assert relayed["status"] == "SUCCESS", relayed

    def listed() -> bool:  # every row, committed at submit
        jobs = client.get("/v1/jobs", headers=partner["headers"]).get_json()["jobs"]
        return sorted(job["job_id"] for job in jobs) == sorted(
            [*job_ids, kept.get_json()["job_id"]]
        )

    wait_until(listed, 20, message="every job listed from the database")
    store.close()
    FIGURES["redis_restart"] = {
        "queued": len(job_ids),
        "survived": len(job_ids),
        "outage_statuses": outage,
    }
    print("redis restart:", json.dumps(FIGURES["redis_restart"]))
