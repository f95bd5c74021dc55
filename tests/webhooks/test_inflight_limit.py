"""A partner's ``max_inflight_deliveries``: its slow receiver holds at most that many of
the delivery pool's slots, and another partner's webhook goes out at once meanwhile.

A real ``jobgate worker`` with a small delivery pool (8 slots), a real Redis and real
receivers. Partner A (limit 2) sends 16 webhooks, job callbacks and endpoint messages
alike, to a receiver that takes 1 s to answer each; partner B's one callback goes to a
quick receiver while A's backlog waits. Without the limit (kept as a strict xfail) A's
deliveries fill the pool and B's callback waits behind them.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import ADMIN_KEY
from tests.helpers import WorkerProcess, add_partner, gateway_for, wait_until
from tests.webhooks.conftest import Receiver, Slow
from tests.webhooks.test_events import deliveries, parse, submit, webhook_settles

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
LIMIT = 2  # A's max_inflight_deliveries
POOL = 8  # delivery pool slots: room for A's limit and more, not for A's backlog
HOLD = 1.0  # seconds A's receiver takes to answer (well within the webhook timeout)
CALLBACKS, FANNED, ENDPOINTS = 10, 3, 2  # A: 10 callbacks, 3 jobs x 2 endpoints
SENT = CALLBACKS + FANNED * ENDPOINTS
PROMPT = HOLD / 2  # B's callback leaves within this of its job's end


@pytest.mark.parametrize(
    "limit",
    [
        LIMIT,
        pytest.param(
            0,
            marks=pytest.mark.xfail(
                strict=True,
                reason="no limit: A's deliveries take every slot of the pool, and B's "
                "callback waits behind A's backlog",
            ),
            id="no-limit",
        ),
    ],
)
def test_a_partners_slow_receiver_holds_its_limit_and_no_other_partners_turn(
    settings, redis_client, limit: int
) -> None:
    tag = f"inflight-{uuid.uuid4().hex[:8]}"
    own = settings.with_overrides(
        key_prefix=tag,
        queue_jobs=f"{tag}-jobs",
        queue_webhooks=f"{tag}-hooks",
        webhook_timeout=5.0,
        webhook_retry_delays=(3600.0,),  # a failed attempt stays visible, never resent
    )
    client, a, _ = gateway_for(own, ADMIN_KEY)
    b = add_partner(client, ADMIN, "b")
    changed = client.patch(
        f"/v1/partners/{a['id']}",
        json={"limits": {"max_inflight_deliveries": limit}},
        headers=ADMIN,
    )
    assert changed.status_code == 200, changed.get_json()
    assert changed.get_json()["limits"]["max_inflight_deliveries"] == limit
    slow, quick = Receiver(), Receiver()
    slow.answer(*[Slow(HOLD)] * SENT)
    endpoints = []
    for n in range(ENDPOINTS):
        answer = client.post(
            "/v1/endpoints", json={"url": f"{slow.url}/e{n}"}, headers=a["headers"]
        )
        assert answer.status_code == 201, answer.get_json()
        endpoints.append(answer.get_json()["id"])
    worker = WorkerProcess(own, concurrency=2, name="inflight", delivery_concurrency=POOL)
    worker.start()
    try:
        for _ in range(FANNED):
            submit(client, a, None)
        called = [submit(client, a, slow.url)["job_id"] for _ in range(CALLBACKS)]
        # A's receiver holds what A may send at once (the pool, without a limit), and the
        # rest of A's webhooks wait: in A's line, or in the queue.
        line = f"{tag}:deferred:{a['id']}"
        wait_until(
            lambda: (
                slow.held == (limit or POOL)
                and redis_client.zcard(line) == (SENT - limit if limit else 0)
            ),
            20,
            0.02,
            "A's first webhooks in its receiver, the rest in its line",
        )

        b_job = submit(client, b, quick.url)["job_id"]
        [b_request] = quick.wait_for(1, timeout=20)
        b_view = webhook_settles(client, b_job, b["headers"])
        waited = b_request.at - parse(b_view["finished_at"]).timestamp()
        print(f"limit {limit}: B's callback left {waited * 1000:.0f} ms after its job ended")

        slow.wait_for(SENT, timeout=60)
        last = max(request.at for request in slow.requests)
        for job_id in called:  # each delivered at its first attempt: no retry spent
            view = webhook_settles(client, job_id, a["headers"])
            assert view["webhook"] == {"state": "delivered", "attempts": 1}, view
            [attempt] = deliveries(client, job_id, a["headers"])
            assert attempt["outcome"] == "delivered" and attempt["attempt"] == 1, attempt
        for endpoint_id in endpoints:
            logged = wait_until(
                lambda e=endpoint_id: _attempts(client, a, e, FANNED), 20, 0.1, "endpoint log"
            )
            assert [(x["outcome"], x["attempt"]) for x in logged] == [("delivered", 1)] * FANNED
        assert len({request.webhook_id for request in slow.requests}) == len(slow.requests) == SENT

        assert slow.most_at_once == LIMIT, f"A had {slow.most_at_once} requests at once"
        assert waited < PROMPT, f"B's callback waited {waited:.2f}s for a slot"
        assert b_request.at < last - 2 * HOLD  # well before A's backlog drained
        # Every slot given back and no one left in line.
        assert redis_client.zcard(f"{tag}:inflight:{a['id']}") == 0
        assert redis_client.zcard(line) == 0
        assert "its partner has max_inflight_deliveries in flight" in worker.log()
    finally:
        worker.stop()
        slow.stop()
        quick.stop()


def _attempts(client: Any, partner: dict[str, Any], endpoint_id: str, count: int) -> Any:
    found = client.get(f"/v1/endpoints/{endpoint_id}/attempts", headers=partner["headers"])
    attempts = found.get_json()["attempts"]
    return attempts if len(attempts) >= count else None
