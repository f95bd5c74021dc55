"""Redis is killed and comes back empty (no AOF, no snapshot): partners, history and the
jobs it held are not lost. The database gives back the partners (their keys still
authenticate), the finished jobs (read from it), and the jobs that were queued or
running, which run again and reach one terminal status and one terminal webhook. Each
with the store's Redis and with RabbitMQ as the broker."""

from __future__ import annotations

from typing import Any

import pytest

from config import Settings
from jobgate import history
from jobgate.events import webhook_id
from tests.conftest import ADMIN_KEY
from tests.faults.conftest import BROKERS
from tests.helpers import EmbeddedRedis, WorkerProcess, gateway_for, wait_until
from tests.reliability.conftest import WebhookReceiver


def submit(client: Any, partner: dict[str, Any], url: str, seconds: float, **extra: Any) -> str:
    body = {
        "task": "demo.sleep",
        "params": {"seconds": seconds, "steps": 1},
        "callback_url": url,
        **extra,
    }
    answer = client.post("/v1/jobs", json=body, headers=partner["headers"])
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()["job_id"]


pytestmark = pytest.mark.parametrize("broker", BROKERS, indirect=True)


def test_redis_restarted_empty_loses_no_partner_job_or_webhook(
    fault_settings: Settings,
    receiver: WebhookReceiver,
    workers: list[WorkerProcess],
    own_database: str,
    broker: str,
) -> None:
    server = EmbeddedRedis().start()
    try:
        own = fault_settings.with_overrides(
            redis_url=server.url, broker_url=broker, database_url=own_database
        )
        client, partner, svc = gateway_for(own, ADMIN_KEY)
        receiver.secrets.append(partner["webhook_secret"])
        workers.append(WorkerProcess(own, concurrency=2, name="lost").start())
        done = [submit(client, partner, receiver.url, 0) for _ in range(3)]

        def archived_settled() -> bool:
            rows = history.jobs(svc.db, done)
            return all((rows.get(j) or {}).get("webhook_state") == "delivered" for j in done)

        wait_until(archived_settled, 30, message="the first jobs delivered and archived")
        # Long enough to be queued or running when Redis dies: two run, two wait in the
        # partner's queue (the window is the worker's two slots), two wait for their run_at.
        live = [submit(client, partner, receiver.url, 3) for _ in range(4)]
        delayed = [submit(client, partner, receiver.url, 0, delay_seconds=8) for _ in range(2)]
        assert svc.store.waiting(partner["id"])["delayed"] == 2
        live += delayed
        wait_until(
            lambda: all(history.job(svc.db, j) for j in live), 20, message="live jobs archived"
        )
        server.kill_and_start()  # same port, nothing on disk: empty
        # Settled jobs live on in the database only.
        assert not server.client().exists(*(f"{own.key_prefix}:job:{j}" for j in done))

        # A new gateway process (no in-process key cache): the partner's key still works.
        fresh_client, _, _ = gateway_for(own, ADMIN_KEY)
        headers = partner["headers"]
        for job_id in done:
            view = fresh_client.get(f"/v1/jobs/{job_id}", headers=headers)
            assert view.status_code == 200 and view.get_json()["status"] == "SUCCESS"

        def ended(job_id: str) -> bool:
            view = fresh_client.get(f"/v1/jobs/{job_id}", headers=headers).get_json()
            return view.get("status") == "SUCCESS" and view["webhook"]["state"] == "delivered"

        try:
            wait_until(lambda: all(ended(j) for j in live), 90, message="every lost job run again")
            for job_id in delayed:  # restored as delayed: not started before its run_at
                view = fresh_client.get(f"/v1/jobs/{job_id}", headers=headers).get_json()
                assert view["run_at"] and view["started_at"] >= view["run_at"], view
        except AssertionError:
            print(workers[0].log()[-8000:])
            raise
    finally:
        server.close()
    by_job: dict[str, set[str]] = {}
    for delivery in receiver.deliveries:
        assert delivery.verified
        job_id = (delivery.payload or {}).get("data", {}).get("job_id")
        by_job.setdefault(job_id, set()).add(delivery.webhook_id)
    for job_id in done + live:
        assert by_job.get(job_id) == {webhook_id(job_id, "job.succeeded")}, job_id


def test_jobs_accepted_right_before_redis_restarted_empty_all_end_once(
    fault_settings: Settings,
    receiver: WebhookReceiver,
    workers: list[WorkerProcess],
    own_database: str,
    broker: str,
) -> None:
    """A burst of 202s (jobs and a batch), then Redis killed and started empty before
    any worker ran or archived them: the rows committed at submit are the record. Each
    job reads as PENDING from the database meanwhile, then runs once it is relayed, and
    every one ends with one terminal webhook; the batch completes with its event."""
    server = EmbeddedRedis().start()
    try:
        own = fault_settings.with_overrides(
            redis_url=server.url, broker_url=broker, database_url=own_database
        )
        client, partner, _ = gateway_for(own, ADMIN_KEY)
        receiver.secrets.append(partner["webhook_secret"])
        headers = partner["headers"]
        jobs = [submit(client, partner, receiver.url, 0) for _ in range(20)]
        answer = client.post(
            "/v1/batches",
            json={
                "jobs": [{"task": "demo.sleep", "params": {"seconds": 0}}] * 3,
                "callback_url": receiver.url,
            },
            headers=headers,
        )
        assert answer.status_code == 202, answer.get_json()
        batch_id = answer.get_json()["batch_id"]
        members = answer.get_json()["job_ids"]
        server.kill_and_start()  # same port, nothing on disk: empty
        assert not server.client().keys(f"{own.key_prefix}:*")

        fresh_client, _, _ = gateway_for(own, ADMIN_KEY)
        for job_id in jobs + members:
            view = fresh_client.get(f"/v1/jobs/{job_id}", headers=headers)
            assert view.status_code == 200 and view.get_json()["status"] == "PENDING", job_id

        workers.append(WorkerProcess(own, concurrency=2, name="relayed").start())

        def ended(job_id: str) -> bool:
            view = fresh_client.get(f"/v1/jobs/{job_id}", headers=headers).get_json()
            return view.get("status") == "SUCCESS"

        def completed() -> list[str]:
            return [
                d.webhook_id
                for d in receiver.accepted()
                if (d.payload or {}).get("type") == "batch.completed"
                and d.payload["data"].get("batch_id") == batch_id
            ]

        try:
            wait_until(
                # 23 jobs relayed after the relay's 10 s grace, on 2 slots, with RabbitMQ
                # and PostgreSQL on a loaded 2-core machine: a condition, so time is a bound.
                lambda: all(ended(j) for j in jobs + members),
                180,
                message="every job relayed",
            )
            wait_until(
                lambda: (
                    fresh_client.get(f"/v1/batches/{batch_id}", headers=headers).get_json()[
                        "status"
                    ]
                    == "COMPLETED"
                ),
                30,
                message="the batch completed",
            )
            wait_until(
                lambda: all(receiver.terminal_ids(j) for j in jobs) and completed(),
                30,
                message="every terminal webhook",
            )
        except AssertionError:
            print(workers[0].log()[-8000:])
            raise
        batch = fresh_client.get(f"/v1/batches/{batch_id}", headers=headers).get_json()
        assert (batch["total"], batch["succeeded"]) == (3, 3)
    finally:
        server.close()
    for job_id in jobs:
        assert list(receiver.terminal_ids(job_id)) == [webhook_id(job_id, "job.succeeded")]
    assert completed() == [webhook_id(batch_id, "batch.completed")]


def test_redis_restarted_empty_right_after_the_webhooks_announces_no_other_end(
    fault_settings: Settings,
    receiver: WebhookReceiver,
    workers: list[WorkerProcess],
    own_database: str,
    broker: str,
) -> None:
    """Jobs end and their webhooks go out; Redis is killed and comes back empty before
    the archiver may have recorded the deliveries. The committed end is the record: each
    job reads as the same SUCCESS from the database, and whatever the relay gives back
    carries the same webhook-id and the same end: never a second terminal event."""
    server = EmbeddedRedis().start()
    try:
        own = fault_settings.with_overrides(
            redis_url=server.url, broker_url=broker, database_url=own_database
        )
        client, partner, _ = gateway_for(own, ADMIN_KEY)
        receiver.secrets.append(partner["webhook_secret"])
        headers = partner["headers"]
        workers.append(WorkerProcess(own, concurrency=2, name="announced").start())
        jobs = [submit(client, partner, receiver.url, 0) for _ in range(6)]
        wait_until(lambda: all(receiver.terminal_ids(j) for j in jobs), 30, message="every webhook")
        first = {j: receiver.accepted(j)[0].payload["data"] for j in jobs}
        server.kill_and_start()  # right after the last webhook arrived: empty

        fresh_client, _, _ = gateway_for(own, ADMIN_KEY)

        def settled(job_id: str) -> bool:
            view = fresh_client.get(f"/v1/jobs/{job_id}", headers=headers).get_json()
            assert view["status"] == "SUCCESS", view  # never anything else meanwhile
            return view["webhook"]["state"] == "delivered"

        try:
            wait_until(lambda: all(settled(j) for j in jobs), 60, message="every end settled")
        except AssertionError:
            print(workers[0].log()[-8000:])
            raise
        for job_id in jobs:
            view = fresh_client.get(f"/v1/jobs/{job_id}", headers=headers).get_json()
            assert (view["result"], view["finished_at"]) == (
                first[job_id]["result"],
                first[job_id]["finished_at"],
            )
    finally:
        server.close()
    for job_id in jobs:
        assert list(receiver.terminal_ids(job_id)) == [webhook_id(job_id, "job.succeeded")]
        # A redelivery (same id) carries the same end, byte for byte in its data.
        assert {str(d.payload["data"]) for d in receiver.accepted(job_id)} == {str(first[job_id])}
