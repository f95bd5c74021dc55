"""A worker that dies between recording a job's end and queuing its webhook loses nothing.

With acks_late the job's message comes back; the worker must not run the job again,
but must replay its idempotent side effects so the terminal event is still sent, once.
"""

from __future__ import annotations

import json

import pytest

from gateway.auth import Principal
from gateway.jobs import new_record
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def test_redelivered_finished_job_sends_its_missing_webhook_once(
    app, client, partner, worker, receiver, redis_client
):
    svc = app.extensions["jobgate"]
    principal = Principal("partner", partner["id"])
    record = new_record(
        principal,
        {"task": "demo.sleep", "params": {"seconds": 0, "steps": 1}, "callback_url": receiver.url},
    )
    svc.store.create_job(record)
    # The crash: the end is recorded but nothing was queued after it.
    assert svc.store.finish_job(record["job_id"], "SUCCESS", result={"slept": 0.0, "steps": 1})

    for _ in range(2):  # the broker redelivers the job's message (twice, to be sure)
        svc.celery.send_task(
            "demo.sleep",
            kwargs={"seconds": 0, "steps": 1},
            task_id=record["job_id"],
            queue=svc.settings.queue_jobs,
        )
    [event] = receiver.wait_for(1)
    payload = event.verify(partner["webhook_secret"])
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["job_id"] == record["job_id"]

    def drained() -> bool:
        queues = (svc.settings.queue_jobs, svc.settings.queue_webhooks)
        return all(redis_client.llen(q) == 0 for q in queues) and redis_client.hlen("unacked") == 0

    wait_until(drained, timeout=20, message="both queues to drain")
    assert len(receiver.requests) == 1, "the second redelivery must not send again"
    view = client.get(f"/v1/jobs/{record['job_id']}", headers=partner["headers"]).get_json()
    assert view["started_at"] is None, "a finished job is never run again"
    assert view["webhook"] == {"state": "delivered", "attempts": 1}


def test_the_end_and_its_webhook_message_are_one_write(app, partner, redis_client):
    """No window at all on the usual path: the script that records the end pushes the
    delivery message, only for a job with a callback URL, and only for the first end."""
    from jobgate.lifecycle import event_message

    svc = app.extensions["jobgate"]
    queue = "end-check-" + partner["id"]
    principal = Principal("partner", partner["id"])
    with_hook = new_record(
        principal, {"task": "demo.sleep", "params": {}, "callback_url": "http://127.0.0.1:9/h"}
    )
    poll_only = new_record(principal, {"task": "demo.sleep", "params": {}})
    try:
        for record in (with_hook, poll_only):
            svc.store.create_job(record)
            _, message, task_id = event_message(
                svc.messenger, "job", record["job_id"], "job.succeeded"
            )
            ended = svc.store.finish_job(
                record["job_id"], "SUCCESS", webhook_message=(queue, message, task_id), result={}
            )
            assert ended["webhook_queued"] is (record is with_hook)
            assert (
                svc.store.finish_job(
                    record["job_id"], "FAILURE", webhook_message=(queue, message, task_id)
                )
                is None
            )
        [raw] = redis_client.lrange(queue, 0, -1)
        assert json.loads(raw)["headers"]["task"] == "jobgate.deliver_webhook"
        assert json.loads(raw)["headers"]["argsrepr"] == repr(
            ["job", with_hook["job_id"], "job.succeeded"]
        )
    finally:
        redis_client.delete(queue)
