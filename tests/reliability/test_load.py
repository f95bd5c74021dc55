"""200 concurrent clients against gunicorn for a bounded time: no server errors, nothing lost.

gunicorn runs ``wsgi:app`` exactly as operators start it (gunicorn.conf.py: gevent, 2
workers) with the suite's settings in its environment. Each client mixes submissions, status
reads and listings; afterwards every accepted job must reach SUCCESS on the real worker.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import requests

from tests.helpers import gunicorn as serve_gunicorn
from tests.helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

CLIENTS = 200
DURATION = 10.0  # seconds of load
MAX_SUBMITS = 300  # bounded, so the suite's worker drains them in seconds
SLEEP = {"task": "demo.sleep", "params": {"seconds": 0, "steps": 1}}


@pytest.fixture
def gunicorn(settings, redis_client) -> Iterator[str]:
    """``gunicorn wsgi:app`` (2 gevent workers) on a free loopback port."""
    with serve_gunicorn(
        settings, workers=2, extra=("--backlog", "2048", "--timeout", "60")
    ) as base:
        yield base


class Load:
    """Shared counters of one load run (threads append under a lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.job_ids: list[str] = []
        self.reserved = 0

    def submit_allowed(self) -> bool:
        """Reserve one of the MAX_SUBMITS submissions; False once all are taken."""
        with self.lock:
            self.reserved += 1
            return self.reserved <= MAX_SUBMITS


def client_loop(
    base: str,
    headers: dict[str, str],
    load: Load,
    start: threading.Barrier,
    deadline_box: list[float],
    number: int,
) -> None:
    """One client: submit, read its job, list; repeat until the deadline."""
    session = requests.Session()
    session.headers.update(headers)
    mine: list[str] = []
    step = number
    start.wait()
    while time.monotonic() < deadline_box[0]:
        step += 1
        kind = step % 4
        began = time.monotonic()
        try:
            if kind == 0 and load.submit_allowed():
                label = "POST /v1/jobs"
                response = session.post(f"{base}/v1/jobs", json=SLEEP, timeout=30)
                if response.status_code == 202:
                    mine.append(response.json()["job_id"])
                    with load.lock:
                        load.job_ids.append(mine[-1])
            elif kind in (1, 2) and mine:
                label = "GET /v1/jobs/{id}"
                response = session.get(f"{base}/v1/jobs/{mine[step % len(mine)]}", timeout=30)
            else:
                label = "GET /v1/jobs"
                response = session.get(f"{base}/v1/jobs?limit=10", timeout=30)
        except requests.RequestException as exc:
            with load.lock:
                load.errors[type(exc).__name__] += 1
            continue
        with load.lock:
            load.statuses[f"{label} {response.status_code}"] += 1
            load.latencies.append(time.monotonic() - began)
    session.close()


def test_200_concurrent_clients_get_no_server_errors(gunicorn, partner, worker, redis_client):
    load = Load()
    start = threading.Barrier(CLIENTS + 1)
    deadline_box = [0.0]
    threads = [
        threading.Thread(
            target=client_loop,
            daemon=True,
            args=(gunicorn, partner["headers"], load, start, deadline_box, n),
        )
        for n in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    deadline_box[0] = time.monotonic() + DURATION
    began = time.monotonic()
    start.wait()
    for thread in threads:
        thread.join(timeout=DURATION + 60)
    elapsed = time.monotonic() - began
    assert not any(t.is_alive() for t in threads), "a client hung"

    total = sum(load.statuses.values())
    server_errors = {k: v for k, v in load.statuses.items() if k.rsplit(" ", 1)[1] >= "500"}
    latencies = sorted(load.latencies)
    print(
        f"\nload: {CLIENTS} clients, {elapsed:.1f}s, {total} responses "
        f"({total / elapsed:.0f}/s), p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.0f} ms, "
        f"submitted {len(load.job_ids)}"
    )
    print("statuses:", dict(sorted(load.statuses.items())), "transport errors:", dict(load.errors))
    assert server_errors == {}, server_errors
    assert load.errors == Counter(), load.errors
    assert total >= CLIENTS, "every client must have completed at least one request"
    assert load.statuses["POST /v1/jobs 202"] == len(load.job_ids) > 0
    unexpected = {k for k in load.statuses if not k.endswith((" 200", " 202"))}
    assert not unexpected, unexpected

    # Nothing lost: every accepted job is recorded and finishes on the real worker.
    def finished() -> bool:
        pipe = redis_client.pipeline()
        for job_id in load.job_ids:
            pipe.hget(f"jobgate:job:{job_id}", "status")
        return all(status == "SUCCESS" for status in pipe.execute())

    wait_until(finished, 120, 0.5, f"{len(load.job_ids)} load jobs to succeed")
    assert len(set(load.job_ids)) == len(load.job_ids)
