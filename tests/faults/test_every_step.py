"""A fault at every step of a job's life, then recovery; the partner sees one ending.

Each case arms one failpoint (jobgate/failpoints.py) in a real worker: ``kill`` SIGKILLs
the worker's whole process group at that step, ``redis_error`` fails the Redis call
there. A second worker (the heir) then takes over as in production. Each case runs with
the store's Redis as the broker and with RabbitMQ. Whatever the step,
the test asserts what the partner sees: the job ends with one terminal status, exactly
one terminal ``webhook-id`` arrives (signature verified), the delivery is recorded as
delivered, and nothing is left stranded (live set, open deliveries, due set, queues,
kombu's unacknowledged messages, the partner's queue and its count of running jobs in the
dispatcher). A receiver may see that id twice when the fault falls
between its POST and the record (at-least-once; Standard Webhooks receivers dedupe by
id): the attempt log then has one attempt fewer than the receiver saw, never more.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from config import Settings
from jobgate.events import webhook_id
from jobgate.sweeper import sweep
from tasks.transport import RedisQueues
from tests.faults.conftest import BROKERS, doomed_worker, heir_after
from tests.helpers import WorkerProcess, gateway_for, rabbitmq_messages, wait_until
from tests.reliability.conftest import WebhookReceiver

# (failpoint, action, subject, POSTs a receiver may see beyond the log)
CASES = [
    ("job.started", "kill", "job", 0),
    ("job.progress", "kill", "job", 0),
    ("job.end.before", "kill", "job", 0),
    ("job.end.committed", "kill", "job", 0),
    ("job.end.after", "kill", "job", 0),
    ("delivery.begun", "kill", "job", 0),
    ("delivery.sent", "kill", "job", 1),
    ("batch.count.before", "kill", "batch", 0),
    ("job.end.committed", "redis_error", "job", 0),
    ("job.end.after", "redis_error", "job", 0),
    ("batch.count.before", "redis_error", "batch", 0),
    ("delivery.sent", "redis_error", "job", 1),
]
RECOVERY: dict[str, float] = {}  # case -> seconds from the fault to the terminal webhook


def submit(client: Any, partner: dict[str, Any], subject: str, url: str) -> tuple[str, list]:
    """Submit a job (or a batch of two); (subject id, job ids)."""
    job = {"task": "demo.sleep", "params": {"seconds": 0.4, "steps": 2}}
    if subject == "job":
        answer = client.post(
            "/v1/jobs", json={**job, "callback_url": url}, headers=partner["headers"]
        )
        assert answer.status_code == 202, answer.get_json()
        return answer.get_json()["job_id"], [answer.get_json()["job_id"]]
    answer = client.post(
        "/v1/batches", json={"jobs": [job, job], "callback_url": url}, headers=partner["headers"]
    )
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()["batch_id"], answer.get_json()["job_ids"]


def stranded(
    svc: Any, settings: Settings, subject_id: str, job_ids: list[str], partner_id: str
) -> list[str]:
    """What is still left for this subject anywhere it could be stuck, the dispatcher's
    books included: no job waiting in its partner's queue, no slot still counted."""
    redis, store = svc.store.redis, svc.store
    left = [f"live {j}" for j in job_ids if redis.zscore(store.key("live"), j) is not None]
    left += [f"waiting {k}: {n}" for k, n in store.waiting(partner_id).items() if n]
    left += [f"open {t}" for t in redis.zrange(store.open_key, 0, -1) if subject_id in t]
    left += [f"due {e}" for e in redis.zrange(store.due_key, 0, -1) if subject_id in e]
    left += [
        f"queued on {q}" for q in (settings.queue_jobs, settings.queue_webhooks) if redis.llen(q)
    ]
    if settings.broker_url != settings.redis_url:  # RabbitMQ: ready or held by a worker
        left += [f"{n} on {q}" for q, n in rabbitmq_messages(settings.broker_url).items() if n]
    left += [
        f"unacked {t}"
        for t, raw in redis.hgetall("unacked").items()
        if any(j in raw for j in [subject_id, *job_ids])
    ]
    return left


@pytest.mark.parametrize("broker", BROKERS, indirect=True)
@pytest.mark.parametrize(
    ("point", "action", "subject", "extra_posts"),
    CASES,
    ids=[f"{a}-at-{p}-{s}" for p, a, s, _ in CASES],
)
def test_one_ending_whatever_breaks(
    point: str,
    action: str,
    subject: str,
    extra_posts: int,
    fault_settings: Settings,
    receiver: WebhookReceiver,
    workers: list[WorkerProcess],
) -> None:
    client, partner, svc = gateway_for(fault_settings, fault_settings.admin_keys[0])
    receiver.secrets = [partner["webhook_secret"]]
    doomed = doomed_worker(fault_settings, workers, point, action=action)
    subject_id, job_ids = submit(client, partner, subject, receiver.url)
    event = "job.succeeded" if subject == "job" else "batch.completed"
    wid = webhook_id(subject_id, event)

    if action == "kill":
        heir_after(doomed, fault_settings, workers)
        faulted = time.monotonic()
    else:
        faulted = time.monotonic()
        if point == "delivery.sent":
            # The POST went out, its record failed, the task failed and was acked: the
            # delivery stays open. The worker's sweeper finds it once the open grace has
            # passed (the claim's lease, 32 s here); run that pass now rather than wait.
            wait_until(
                lambda: receiver.deliveries and not redis_busy(svc, fault_settings),
                20,
                0.05,
                "the failed attempt to be acked",
            )
            repairs = sweep(
                svc.store,
                svc.messenger,
                stale_after=60,
                now=time.time() + svc.store.open_grace + 1,
                broker=RedisQueues() if svc.messenger.inline else None,
            )
            assert repairs["delivery_requeued"] == 1, repairs

    wait_until(
        lambda: (
            receiver.terminal_ids(subject_id)
            if subject == "job"
            else [d for d in receiver.accepted() if d.webhook_id == wid]
        ),
        40,
        0.05,
        f"the terminal webhook after {action} at {point}",
    )
    RECOVERY[f"{action}@{point}"] = round(time.monotonic() - faulted, 2)

    def settled() -> bool:
        path = "jobs" if subject == "job" else "batches"
        view = client.get(f"/v1/{path}/{subject_id}", headers=partner["headers"])
        log = client.get(f"/v1/jobs/{job_ids[0]}/deliveries", headers=partner["headers"])
        delivered = subject == "batch" or log.get_json()["webhook"]["state"] == "delivered"
        return (
            view.status_code == 200
            and delivered
            and not stranded(svc, fault_settings, subject_id, job_ids, partner["id"])
        )

    wait_until(settled, 30, 0.1, "nothing stranded")

    for job_id in job_ids:
        view = client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).get_json()
        assert view["status"] == "SUCCESS", view
        assert view["result"] == {"slept": 0.4, "steps": 2}
    posts = [d for d in receiver.deliveries if d.webhook_id == wid]
    assert posts and all(d.verified for d in posts)
    terminal = {
        d.webhook_id
        for d in receiver.accepted()
        if (d.payload or {}).get("type")
        in ("job.succeeded", "job.failed", "job.revoked", "batch.completed")
    }
    assert terminal == {wid}, terminal
    if subject == "batch":
        batch = client.get(f"/v1/batches/{subject_id}", headers=partner["headers"]).get_json()
        assert (batch["status"], batch["completed"], batch["succeeded"]) == ("COMPLETED", 2, 2)
        assert posts[0].payload["data"]["succeeded"] == 2
    else:
        log = client.get(f"/v1/jobs/{subject_id}/deliveries", headers=partner["headers"]).get_json()
        recorded = [a for a in log["deliveries"] if a["webhook_id"] == wid]
        assert recorded[-1]["status_code"] == 200
        assert len(recorded) <= len(posts) <= len(recorded) + extra_posts, (recorded, posts)
    print(f"recovery {action}@{point}: {RECOVERY[f'{action}@{point}']} s")


def redis_busy(svc: Any, settings: Settings) -> bool:
    """A webhook message still queued or held by a worker."""
    if settings.broker_url != settings.redis_url:
        return bool(rabbitmq_messages(settings.broker_url).get(settings.queue_webhooks))
    redis = svc.store.redis
    return bool(
        redis.llen(settings.queue_webhooks)
        or any("deliver_webhook" in raw for raw in redis.hvals("unacked"))
    )
