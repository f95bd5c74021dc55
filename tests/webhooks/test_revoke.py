"""Admin revoke: queued jobs never start (even on a worker started later), running ones stop."""

from __future__ import annotations

import json
from typing import Any

from tests.helpers import WorkerProcess, wait_for_status, wait_until
from tests.webhooks.conftest import Receiver
from tests.webhooks.test_events import submit, webhook_settles


def raw_status(celery: Any, task_id: str) -> str | None:
    """The task's status in the result backend, read raw (None if nothing is stored)."""
    raw = celery.backend.get(celery.backend.get_key_for_task(task_id))
    return json.loads(raw)["status"] if raw else None


def revoke(client: Any, job_id: str, headers: dict[str, str], **body: Any) -> Any:
    return client.post(f"/v1/jobs/{job_id}/revoke", json=body, headers=headers)


def test_queued_job_revoked_never_runs_even_on_a_worker_started_later(
    held_app, held_settings, app, worker, partner, admin_headers, receiver: Receiver
):
    held = held_app.test_client()
    job = submit(held, partner, receiver.url, params={"seconds": 0, "steps": 2})
    job_id = job["job_id"]

    assert revoke(held, job_id, partner["headers"]).status_code == 403
    response = revoke(held, job_id, admin_headers, reason="customer asked")
    assert response.status_code == 202, response.get_json()
    view = response.get_json()
    assert view["status"] == "REVOKED"
    assert view["revocation"]["revoked_by"] == "admin"
    assert view["revocation"]["reason"] == "customer asked"
    assert view["revocation"]["revoked_at"] == view["finished_at"] is not None

    [request] = receiver.wait_for(1)
    payload = request.verify(partner["webhook_secret"])
    assert payload["type"] == "job.revoked"
    assert payload["data"]["revocation"]["reason"] == "customer asked"

    again = revoke(held, job_id, admin_headers, reason="twice")
    assert again.status_code == 202
    assert again.get_json()["revocation"]["reason"] == "customer asked"

    # Revoked while it waited in its partner's queue: it is never dispatched, and a
    # worker started later finds nothing to run.
    svc = held_app.extensions["jobgate"]
    late = WorkerProcess(
        held_settings, concurrency=1, queues=held_settings.queue_jobs, name="late"
    ).start()
    try:
        wait_until(
            lambda: (
                svc.store.redis.llen(held_settings.queue_jobs) == 0
                and raw_status(svc.celery, job_id) == "REVOKED"
            ),
            20,
            message="the late worker to take and refuse the job",
        )
    finally:
        late.stop()
    record = svc.store.job(job_id)
    assert record["status"] == "REVOKED"
    assert record.get("started_at") is None and "progress" not in record
    view = webhook_settles(held, job_id, partner["headers"])
    assert view["webhook"] == {"state": "delivered", "attempts": 1}
    assert len(receiver.requests) == 1


def test_running_job_is_terminated_and_sends_one_event(
    client, app, worker, partner, admin_headers, receiver: Receiver
):
    # One 30 s sleep with no progress report in between: only SIGTERM can stop it early.
    job = submit(client, partner, receiver.url, params={"seconds": 30, "steps": 1})
    job_id = job["job_id"]
    wait_for_status(client, job_id, partner["headers"], ("STARTED", "PROCESSING"))
    response = revoke(client, job_id, admin_headers, reason="runaway")
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["status"] == "REVOKED"
    celery = app.extensions["jobgate"].celery
    assert celery.AsyncResult(job_id).state == "REVOKED"  # written with the revoke
    wait_until(
        lambda: replies_ok(celery, worker) and not still_active(celery, worker, job_id),
        20,
        interval=0.2,
        message="the worker to terminate the job",
    )
    assert raw_status(celery, job_id) == "REVOKED"
    view = webhook_settles(client, job_id, partner["headers"])
    assert view["status"] == "REVOKED"
    assert view["revocation"]["revoked_by"] == "admin"
    assert view["webhook"] == {"state": "delivered", "attempts": 1}
    [request] = receiver.requests
    assert request.verify(partner["webhook_secret"])["type"] == "job.revoked"


def test_revoke_without_terminate_stops_at_the_next_progress_report(
    client, app, worker, partner, admin_headers
):
    job = submit(client, partner, None, params={"seconds": 30, "steps": 300})
    job_id = job["job_id"]
    wait_for_status(client, job_id, partner["headers"], ("PROCESSING",))
    response = revoke(client, job_id, admin_headers, terminate=False)
    assert response.status_code == 202
    celery = app.extensions["jobgate"].celery
    wait_until(
        lambda: replies_ok(celery, worker) and not still_active(celery, worker, job_id),
        20,
        interval=0.2,
        message="the job to stop at its next progress report",
    )
    record = app.extensions["jobgate"].store.job(job_id)
    assert record["status"] == "REVOKED"
    assert record["progress"]["current"] < 300
    # Celery writes nothing for a task that stops this way: the revoke wrote its REVOKED,
    # and no later progress report wrote over it.
    result = celery.AsyncResult(job_id)
    assert result.state == "REVOKED"
    assert str(result.result) == "revoked"
    assert (result.name, result.kwargs) == ("demo.sleep", {"seconds": 30, "steps": 300})


def still_active(celery: Any, worker: WorkerProcess, job_id: str) -> bool:
    """The worker is running ``job_id``."""
    replies = celery.control.inspect(destination=[worker.name], timeout=2, limit=1).active() or {}
    return any(task["id"] == job_id for tasks in replies.values() for task in tasks)


def replies_ok(celery: Any, worker: WorkerProcess) -> bool:
    """The worker answers inspect (so 'not active' is not just a missing reply)."""
    return bool(celery.control.inspect(destination=[worker.name], timeout=2, limit=1).ping())


def test_revoke_errors(client, worker, partner, admin_headers):
    assert revoke(client, "no-such-job", admin_headers).status_code == 404
    job = submit(client, partner, None)
    wait_for_status(client, job["job_id"], partner["headers"], ("SUCCESS",))
    response = revoke(client, job["job_id"], admin_headers)
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "conflict"
    bad = revoke(client, job["job_id"], admin_headers, terminate="maybe")
    assert bad.status_code == 422
    assert (
        client.post(f"/v1/jobs/{job['job_id']}/revoke", headers=partner["headers"]).status_code
        == 403
    )
