"""Held requests cost the shipped gunicorn (gevent) a connection, not a thread.

With the previous `-k gthread --threads 8` shape, eight `?wait=` requests or `/events`
streams filled a process and everything else queued behind them. The live gateway runs
one gevent process: far more held requests than that must leave it answering.
"""

from __future__ import annotations

import threading

import pytest
import requests

from gateway.auth import Principal
from gateway.jobs import new_record
from jobgate.store import Store
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

HELD = 40  # five times what one gthread process of the old shape could hold
WAIT = 6  # seconds each held request waits for the job


def test_forty_held_waits_leave_the_gateway_answering(gateway_url, settings, partner):
    store = Store.from_url(settings.redis_url, prefix=settings.key_prefix)
    # A job with a record but no queued message: it stays PENDING, so ?wait= holds.
    record = new_record(
        Principal("partner", partner["id"]), {"task": "demo.sleep", "params": {"seconds": 0}}
    )
    store.create_job(record)
    url = f"{gateway_url}/v1/jobs/{record['job_id']}"
    answers: list[int] = []

    def hold() -> None:
        answers.append(
            requests.get(
                url, params={"wait": WAIT}, headers=partner["headers"], timeout=WAIT + 10
            ).status_code
        )

    threads = [threading.Thread(target=hold) for _ in range(HELD)]
    for thread in threads:
        thread.start()
    try:
        # Each held ?wait= subscribes to the job's channel: all of them are in the gateway.
        channel = store.channel(record["job_id"])
        wait_until(
            lambda: store.redis.pubsub_numsub(channel)[0][1] == HELD,
            timeout=WAIT,
            interval=0.02,
            message=f"{HELD} waits held at once",
        )
        # While all of them are held, other requests are served, not queued behind them.
        quick = requests.get(url, headers=partner["headers"], timeout=WAIT)
        health = requests.get(f"{gateway_url}/healthz", timeout=WAIT)
        assert quick.status_code == 200 and quick.json()["status"] == "PENDING"
        assert health.status_code == 200
        assert store.redis.pubsub_numsub(channel)[0][1] == HELD, "served while all were held"
    finally:
        for thread in threads:
            thread.join(timeout=WAIT + 15)
    assert answers == [200] * HELD
