"""The database goes down mid-run. It is the record of every accepted job and of every
end, so a submit is refused (503, Retry-After) rather than accepted unkept, and the jobs
running when it went down end only once it is back (their ends are retried, nothing is
announced before); readiness says so, and archiving catches up."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.engine import make_url

from config import Settings
from jobgate import history
from jobgate.db import Database
from jobgate.events import webhook_id
from tests.conftest import ADMIN_KEY
from tests.helpers import (
    TcpProxy,
    WorkerProcess,
    gateway_for,
    job_status,
    postgres_database,
    wait_for_status,
    wait_until,
)
from tests.reliability.conftest import WebhookReceiver

JOB = {"task": "demo.sleep", "params": {"seconds": 0, "steps": 1}}


def submit_all(client: Any, partner: dict[str, Any], url: str, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        answer = client.post(
            "/v1/jobs", json={**JOB, "callback_url": url}, headers=partner["headers"]
        )
        assert answer.status_code == 202, answer.get_json()
        ids.append(answer.get_json()["job_id"])
    return ids


def test_a_database_outage_refuses_submits_holds_ends_and_loses_nothing(
    fault_settings: Settings, receiver: WebhookReceiver, workers: list[WorkerProcess]
) -> None:
    with postgres_database("down") as direct:
        Database(direct).upgrade()
        proxy = TcpProxy(("127.0.0.1", make_url(direct).port or 5432)).start()
        try:
            url = make_url(direct).set(port=proxy.port).render_as_string(hide_password=False)
            own = fault_settings.with_overrides(database_url=url)
            client, partner, svc = gateway_for(own, ADMIN_KEY)
            receiver.secrets.append(partner["webhook_secret"])
            worker = WorkerProcess(own, concurrency=2, name="dbdown").start()
            workers.append(worker)
            before = submit_all(client, partner, receiver.url, 3)

            def archived(ids: list[str]) -> bool:
                rows = history.jobs(svc.db, ids)
                return all((rows.get(j) or {}).get("status") == "SUCCESS" for j in ids)

            wait_until(lambda: archived(before), 30, message="the first jobs archived")

            # Accepted before the outage, still running when it starts.
            during = [
                client.post(
                    "/v1/jobs",
                    json={"task": "demo.sleep", "params": {"seconds": 1.5}, "callback_url": hook},
                    headers=partner["headers"],
                ).get_json()["job_id"]
                for hook in [receiver.url] * 4
            ]
            proxy.stop()  # the database is down from here
            refused = client.post(
                "/v1/jobs", json={**JOB, "callback_url": receiver.url}, headers=partner["headers"]
            )
            assert refused.status_code == 503, refused.get_json()
            assert refused.get_json()["error"]["code"] == "unavailable"
            assert refused.headers["Retry-After"]
            # A read the database answers is 503 too (a job Redis does not hold, a page).
            for path in (f"/v1/jobs/{uuid.uuid4()}", "/v1/jobs", f"/v1/batches/{uuid.uuid4()}"):
                answer = client.get(path, headers=partner["headers"])
                assert answer.status_code == 503, (path, answer.get_json())
                assert answer.get_json()["error"]["code"] == "unavailable"
            # A job's end is committed to the database before anything announces it: the
            # worker retries the end, and nothing about these jobs goes out meanwhile.
            wait_until(
                lambda: f"recording the end of job {during[0]} failed" in worker.log(),
                30,
                message="the worker failing to commit an end",
            )
            assert not any(receiver.terminal_ids(j) for j in during)
            assert job_status(client, during[0], partner["headers"])["status"] in (
                "STARTED",
                "PROCESSING",
            )
            ready = client.get("/readyz").get_json()
            assert ready["status"] == "degraded" and ready["checks"]["database"] is False

            proxy.start()  # back: the ends are committed, announced, and archived
            for job_id in during:
                assert wait_for_status(client, job_id, partner["headers"])["status"] == "SUCCESS"
            wait_until(lambda: archived(before + during), 60, message="archiving caught up")
            wait_until(
                lambda: client.get("/readyz").get_json()["checks"].get("archive_backlog") == 0,
                30,
                message="the archive stream drained",
            )
        finally:
            proxy.stop()
    ids = before + during
    # The outage failed every write the archivers tried: retried, nothing set aside.
    assert svc.store.redis.hget(svc.store.key("stats"), "dead_letters") is None
    terminal = {
        (d.payload or {}).get("data", {}).get("job_id"): d.webhook_id
        for d in receiver.deliveries
        if d.verified
    }
    for job_id in ids:
        assert terminal.get(job_id) == webhook_id(job_id, "job.succeeded"), job_id
    assert all(d.verified for d in receiver.deliveries)
