"""Operational events (issue 27): ``endpoint.disabled``, ``endpoint.enabled``,
``message.attempt.failing``, ``…exhausted`` and ``…recovered``, against a real
``jobgate worker`` and real receivers.

Each is sent, signed with the endpoint's own secret (verified with ``standardwebhooks``
and jobgate's client verifier), only to the partner's endpoints that name it in their
``event_types``; an endpoint that takes every event (none named) gets none of them. An
endpoint's own disabling goes to the partner's other endpoints only; an operational event
about an operational event's message is never sent; a partner's storm of them stays
within its ``max_inflight_deliveries``; an event committed and lost by Redis is given back
by the worker's relay.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import WebhookVerificationError

from config import Settings
from jobgate.db.models import Message, OperationalEvent
from jobgate.events import OPERATIONAL
from tests.conftest import ADMIN_KEY
from tests.helpers import WorkerProcess, add_partner, gateway_for, wait_until
from tests.webhooks.conftest import Receiver, Slow, closed_port_url, own_world
from tests.webhooks.test_endpoints import new_partner, register, verified
from tests.webhooks.test_events import parse, submit, webhook_settles

pytestmark = pytest.mark.integration

SCHEDULE = (0.1,) * 5  # 6 attempts in about half a second: failing at the 4th, then 2 more
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ATTEMPTS = ("message.attempt.failing", "message.attempt.exhausted", "message.attempt.recovered")
ENDPOINT_EVENTS = ("endpoint.disabled", "endpoint.enabled")


@pytest.fixture(scope="module")
def world(settings: Settings, redis_client: Any) -> Iterator[SimpleNamespace]:
    with own_world(
        settings, "ops", webhook_retry_delays=SCHEDULE, webhook_timeout=2.0, sweep_interval=0.5
    ) as world:
        yield world


def receiver_of(made: list[Receiver], *answers: Any) -> Receiver:
    receiver = Receiver()
    receiver.answer(*answers)
    made.append(receiver)
    return receiver


def events(receiver: Receiver, secret: str) -> list[dict[str, Any]]:
    """Every request's payload, verified (raises on one that does not verify)."""
    return [verified(request, secret) for request in receiver.requests]


def of_type(receiver: Receiver, secret: str, name: str) -> list[dict[str, Any]]:
    return [payload for payload in events(receiver, secret) if payload["type"] == name]


def operational_rows(world: SimpleNamespace, partner_id: str) -> list[Any]:
    return world.svc.db.read(
        select(OperationalEvent).where(OperationalEvent.partner_id == partner_id)
    )


def stays(condition: Any, seconds: float = 1.0) -> bool:
    """Whether ``condition`` holds throughout ``seconds`` (for what must not happen)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not condition():
            return False
        time.sleep(0.05)
    return True


# ---------------------------------------------------------------- message.attempt.*
def test_failing_then_exhausted_for_an_endpoint_message(world, receivers) -> None:
    """An endpoint message that fails every attempt: ``failing`` after its 4th attempt
    (once), ``exhausted`` after its last, to the endpoint that subscribes; the partner's
    endpoint that takes every event gets its job event and none of them."""
    partner = new_partner(world)
    bad = receiver_of(receivers, *[500] * 6)
    ops = receiver_of(receivers)
    plain = receiver_of(receivers)
    bad_endpoint = register(world, partner, bad.url, event_types=["job.succeeded"])
    ops_endpoint = register(world, partner, ops.url, event_types=list(ATTEMPTS))
    plain_endpoint = register(world, partner, plain.url)
    job = submit(world.client, partner, None)

    ops.wait_for(2)
    by_type = {p["type"]: p for p in events(ops, ops_endpoint["webhook_secret"])}
    assert set(by_type) == set(ATTEMPTS[:2])
    failing, exhausted = by_type[ATTEMPTS[0]], by_type[ATTEMPTS[1]]
    [sent] = {request.webhook_id for request in bad.wait_for(6)}
    for payload, attempts in ((failing, 4), (exhausted, 6)):
        data = payload["data"]
        assert data["endpoint"] == {"id": bad_endpoint["id"], "url": bad.url}
        assert data["message"] == {"webhook_id": sent, "event": "job.succeeded"}
        assert data["job_id"] == job["job_id"]
        assert data["attempts"] == attempts
        assert data["last_attempt"]["status_code"] == 500
    # Each operational event is a message of its own: its own webhook-id, not the job's.
    assert len({request.webhook_id for request in ops.requests} | {sent}) == 3
    # The endpoint that takes every event got its job event, and no operational one.
    [only] = plain.wait_for(1)
    assert verified(only, plain_endpoint["webhook_secret"])["type"] == "job.succeeded"
    rows = operational_rows(world, partner["id"])
    assert sorted(row.event for row in rows) == sorted(ATTEMPTS[:2])
    wait_until(lambda: all(row.settled for row in operational_rows(world, partner["id"])), 10)
    sent_to = world.svc.db.read(
        select(Message.endpoint_id).where(Message.subject_id.in_([row.op_id for row in rows]))
    )
    assert {endpoint_id for (endpoint_id,) in sent_to} == {ops_endpoint["id"]}
    assert stays(lambda: len(ops.requests) == 2 and len(plain.requests) == 1)


def test_recovered_after_a_message_was_failing(world, receivers) -> None:
    """A message whose 4 first attempts failed and whose 5th is delivered: ``failing``,
    then ``recovered``; never ``exhausted``."""
    partner = new_partner(world)
    flaky = receiver_of(receivers, *[503] * 4)
    ops = receiver_of(receivers)
    flaky_endpoint = register(world, partner, flaky.url, event_types=["job.failed"])
    ops_endpoint = register(world, partner, ops.url, event_types=list(ATTEMPTS))
    job = submit(world.client, partner, None, task="demo.fail", params={})

    ops.wait_for(2)
    by_type = {p["type"]: p for p in events(ops, ops_endpoint["webhook_secret"])}
    assert set(by_type) == {ATTEMPTS[0], ATTEMPTS[2]}
    assert by_type[ATTEMPTS[0]]["data"]["attempts"] == 4
    data = by_type[ATTEMPTS[2]]["data"]
    assert data["endpoint"]["id"] == flaky_endpoint["id"]
    assert data["message"]["event"] == "job.failed" and data["job_id"] == job["job_id"]
    assert data["attempts"] == 5 and data["last_attempt"]["status_code"] == 200
    assert data["message"]["webhook_id"] == flaky.requests[-1].webhook_id
    assert stays(lambda: len(ops.requests) == 2)


def test_exhausted_for_a_callback_url_goes_to_the_subscribed_endpoint(world, receivers) -> None:
    """A job's own ``callback_url`` that fails every attempt: ``exhausted`` goes to the
    partner's endpoint that subscribes (and only to it: the endpoint that takes every
    event gets nothing, the job having a callback); the URL is redacted as logs redact it."""
    partner = new_partner(world)
    down = receiver_of(receivers, *[502] * 6)
    ops = receiver_of(receivers)
    plain = receiver_of(receivers)
    ops_endpoint = register(world, partner, ops.url, event_types=["message.attempt.exhausted"])
    register(world, partner, plain.url)
    job = submit(world.client, partner, down.url + "?token=s3cret")
    webhook_settles(world.client, job["job_id"], partner["headers"], ("failed",))

    [request] = ops.wait_for(1)
    payload = verified(request, ops_endpoint["webhook_secret"])
    assert payload["type"] == "message.attempt.exhausted"
    data = payload["data"]
    assert data["endpoint"] == {"callback_url": down.url}  # no query: its token stays out
    assert data["message"] == {"webhook_id": down.requests[0].webhook_id, "event": "job.succeeded"}
    assert data["job_id"] == job["job_id"] and data["attempts"] == 6
    # Signed with the endpoint's own secret, not the partner's (the callback's).
    with pytest.raises(WebhookVerificationError):
        request.verify(partner["webhook_secret"])
    assert stays(lambda: len(ops.requests) == 1 and plain.requests == [])


def test_an_operational_message_that_fails_announces_nothing_more(world, receivers) -> None:
    """The loop rule: the subscribed endpoint is down too; its own messages (the
    ``failing`` and ``exhausted`` of another message) fail every attempt, and no event
    is announced about them: two events in all, each tried 6 times."""
    partner = new_partner(world)
    bad = receiver_of(receivers, *[500] * 6)
    ops = receiver_of(receivers, *[500] * 12)
    register(world, partner, bad.url, event_types=["job.succeeded"])
    ops_endpoint = register(world, partner, ops.url, event_types=list(ATTEMPTS))
    submit(world.client, partner, None)

    requests = ops.wait_for(12)
    assert len({request.webhook_id for request in requests}) == 2
    assert {verified(r, ops_endpoint["webhook_secret"])["type"] for r in requests} == set(
        ATTEMPTS[:2]
    )
    states = world.svc.store.redis
    wait_until(
        lambda: all(
            states.hget(world.svc.store.key("webhook", r.webhook_id), "state") == "failed"
            for r in requests
        ),
        10,
        message="both operational messages failed",
    )
    assert stays(
        lambda: len(operational_rows(world, partner["id"])) == 2 and len(ops.requests) == 12
    )


# ---------------------------------------------------------------------- endpoint.*
def test_disabled_and_enabled_through_the_api(world, receivers) -> None:
    """A partner's PATCH disables an endpoint: ``endpoint.disabled`` (by the partner) to
    the other subscribed endpoint, never to the disabled one (which subscribes too);
    an admin's PATCH enables it: ``endpoint.enabled`` (by the admin)."""
    partner = new_partner(world)
    watcher = receiver_of(receivers)
    target = receiver_of(receivers)
    plain = receiver_of(receivers)
    watching = register(world, partner, watcher.url, event_types=list(ENDPOINT_EVENTS))
    switched = register(world, partner, target.url, event_types=["endpoint.disabled"])
    register(world, partner, plain.url)
    path = f"/v1/endpoints/{switched['id']}"
    off = world.client.patch(path, json={"enabled": False}, headers=partner["headers"])
    assert off.status_code == 200 and off.get_json()["enabled"] is False

    [request] = watcher.wait_for(1)
    payload = verified(request, watching["webhook_secret"])
    assert payload["type"] == "endpoint.disabled"
    assert payload["data"]["endpoint"] == {"id": switched["id"], "url": target.url}
    assert payload["data"]["disabled_by"] == "partner"
    assert payload["data"]["reason"] == "disabled through the API"
    assert payload["data"]["disabled_at"] == off.get_json()["disabled_at"]

    on = world.client.patch(path, json={"enabled": True}, headers=ADMIN)
    assert on.status_code == 200 and on.get_json()["enabled"] is True
    watcher.wait_for(2)
    enabled = verified(watcher.requests[1], watching["webhook_secret"])
    assert enabled["type"] == "endpoint.enabled"
    assert enabled["data"]["endpoint"]["id"] == switched["id"]
    assert enabled["data"]["enabled_by"] == "admin"
    # The disabled endpoint was never sent (nor held) its own disabling.
    held = world.svc.db.read(select(Message.msg_id).where(Message.endpoint_id == switched["id"]))
    assert held == []
    assert stays(lambda: target.requests == [] and plain.requests == [])


def test_disabled_by_jobgate_after_a_410(world, receivers) -> None:
    """jobgate disables an endpoint that answered ``410 Gone``: ``endpoint.disabled``
    says so (``disabled_by: jobgate``, the reason), to the other subscribed endpoint."""
    partner = new_partner(world)
    gone = receiver_of(receivers, 410)
    watcher = receiver_of(receivers)
    goner = register(world, partner, gone.url, event_types=["job.succeeded", "endpoint.disabled"])
    watching = register(world, partner, watcher.url, event_types=["endpoint.disabled"])
    submit(world.client, partner, None)

    [request] = watcher.wait_for(1)
    payload = verified(request, watching["webhook_secret"])
    assert payload["type"] == "endpoint.disabled"
    assert payload["data"]["endpoint"] == {"id": goner["id"], "url": gone.url}
    assert payload["data"]["disabled_by"] == "jobgate"
    assert "410" in payload["data"]["reason"]
    # The disabled endpoint subscribes too: its own disabling is neither sent nor held.
    own = world.svc.db.read(
        select(Message.msg_id).where(
            Message.endpoint_id == goner["id"], Message.event == "endpoint.disabled"
        )
    )
    assert own == []
    assert stays(lambda: len(gone.requests) == 1)  # the job event, its 410; nothing more


def test_disabled_by_jobgate_after_failing_for_the_whole_period(world, receivers) -> None:
    """An endpoint failing since longer than ``JOBGATE_ENDPOINT_DISABLE_AFTER`` (its
    mirror says since when) is disabled at its next failed attempt: ``endpoint.disabled``
    by jobgate, with the reason; its message then ends without a request, and no
    ``exhausted`` is announced for it (the disabling is what the partner is told)."""
    partner = new_partner(world)
    failing = receiver_of(receivers, *[500] * 6)
    watcher = receiver_of(receivers)
    broken = register(world, partner, failing.url, event_types=["job.succeeded"])
    watching = register(world, partner, watcher.url, event_types=["endpoint.disabled", *ATTEMPTS])
    since = time.time() - world.settings.endpoint_disable_after - 60
    world.svc.store.redis.hset(
        world.svc.store.key("endpoint", broken["id"]), "failing_since", str(since)
    )
    submit(world.client, partner, None)

    [request] = watcher.wait_for(1)
    payload = verified(request, watching["webhook_secret"])
    assert payload["type"] == "endpoint.disabled"
    assert payload["data"]["endpoint"]["id"] == broken["id"]
    assert payload["data"]["disabled_by"] == "jobgate"
    assert payload["data"]["reason"].startswith("every attempt failed for")
    assert stays(lambda: len(watcher.requests) == 1 and len(failing.requests) == 1)


def test_held_for_a_disabled_subscriber_then_recovered_from_its_row(world, receivers) -> None:
    """An operational event that matches a disabled endpoint is held like any message;
    once the endpoint is enabled, ``recover`` sends it, its body rebuilt from the event's
    row when Redis forgot it."""
    from jobgate.webhooks.ledger import Deliveries

    partner = new_partner(world)
    watcher = receiver_of(receivers)
    watching = register(world, partner, watcher.url, event_types=["endpoint.disabled"])
    other = register(world, partner, closed_port_url(), event_types=["job.failed"])
    path = f"/v1/endpoints/{watching['id']}"
    world.client.patch(path, json={"enabled": False}, headers=partner["headers"])
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    world.client.patch(
        f"/v1/endpoints/{other['id']}", json={"enabled": False}, headers=partner["headers"]
    )
    db, store = world.svc.db, world.svc.store

    def held() -> list[Any]:
        return db.read(
            select(Message).where(Message.endpoint_id == watching["id"], Message.held.is_(True))
        )

    [message] = wait_until(held, 10, message="endpoint.disabled held for the watcher")
    assert message.event == "endpoint.disabled" and message.kind == "op"
    books = Deliveries(store)
    store.redis.delete(  # Redis forgets the message and the event's body: rows rebuild them
        store.key("msg", message.msg_id),
        books.body_key(message.msg_id, message.event),
        books.body_key(message.subject_id, message.event),
    )
    world.client.patch(path, json={"enabled": True}, headers=partner["headers"])
    response = world.client.post(
        f"{path}/recover", json={"since": since}, headers=partner["headers"]
    )
    assert response.get_json()["webhook_ids"] == [message.msg_id], response.get_json()
    [request] = watcher.wait_for(1)
    payload = verified(request, watching["webhook_secret"])
    assert payload["type"] == "endpoint.disabled"
    assert payload["data"]["endpoint"]["id"] == other["id"]
    [row] = db.read(select(OperationalEvent).where(OperationalEvent.op_id == message.subject_id))
    assert request.body.decode() == row.body


# ------------------------------------------------------------------ catalog, relay
def test_the_catalog_lists_every_event_type_with_a_sample(world) -> None:
    response = world.client.get("/v1/event-types", headers=world.partner["headers"])
    assert response.status_code == 200, response.get_json()
    listed = {e["name"]: e for e in response.get_json()["event_types"]}
    assert {"job.succeeded", "job.failed", "job.revoked", "batch.completed"} < set(listed)
    for name in OPERATIONAL:
        assert listed[name]["operational"] is True
        assert listed[name]["sample"]["type"] == name
        assert listed[name]["sample"]["data"]
    assert listed["job.succeeded"]["operational"] is False
    assert world.client.get("/v1/event-types").status_code == 401


def test_an_event_redis_lost_is_given_back_by_the_relay(world, receivers) -> None:
    """An announced event is a committed row first: Redis losing its record and its
    fan-out step (a restart) loses nothing; the worker's relay hands it over again, and
    the subscribed endpoint gets it."""
    from jobgate.webhooks import operational

    partner = new_partner(world)
    watcher = receiver_of(receivers)
    watching = register(world, partner, watcher.url, event_types=["endpoint.disabled"])
    other = register(world, partner, closed_port_url(), event_types=["job.failed"])
    found = operational.prepare(
        world.svc.registry,
        partner["id"],
        "endpoint.disabled",
        {"endpoint": {"id": other["id"], "url": other["url"]}, "disabled_by": "admin"},
        (other["id"], "lost"),
        exclude=other["id"],
    )
    assert found is not None
    # Committed, and Redis never got it (the gateway died, or Redis restarted empty).
    operational.commit(world.svc.db, world.svc.store.prefix, found)

    [request] = watcher.wait_for(1, timeout=40)  # the relay looks at rows 10 s old
    payload = verified(request, watching["webhook_secret"])
    assert payload["type"] == "endpoint.disabled"
    assert payload["data"]["endpoint"]["id"] == other["id"]
    assert request.body.decode() == found.body  # the bytes committed, not rebuilt
    assert "operational: gave Redis back" in world.worker.log()


# --------------------------------------------------------------------- one partner
LIMIT = 2  # the stormy partner's max_inflight_deliveries
HOLD = 0.4  # seconds its operational endpoint takes to answer each


def test_a_partners_storm_of_failing_endpoints_keeps_to_its_share(settings, redis_client) -> None:
    """Partner A's 6 endpoints are down: 12 operational events (``failing`` and
    ``exhausted`` of each message) to A's slow subscribed endpoint, through A's own
    ``max_inflight_deliveries`` like any of A's messages, never more at once; partner B's
    callback leaves at once meanwhile."""
    tag = f"ops-storm-{uuid.uuid4().hex[:8]}"
    own = settings.with_overrides(
        key_prefix=tag,
        queue_jobs=f"{tag}-jobs",
        queue_webhooks=f"{tag}-hooks",
        webhook_retry_delays=(0.05,) * 3,  # 4 attempts: failing and exhausted at the 4th
        webhook_timeout=5.0,
    )
    client, a, _ = gateway_for(own, ADMIN_KEY)
    b = add_partner(client, ADMIN, "b")
    changed = client.patch(
        f"/v1/partners/{a['id']}",
        json={"limits": {"max_inflight_deliveries": LIMIT}},
        headers=ADMIN,
    )
    assert changed.status_code == 200, changed.get_json()
    slow, quick = Receiver(), Receiver()
    down = 6
    slow.answer(*[Slow(HOLD)] * (2 * down))
    for _ in range(down):
        answer = client.post(
            "/v1/endpoints",
            json={"url": closed_port_url(), "event_types": ["job.succeeded"]},
            headers=a["headers"],
        )
        assert answer.status_code == 201, answer.get_json()
    ops = client.post(
        "/v1/endpoints",
        json={"url": slow.url, "event_types": list(ATTEMPTS)},
        headers=a["headers"],
    ).get_json()
    worker = WorkerProcess(own, concurrency=2, name="ops-storm", delivery_concurrency=8)
    worker.start()
    try:
        submit(client, a, None)
        line = f"{tag}:deferred:{a['id']}"
        wait_until(
            lambda: slow.held == LIMIT and redis_client.zcard(line) > 0,
            20,
            0.02,
            "A's operational messages filling its share, the rest in its line",
        )
        b_job = submit(client, b, quick.url)["job_id"]
        [b_request] = quick.wait_for(1, timeout=20)
        b_view = webhook_settles(client, b_job, b["headers"])
        waited = b_request.at - parse(b_view["finished_at"]).timestamp()

        requests = slow.wait_for(2 * down, timeout=60)
        kinds = [verified(r, ops["webhook_secret"])["type"] for r in requests]
        assert sorted(kinds) == sorted(ATTEMPTS[:2] * down)
        assert slow.most_at_once == LIMIT, f"A had {slow.most_at_once} requests at once"
        assert waited < HOLD, f"B's callback waited {waited:.2f}s"
        assert b_request.at < max(r.at for r in requests) - 2 * HOLD  # before A's drained
    finally:
        worker.stop()
        slow.stop()
        quick.stop()


def test_a_partner_toggling_an_endpoint_is_bounded(world) -> None:
    """Each disable or enable announces itself (rows, messages): a partner flipping one
    endpoint gets 429 past 6 changes a minute, and nothing more is written."""
    partner = new_partner(world)
    endpoint = register(world, partner, closed_port_url())
    path = f"/v1/endpoints/{endpoint['id']}"
    codes = [
        world.client.patch(path, json={"enabled": n % 2 == 1}, headers=partner["headers"])
        for n in range(8)
    ]
    assert [c.status_code for c in codes[:6]] == [200] * 6
    refused = codes[6]
    assert refused.status_code == 429, refused.get_json()
    assert refused.get_json()["error"]["details"]["limit"] == "endpoint_toggles_per_minute"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # A PATCH that changes nothing else is not a toggle: it is not counted or refused.
    same = world.client.patch(path, json={"description": "x"}, headers=partner["headers"])
    assert same.status_code == 200
