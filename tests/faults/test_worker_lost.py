"""A lost worker: a task not safe to run twice ends FAILURE (worker_lost); a job whose
pool process alone died runs again at once. Each with Redis and with RabbitMQ as the broker."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from config import Settings
from gateway.launch import descendants
from jobgate.events import webhook_id
from tests.faults.conftest import BROKERS, doomed_worker, heir_after
from tests.helpers import WorkerProcess, gateway_for, wait_for_status, wait_until
from tests.reliability.conftest import WebhookReceiver


def submit(client: Any, partner: dict[str, Any], task: str, params: dict, url: str) -> str:
    answer = client.post(
        "/v1/jobs",
        headers=partner["headers"],
        json={"task": task, "params": params, "callback_url": url},
    )
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()["job_id"]


pytestmark = pytest.mark.parametrize("broker", BROKERS, indirect=True)


def test_an_unsafe_task_whose_worker_died_fails_with_worker_lost_once(
    fault_settings: Settings, receiver: WebhookReceiver, workers: list[WorkerProcess]
) -> None:
    client, partner, _ = gateway_for(fault_settings, fault_settings.admin_keys[0])
    receiver.secrets = [partner["webhook_secret"]]
    doomed = doomed_worker(fault_settings, workers, "job.started")
    job_id = submit(client, partner, "demo.once", {"seconds": 0.2, "steps": 1}, receiver.url)
    heir_after(doomed, fault_settings, workers)

    wait_until(lambda: receiver.terminal_ids(job_id), 40, 0.05, "the terminal webhook")
    view = client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).get_json()
    assert view["status"] == "FAILURE"
    assert view["error"].startswith("worker_lost:") and "not safe to run twice" in view["error"]
    assert view["result"] is None
    assert list(receiver.terminal_ids(job_id)) == [webhook_id(job_id, "job.failed")]
    [hook] = receiver.accepted(job_id)
    assert hook.payload["data"]["error"] == view["error"]


def test_an_unsafe_task_whose_worker_died_after_its_end_was_committed_succeeds_once(
    fault_settings: Settings, receiver: WebhookReceiver, workers: list[WorkerProcess]
) -> None:
    """The worker dies between committing the job's end to the database and recording it
    in Redis: the heir, given the job again, finds the committed end and records it. The
    task (not safe to run twice) does not run again, and the job is not announced as
    failed with worker_lost: one job.succeeded, with the result the first run had."""
    client, partner, _ = gateway_for(fault_settings, fault_settings.admin_keys[0])
    receiver.secrets = [partner["webhook_secret"]]
    doomed = doomed_worker(fault_settings, workers, "job.end.committed")
    job_id = submit(client, partner, "demo.once", {"seconds": 0.2, "steps": 1}, receiver.url)
    heir = heir_after(doomed, fault_settings, workers)

    wait_until(lambda: receiver.terminal_ids(job_id), 40, 0.05, "the terminal webhook")
    view = client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).get_json()
    assert view["status"] == "SUCCESS", view
    assert view["error"] is None and view["result"] is not None
    assert list(receiver.terminal_ids(job_id)) == [webhook_id(job_id, "job.succeeded")]
    [hook] = receiver.accepted(job_id)
    assert hook.payload["data"]["result"] == view["result"]
    assert "not running it again" in heir.log()


def _pool_processes(root: int) -> list[int]:
    """The prefork pool processes under ``root``: the prefork forks with no child of
    their own (their parent, the pool's main process, has them)."""

    def cmdline(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return ""

    prefork = [pid for pid in descendants(root) if "prefork" in cmdline(pid)]
    return [pid for pid in prefork if not descendants(pid)]


def test_a_pool_process_killed_under_a_live_worker_runs_the_job_again_at_once(
    fault_settings: Settings, receiver: WebhookReceiver, workers: list[WorkerProcess]
) -> None:
    """Only the pool process dies (OOM killer, segfault); the worker lives. Celery 5.7's
    own Task.retry_on_worker_lost, which jobgate's job tasks had switched on by sharing
    its name, re-published such a job with a 180 s countdown; the message must instead go
    straight back (reject_on_worker_lost) and the job run again with runs=2."""
    client, partner, services = gateway_for(fault_settings, fault_settings.admin_keys[0])
    receiver.secrets = [partner["webhook_secret"]]
    worker = WorkerProcess(fault_settings, concurrency=1, name="survivor").start()
    workers.append(worker)
    job_id = submit(client, partner, "demo.sleep", {"seconds": 3, "steps": 3}, receiver.url)
    wait_for_status(client, job_id, partner["headers"], ("PROCESSING",))
    pool = wait_until(lambda: _pool_processes(worker.proc.pid), 10, 0.05, "the pool process")
    for pid in pool:
        os.kill(pid, signal.SIGKILL)

    wait_until(lambda: receiver.terminal_ids(job_id), 40, 0.05, "the terminal webhook")
    view = client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).get_json()
    assert view["status"] == "SUCCESS"
    assert int(services.store.job(job_id)["runs"]) == 2
    assert list(receiver.terminal_ids(job_id)) == [webhook_id(job_id, "job.succeeded")]
