"""A warm shutdown lets the running job finish on its own worker: never a second run."""

from __future__ import annotations

import signal

from config import Settings
from jobgate.events import webhook_id
from tests.helpers import WorkerProcess, gateway_for, wait_until
from tests.reliability.conftest import WebhookReceiver


def test_a_job_outliving_the_visibility_timeout_during_a_warm_shutdown_runs_once(
    fault_settings: Settings, receiver: WebhookReceiver, workers: list[WorkerProcess]
) -> None:
    """The consumer stops first at a warm shutdown while the pool finishes its job; the
    job's message must stay fresh until it is acked, or another worker restores it
    (visibility timeout 4 s here, the job takes 9 s) and runs it a second time (for a task
    not safe to run twice: ends it FAILURE worker_lost while it still runs)."""
    client, partner, svc = gateway_for(fault_settings, fault_settings.admin_keys[0])
    receiver.secrets = [partner["webhook_secret"]]
    leaving = WorkerProcess(fault_settings, concurrency=1, name="leaving").start()
    workers.append(leaving)
    answer = client.post(
        "/v1/jobs",
        headers=partner["headers"],
        json={
            "task": "demo.once",
            "params": {"seconds": 9, "steps": 9},
            "callback_url": receiver.url,
        },
    )
    job_id = answer.get_json()["job_id"]
    wait_until(lambda: svc.store.job(job_id).get("started_at"), 20, 0.05, "the job to start")
    workers.append(WorkerProcess(fault_settings, concurrency=1, name="other").start())
    leaving.child.send(signal.SIGTERM, group=False)  # warm: finish what runs, take nothing

    wait_until(lambda: receiver.terminal_ids(job_id), 40, 0.1, "the terminal webhook")
    record = svc.store.job(job_id)
    assert record["status"] == "SUCCESS", record
    assert record["runs"] == "1" and record["worker"] == leaving.name
    assert list(receiver.terminal_ids(job_id)) == [webhook_id(job_id, "job.succeeded")]
    wait_until(lambda: leaving.proc.poll() is not None, 30, 0.1, "the warm shutdown to end")
