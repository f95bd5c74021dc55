"""The delivery policy, rule by rule, against a real receiver and a real worker.

Every non-2xx answer is retried (redirects too, never followed), and so are timeouts;
``410 Gone`` stops at once; the shipped schedule's length runs to ``failed``; an event's
body is the one of the moment it happened. The worker is ``jobgate worker`` with the
shipped schedule compressed (as many retries, 0.2 s each) in a world of its own (key
prefix and queues), so the session's worker never takes its messages. Every request is
verified with both the ``standardwebhooks`` package and ``gateway.client.verify_webhook``.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from config import DEFAULT_RETRY_DELAYS, Settings
from gateway.client import verify_webhook
from jobgate.store import Store
from jobgate.sweeper import inflight_ids
from tasks.transport import RedisQueues
from tests.conftest import ADMIN_KEY
from tests.helpers import WorkerProcess, gateway_for, wait_until
from tests.webhooks.conftest import Received, Receiver, Slow
from tests.webhooks.test_events import deliveries, parse, submit, webhook_settles

SCHEDULE = (0.2,) * len(DEFAULT_RETRY_DELAYS)  # the shipped schedule, compressed
ATTEMPTS = 1 + len(SCHEDULE)  # the first attempt, then one per retry delay
TIMEOUT = 1.0


def world_settings(settings: Settings, name: str) -> Settings:
    """``settings`` with the compressed schedule, in a key prefix and queues of its own."""
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    return settings.with_overrides(
        key_prefix=tag,
        queue_jobs=f"{tag}-jobs",
        queue_webhooks=f"{tag}-hooks",
        webhook_retry_delays=SCHEDULE,
        webhook_timeout=TIMEOUT,
    )


@pytest.fixture(scope="module")
def world(settings: Settings, redis_client: Any) -> Iterator[SimpleNamespace]:
    """A gateway client, a partner and a running worker, all on the compressed schedule."""
    policy = world_settings(settings, "policy")
    client, partner, _ = gateway_for(policy, ADMIN_KEY)
    worker = WorkerProcess(policy, concurrency=1, name="policy").start()
    store = Store.from_settings(policy)
    yield SimpleNamespace(
        client=client, partner=partner, worker=worker, store=store, settings=policy
    )
    worker.stop()
    store.redis.close()


def nothing_scheduled(world: SimpleNamespace) -> None:
    """No delivery of this world is queued, held by a worker or due later: nothing can
    follow (shown by the broker's and the due set's state, not by waiting to see)."""
    wait_until(
        lambda: not inflight_ids(world.store, RedisQueues(), [world.settings.queue_webhooks]),
        timeout=10,
        message="the last attempt's message acked, and nothing queued or due",
    )


def verified(requests: list[Received], secret: str) -> list[dict[str, Any]]:
    """Each request's payload, verified by standardwebhooks and by jobgate's client (both
    raise if not)."""
    payloads = []
    for request in requests:
        payloads.append(request.verify(secret))
        verify_webhook(secret, request.headers, request.body)
    return payloads


def one_event(requests: list[Received]) -> None:
    """Every request is the same event: one ``webhook-id``, the same body bytes."""
    assert len({r.webhook_id for r in requests}) == 1
    assert len({r.body for r in requests}) == 1


def test_the_whole_schedule_runs_then_the_delivery_fails(world, receiver: Receiver) -> None:
    receiver.answer(*[503] * ATTEMPTS)
    job = submit(world.client, world.partner, receiver.url)
    view = webhook_settles(
        world.client, job["job_id"], world.partner["headers"], ("failed",), timeout=30
    )
    assert view["webhook"] == {"state": "failed", "attempts": ATTEMPTS}
    requests = receiver.requests
    assert len(requests) == ATTEMPTS == 8  # the shipped schedule: 1 + 7 retries
    one_event(requests)
    payloads = verified(requests, world.partner["webhook_secret"])
    assert payloads[0]["data"]["job_id"] == job["job_id"]
    stamps = [int(r.headers["webhook-timestamp"]) for r in requests]
    assert stamps == sorted(stamps)  # fresh on every attempt
    gaps = [b.at - a.at for a, b in itertools.pairwise(requests)]
    assert min(gaps) >= 0.2 * 0.8 - 0.01  # each retry waited its (jittered) delay
    attempts = deliveries(world.client, job["job_id"], world.partner["headers"])
    assert [a["attempt"] for a in attempts] == list(range(1, ATTEMPTS + 1))
    assert [a["outcome"] for a in attempts] == ["retry"] * (ATTEMPTS - 1) + ["failed"]
    assert all(a["status_code"] == 503 for a in attempts)
    assert all(a["next_attempt_at"] for a in attempts[:-1])
    assert attempts[-1]["next_attempt_at"] is None
    nothing_scheduled(world)  # nothing follows the last attempt
    assert len(receiver.requests) == ATTEMPTS


def test_every_non_2xx_is_retried_and_redirects_are_never_followed(
    world, receiver: Receiver
) -> None:
    moved = {"Location": receiver.url + "/moved"}
    answers = [(302, moved), (308, moved), 400, 404, 500]
    receiver.answer(*answers)
    job = submit(world.client, world.partner, receiver.url)
    view = webhook_settles(world.client, job["job_id"], world.partner["headers"])
    assert view["webhook"] == {"state": "delivered", "attempts": len(answers) + 1}
    requests = receiver.requests
    assert [r.path for r in requests] == [receiver.path] * (len(answers) + 1)  # no /moved
    one_event(requests)
    verified(requests, world.partner["webhook_secret"])
    attempts = deliveries(world.client, job["job_id"], world.partner["headers"])
    assert [a["status_code"] for a in attempts] == [302, 308, 400, 404, 500, 200]
    assert [a["outcome"] for a in attempts] == ["retry"] * len(answers) + ["delivered"]
    for redirect in attempts[:2]:
        assert "redirect not followed" in redirect["error"]
        assert receiver.url + "/moved" in redirect["error"]


def test_410_gone_stops_after_one_attempt(world, receiver: Receiver) -> None:
    receiver.answer(410)
    token = uuid.uuid4().hex
    job = submit(world.client, world.partner, f"{receiver.url}?token={token}")
    view = webhook_settles(world.client, job["job_id"], world.partner["headers"])
    assert view["webhook"] == {"state": "failed", "attempts": 1}
    [attempt] = deliveries(world.client, job["job_id"], world.partner["headers"])
    assert (attempt["status_code"], attempt["outcome"]) == (410, "failed")
    assert attempt["error"] == "HTTP 410 Gone (endpoint gone: not retried)"
    assert attempt["next_attempt_at"] is None
    # The hook an endpoint registry will use to disable the endpoint ran.
    wait_until(
        lambda: f"endpoint gone (410) for job {job['job_id']}" in world.worker.log(),
        message="the endpoint_gone hook's log line",
    )
    # It names the URL without its query: a token there is the partner's secret.
    assert f"{receiver.url} (partner" in world.worker.log()
    assert token not in world.worker.log()
    nothing_scheduled(world)  # no retry ever comes
    assert len(receiver.requests) == 1
    verified(receiver.requests, world.partner["webhook_secret"])


def test_a_timeout_is_retried(world, receiver: Receiver) -> None:
    receiver.answer(Slow(TIMEOUT + 1.0))
    job = submit(world.client, world.partner, receiver.url)
    view = webhook_settles(world.client, job["job_id"], world.partner["headers"])
    assert view["webhook"] == {"state": "delivered", "attempts": 2}
    requests = receiver.wait_for(2)
    one_event(requests)
    verified(requests, world.partner["webhook_secret"])
    timed_out, delivered = deliveries(world.client, job["job_id"], world.partner["headers"])
    assert (timed_out["status_code"], timed_out["outcome"]) == (None, "retry")
    assert timed_out["error"] == f"timeout: attempt exceeded {TIMEOUT:g}s"
    assert (delivered["status_code"], delivered["outcome"]) == (200, "delivered")


def test_delivered_once_the_receiver_is_back_after_an_outage(world, receiver: Receiver) -> None:
    receiver.answer(503, 503, 503)
    job = submit(world.client, world.partner, receiver.url)
    view = webhook_settles(world.client, job["job_id"], world.partner["headers"])
    assert view["webhook"] == {"state": "delivered", "attempts": 4}
    requests = receiver.requests
    assert len(requests) == 4
    one_event(requests)
    verified(requests, world.partner["webhook_secret"])
    attempts = deliveries(world.client, job["job_id"], world.partner["headers"])
    assert [a["status_code"] for a in attempts] == [503, 503, 503, 200]


def test_a_late_first_attempt_carries_the_time_of_the_event(
    settings: Settings, redis_client: Any, workers: list[WorkerProcess], receiver: Receiver
) -> None:
    """The job is revoked while no worker runs at all; the delivery pool starts seconds
    later. The event still says when it happened, not when it was first sent."""
    late = world_settings(settings, "late")
    client, partner, _ = gateway_for(late, ADMIN_KEY)
    job = submit(client, partner, receiver.url)
    revoked = client.post(
        f"/v1/jobs/{job['job_id']}/revoke",
        json={"reason": "late"},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert revoked.status_code == 202, revoked.get_json()
    ended = revoked.get_json()
    time.sleep(1.5)  # the event waits on its queue: no delivery pool yet
    workers.append(WorkerProcess(late, concurrency=1, name="late").start())
    [request] = receiver.wait_for(1)
    [payload] = verified([request], partner["webhook_secret"])
    assert payload["type"] == "job.revoked"
    assert payload["timestamp"] == ended["finished_at"] == ended["revocation"]["revoked_at"]
    assert payload["data"]["finished_at"] == ended["finished_at"]
    assert payload["data"]["webhook"] == {"state": "pending", "attempts": 0}
    sent_at = int(request.headers["webhook-timestamp"])
    assert sent_at - parse(ended["finished_at"]).timestamp() >= 1  # sent well after
