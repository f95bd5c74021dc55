"""Redis is killed and comes back empty (nothing on disk) right after an endpoint is
disabled through the API, before any worker ran the announcement's fan-out step: the
``endpoint.disabled`` event, a committed row first, still reaches the partner's
subscribed endpoint, once, signed with that endpoint's (sealed) secret."""

from __future__ import annotations

from typing import Any

from config import Settings
from tests.conftest import ADMIN_KEY
from tests.helpers import EmbeddedRedis, WorkerProcess, gateway_for, wait_until
from tests.reliability.conftest import WebhookReceiver

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def register(client: Any, partner: dict[str, Any], url: str, events: list[str]) -> dict[str, Any]:
    answer = client.post(
        "/v1/endpoints", json={"url": url, "event_types": events}, headers=partner["headers"]
    )
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()


def test_an_endpoint_disabled_right_before_redis_restarted_empty_is_announced_once(
    fault_settings: Settings,
    receiver: WebhookReceiver,
    workers: list[WorkerProcess],
    own_database: str,
) -> None:
    server = EmbeddedRedis().start()
    try:
        own = fault_settings.with_overrides(redis_url=server.url, database_url=own_database)
        client, partner, svc = gateway_for(own, ADMIN_KEY)
        watching = register(client, partner, receiver.url, ["endpoint.disabled"])
        receiver.secrets.append(watching["webhook_secret"])
        other = register(client, partner, receiver.url + "/other", ["job.failed"])
        # No worker yet: the announcement's fan-out step waits on the broker, in Redis.
        disabled = client.patch(
            f"/v1/endpoints/{other['id']}", json={"enabled": False}, headers=ADMIN
        )
        assert disabled.status_code == 200, disabled.get_json()
        assert server.client().dbsize() > 0
        server.kill_and_start()  # same port, nothing on disk: empty
        assert server.client().dbsize() == 0
        workers.append(WorkerProcess(own, concurrency=1, name="events-lost").start())
        wait_until(lambda: receiver.deliveries, 60, 0.2, "the relay to give the event back")
        # Nothing more comes: the event's row is settled once its fan-out ran.
        wait_until(
            lambda: (
                not svc.db.read_first(
                    "SELECT COUNT(*) FROM operational_events WHERE NOT settled", ()
                )
            ),
            30,
            0.2,
            "the event's row settled",
        )
    finally:
        server.close()
    [delivery] = receiver.deliveries
    assert delivery.verified
    payload = delivery.payload or {}
    assert payload["type"] == "endpoint.disabled"
    assert payload["data"]["endpoint"]["id"] == other["id"]
    assert payload["data"]["disabled_by"] == "admin"
