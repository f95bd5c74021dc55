"""A task declared not safe to run twice ends FAILURE (worker_lost) when its worker dies."""

from __future__ import annotations

from config import Settings
from jobgate.events import webhook_id
from tests.helpers import WorkerProcess, gateway_for, wait_until
from tests.reliability.conftest import WebhookReceiver


def test_an_unsafe_task_whose_worker_died_fails_with_worker_lost_once(
    fault_settings: Settings, receiver: WebhookReceiver, workers: list[WorkerProcess]
) -> None:
    client, partner, _ = gateway_for(fault_settings, fault_settings.admin_keys[0])
    receiver.secrets = [partner["webhook_secret"]]
    doomed = WorkerProcess(
        fault_settings, concurrency=1, name="doomed", env={"JOBGATE_FAILPOINTS": "job.started=kill"}
    ).start()
    workers.append(doomed)
    answer = client.post(
        "/v1/jobs",
        headers=partner["headers"],
        json={
            "task": "demo.once",
            "params": {"seconds": 0.2, "steps": 1},
            "callback_url": receiver.url,
        },
    )
    job_id = answer.get_json()["job_id"]
    wait_until(lambda: doomed.proc.poll() is not None, 30, 0.02, "the worker to be killed")
    workers.append(WorkerProcess(fault_settings, concurrency=1, name="heir").start())

    wait_until(lambda: receiver.terminal_ids(job_id), 40, 0.05, "the terminal webhook")
    view = client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).get_json()
    assert view["status"] == "FAILURE"
    assert view["error"].startswith("worker_lost:") and "not safe to run twice" in view["error"]
    assert view["result"] is None
    assert list(receiver.terminal_ids(job_id)) == [webhook_id(job_id, "job.failed")]
    [hook] = receiver.accepted(job_id)
    assert hook.payload["data"]["error"] == view["error"]
