"""Registered endpoints (issue 10) against real receivers and a real ``jobgate worker``.

Each route, the fan-out (3 endpoints, filtered by event type), ping, the attempts log,
recover after an outage, secret rotation, and the policy rules that disable an endpoint
(``410 Gone``, a failing period). Every request is verified with both the
``standardwebhooks`` package and ``gateway.client.verify_webhook``, with the endpoint's own secret.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from standardwebhooks.webhooks import WebhookVerificationError

from config import Settings
from gateway.client import verify_webhook
from jobgate.events import endpoint_message_id, fan_out_task_id
from jobgate.times import utcnow
from tests.conftest import ADMIN_KEY
from tests.helpers import add_partner, gateway_for, wait_until
from tests.webhooks.conftest import Received, Receiver, own_world
from tests.webhooks.test_events import submit

SCHEDULE = (0.2, 0.2, 0.2)  # 4 attempts in about a second
DISABLE_AFTER = 3.0  # seconds of failing every attempt before an endpoint is disabled
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def world(settings: Settings, redis_client: Any) -> Iterator[SimpleNamespace]:
    with own_world(
        settings,
        "endpoints",
        webhook_retry_delays=SCHEDULE,
        webhook_timeout=2.0,
        endpoint_disable_after=DISABLE_AFTER,
        sweep_interval=0.5,
    ) as world:
        yield world


def new_partner(world: SimpleNamespace) -> dict[str, Any]:
    return add_partner(world.client, ADMIN, "p")


def register(
    world: SimpleNamespace, partner: dict[str, Any], url: str, **fields: Any
) -> dict[str, Any]:
    response = world.client.post(
        "/v1/endpoints", json={"url": url, **fields}, headers=partner["headers"]
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def verified(request: Received, secret: str) -> dict[str, Any]:
    """The payload, verified by standardwebhooks and by jobgate's client (each raises if not)."""
    verify_webhook(secret, request.headers, request.body)
    return request.verify(secret)


def attempts(world: SimpleNamespace, partner: dict[str, Any], endpoint_id: str, **query: Any):
    response = world.client.get(
        f"/v1/endpoints/{endpoint_id}/attempts", query_string=query, headers=partner["headers"]
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def settled_attempts(world, partner, endpoint_id: str, count: int) -> list[dict[str, Any]]:
    return wait_until(
        lambda: (
            found
            if len(found := attempts(world, partner, endpoint_id)["attempts"]) >= count
            else None
        ),
        20,
        message=f"{count} attempt(s) logged for {endpoint_id}",
    )


def disabled(world, partner, endpoint_id: str) -> dict[str, Any]:
    """Wait until the endpoint is disabled; returns it."""

    def read() -> dict[str, Any] | None:
        path = f"/v1/endpoints/{endpoint_id}"
        view = world.client.get(path, headers=partner["headers"]).get_json()
        return view if view["enabled"] is False else None

    return wait_until(read, 15, message=f"{endpoint_id} disabled")


# ------------------------------------------------------------------------------ routes
def test_register_read_change_list_and_delete(world) -> None:
    partner, other = new_partner(world), new_partner(world)
    url = "http://127.0.0.1:9999/hook"
    created = register(world, partner, url, description="orders", event_types=["job.failed"])
    assert created["id"].startswith("ep_")
    assert created["webhook_secret"].startswith("whsec_")
    assert created["event_types"] == ["job.failed"] and created["enabled"] is True
    path = f"/v1/endpoints/{created['id']}"
    read = world.client.get(path, headers=partner["headers"]).get_json()
    assert "webhook_secret" not in read and read["url"] == url
    # Another partner's endpoint is 404, like one that never existed; admins see it.
    assert world.client.get(path, headers=other["headers"]).status_code == 404
    assert world.client.get(path, headers=ADMIN).status_code == 200
    changed = world.client.patch(
        path, json={"event_types": [], "enabled": False}, headers=partner["headers"]
    ).get_json()
    assert changed["event_types"] == [] and changed["enabled"] is False
    listed = world.client.get("/v1/endpoints", headers=partner["headers"]).get_json()
    assert [e["id"] for e in listed["endpoints"]] == [created["id"]]
    assert world.client.get("/v1/endpoints", headers=other["headers"]).get_json() == {
        "endpoints": []
    }
    disabled = world.client.get("/v1/endpoints?state=disabled", headers=ADMIN).get_json()
    assert created["id"] in [e["id"] for e in disabled["endpoints"]]
    assert world.client.delete(path, headers=other["headers"]).status_code == 404
    assert world.client.delete(path, headers=partner["headers"]).status_code == 204
    assert world.client.get(path, headers=partner["headers"]).status_code == 404


def test_registration_applies_the_callback_url_rules(world) -> None:
    partner = world.partner
    for url in ("http://10.1.2.3/hook", "http://169.254.169.254/latest", "ftp://x.example/"):
        response = world.client.post("/v1/endpoints", json={"url": url}, headers=partner["headers"])
        assert response.status_code == 422, url
        assert response.get_json()["error"]["code"] == "callback_url_refused"
        assert "url" in response.get_json()["error"]["details"]
    bad = world.client.post(
        "/v1/endpoints",
        json={"url": "http://127.0.0.1:9999/", "event_types": ["job.exploded"]},
        headers=partner["headers"],
    )
    assert bad.status_code == 422
    assert "event_types" in bad.get_json()["error"]["details"]
    admin = world.client.post(
        "/v1/endpoints", json={"url": "http://127.0.0.1:9999/"}, headers=ADMIN
    )
    assert admin.status_code == 403
    # PATCH checks a new URL the same way.
    created = register(world, partner, "http://127.0.0.1:9999/ok")
    refused = world.client.patch(
        f"/v1/endpoints/{created['id']}",
        json={"url": "http://192.168.0.1/"},
        headers=partner["headers"],
    )
    assert refused.status_code == 422


# ----------------------------------------------------------------------------- fan-out
def test_fan_out_to_three_endpoints_with_filters(world) -> None:
    partner = new_partner(world)
    receivers = [Receiver() for _ in range(3)]
    try:
        every = register(world, partner, receivers[0].url)
        succeeded = register(world, partner, receivers[1].url, event_types=["job.succeeded"])
        failed = register(world, partner, receivers[2].url, event_types=["job.failed"])
        job = submit(world.client, partner, None)
        receivers[0].wait_for(1)
        receivers[1].wait_for(1)
        payloads = [
            verified(receivers[0].requests[0], every["webhook_secret"]),
            verified(receivers[1].requests[0], succeeded["webhook_secret"]),
        ]
        assert {p["type"] for p in payloads} == {"job.succeeded"}
        assert {p["data"]["job_id"] for p in payloads} == {job["job_id"]}
        # One message per (event, endpoint): its own webhook-id, the same body bytes.
        ids = {receivers[0].requests[0].webhook_id, receivers[1].requests[0].webhook_id}
        assert len(ids) == 2
        assert receivers[0].requests[0].body == receivers[1].requests[0].body
        # Each endpoint signs with its own secret only.
        with pytest.raises(WebhookVerificationError):
            receivers[1].requests[0].verify(every["webhook_secret"])
        listed = world.client.get(
            f"/v1/jobs/{job['job_id']}/deliveries", headers=partner["headers"]
        ).get_json()
        assert {m["endpoint_id"] for m in listed["endpoint_messages"]} == {
            every["id"],
            succeeded["id"],
        }
        assert {m["webhook_id"] for m in listed["endpoint_messages"]} == ids

        failing = submit(world.client, partner, None, task="demo.fail", params={})
        receivers[2].wait_for(1)
        receivers[0].wait_for(2)
        payload = verified(receivers[2].requests[0], failed["webhook_secret"])
        assert payload["type"] == "job.failed"
        assert payload["data"]["job_id"] == failing["job_id"]
        assert verified(receivers[0].requests[1], every["webhook_secret"])["type"] == "job.failed"
        # The job.succeeded-only endpoint got nothing more, the job.failed one nothing else.
        settled_attempts(world, partner, failed["id"], 1)
        assert len(receivers[1].requests) == 1 and len(receivers[2].requests) == 1
    finally:
        for receiver in receivers:
            receiver.stop()


def test_a_job_with_a_callback_url_goes_only_there(world, receiver: Receiver) -> None:
    partner = new_partner(world)
    endpoint_receiver = Receiver()
    try:
        register(world, partner, endpoint_receiver.url)
        submit(world.client, partner, receiver.url)
        [request] = receiver.wait_for(1)
        verified(request, partner["webhook_secret"])
        # A second job, without a callback, reaches the endpoint: the first one never did.
        submit(world.client, partner, None)
        [only] = endpoint_receiver.wait_for(1)
        assert only.webhook_id != request.webhook_id
    finally:
        endpoint_receiver.stop()


def test_a_batch_without_a_callback_sends_batch_completed_to_endpoints(
    world, receiver: Receiver
) -> None:
    partner = new_partner(world)
    endpoint = register(world, partner, receiver.url, event_types=["batch.completed"])
    batch = world.client.post(
        "/v1/batches",
        json={"jobs": [{"task": "demo.sleep", "params": {"seconds": 0, "steps": 1}}] * 2},
        headers=partner["headers"],
    ).get_json()
    [request] = receiver.wait_for(1)
    payload = verified(request, endpoint["webhook_secret"])
    assert payload["type"] == "batch.completed"
    assert payload["data"]["batch_id"] == batch["batch_id"]


# ------------------------------------------------------------- test, attempts, rotation
def test_ping_is_signed_and_logged(world, receiver: Receiver) -> None:
    partner = new_partner(world)
    endpoint = register(world, partner, receiver.url)
    response = world.client.post(f"/v1/endpoints/{endpoint['id']}/test", headers=partner["headers"])
    assert response.status_code == 200, response.get_json()
    attempt = response.get_json()
    assert attempt["outcome"] == "delivered" and attempt["status_code"] == 200
    assert attempt["event"] == "ping"
    [request] = receiver.requests
    payload = verified(request, endpoint["webhook_secret"])
    assert payload["type"] == "ping" and payload["data"]["endpoint_id"] == endpoint["id"]
    assert request.webhook_id == attempt["webhook_id"]
    logged = attempts(world, partner, endpoint["id"])["attempts"]
    assert [a["webhook_id"] for a in logged] == [attempt["webhook_id"]]


def test_pings_are_limited_to_one_a_second_per_endpoint(world, receiver: Receiver) -> None:
    partner = new_partner(world)
    endpoint, other = (register(world, partner, receiver.url) for _ in range(2))
    path = f"/v1/endpoints/{endpoint['id']}/test"
    assert world.client.post(path, headers=partner["headers"]).status_code == 200
    # Counted in Redis: a second gateway process (another app on the same Redis) agrees.
    elsewhere, _, _ = gateway_for(world.settings, ADMIN_KEY)
    refused = elsewhere.post(path, headers=partner["headers"])
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "limit_exceeded"
    assert refused.get_json()["error"]["details"] == {
        "limit": "endpoint_test_per_second",
        "value": 1,
    }
    assert refused.headers["Retry-After"] == "1"
    assert len(receiver.requests) == 1  # the refused ping sent nothing
    # Per endpoint: another one of the partner's is not held back.
    other_path = f"/v1/endpoints/{other['id']}/test"
    assert world.client.post(other_path, headers=partner["headers"]).status_code == 200
    # And the endpoint's next turn comes within the second.
    wait_until(
        lambda: world.client.post(path, headers=partner["headers"]).status_code == 200,
        3,
        message="the next ping a second later",
    )
    assert len(receiver.requests) == 3
    assert len(attempts(world, partner, endpoint["id"])["attempts"]) == 2


def test_attempts_are_paged_and_filtered(world, receiver: Receiver) -> None:
    partner = new_partner(world)
    endpoint = register(world, partner, receiver.url)
    receiver.answer(500, 500)  # the first job's first two attempts fail, then 200s
    submit(world.client, partner, None)
    settled_attempts(world, partner, endpoint["id"], 3)
    before_second = utcnow()
    time.sleep(0.01)  # a later millisecond than the first job's last attempt
    submit(world.client, partner, None)
    every = settled_attempts(world, partner, endpoint["id"], 4)
    assert [a["outcome"] for a in every] == ["delivered", "delivered", "retry", "retry"]
    retried = attempts(world, partner, endpoint["id"], status="retry")["attempts"]
    assert [a["status_code"] for a in retried] == [500, 500]
    recent = attempts(world, partner, endpoint["id"], since=before_second)["attempts"]
    assert len(recent) == 1 and recent[0]["subject_id"] != every[-1]["subject_id"]
    first = attempts(world, partner, endpoint["id"], limit=3)
    assert len(first["attempts"]) == 3 and first["next_cursor"] is not None
    rest = attempts(world, partner, endpoint["id"], limit=3, cursor=first["next_cursor"])
    assert rest["attempts"] == every[3:] and rest["next_cursor"] is None
    bad = world.client.get(
        f"/v1/endpoints/{endpoint['id']}/attempts?status=nope", headers=partner["headers"]
    )
    assert bad.status_code == 422


def test_every_secret_within_the_grace_period_signs(world, receiver: Receiver) -> None:
    partner = new_partner(world)
    endpoint = register(world, partner, receiver.url)
    path = f"/v1/endpoints/{endpoint['id']}/rotate-secret"
    second = world.client.post(path, headers=partner["headers"]).get_json()
    third = world.client.post(path, headers=partner["headers"]).get_json()
    assert third["previous_secret_valid_for"] == world.settings.webhook_secret_grace
    submit(world.client, partner, None)
    [request] = receiver.wait_for(1)
    assert len(request.headers["webhook-signature"].split()) == 3
    for secret in (endpoint["webhook_secret"], second["webhook_secret"], third["webhook_secret"]):
        verified(request, secret)


# ------------------------------------------------------------------- policy, recover
def test_410_stops_the_message_and_disables_the_endpoint(world, receiver: Receiver) -> None:
    partner = new_partner(world)
    endpoint = register(world, partner, receiver.url)
    receiver.answer(410)
    submit(world.client, partner, None)
    [gone] = settled_attempts(world, partner, endpoint["id"], 1)
    assert gone["status_code"] == 410 and gone["outcome"] == "failed"
    path = f"/v1/endpoints/{endpoint['id']}"
    view = disabled(world, partner, endpoint["id"])
    assert "410" in view["disabled_reason"]
    # A disabled endpoint gets no new message, and admins see it among the disabled ones.
    other = Receiver()
    try:
        register(world, partner, other.url)
        submit(world.client, partner, None)
        other.wait_for(1)
    finally:
        other.stop()
    assert len(receiver.requests) == 1
    listed = world.client.get("/v1/endpoints?state=disabled", headers=ADMIN).get_json()
    assert endpoint["id"] in [e["id"] for e in listed["endpoints"]]
    # Re-enabling is a PATCH; the endpoint then receives again.
    enabled = world.client.patch(path, json={"enabled": True}, headers=partner["headers"])
    assert enabled.get_json()["enabled"] is True and enabled.get_json()["disabled_reason"] is None
    submit(world.client, partner, None)
    receiver.wait_for(2)


def test_recover_resends_what_failed_during_an_outage(world, receiver: Receiver) -> None:
    partner = new_partner(world)
    endpoint = register(world, partner, receiver.url)
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    receiver.answer(*[503] * 8)  # the outage: every attempt of both jobs fails
    jobs = [submit(world.client, partner, None) for _ in range(2)]
    settled = settled_attempts(world, partner, endpoint["id"], 8)
    assert all(a["status_code"] == 503 for a in settled)
    assert sum(a["outcome"] == "failed" for a in settled) == 2
    failed_ids = {r.webhook_id for r in receiver.requests}
    assert len(failed_ids) == 2
    response = world.client.post(
        f"/v1/endpoints/{endpoint['id']}/recover", json={"since": since}, headers=partner["headers"]
    )
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["recovered"] == 2
    assert set(response.get_json()["webhook_ids"]) == failed_ids
    requests = receiver.wait_for(10)
    resent = requests[8:]
    assert {r.webhook_id for r in resent} == failed_ids  # the same webhook-ids
    assert {verified(r, endpoint["webhook_secret"])["data"]["job_id"] for r in resent} == {
        j["job_id"] for j in jobs
    }
    # Nothing failed since: recovering again queues nothing.
    again = world.client.post(
        f"/v1/endpoints/{endpoint['id']}/recover",
        json={"since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))},
        headers=partner["headers"],
    )
    assert again.get_json()["recovered"] == 0


def test_events_matched_while_disabled_are_held_then_sent_by_recover(world, receiver) -> None:
    """A disabled endpoint's messages are kept (rows), not sent; once it is enabled again,
    ``recover`` sends them with their own webhook-ids, even after Redis forgot them."""
    from jobgate.webhooks.fanout import held_messages
    from jobgate.webhooks.ledger import Deliveries

    partner = new_partner(world)
    endpoint = register(world, partner, receiver.url)
    path = f"/v1/endpoints/{endpoint['id']}"
    off = world.client.patch(path, json={"enabled": False}, headers=partner["headers"])
    assert off.get_json()["enabled"] is False
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    jobs = [submit(world.client, partner, None) for _ in range(2)]
    store, db = world.svc.store, world.svc.db
    index = store.key("endpoint", endpoint["id"], "msgs")
    wait_until(lambda: store.redis.zcard(index) == 2, 20, message="both events fanned out")
    held = held_messages(db, endpoint["id"], since)
    expected = {
        endpoint_message_id(job["job_id"], "job.succeeded", endpoint["id"]): job["job_id"]
        for job in jobs
    }
    assert {row.msg_id for row in held} == set(expected)
    assert receiver.requests == []  # held: nothing was sent
    shown = world.client.get(
        f"/v1/jobs/{jobs[0]['job_id']}/deliveries", headers=partner["headers"]
    ).get_json()
    assert [m["state"] for m in shown["endpoint_messages"]] == ["held"]
    # Redis forgets the first message (past its hold, or lost): its row rebuilds it.
    forgotten = held[0]
    books = Deliveries(store)
    store.redis.delete(
        store.key("msg", forgotten.msg_id),
        books.body_key(forgotten.msg_id, forgotten.event),
        books.body_key(forgotten.subject_id, forgotten.event),
    )
    # recover while the endpoint is still disabled leaves them held.
    early = world.client.post(f"{path}/recover", json={"since": since}, headers=partner["headers"])
    assert early.get_json()["recovered"] == 0
    assert len(held_messages(db, endpoint["id"], since)) == 2
    on = world.client.patch(path, json={"enabled": True}, headers=partner["headers"])
    assert on.get_json()["enabled"] is True
    # A fan-out step that runs again now (its message redelivered) keeps what its first
    # run decided: still held, nothing sent.
    step = fan_out_task_id("job", jobs[1]["job_id"], "job.succeeded")
    store.mark_open(step, deadline=time.time() - 60)
    wait_until(lambda: store.redis.zscore(store.open_key, step) is None, 30, message="re-run")
    assert receiver.requests == []  # enabling alone sends nothing
    response = world.client.post(
        f"{path}/recover", json={"since": since}, headers=partner["headers"]
    )
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["recovered"] == 2
    assert set(response.get_json()["webhook_ids"]) == set(expected)
    sent = receiver.wait_for(2)
    assert {r.webhook_id for r in sent} == set(expected)
    for request in sent:
        payload = verified(request, endpoint["webhook_secret"])
        assert payload["type"] == "job.succeeded"
        assert payload["data"]["job_id"] == expected[request.webhook_id]
    assert held_messages(db, endpoint["id"], since) == []
    again = world.client.post(f"{path}/recover", json={"since": since}, headers=partner["headers"])
    assert again.get_json()["recovered"] == 0


def test_a_held_batch_event_whose_body_redis_lost_is_rebuilt_from_the_rows(world, receiver) -> None:
    """``batch.completed`` held for a disabled endpoint, then Redis loses the batch and the
    message's copy and body: ``recover`` sends it, its body built from the batch's row and
    its members' (before, it stayed held for good)."""
    from jobgate import history
    from jobgate.batches import keys as batch_keys
    from jobgate.webhooks.fanout import held_messages
    from jobgate.webhooks.ledger import Deliveries

    partner = new_partner(world)
    endpoint = register(world, partner, receiver.url)
    path = f"/v1/endpoints/{endpoint['id']}"
    world.client.patch(path, json={"enabled": False}, headers=partner["headers"])
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    member = {"task": "demo.sleep", "params": {"seconds": 0, "steps": 1}}
    created = world.client.post(
        "/v1/batches", json={"jobs": [member, member]}, headers=partner["headers"]
    )
    assert created.status_code == 202, created.get_json()
    batch_id = created.get_json()["batch_id"]
    store, db = world.svc.store, world.svc.db
    wait_until(
        lambda: (
            len(held_messages(db, endpoint["id"], since)) == 3
            and (history.batch(db, batch_id) or {}).get("finished_at")
        ),
        30,
        message="both members and the batch held, the batch archived",
    )
    [held] = [row for row in held_messages(db, endpoint["id"], since) if row.kind == "batch"]
    books = Deliveries(store)
    members = created.get_json()["job_ids"]
    store.redis.delete(
        store.key("msg", held.msg_id),
        books.body_key(held.msg_id, held.event),
        books.body_key(batch_id, held.event),
        *batch_keys(store, batch_id),
        *(store.key("job", job_id) for job_id in members),  # their rows hold them
    )
    world.client.patch(path, json={"enabled": True}, headers=partner["headers"])
    response = world.client.post(
        f"{path}/recover", json={"since": since}, headers=partner["headers"]
    )
    assert response.get_json()["recovered"] == 3, response.get_json()
    sent = receiver.wait_for(3)
    [batch_event] = [r for r in sent if r.webhook_id == held.msg_id]
    payload = verified(batch_event, endpoint["webhook_secret"])
    assert payload["type"] == "batch.completed"
    assert (payload["data"]["batch_id"], payload["data"]["status"]) == (batch_id, "COMPLETED")
    assert [m["status"] for m in payload["data"]["jobs"]] == ["SUCCESS", "SUCCESS"]
    assert held_messages(db, endpoint["id"], since) == []


def test_an_endpoint_failing_for_the_whole_period_is_disabled(world, receiver: Receiver) -> None:
    partner = new_partner(world)
    endpoint = register(world, partner, receiver.url)
    receiver.answer(*[500] * 100)
    submit(world.client, partner, None)
    settled_attempts(world, partner, endpoint["id"], 4)  # the whole schedule failed
    path = f"/v1/endpoints/{endpoint['id']}"
    view = world.client.get(path, headers=partner["headers"]).get_json()
    assert view["enabled"] is True and view["failing_since"] is not None
    failing = world.client.get("/v1/endpoints?state=failing", headers=ADMIN).get_json()
    assert endpoint["id"] in [e["id"] for e in failing["endpoints"]]
    time.sleep(DISABLE_AFTER)  # the failing period itself is what is under test
    submit(world.client, partner, None)
    view = disabled(world, partner, endpoint["id"])
    assert "every attempt failed" in view["disabled_reason"]


def test_a_lost_fan_out_step_is_found_by_the_sweeper_and_sent_once(world, receiver) -> None:
    """The end was recorded but its fan-out message was lost (a broker that dropped it):
    the open step is queued again by the worker's sweeper, and the endpoint gets the event
    once; a step that runs again after that creates nothing twice."""
    from gateway.auth import Principal
    from gateway.jobs import new_record

    partner = new_partner(world)
    endpoint = register(world, partner, receiver.url)
    store = world.svc.store
    record = new_record(Principal("partner", partner["id"]), {"task": "demo.sleep", "params": {}})
    store.create_job(record)  # no message: no worker runs it
    assert store.finish_job(record["job_id"], "SUCCESS", result={"ok": True})  # no fan-out
    step = fan_out_task_id("job", record["job_id"], "job.succeeded")
    store.mark_open(step, deadline=time.time() - 60)  # what the end's script leaves open
    [request] = receiver.wait_for(1, timeout=30)
    payload = verified(request, endpoint["webhook_secret"])
    assert (payload["type"], payload["data"]["job_id"]) == ("job.succeeded", record["job_id"])
    wait_until(lambda: store.redis.zscore(store.open_key, step) is None, 10, message="closed")
    store.mark_open(step, deadline=time.time() - 60)  # the step runs once more
    wait_until(lambda: store.redis.zscore(store.open_key, step) is None, 30, message="re-run")
    settled_attempts(world, partner, endpoint["id"], 1)
    assert len(receiver.requests) == 1
