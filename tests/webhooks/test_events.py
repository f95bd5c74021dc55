"""Signed webhooks end to end: real gateway, real worker, real receiver on 127.0.0.1."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from standardwebhooks.webhooks import WebhookVerificationError

from gateway.client import verify_webhook
from tests.helpers import wait_until
from tests.webhooks.conftest import Receiver, closed_port_url


def submit(
    client: Any,
    partner: dict[str, Any],
    callback_url: str | None,
    task: str = "demo.sleep",
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body = {
        "task": task,
        "params": params if params is not None else {"seconds": 0, "steps": 1},
        "metadata": {"order": 42},
    }
    if callback_url:
        body["callback_url"] = callback_url
    response = client.post("/v1/jobs", json=body, headers=partner["headers"])
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def webhook_settles(
    client: Any,
    job_id: str,
    headers: dict[str, str],
    states: tuple[str, ...] = ("delivered", "failed"),
    timeout: float = 20.0,
) -> dict[str, Any]:
    """Wait until the job's webhook state is one of ``states``; returns the job view."""

    def settled() -> dict[str, Any] | None:
        view = client.get(f"/v1/jobs/{job_id}", headers=headers).get_json()
        return view if view["webhook"]["state"] in states else None

    return wait_until(settled, timeout, message=f"webhook of {job_id} to reach {states}")


def deliveries(client: Any, job_id: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = client.get(f"/v1/jobs/{job_id}/deliveries", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["deliveries"]


def parse(at: str) -> datetime:
    return datetime.fromisoformat(at.replace("Z", "+00:00"))


def test_success_sends_one_event_that_independent_verifiers_accept(
    client, worker, partner, other_partner, receiver: Receiver
):
    job = submit(client, partner, receiver.url)
    view = webhook_settles(client, job["job_id"], partner["headers"])
    assert view["webhook"] == {"state": "delivered", "attempts": 1}
    [request] = receiver.requests
    payload = request.verify(partner["webhook_secret"])
    verify_webhook(partner["webhook_secret"], request.headers, request.body)
    with pytest.raises(WebhookVerificationError):
        request.verify(other_partner["webhook_secret"])
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["job_id"] == job["job_id"]
    assert payload["data"]["status"] == "SUCCESS"
    assert payload["data"]["result"] == {"slept": 0.0, "steps": 1}
    assert payload["data"]["metadata"] == {"order": 42}
    assert request.headers["user-agent"].startswith("jobgate/")
    assert request.headers["content-type"] == "application/json"
    [attempt] = deliveries(client, job["job_id"], partner["headers"])
    assert attempt["webhook_id"] == request.webhook_id
    assert (attempt["event"], attempt["attempt"], attempt["status_code"]) == (
        "job.succeeded",
        1,
        200,
    )
    assert attempt["next_attempt_at"] is None and attempt["error"] is None


def test_failure_sends_job_failed_with_the_error(client, worker, partner, receiver: Receiver):
    job = submit(client, partner, receiver.url, "demo.fail", {"message": "disk on fire"})
    webhook_settles(client, job["job_id"], partner["headers"])
    [request] = receiver.requests
    payload = request.verify(partner["webhook_secret"])
    assert payload["type"] == "job.failed"
    assert payload["data"]["status"] == "FAILURE"
    assert payload["data"]["error"] == "disk on fire"


def test_500_then_200_is_delivered_on_a_retry_with_the_same_id_and_body(
    client, worker, partner, receiver: Receiver
):
    receiver.answer(500)
    job = submit(client, partner, receiver.url)
    view = webhook_settles(client, job["job_id"], partner["headers"])
    assert view["webhook"] == {"state": "delivered", "attempts": 2}
    first, second = receiver.requests
    assert first.webhook_id == second.webhook_id
    assert first.body == second.body
    for request in (first, second):
        request.verify(partner["webhook_secret"])
    failed, delivered = deliveries(client, job["job_id"], partner["headers"])
    assert (failed["status_code"], failed["outcome"]) == (500, "retry")
    assert failed["next_attempt_at"] is not None
    assert (delivered["status_code"], delivered["attempt"]) == (200, 2)


def test_410_is_not_retried(client, worker, partner, receiver: Receiver):
    receiver.answer(410)
    job = submit(client, partner, receiver.url)
    view = webhook_settles(client, job["job_id"], partner["headers"])
    assert view["webhook"] == {"state": "failed", "attempts": 1}
    [attempt] = deliveries(client, job["job_id"], partner["headers"])
    assert (attempt["status_code"], attempt["outcome"]) == (410, "failed")
    assert attempt["next_attempt_at"] is None
    assert len(receiver.requests) == 1


def test_429_retry_after_is_honoured(client, worker, partner, receiver: Receiver):
    # The configured first delay is 0.2 s (+-20 %): only Retry-After explains a 1 s wait.
    receiver.answer((429, {"Retry-After": "1"}))
    job = submit(client, partner, receiver.url)
    webhook_settles(client, job["job_id"], partner["headers"])
    first, second = receiver.requests
    assert second.at - first.at >= 0.95
    throttled, delivered = deliveries(client, job["job_id"], partner["headers"])
    assert throttled["status_code"] == 429
    assert (parse(throttled["next_attempt_at"]) - parse(throttled["at"])).total_seconds() >= 1
    assert delivered["status_code"] == 200


def test_receiver_down_records_every_retry_then_fails(client, worker, partner):
    job = submit(client, partner, closed_port_url())
    view = webhook_settles(client, job["job_id"], partner["headers"], ("failed",))
    attempts = deliveries(client, job["job_id"], partner["headers"])
    # One first try plus one retry per configured delay (0.2, 0.5, 1.0).
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4]
    assert view["webhook"] == {"state": "failed", "attempts": 4}
    assert all(a["status_code"] is None and "connection" in a["error"] for a in attempts)
    assert all(a["next_attempt_at"] for a in attempts[:-1])
    assert attempts[-1]["next_attempt_at"] is None
    assert len({a["webhook_id"] for a in attempts}) == 1


def test_redeliver_sends_the_same_event_again(
    client, worker, partner, other_partner, receiver: Receiver
):
    job = submit(client, partner, receiver.url)
    webhook_settles(client, job["job_id"], partner["headers"])
    url = f"/v1/jobs/{job['job_id']}/redeliver"
    assert client.post(url, headers=other_partner["headers"]).status_code == 404
    assert (
        client.get(
            f"/v1/jobs/{job['job_id']}/deliveries", headers=other_partner["headers"]
        ).status_code
        == 404
    )
    response = client.post(url, headers=partner["headers"])
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["event"] == "job.succeeded"
    first, again = receiver.wait_for(2)
    assert again.webhook_id == first.webhook_id == response.get_json()["webhook_id"]
    assert again.body == first.body
    again.verify(partner["webhook_secret"])
    view = webhook_settles(client, job["job_id"], partner["headers"])
    assert view["webhook"]["attempts"] == 2
    assert [a["redelivery"] for a in deliveries(client, job["job_id"], partner["headers"])] == [
        False,
        True,
    ]


def test_redeliver_needs_a_callback(client, worker, partner):
    job = submit(client, partner, None)
    response = client.post(f"/v1/jobs/{job['job_id']}/redeliver", headers=partner["headers"])
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "conflict"


def test_rotation_signs_with_both_secrets_during_grace(
    client, worker, partner, admin_headers, receiver: Receiver
):
    old = partner["webhook_secret"]
    response = client.post(f"/v1/partners/{partner['id']}/rotate-secret", headers=admin_headers)
    assert response.status_code == 200, response.get_json()
    new = response.get_json()["webhook_secret"]
    assert new != old
    job = submit(client, partner, receiver.url)
    webhook_settles(client, job["job_id"], partner["headers"])
    [request] = receiver.requests
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert request.verify(old)["data"]["job_id"] == job["job_id"]
    assert request.verify(new)["data"]["job_id"] == job["job_id"]
    verify_webhook(new, request.headers, request.body)
