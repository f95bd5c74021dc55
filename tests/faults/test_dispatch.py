"""The dispatcher under a killed worker: every accepted job of every partner ends once.

Two partners' jobs wait in their queues (no worker yet, so the window is 0); a worker
starts, the dispatcher hands it its window's worth, and the failpoint SIGKILLs its whole
process group as the first job starts. An heir takes over. Every job ends SUCCESS with
one terminal status, each partner's count of running jobs comes back to 0, and nothing
waits or stays live: a dead worker's slots are not lost to its partner.
"""

from __future__ import annotations

import pytest

from config import Settings
from tests.faults.conftest import doomed_worker, heir_after
from tests.helpers import WorkerProcess, add_partner, gateway_for, wait_until

JOB = {"task": "demo.sleep", "params": {"seconds": 0.2, "steps": 1}}


@pytest.mark.parametrize("point", ["job.started", "job.end.before"])
def test_killed_worker_loses_no_dispatched_job(
    point: str, fault_settings: Settings, workers: list[WorkerProcess]
) -> None:
    admin = fault_settings.admin_keys[0]
    client, a, svc = gateway_for(fault_settings, admin)
    b = add_partner(client, {"Authorization": f"Bearer {admin}"}, "b")
    jobs = {
        p["id"]: [
            client.post("/v1/jobs", json=JOB, headers=p["headers"]).get_json()["job_id"]
            for _ in range(count)
        ]
        for p, count in ((a, 5), (b, 3))
    }
    every = [job_id for ids in jobs.values() for job_id in ids]
    assert svc.store.waiting(a["id"])["queued"] == 5
    # Jobs already wait, so the kill can come before the worker answers a ping.
    doomed = doomed_worker(fault_settings, workers, point, concurrency=2, ready=False)
    heir_after(doomed, fault_settings, workers, concurrency=2)
    wait_until(
        lambda: all(r and r.get("finished_at") for r in svc.store.jobs(every)),
        60,
        0.1,
        "every job to end after the kill",
    )
    assert {r["status"] for r in svc.store.jobs(every)} == {"SUCCESS"}
    for partner_id in jobs:
        wait_until(
            lambda p=partner_id: not any(svc.store.waiting(p).values()),
            10,
            message="the partner's queue and running count at 0",
        )
    assert svc.store.redis.zcard(svc.store.key("live")) == 0
