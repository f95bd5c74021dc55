"""A slow receiver never delays jobs: deliveries run in their own pool.

Receivers that accept the webhook's connection and never answer hold their delivery until
the webhook timeout. With more of them than the job pool has processes, a new job must
still start at once. The shipped ``jobgate worker`` passes; the old shape, one prefork
Celery worker consuming both queues, is kept here as a strict xfail: there the hanging
deliveries hold every pool process and the job waits for the timeout.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from gateway import create_app
from tests.helpers import WorkerProcess, add_partner, job_status, wait_for_status, wait_until
from tests.webhooks.conftest import HangingReceiver
from tests.webhooks.test_events import deliveries, submit

pytestmark = pytest.mark.integration

TIMEOUT = 5.0  # webhook timeout: how long each hanging receiver holds its delivery
JOB_POOL = 2  # job pool processes (single pool: processes for both queues)
HANGING = 8  # hanging receivers, more than JOB_POOL
PROMPT = TIMEOUT / 3  # a job "starts promptly" well before the webhook timeout


def gateway_for(settings, admin_headers) -> tuple[Any, dict[str, Any]]:
    app = create_app(settings)
    app.config["TESTING"] = True
    client = app.test_client()
    return client, add_partner(client, admin_headers, "slow")


@pytest.mark.parametrize(
    "shape",
    [
        "jobgate worker",
        pytest.param(
            "single pool",
            marks=pytest.mark.xfail(
                strict=True,
                reason="the old shape: hanging deliveries hold every pool process, so "
                "the job waits for the webhook timeout",
            ),
        ),
    ],
)
def test_hanging_receivers_do_not_delay_job_starts(
    settings, redis_client, admin_headers, hanging_receiver: HangingReceiver, shape: str
):
    tag = uuid.uuid4().hex[:8]
    # One retry, an hour later: each receiver gets exactly one attempt during the test.
    own = settings.with_overrides(
        queue_jobs=f"slow-{tag}",
        key_prefix=f"slow-{tag}",
        queue_webhooks=f"slow-{tag}-hooks",
        webhook_timeout=TIMEOUT,
        webhook_retry_delays=(3600.0,),
    )
    client, partner = gateway_for(own, admin_headers)
    single = shape == "single pool"
    worker = WorkerProcess(
        own,
        concurrency=JOB_POOL,
        name="slow",
        queues=(f"{own.queue_jobs},{own.queue_webhooks}" if single else None),
    ).start()
    try:
        hung = [
            submit(client, partner, hanging_receiver.url("/hang"))["job_id"] for _ in range(HANGING)
        ]
        dripped = submit(client, partner, hanging_receiver.url("/drip"))["job_id"]
        # Every process the old shape has is now held by a receiver.
        wait_until(
            lambda: hanging_receiver.holding("/hang") >= JOB_POOL,
            10,
            0.02,
            "the first deliveries to hang",
        )

        submitted = time.monotonic()
        probe = submit(client, partner, None)["job_id"]
        wait_for_status(
            client,
            probe,
            partner["headers"],
            ("STARTED", "PROCESSING", "SUCCESS"),
            timeout=2 * TIMEOUT,
        )
        waited = time.monotonic() - submitted
        print(
            f"{shape}: job started {waited * 1000:.0f} ms after submit, "
            f"{hanging_receiver.holding('/hang')} receivers hanging"
        )
        assert waited < PROMPT, f"the job waited {waited:.1f}s for a process"
        assert wait_for_status(client, probe, partner["headers"])["status"] == "SUCCESS"

        # All the deliveries hang at once (the delivery pool has the slots), and each is
        # cut at the webhook timeout and recorded; the dripping one by the hard deadline.
        wait_until(
            lambda: (
                hanging_receiver.holding("/hang") == HANGING
                and hanging_receiver.holding("/drip") == 1
            ),
            5,
            0.05,
            "every delivery to hang at once",
        )
        for job_id in [*hung, dripped]:
            wait_until(
                lambda j=job_id: deliveries(client, j, partner["headers"]),
                3 * TIMEOUT,
                0.1,
                "the attempt to be recorded",
            )
            [attempt] = deliveries(client, job_id, partner["headers"])
            assert attempt["status_code"] is None and "timeout" in attempt["error"], attempt
            assert TIMEOUT * 1000 - 300 <= attempt["duration_ms"] <= TIMEOUT * 1000 + 2000, attempt
            assert job_status(client, job_id, partner["headers"])["webhook"]["state"] == "retrying"
    finally:
        hanging_receiver.close()
        worker.stop()
        # The hour-later retries went back to this test's queues at the warm stop.
        redis_client.delete(own.queue_jobs, own.queue_webhooks)
