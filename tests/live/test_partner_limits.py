"""Per-partner limits that keep one partner from starving the others at the gateway:
``max_open_streams`` (SSE streams and held ``?wait=`` reads, through gunicorn as shipped)
and ``max_endpoints``; a disabled partner or a key rotated with no grace ends its streams.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import requests

from gateway.auth import Principal
from gateway.jobs import new_record
from jobgate import streams
from jobgate.store import Store
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

CAP = 3


@pytest.fixture
def store(settings) -> Store:
    return Store.from_url(settings.redis_url, prefix=settings.key_prefix)


def pending_job(store: Store, partner: dict[str, Any]) -> str:
    """A job with a record but no queued message: it stays PENDING, so streams stay open."""
    record = new_record(
        Principal("partner", partner["id"]), {"task": "demo.sleep", "params": {"seconds": 0}}
    )
    store.create_job(record)
    return record["job_id"]


def set_limits(client, admin_headers, partner, **limits: Any) -> dict[str, Any]:
    answer = client.patch(
        f"/v1/partners/{partner['id']}", json={"limits": limits}, headers=admin_headers
    )
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()


def open_stream(gateway_url: str, job_id: str, partner: dict[str, Any]) -> requests.Response:
    return requests.get(
        f"{gateway_url}/v1/jobs/{job_id}/events",
        headers=partner["headers"],
        stream=True,
        timeout=(5, 10),
    )


def assert_limit_exceeded(response: requests.Response, value: int) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "limit_exceeded"
    assert error["details"] == {"limit": "max_open_streams", "value": value}
    assert int(response.headers["Retry-After"]) > 0


def held_read(gateway_url: str, job_id: str, partner: dict[str, Any], wait: float):
    return requests.get(
        f"{gateway_url}/v1/jobs/{job_id}",
        params={"wait": wait},
        headers=partner["headers"],
        timeout=wait + 10,
    )


def test_streams_and_held_reads_stop_at_the_cap_and_others_read_on(
    gateway_url, client, admin_headers, partner, other_partner, store
):
    detail = set_limits(client, admin_headers, partner, max_open_streams=CAP)
    assert detail["limits"]["max_open_streams"] == CAP
    job_id, other_job = pending_job(store, partner), pending_job(store, other_partner)
    opened = [open_stream(gateway_url, job_id, partner) for _ in range(CAP - 1)]
    held: list[requests.Response] = []
    holder = threading.Thread(
        target=lambda: held.append(held_read(gateway_url, job_id, partner, 8))
    )
    try:
        assert all(r.status_code == 200 for r in opened)
        holder.start()  # a held read counts like a stream: CAP open together
        wait_until(lambda: streams.count(store, partner["id"]) == CAP, message="CAP open")
        assert_limit_exceeded(open_stream(gateway_url, job_id, partner), CAP)
        assert_limit_exceeded(held_read(gateway_url, job_id, partner, 1), CAP)
        # The other partner streams and reads as usual, and quickly.
        started = time.monotonic()
        read = requests.get(
            f"{gateway_url}/v1/jobs/{other_job}", headers=other_partner["headers"], timeout=5
        )
        assert read.status_code == 200 and time.monotonic() - started < 1.0
        other = open_stream(gateway_url, other_job, other_partner)
        assert other.status_code == 200
        other.close()
        assert requests.get(f"{gateway_url}/healthz", timeout=5).status_code == 200
        # A stream that ends gives its place back.
        opened.pop().close()
        wait_until(
            lambda: streams.count(store, partner["id"]) == CAP - 1,
            timeout=5,
            message="the closed stream's lease to go",
        )
        again = open_stream(gateway_url, job_id, partner)
        opened.append(again)
        assert again.status_code == 200
    finally:
        for response in opened:
            response.close()
        holder.join(20)
    assert held and held[0].status_code == 200


@pytest.mark.parametrize("how", ["disable", "rotate-key"])
def test_disable_or_rotating_the_key_ends_streams_and_held_reads(
    how, gateway_url, client, admin_headers, partner, store
):
    job_id = pending_job(store, partner)
    opened = [open_stream(gateway_url, job_id, partner) for _ in range(2)]
    assert all(r.status_code == 200 for r in opened)
    held: list[tuple[float, requests.Response]] = []
    holder = threading.Thread(
        target=lambda: held.append((time.monotonic(), held_read(gateway_url, job_id, partner, 25)))
    )
    holder.start()
    wait_until(lambda: streams.count(store, partner["id"]) == 3, message="3 open")
    ended: list[float] = []

    def read_to_end(response: requests.Response) -> None:
        with response:
            for _ in response.iter_lines():
                pass
        ended.append(time.monotonic())

    readers = [threading.Thread(target=read_to_end, args=(r,)) for r in opened]
    for reader in readers:
        reader.start()
    body = {"grace": 0} if how == "rotate-key" else None
    started = time.monotonic()
    answer = client.post(f"/v1/partners/{partner['id']}/{how}", json=body, headers=admin_headers)
    assert answer.status_code == 200, answer.get_json()
    for reader in readers:
        reader.join(10)
    holder.join(10)
    assert len(ended) == 2 and max(ended) - started < 2.0, [t - started for t in ended]
    assert held and held[0][1].status_code == 200 and held[0][0] - started < 2.0
    wait_until(
        lambda: streams.count(store, partner["id"]) == 0, timeout=5, message="leases released"
    )


def test_a_killed_streams_lease_runs_out(store, partner):
    """A gateway process that dies keeps no share: its entries stop counting once their
    lease runs out, without anyone removing them."""
    lease = streams.take(store, partner["id"], 1, lease=0.5)
    assert lease is not None
    assert streams.take(store, partner["id"], 1) is None
    lease.refresh()  # a live stream keeps its place past the first lease
    # The process "dies": nothing refreshes or releases it any more.
    taken = wait_until(
        lambda: streams.take(store, partner["id"], 1), timeout=5, message="the lease to run out"
    )
    assert streams.count(store, partner["id"]) == 1
    taken.release()
    assert streams.count(store, partner["id"]) == 0


def test_max_endpoints_refuses_one_more(client, admin_headers, partner, other_partner):
    set_limits(client, admin_headers, partner, max_endpoints=2)

    def register(n: int, who: dict[str, Any] = partner):
        return client.post(
            "/v1/endpoints",
            json={"url": f"http://127.0.0.1:65000/hooks/{n}"},
            headers=who["headers"],
        )

    first, second = register(1), register(2)
    assert first.status_code == 201 and second.status_code == 201
    refused = register(3)
    assert refused.status_code == 429, refused.get_json()
    error = refused.get_json()["error"]
    assert error["code"] == "limit_exceeded"
    assert error["details"] == {"limit": "max_endpoints", "value": 2}
    assert int(refused.headers["Retry-After"]) > 0
    listed = client.get("/v1/endpoints", headers=partner["headers"]).get_json()["endpoints"]
    assert len(listed) == 2  # nothing was created
    # The cap is the partner's own: the other partner registers on while it is full.
    assert [register(n, other_partner).status_code for n in range(3)] == [201, 201, 201]
    # Deleting one makes room; a raised limit does too.
    assert client.delete(f"/v1/endpoints/{first.get_json()['id']}", headers=partner["headers"])
    assert register(4).status_code == 201
    set_limits(client, admin_headers, partner, max_endpoints=3)
    assert register(5).status_code == 201
    assert register(6).status_code == 429
