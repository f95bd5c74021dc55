"""Server-Sent Events through gunicorn (gevent): order, heartbeats, the end, pub/sub."""

from __future__ import annotations

import time

import pytest
import requests

from gateway.client import parse_sse
from tests.helpers import wait_for_status, wait_until

pytestmark = pytest.mark.integration

ORDER = ["PENDING", "STARTED", "PROCESSING", "SUCCESS"]


def open_stream(gateway_url, job_id, headers):
    response = requests.get(
        f"{gateway_url}/v1/jobs/{job_id}/events", headers=headers, stream=True, timeout=(5, 10)
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    return response


def read_all(response):
    """Every line until the server closes the stream (a read timeout fails the test)."""
    with response:
        return list(response.iter_lines(decode_unicode=True))


def submit(client, partner, task, params):
    response = client.post(
        "/v1/jobs", json={"task": task, "params": params}, headers=partner["headers"]
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()["job_id"]


def test_events_arrive_in_order_with_heartbeats_and_end_after_success(
    client, partner, worker, gateway_url, redis_client
):
    job_id = submit(client, partner, "demo.sleep", {"seconds": 2, "steps": 2})
    response = open_stream(gateway_url, job_id, partner["headers"])
    channel = f"jobgate:events:{job_id}"
    # The stream listens on the job's pub/sub channel (no polling loop).
    assert wait_until(
        lambda: redis_client.pubsub_numsub(channel)[0][1] >= 1, message="the stream to subscribe"
    )
    lines = read_all(response)
    events = list(parse_sse(iter(lines)))
    statuses = [e.data["status"] for e in events]
    assert statuses[0] in ORDER and statuses[-1] == "SUCCESS"
    assert [ORDER.index(s) for s in statuses] == sorted(ORDER.index(s) for s in statuses)
    percents = [e.data["progress"]["percent"] for e in events if e.data["status"] == "PROCESSING"]
    assert percents and percents == sorted(percents), percents
    assert 50 in percents  # the halfway report, held for 1 s, cannot be coalesced away
    assert events[0].event == "status"
    assert all(
        e.event == ("progress" if a.data["status"] == e.data["status"] else "status")
        for a, e in zip(events, events[1:], strict=False)
    )
    assert [int(e.id) for e in events] == list(range(1, len(events) + 1))
    assert events[-1].data["result"] == {"slept": 2.0, "steps": 2}
    assert lines.count(": heartbeat") >= 1  # 1 s between reports, heartbeat every 0.5 s
    assert lines[0] == "retry: 2000"
    # The stream ended by itself after the terminal event and let go of its subscription.
    wait_until(
        lambda: redis_client.pubsub_numsub(channel)[0][1] == 0,
        timeout=5,
        message="the stream's subscription to close",
    )


def test_a_finished_job_streams_one_terminal_event_and_ends(client, partner, worker, gateway_url):
    job_id = submit(client, partner, "demo.fail", {"message": "no disk"})
    wait_for_status(client, job_id, partner["headers"])
    events = list(parse_sse(iter(read_all(open_stream(gateway_url, job_id, partner["headers"])))))
    assert len(events) == 1
    assert events[0].event == "status"
    assert events[0].data["status"] == "FAILURE" and events[0].data["error"] == "no disk"


def test_a_revoke_ends_the_stream_with_revoked(client, partner, admin_headers, worker, gateway_url):
    job_id = submit(client, partner, "demo.sleep", {"seconds": 30, "steps": 30})
    response = open_stream(gateway_url, job_id, partner["headers"])
    lines = response.iter_lines(decode_unicode=True)
    first = next(parse_sse(lines))
    assert first.data["status"] in ("PENDING", "STARTED", "PROCESSING")
    revoked = client.post(
        f"/v1/jobs/{job_id}/revoke", json={"reason": "stop"}, headers=admin_headers
    )
    assert revoked.status_code == 202, revoked.get_json()
    started = time.monotonic()
    rest = list(parse_sse(lines))
    response.close()
    assert rest[-1].data["status"] == "REVOKED"
    assert rest[-1].data["revocation"]["reason"] == "stop"
    assert time.monotonic() - started < 10  # ended by the revoke, not by a timeout


def test_the_stream_is_private_and_errors_are_json(
    client, partner, other_partner, worker, gateway_url
):
    job_id = submit(client, partner, "demo.sleep", {"seconds": 0, "steps": 1})
    url = f"{gateway_url}/v1/jobs/{job_id}/events"
    other = requests.get(url, headers=other_partner["headers"], timeout=5)
    assert other.status_code == 404
    assert other.json()["error"]["code"] == "not_found"
    anonymous = requests.get(url, timeout=5)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthorized"
