"""``jobgate worker`` runs two Celery workers and supervises them, in real subprocesses.

The job pool (prefork, ``jobs`` queue) and the delivery pool (gevent, ``webhooks`` queue)
are the supervisor's children: SIGTERM stops both warm (a running job finishes), and when
one dies the supervisor stops the other and exits non-zero, so a process manager restarts
the pair instead of leaving half a worker running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid

import pytest

from gateway import create_app
from gateway.launch import descendants
from tests.helpers import WorkerProcess, wait_for_status, wait_until
from tests.integration.test_cli import alive, child_pids

pytestmark = pytest.mark.integration


def own_queues(settings):
    tag = uuid.uuid4().hex[:8]
    return settings.with_overrides(
        queue_jobs=f"pools-{tag}", queue_webhooks=f"pools-{tag}-h", key_prefix=f"pools-{tag}"
    )


def pools(worker: WorkerProcess) -> dict[str, int]:
    """The supervisor's children: pool name -> pid of that Celery worker's main process."""
    found = {}
    for pid in child_pids(worker.proc.pid):
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            args = cmdline.read().split(b"\0")
        queue = args[args.index(b"-Q") + 1].decode()
        found["webhooks" if queue == worker.settings.queue_webhooks else "jobs"] = pid
    return found


def everything(worker: WorkerProcess) -> list[int]:
    """The supervisor, its pools and their processes."""
    return [worker.proc.pid, *descendants(worker.proc.pid)]


def test_sigterm_stops_both_pools_warm(settings, redis_client, admin_headers):
    own = own_queues(settings)
    app = create_app(own)
    client = app.test_client()
    key = client.post("/v1/partners", json={"name": "pools"}, headers=admin_headers).get_json()[
        "api_key"
    ]
    headers = {"Authorization": f"Bearer {key}"}
    worker = WorkerProcess(own, concurrency=1, name="pools").start()
    try:
        children = pools(worker)
        assert set(children) == {"jobs", "webhooks"}
        processes = everything(worker)
        job = client.post(
            "/v1/jobs",
            json={"task": "demo.sleep", "params": {"seconds": 2, "steps": 4}},
            headers=headers,
        ).get_json()
        wait_for_status(client, job["job_id"], headers, ("PROCESSING",))
        worker.proc.send_signal(signal.SIGTERM)  # what systemd or Kubernetes sends
        assert worker.proc.wait(timeout=30) == 0
        # Warm: the running job finished before the job pool stopped.
        assert wait_for_status(client, job["job_id"], headers, timeout=1)["status"] == "SUCCESS"
        assert not any(alive(pid) for pid in processes)
    finally:
        worker.stop()


@pytest.mark.parametrize("dies", ["webhooks", "jobs"])
def test_when_one_pool_dies_the_supervisor_stops_the_other_and_fails(
    settings, redis_client, dies: str
):
    worker = WorkerProcess(own_queues(settings), concurrency=1, name="pools").start()
    try:
        children = pools(worker)
        processes = everything(worker)
        # One pool dies (OOM killer, a crash): the other must not run on alone.
        os.kill(children[dies], signal.SIGKILL)
        assert worker.proc.wait(timeout=30) != 0
        wait_until(
            lambda: not any(alive(pid) for pid in processes),
            10,
            0.1,
            "every process of the worker to exit",
        )
        other = {"jobs": "webhooks", "webhooks": "jobs"}[dies]
        assert f"{dies} pool exited with -9; stopping {other} pool" in worker.log()
    finally:
        worker.stop()


def test_pools_stop_when_the_supervisor_is_sigkilled(settings, redis_client):
    """No orphans: Linux sends each pool SIGTERM when its supervisor dies (PDEATHSIG)."""
    worker = WorkerProcess(own_queues(settings), concurrency=1, name="pools").start()
    processes = everything(worker)
    try:
        worker.proc.kill()  # the supervisor alone, not its pools' groups
        worker.proc.wait(timeout=10)
        wait_until(
            lambda: not any(alive(pid) for pid in processes),
            30,
            0.1,
            "both pools to stop after their supervisor died",
        )
    finally:
        for pid in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_pool_only_runs_one_plain_celery_worker(settings, redis_client):
    own = own_queues(settings)
    worker = WorkerProcess(own, concurrency=1, name="only")
    worker.args += ["--pool-only", "webhooks"]
    worker.nodes = [worker.webhooks_name]
    worker.start()
    try:
        with open(f"/proc/{worker.proc.pid}/cmdline", "rb") as cmdline:
            args = cmdline.read().split(b"\0")
        # exec'd: the process is the Celery worker itself, on the webhooks queue only.
        assert args[1:4] == [b"-m", b"celery", b"-A"]
        assert args[args.index(b"-Q") + 1].decode() == own.queue_webhooks
        assert args[args.index(b"-P") + 1] == b"gevent"
    finally:
        worker.stop()
