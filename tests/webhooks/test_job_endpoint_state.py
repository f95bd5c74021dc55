"""A job without a ``callback_url`` whose end went to registered endpoints shows their
messages: its ``webhook`` state and attempts are its endpoint deliveries' (a newcomer saw
"no callback" and ``{"state": "none"}`` on a job every endpoint had received), on the job,
its deliveries and, once Redis has forgotten them, from the database."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from config import Settings
from jobgate import history
from tests.conftest import ADMIN_KEY
from tests.helpers import wait_until
from tests.webhooks.conftest import Receiver, own_world
from tests.webhooks.test_endpoints import new_partner
from tests.webhooks.test_events import submit

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def world(settings: Settings, redis_client: Any) -> Iterator[SimpleNamespace]:
    with own_world(
        settings,
        "jobhooks",
        concurrency=1,
        webhook_retry_delays=(0.2, 0.2),
        webhook_timeout=2.0,
        endpoint_disable_after=3600.0,
    ) as world:
        yield world


def register(world: SimpleNamespace, partner: dict[str, Any], url: str) -> dict[str, Any]:
    response = world.client.post("/v1/endpoints", json={"url": url}, headers=partner["headers"])
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def webhook_of(world: SimpleNamespace, partner: dict[str, Any], job_id: str) -> dict[str, Any]:
    return world.client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).get_json()["webhook"]


def test_a_job_delivered_to_its_endpoints_shows_their_messages(world) -> None:
    partner = new_partner(world)
    good, broken = Receiver(), Receiver()
    broken.answer(*[500] * 10)
    try:
        ok = register(world, partner, good.url)
        failing = register(world, partner, broken.url)
        job = submit(world.client, partner, None)
        job_id = job["job_id"]
        good.wait_for(1)
        hook = wait_until(
            lambda: (w := webhook_of(world, partner, job_id))["state"] == "failed" and w,
            20,
            message="the failing endpoint's message to end failed",
        )
        messages = {m["endpoint_id"]: m for m in hook["endpoint_messages"]}
        assert set(messages) == {ok["id"], failing["id"]}
        assert messages[ok["id"]]["state"] == "delivered"
        assert messages[failing["id"]] == {**messages[failing["id"]], "state": "failed"}
        assert messages[failing["id"]]["attempts"] == 3
        assert hook["attempts"] == 4
        deliveries = world.client.get(
            f"/v1/jobs/{job_id}/deliveries", headers=partner["headers"]
        ).get_json()
        assert deliveries["webhook"] == hook

        # Once Redis forgot the job and its messages, the database's rows say the same.
        store = world.svc.store
        wait_until(
            lambda: (
                sorted(m["state"] for m in history.messages(world.svc.db, job_id))
                == ["delivered", "failed"]
            ),
            20,
            message="the messages and their attempts archived",
        )
        wait_until(
            lambda: (history.job(world.svc.db, job_id) or {}).get("status") == "SUCCESS",
            20,
            message="the job's end archived",
        )
        store.redis.delete(store.key("msgs", job_id), store.key("job", job_id))
        assert store.job(job_id) is None
        assert webhook_of(world, partner, job_id) == hook
        deliveries = world.client.get(
            f"/v1/jobs/{job_id}/deliveries", headers=partner["headers"]
        ).get_json()
        assert deliveries["webhook"] == hook
    finally:
        good.stop()
        broken.stop()


def test_every_endpoint_delivered_is_delivered(world) -> None:
    partner = new_partner(world)
    receiver = Receiver()
    try:
        register(world, partner, receiver.url)
        job = submit(world.client, partner, None)
        receiver.wait_for(1)
        hook = wait_until(
            lambda: (w := webhook_of(world, partner, job["job_id"]))["state"] == "delivered" and w,
            20,
            message="the job's webhook delivered",
        )
        assert hook["attempts"] == 1 and len(hook["endpoint_messages"]) == 1
        # A job with neither a callback nor endpoints still says none.
        lone = new_partner(world)
        other = submit(world.client, lone, None)
        wait_until(
            lambda: (
                world.client.get(f"/v1/jobs/{other['job_id']}", headers=lone["headers"]).get_json()[
                    "status"
                ]
                == "SUCCESS"
            ),
            20,
        )
        assert webhook_of(world, lone, other["job_id"]) == {"state": "none", "attempts": 0}
    finally:
        receiver.stop()
