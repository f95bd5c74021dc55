"""``POST /v1/jobs/{id}/redeliver`` while the delivery is still open: the retry it
scheduled is brought forward, no second retry chain starts. A real worker and a real
receiver, in a world of its own (key prefix and queues) whose retries wait 30 s, so a
retry only runs early when a redelivery brings it forward."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from config import Settings
from tests.conftest import ADMIN_KEY
from tests.helpers import WorkerProcess, gateway_for, wait_until
from tests.webhooks.conftest import Receiver
from tests.webhooks.test_events import deliveries, submit, webhook_settles

DELAYS = (30.0,) * 20  # a chain of 21 attempts, each retry 24-36 s after the one before


@pytest.fixture(scope="module")
def world(settings: Settings, redis_client: Any) -> Iterator[SimpleNamespace]:
    tag = "redeliver-" + uuid.uuid4().hex[:8]
    own = settings.with_overrides(
        key_prefix=tag,
        queue_jobs=f"{tag}-jobs",
        queue_webhooks=f"{tag}-hooks",
        webhook_retry_delays=DELAYS,
    )
    client, partner, svc = gateway_for(own, ADMIN_KEY)
    worker = WorkerProcess(own, concurrency=1, name="redeliver").start()
    yield SimpleNamespace(client=client, partner=partner, store=svc.store)
    worker.stop()


def open_deliveries(world: SimpleNamespace, job_id: str) -> list[str]:
    """Task ids of the job's deliveries queued, running or scheduled (the open set)."""
    store = world.store
    return [t for t in store.redis.zrange(store.open_key, 0, -1) if f":{job_id}:" in t]


def scheduled(world: SimpleNamespace, job_id: str) -> list[str]:
    """Task ids of the job's retries waiting on the due set."""
    store = world.store
    ids = [json.loads(row)["id"] for row in store.redis.zrange(store.due_key, 0, -1)]
    return [t for t in ids if f":{job_id}:" in t]


def first_retry_scheduled(world: SimpleNamespace, receiver: Receiver) -> str:
    """A job whose first attempt failed and whose first retry waits on the due set."""
    job = submit(world.client, world.partner, receiver.url)
    job_id = job["job_id"]
    webhook_settles(world.client, job_id, world.partner["headers"], ("retrying",))
    assert scheduled(world, job_id) == open_deliveries(world, job_id)
    assert len(scheduled(world, job_id)) == 1
    return job_id


def redeliver(world: SimpleNamespace, job_id: str) -> dict[str, Any]:
    response = world.client.post(f"/v1/jobs/{job_id}/redeliver", headers=world.partner["headers"])
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def test_fifteen_redelivers_of_a_failing_webhook_stay_one_chain(world, receiver: Receiver):
    receiver.answer(*[500] * 100)
    job_id = first_retry_scheduled(world, receiver)
    answers = [redeliver(world, job_id) for _ in range(15)]
    assert len({a["webhook_id"] for a in answers}) == 1
    # Settled: nothing queued or running, the chain's one next retry waits on the due set.
    wait_until(
        lambda: (ids := open_deliveries(world, job_id)) and ids == scheduled(world, job_id),
        20,
        message="the delivery to settle on one scheduled retry",
    )
    [waiting] = scheduled(world, job_id)
    attempts = deliveries(world.client, job_id, world.partner["headers"])
    # At most one attempt per call, and all of the one automatic chain: none is a chain
    # a redelivery started (each used to start its own, 15 chains of 21 attempts).
    assert 2 <= len(attempts) <= 1 + 15
    assert not any(a["redelivery"] for a in attempts)
    assert waiting.endswith(f":auto:{len(attempts)}")
    assert len(receiver.requests) == len(attempts)


def test_a_redelivery_that_succeeds_leaves_no_retry_behind(world, receiver: Receiver):
    receiver.answer(500)  # then 200
    job_id = first_retry_scheduled(world, receiver)
    answer = redeliver(world, job_id)
    view = webhook_settles(world.client, job_id, world.partner["headers"], ("delivered",))
    assert view["webhook"] == {"state": "delivered", "attempts": 2}
    # The retry that was waiting is the one that ran: nothing stays to send a copy later.
    assert scheduled(world, job_id) == [] and open_deliveries(world, job_id) == []
    assert len(receiver.requests) == 2
    assert answer["webhook"]["state"] in ("retrying", "delivered")  # the delivery's own


def test_a_redelivery_after_the_delivery_ended_starts_a_new_chain(world, receiver: Receiver):
    receiver.answer(410)  # failed at once, no retry; then 200
    job = submit(world.client, world.partner, receiver.url)
    job_id = job["job_id"]
    webhook_settles(world.client, job_id, world.partner["headers"], ("failed",))
    answer = redeliver(world, job_id)
    assert answer["webhook"] == {"state": "pending", "attempts": 1}
    webhook_settles(world.client, job_id, world.partner["headers"], ("delivered",))
    attempts = deliveries(world.client, job_id, world.partner["headers"])
    assert [(a["outcome"], a["redelivery"]) for a in attempts] == [
        ("failed", False),
        ("delivered", True),
    ]
    assert open_deliveries(world, job_id) == []
