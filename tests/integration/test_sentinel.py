"""Redis Sentinel: the store, the broker and the result backend all follow a failover.

A real primary, a replica and three sentinels (``redis-server``/``redis-sentinel`` on free
127.0.0.1 ports, in a temp dir), a real ``jobgate worker`` and a real gunicorn gateway,
all configured with ``REDIS_URL=sentinel://…`` and ``JOBGATE_REDIS_SENTINEL_MASTER``.
The primary is SIGKILLed while jobs run; jobs submitted after the failover complete with
signed webhooks, and the jobs that were in flight end with one terminal status each.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from bench.sentinel import MASTER, SentinelGroup
from config import Settings
from jobgate.sealing import generate_key
from tests.helpers import WorkerProcess, gunicorn, wait_until
from tests.webhooks.conftest import Receiver

pytestmark = [
    pytest.mark.sentinel,
    pytest.mark.faults,  # SIGKILLs the Redis primary; about 40 s
    pytest.mark.skipif(
        not (shutil.which("redis-sentinel") and shutil.which("redis-server")),
        reason="needs the redis-server and redis-sentinel binaries "
        "(apt-get install redis-server redis-sentinel)",
    ),
    pytest.mark.timeout(120),
]

ADMIN_KEY = "sentinel-admin-key"
SECRET_KEY = generate_key()
TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    started = SentinelGroup()
    try:
        yield started.start()
    finally:
        started.stop()


def _submit(base: str, key: str, params: dict[str, Any], callback: str, deadline: float) -> str:
    """POST a job, trying again (a 503 while Redis fails over) until ``deadline``."""
    body = {"task": "demo.sleep", "params": params, "callback_url": callback}
    while True:
        try:
            answer = requests.post(
                f"{base}/v1/jobs", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10
            )
            if answer.status_code == 202:
                return answer.json()["job_id"]
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "the gateway took no job after the failover"
        time.sleep(0.2)


def _status(base: str, key: str, job_id: str) -> str | None:
    try:
        answer = requests.get(
            f"{base}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}, timeout=10
        )
    except requests.RequestException:
        return None
    return answer.json()["status"] if answer.status_code == 200 else None


def test_a_failover_loses_no_job_the_replica_had(group: SentinelGroup, own_database: str) -> None:
    settings = Settings(
        redis_url=group.url,
        database_url=own_database,
        redis_sentinel_master=MASTER,
        admin_keys=(ADMIN_KEY,),
        secret_key=SECRET_KEY,
        callback_allow_http=True,
        callback_allowlist="127.0.0.0/8",
        webhook_retry_delays=(0.2, 0.5, 1.0, 2.0, 4.0),
        webhook_timeout=3.0,
        rate_limit=0,
        visibility_timeout=6,
        sweep_interval=1.0,
        demo_tasks=True,
    )
    receiver = Receiver()
    worker = WorkerProcess(settings, concurrency=2, name="sentinel")
    try:
        worker.start()
        with gunicorn(settings, workers=1) as base:
            created = requests.post(
                f"{base}/v1/partners",
                json={"name": "acme"},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                timeout=10,
            )
            assert created.status_code == 201, created.text
            key, secret = created.json()["api_key"], created.json()["webhook_secret"]

            # In flight at the kill: two running (the pool has two processes), two queued.
            soon = time.monotonic() + 30
            slow = {"seconds": 2, "steps": 4}
            in_flight = [_submit(base, key, slow, receiver.url, soon) for _ in range(4)]
            wait_until(
                lambda: (
                    sum(_status(base, key, j) in ("STARTED", "PROCESSING") for j in in_flight) >= 2
                ),
                20,
                message="two jobs running",
            )
            # What the replica has acknowledged survives; later writes may not (async).
            primary = group.client(group.primary_port)
            assert primary.execute_command("WAIT", 1, 2000) == 1
            replica = group.replica_port
            promoted_after = group.kill_primary(timeout=30)  # SIGKILL, then the promotion
            assert group.master_port() == replica

            after = [
                _submit(base, key, {"seconds": 0}, receiver.url, time.monotonic() + 30)
                for _ in range(4)
            ]
            everything = in_flight + after
            finals = wait_until(
                lambda: (
                    (found := {j: _status(base, key, j) for j in everything})
                    and all(status in TERMINAL for status in found.values())
                    and found
                ),
                45,
                interval=0.2,
                message="every job to end",
            )

            def webhooked() -> dict[str, list[dict[str, Any]]]:
                events: dict[str, list[dict[str, Any]]] = {}
                for request in list(receiver.requests):
                    payload = request.verify(secret)  # raises on a bad signature
                    events.setdefault(payload["data"]["job_id"], []).append(payload)
                return events

            events = wait_until(
                lambda: (found := webhooked()) and set(found) >= set(everything) and found,
                30,
                interval=0.2,
                message="a signed webhook for every job",
            )
            assert requests.get(f"{base}/readyz", timeout=10).status_code == 200
    finally:
        worker.stop()
        receiver.stop()

    assert promoted_after < 15
    for job_id in after:
        assert finals[job_id] == "SUCCESS", (job_id, finals[job_id])
    for job_id in everything:
        # One terminal status per job: every webhook it got says the status it ended with.
        said = {event["data"]["status"] for event in events[job_id]}
        assert said == {finals[job_id]}, (job_id, said, finals[job_id])
