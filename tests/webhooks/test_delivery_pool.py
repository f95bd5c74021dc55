"""The delivery pool: each message is acknowledged once its attempt ran (``acks_late``),
and stays fresh in kombu's unacked index while it runs. A real ``jobgate worker``, a
real Redis and a real receiver."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.helpers import WorkerProcess, add_partner, wait_until
from tests.webhooks.conftest import Receiver, Slow
from tests.webhooks.test_slow_receivers import gateway_for

pytestmark = pytest.mark.integration


def held(redis_client, job_id: str) -> dict[str, float]:
    """Delivery tag -> unacked_index score of each unacknowledged delivery of ``job_id``."""
    found = {}
    for tag, raw in redis_client.hgetall("unacked").items():
        headers = json.loads(raw)[0].get("headers") or {}  # other tests' messages too
        if headers.get("task") == "jobgate.deliver_webhook" and job_id in raw:
            found[tag] = redis_client.zscore("unacked_index", tag)
    return found


def submit(client, partner: dict[str, Any], url: str) -> str:
    answer = client.post(
        "/v1/jobs",
        json={"task": "demo.sleep", "params": {"seconds": 0}, "callback_url": url},
        headers=partner["headers"],
    )
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()["job_id"]


def test_more_webhooks_than_slots_all_arrive_and_none_stays_unacked(
    settings, redis_client, admin_headers, receiver: Receiver
):
    """Each slot's message is acked after its attempt: a pool that did not would stop at
    its prefetch (two messages per slot) with every later webhook waiting behind it."""
    tag = uuid.uuid4().hex[:8]
    own = settings.with_overrides(
        queue_jobs=f"dp-{tag}", queue_webhooks=f"dp-{tag}-hooks", key_prefix=f"dp-{tag}"
    )
    client, partner = gateway_for(own, admin_headers)
    worker = WorkerProcess(own, concurrency=1, name="dp", delivery_concurrency=2).start()
    try:
        job_ids = [submit(client, partner, receiver.url) for _ in range(8)]
        receiver.wait_for(8, timeout=30)
        wait_until(
            lambda: not any(held(redis_client, job_id) for job_id in job_ids),
            10,
            0.05,
            "every delivery message to be acknowledged",
        )
    finally:
        worker.stop()
    ids = {request.webhook_id for request in receiver.requests}
    assert len(receiver.requests) == len(ids) == 8
    # Celery's own request path: each delivery is a task Celery received and ran.
    log = worker.log()
    assert "delivered (200)" in log and "jobgate.deliver_webhook[" in log


def test_a_running_delivery_stays_fresh_until_acked(
    settings, redis_client, admin_headers, receiver: Receiver
):
    """The worker refreshes the unacked index score of the message it runs, so kombu's
    visibility timeout (2 s here) never hands a long delivery to a second slot."""
    tag = uuid.uuid4().hex[:8]
    own = settings.with_overrides(
        queue_jobs=f"dpf-{tag}",
        key_prefix=f"dpf-{tag}",
        queue_webhooks=f"dpf-{tag}-hooks",
        visibility_timeout=2,
        webhook_timeout=6.0,
    )
    client, partner = gateway_for(own, admin_headers)
    receiver.answer(Slow(4.0))  # answered within the timeout: one delivered attempt
    worker = WorkerProcess(own, concurrency=1, name="dpf").start()
    try:
        job_id = submit(client, partner, receiver.url)
        receiver.wait_for(1, timeout=20)
        first = held(redis_client, job_id)
        assert len(first) == 1, first
        [(message_tag, score)] = first.items()
        wait_until(
            lambda: (held(redis_client, job_id).get(message_tag) or 0) > score + 0.5,
            3,
            0.05,
            "the held delivery's score to be refreshed",
        )
        wait_until(lambda: not held(redis_client, job_id), 10, 0.05, "the ack")
    finally:
        worker.stop()
    assert len(receiver.requests) == 1


HOLD = 0.6  # seconds partner A's receiver takes to answer each of its two deliveries


def test_a_slot_freed_takes_the_next_partners_delivery_at_once(
    settings, admin_headers, receiver: Receiver
):
    """Partner A's two slow deliveries take both slots of a 2-slot pool; partner B's
    callback, queued meanwhile, leaves as soon as one of them is answered. With a prefetch
    of one message per slot, Celery's green-pool consumer asked the broker for nothing
    while A held both and looked again only after its 2 s wait: B waited ~1.4 s more."""
    tag = uuid.uuid4().hex[:8]
    own = settings.with_overrides(
        queue_jobs=f"dpn-{tag}", queue_webhooks=f"dpn-{tag}-hooks", key_prefix=f"dpn-{tag}"
    )
    client, a = gateway_for(own, admin_headers)
    b = add_partner(client, admin_headers, "b")
    slow = Receiver()
    slow.answer(Slow(HOLD), Slow(HOLD))
    worker = WorkerProcess(own, concurrency=2, name="dpn", delivery_concurrency=2).start()
    try:
        for _ in range(2):
            submit(client, a, slow.url)
        wait_until(lambda: slow.held == 2, 20, 0.01, "A's two deliveries holding both slots")
        submit(client, b, receiver.url)
        [b_request] = receiver.wait_for(1, timeout=20)
    finally:
        worker.stop()
        slow.stop()
    freed = min(request.at for request in slow.requests) + HOLD
    assert b_request.at - freed < 0.4, (
        f"B's callback left {b_request.at - freed:.2f}s after a slot was free"
    )
