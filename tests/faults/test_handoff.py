"""A broker apart from the store (RabbitMQ): a process killed between a record and the
publish of its message (``jobgate.handoff``) strands nothing. The heir's sweeper sends
again what was never handed to the broker, and the partner gets one terminal event.

Each test has a RabbitMQ virtual host of its own (tests/faults/conftest.py ``broker``).
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from config import Settings
from jobgate import handoff
from jobgate.events import webhook_id
from tests.conftest import ADMIN_KEY
from tests.faults.conftest import doomed_worker, heir_after
from tests.helpers import (
    WorkerProcess,
    gateway_for,
    gunicorn,
    rabbitmq_messages,
    wait_until,
)
from tests.reliability.conftest import WebhookReceiver

pytestmark = pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def left_over(svc: Any, settings: Settings, job_id: str) -> list[str]:
    """What is still open for this job: the live set, open deliveries, the due set, and
    messages in the virtual host's queues (ready or held)."""
    redis, store = svc.store.redis, svc.store
    left = [f"live {job_id}"] if redis.zscore(store.key("live"), job_id) is not None else []
    left += [f"open {t}" for t in redis.zrange(store.open_key, 0, -1) if job_id in t]
    left += [f"due {e}" for e in redis.zrange(store.due_key, 0, -1) if job_id in e]
    left += [f"{n} on {q}" for q, n in rabbitmq_messages(settings.broker_url).items() if n]
    return left


def test_a_job_whose_dispatcher_died_before_the_publish_runs_once(
    fault_settings: Settings, receiver: WebhookReceiver, workers: list[WorkerProcess]
) -> None:
    """The worker that dispatches a delayed job is killed after the dispatch script and
    before the job's publish: the job is live with no message anywhere. The heir's sweeper
    sends it again; it runs once and its partner gets one job.succeeded."""
    client, partner, svc = gateway_for(fault_settings, ADMIN_KEY)
    assert not svc.messenger.inline
    receiver.secrets = [partner["webhook_secret"]]
    doomed = doomed_worker(fault_settings, workers, "job.dispatched")
    answer = client.post(
        "/v1/jobs",
        json={
            "task": "demo.sleep",
            "params": {"seconds": 0.2, "steps": 1},
            "callback_url": receiver.url,
            "delay_seconds": 1,
        },
        headers=partner["headers"],
    )
    assert answer.status_code == 202, answer.get_json()
    job_id = answer.get_json()["job_id"]
    wait_until(lambda: doomed.proc.poll() is not None, 30, 0.05, "the dispatcher to be killed")
    record = svc.store.job(job_id)
    assert record is not None and record.get("send") and not record.get("sent"), record
    assert svc.store.redis.zscore(svc.store.key("live"), job_id) is not None

    heir_after(doomed, fault_settings, workers)
    wait_until(lambda: receiver.terminal_ids(job_id), 40, 0.05, "the terminal webhook")
    wait_until(lambda: not left_over(svc, fault_settings, job_id), 20, 0.2, "nothing stranded")
    view = client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).get_json()
    assert view["status"] == "SUCCESS", view
    record = svc.store.job(job_id)
    assert record is not None and int(record["runs"]) == 1
    assert record["sent"] == record["send"]
    assert receiver.terminal_ids(job_id) == {webhook_id(job_id, "job.succeeded"): 1}
    assert int(svc.store.redis.hget(svc.store.key("repairs"), "job_requeued") or 0) == 1


def test_a_webhook_whose_gateway_died_before_the_publish_is_delivered_once(
    fault_settings: Settings, receiver: WebhookReceiver, workers: list[WorkerProcess]
) -> None:
    """An admin revokes a job waiting for its run_at; the gateway records the end and is
    killed before the job.revoked delivery's publish. No job message will bring the
    webhook back (the job never ran): the worker's sweeper sends the open delivery
    again, and the partner gets job.revoked once."""
    _, _, svc = gateway_for(fault_settings, ADMIN_KEY)
    workers.append(WorkerProcess(fault_settings, concurrency=1, name="sweeper").start())
    with gunicorn(fault_settings, workers=1) as url:
        partner = requests.post(
            f"{url}/v1/partners", json={"name": "acme"}, headers=ADMIN, timeout=10
        ).json()
        receiver.secrets = [partner["webhook_secret"]]
        headers = {"Authorization": f"Bearer {partner['api_key']}"}
        answer = requests.post(
            f"{url}/v1/jobs",
            json={
                "task": "demo.sleep",
                "params": {"seconds": 0},
                "callback_url": receiver.url,
                "delay_seconds": 600,
            },
            headers=headers,
            timeout=10,
        )
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job_id"]
    with gunicorn(
        fault_settings, workers=1, env={"JOBGATE_FAILPOINTS": "delivery.queued=kill"}
    ) as doomed:
        with pytest.raises(requests.ConnectionError):
            requests.post(f"{doomed}/v1/jobs/{job_id}/revoke", json={}, headers=ADMIN, timeout=10)
    record = svc.store.job(job_id)
    assert record is not None and record["status"] == "REVOKED"
    wid = webhook_id(job_id, "job.revoked")
    wait_until(lambda: receiver.terminal_ids(job_id), 40, 0.05, "the terminal webhook")
    wait_until(lambda: not left_over(svc, fault_settings, job_id), 20, 0.2, "nothing stranded")
    assert receiver.terminal_ids(job_id) == {wid: 1}
    assert int(svc.store.redis.hget(svc.store.key("repairs"), "delivery_requeued") or 0) == 1


def test_a_second_message_of_a_job_is_dropped_and_the_job_runs_once(
    fault_settings: Settings, receiver: WebhookReceiver, workers: list[WorkerProcess]
) -> None:
    """A sender killed after the publish and before the handed mark: the sweeper sends the
    job again under a new token, and the broker holds two messages. The first one taken
    carries the old token and is dropped; the job runs once, with one job.succeeded."""
    own = fault_settings.with_overrides(dispatch_window=1)  # dispatched with no worker up
    client, partner, svc = gateway_for(own, ADMIN_KEY)
    receiver.secrets = [partner["webhook_secret"]]
    answer = client.post(
        "/v1/jobs",
        json={"task": "demo.sleep", "params": {"seconds": 0.2}, "callback_url": receiver.url},
        headers=partner["headers"],
    )
    assert answer.status_code == 202, answer.get_json()
    job_id = answer.get_json()["job_id"]
    first = svc.store.job(job_id)
    assert first is not None and first["sent"] == first["send"]
    assert handoff.send_job(svc.store, svc.messenger, first)  # the sweeper's second send
    second = svc.store.job(job_id)
    assert second is not None and second["send"] != first["send"]
    assert sum(rabbitmq_messages(own.broker_url).values()) == 2

    worker = WorkerProcess(own, concurrency=1, name="one").start()
    workers.append(worker)
    wait_until(lambda: receiver.terminal_ids(job_id), 40, 0.05, "the terminal webhook")
    wait_until(lambda: not left_over(svc, own, job_id), 20, 0.2, "nothing stranded")
    record = svc.store.job(job_id)
    assert record is not None and record["status"] == "SUCCESS" and int(record["runs"]) == 1
    assert receiver.terminal_ids(job_id) == {webhook_id(job_id, "job.succeeded"): 1}
    assert "a stale message; dropped" in worker.log()


def test_a_retry_whose_mover_died_before_the_publish_is_delivered_once(
    fault_settings: Settings, receiver: WebhookReceiver, workers: list[WorkerProcess]
) -> None:
    """The first attempt gets a 500; the worker that takes its retry off the due set is
    killed before the retry's publish. The retry's delivery is still open: the heir's
    sweeper sends it once its deadline (due time plus the open grace) has passed."""
    client, partner, svc = gateway_for(fault_settings, ADMIN_KEY)
    receiver.secrets = [partner["webhook_secret"]]
    receiver.script = lambda delivery: 200 if receiver.deliveries else 500  # the first: 500
    doomed = doomed_worker(fault_settings, workers, "delivery.due")
    answer = client.post(
        "/v1/jobs",
        json={"task": "demo.sleep", "params": {"seconds": 0}, "callback_url": receiver.url},
        headers=partner["headers"],
    )
    assert answer.status_code == 202, answer.get_json()
    job_id = answer.get_json()["job_id"]
    wait_until(lambda: doomed.proc.poll() is not None, 30, 0.05, "the mover to be killed")
    assert [d.answered for d in receiver.deliveries] == [500]
    assert not svc.store.redis.zcard(svc.store.due_key)

    heir_after(doomed, fault_settings, workers)
    wait_until(lambda: receiver.terminal_ids(job_id), 60, 0.1, "the retry delivered")
    wait_until(lambda: not left_over(svc, fault_settings, job_id), 20, 0.2, "nothing stranded")
    assert receiver.terminal_ids(job_id) == {webhook_id(job_id, "job.succeeded"): 1}
    log = client.get(f"/v1/jobs/{job_id}/deliveries", headers=partner["headers"]).get_json()
    assert [a["status_code"] for a in log["deliveries"]] == [500, 200]
    assert int(svc.store.redis.hget(svc.store.key("repairs"), "delivery_requeued") or 0) == 1
