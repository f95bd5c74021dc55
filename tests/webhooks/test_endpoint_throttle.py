"""An endpoint's pace: its ``rate_limit``, and the pause a ``429``/``503`` with
``Retry-After`` asks for, against real receivers and a real ``jobgate worker``.

Messages over the rate wait on the due set (throttled), never in a worker and never as a
failed attempt: a burst arrives no faster than the rate, spread over each second (a turn
due before the due set's next pass gets a timer of its own), all of it, each message
delivered at its first attempt. A receiver that answers ``429 Retry-After: 2`` holds the
endpoint's other messages too. Another partner's endpoint is not slowed meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from config import Settings
from jobgate.webhooks.throttle import MAX_RATE_LIMIT
from tests.helpers import wait_until
from tests.webhooks.conftest import Received, Receiver, own_world
from tests.webhooks.test_endpoints import new_partner, register, settled_attempts
from tests.webhooks.test_events import parse, submit

SLACK = 0.2  # timers, scheduling, a loaded machine: what an arrival may be early by


@pytest.fixture(scope="module")
def world(settings: Settings, redis_client: Any) -> Iterator[SimpleNamespace]:
    with own_world(
        settings, "throttle", webhook_retry_delays=(0.2, 0.2, 0.2), webhook_timeout=2.0
    ) as world:
        yield world


def _arrivals(requests: list[Received]) -> list[float]:
    return sorted(request.at for request in requests)


def test_rate_limit_is_set_changed_shown_and_validated(world) -> None:
    partner = new_partner(world)
    created = register(world, partner, "http://127.0.0.1:9999/hook", rate_limit=5)
    assert created["rate_limit"] == 5
    path = f"/v1/endpoints/{created['id']}"
    assert world.client.get(path, headers=partner["headers"]).get_json()["rate_limit"] == 5
    mirror = world.svc.store.redis.hgetall(world.svc.store.key("endpoint", created["id"]))
    assert mirror["rate_limit"] == "5"
    changed = world.client.patch(path, json={"rate_limit": None}, headers=partner["headers"])
    assert changed.status_code == 200 and changed.get_json()["rate_limit"] is None
    plain = register(world, partner, "http://127.0.0.1:9999/plain")
    assert plain["rate_limit"] is None
    for wrong in (0, -1, MAX_RATE_LIMIT + 1, 1.5, "3", True):
        answer = world.client.patch(path, json={"rate_limit": wrong}, headers=partner["headers"])
        assert answer.status_code == 422, (wrong, answer.get_json())
        assert "rate_limit" in answer.get_json()["error"]["details"], wrong
    answer = world.client.post(
        "/v1/endpoints",
        json={"url": "http://127.0.0.1:9999/x", "rate_limit": 0},
        headers=partner["headers"],
    )
    assert answer.status_code == 422


RATE, BURST = 4, 12  # 12 messages at 4/s: at least 2.75 s from the first to the last


def test_a_burst_arrives_no_faster_than_the_rate_and_spends_no_attempt(world, receivers):
    partner = new_partner(world)
    receiver = Receiver()
    receivers.append(receiver)
    endpoint = register(world, partner, receiver.url, rate_limit=RATE)
    for _ in range(BURST):
        submit(world.client, partner, None)
    got = receiver.wait_for(BURST, timeout=30)
    at = _arrivals(got)
    print("gaps", [round(b - a, 2) for a, b in zip(at, at[1:], strict=False)])
    # No faster than RATE a second: any k + 1 arrivals span at least k / RATE (turns
    # are not bunched by the due set's once-a-second pass).
    for i in range(len(at)):
        for j in range(i + 1, len(at)):
            assert at[j] - at[i] >= (j - i) / RATE - SLACK, (i, j, at[j] - at[i])
    assert at[-1] - at[0] >= (BURST - 1) / RATE - SLACK
    assert len({request.webhook_id for request in got}) == BURST  # each once
    logged = settled_attempts(world, partner, endpoint["id"], BURST)
    # Waiting was no attempt: each message delivered at its first one, none failed.
    assert sorted((x["outcome"], x["attempt"]) for x in logged) == [("delivered", 1)] * BURST
    for request in got:
        request.verify(endpoint["webhook_secret"])


def test_another_partners_endpoint_is_not_slowed_by_a_throttled_backlog(world, receivers):
    slow_partner, quick_partner = new_partner(world), new_partner(world)
    slow, quick = Receiver(), Receiver()
    receivers.extend([slow, quick])
    register(world, slow_partner, slow.url, rate_limit=1)
    register(world, quick_partner, quick.url)
    backlog = 10  # ten seconds' worth at 1/s
    for _ in range(backlog):
        submit(world.client, slow_partner, None)
    slow.wait_for(2, timeout=20)  # the backlog is being worked through
    job = submit(world.client, quick_partner, None)
    [arrived] = quick.wait_for(1, timeout=20)
    view = wait_until(
        lambda: (
            found
            if (
                found := world.client.get(
                    f"/v1/jobs/{job['job_id']}", headers=quick_partner["headers"]
                ).get_json()
            )["finished_at"]
            else None
        ),
        10,
        message="the quick partner's job ended",
    )
    latency = arrived.at - parse(view["finished_at"]).timestamp()
    print(f"the other partner's message left {latency * 1000:.0f} ms after its job ended")
    assert latency < 2.0  # generous: it does not wait behind the backlog (~8 s more)
    assert len(slow.requests) < backlog  # the backlog was still waiting
    slow.wait_for(backlog, timeout=30)
    at = _arrivals(slow.requests)
    assert at[-1] - at[0] >= backlog - 1 - SLACK


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_holds_the_endpoints_other_messages(world, receivers, status: int):
    partner = new_partner(world)
    receiver = Receiver()
    receivers.append(receiver)
    endpoint = register(world, partner, receiver.url)
    receiver.answer((status, {"Retry-After": "2"}))
    submit(world.client, partner, None)
    [first] = receiver.wait_for(1)
    paused = world.svc.store.key("endpoint", endpoint["id"], "paused")
    wait_until(lambda: world.svc.store.redis.exists(paused), 5, 0.01, "the endpoint paused")
    others = 3
    for _ in range(others):
        submit(world.client, partner, None)
    got = receiver.wait_for(1 + 1 + others, timeout=20)  # the retry and the others
    later = [request for request in got if request is not first]
    assert min(request.at for request in later) >= first.at + 2.0 - SLACK, [
        round(request.at - first.at, 2) for request in later
    ]
    logged = settled_attempts(world, partner, endpoint["id"], 2 + others)
    outcomes = sorted((x["outcome"], x["attempt"], x["webhook_id"]) for x in logged)
    retried = [x for x in outcomes if x[0] == "retry"]
    assert [(x[0], x[1]) for x in retried] == [("retry", 1)]
    assert ("delivered", 2, retried[0][2]) in outcomes
    # The messages held by the pause waited without spending an attempt.
    assert (
        sorted((x[0], x[1]) for x in outcomes if x[2] != retried[0][2])
        == [("delivered", 1)] * others
    )
