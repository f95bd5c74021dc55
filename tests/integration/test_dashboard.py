"""``GET /v1/dashboard`` against the session's real Redis, database and worker: its numbers
are what the test made (jobs a real worker ran, deliveries to real receivers, a failing
and a disabled endpoint, a dead letter the archiver's own function set aside)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from jobgate.archive import Archiver
from jobgate.times import format_time
from tests.helpers import wait_until
from tests.webhooks.conftest import Receiver

QUICK = {"task": "demo.sleep", "params": {"seconds": 0, "steps": 1}}


def board(client, headers) -> dict[str, Any]:
    response = client.get("/v1/dashboard", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_partners_are_refused(client, partner) -> None:
    response = client.get("/v1/dashboard", headers=partner["headers"])
    assert response.status_code == 403
    assert client.get("/v1/dashboard").status_code == 401


def test_workers_online_with_their_pools(client, admin_headers, worker) -> None:
    def both_pools() -> list[dict[str, Any]]:
        nodes = [n for n in board(client, admin_headers)["workers"]["nodes"] if n["alive"]]
        kinds = {kind for node in nodes for kind in node["pools"]}
        return nodes if {"jobs", "webhooks"} <= kinds else []

    nodes = wait_until(both_pools, 30, 0.2, "both pools of the worker seen alive")
    jobs_pool = next(node for node in nodes if node["pools"] == ["jobs"])
    assert jobs_pool["slots"] == 2  # the session's worker: a job pool of 2
    hooks = next(node for node in nodes if node["pools"] == ["webhooks"])
    assert hooks["slots"] > 0 and hooks["node"] != jobs_pool["node"]
    answer = board(client, admin_headers)["workers"]
    assert answer["alive"] >= 2 and answer["known"] >= answer["alive"]


def test_numbers_agree_with_what_the_test_made(
    app, client, admin_headers, partner, other_partner, worker
) -> None:
    svc = app.extensions["jobgate"]
    failing, fine = Receiver(), Receiver()
    delayed: dict[str, Any] = {}
    try:
        before = board(client, admin_headers)
        failing.answer(*[503] * 20)
        # The partner's endpoint answers 503 to everything: failing. Another is disabled.
        created = client.post(
            "/v1/endpoints",
            json={"url": failing.url + "?token=do-not-show", "event_types": ["job.succeeded"]},
            headers=partner["headers"],
        )
        assert created.status_code == 201, created.get_json()
        bad_endpoint = created.get_json()
        off = client.post(
            "/v1/endpoints",
            json={"url": fine.url + "/off", "event_types": ["batch.completed"]},
            headers=partner["headers"],
        ).get_json()
        assert (
            client.patch(
                f"/v1/endpoints/{off['id']}", json={"enabled": False}, headers=partner["headers"]
            ).status_code
            == 200
        )

        # Two jobs a real worker runs: one fans out to the failing endpoint (4 attempts,
        # none delivered), the other's callback is delivered at once.
        first = client.post("/v1/jobs", json=QUICK, headers=partner["headers"]).get_json()
        second = client.post(
            "/v1/jobs", json={**QUICK, "callback_url": fine.url}, headers=other_partner["headers"]
        ).get_json()
        # A third waits an hour for its run_at: the partner's queue shows it delayed.
        later = format_time(datetime.now(UTC) + timedelta(hours=1))
        delayed = client.post(
            "/v1/jobs", json={**QUICK, "run_at": later}, headers=partner["headers"]
        ).get_json()
        # A subject the database refused, set aside by the archiver's own function.
        dead_id = "dash-" + uuid.uuid4().hex[:8]
        Archiver(svc.store, svc.db, consumer="tests").set_aside(
            [(("job", dead_id), ValueError("refused by the test"))]
        )
        fine.wait_for(1)
        failing.wait_for(4)

        def delta(now: dict[str, Any], name: str) -> int:
            return now["activity"]["totals"][name] - before["activity"]["totals"][name]

        def caught_up() -> dict[str, Any] | None:
            now = board(client, admin_headers)
            done = {name: delta(now, name) for name in ("ended", "attempts", "delivered")}
            return now if done == {"ended": 2, "attempts": 5, "delivered": 1} else None

        after = wait_until(caught_up, 30, 0.2, "the jobs and attempts in the last hour")
        assert delta(after, "submitted") == 3
        assert delta(after, "started") == 2
        minute = after["activity"]["minutes"][-1]
        assert minute["minute"] <= format_time(datetime.now(UTC))
        totals = after["activity"]["totals"]
        assert totals["success_rate"] == round(totals["delivered"] / totals["attempts"], 4)

        failing_ends = after["endpoints"]["failing"]
        assert failing_ends["count"] == before["endpoints"]["failing"]["count"] + 1
        [shown] = [e for e in failing_ends["newest"] if e["id"] == bad_endpoint["id"]]
        assert shown["url"] == failing.url and shown["failing_since"]
        disabled = after["endpoints"]["disabled"]
        assert disabled["count"] == before["endpoints"]["disabled"]["count"] + 1
        assert off["id"] in [e["id"] for e in disabled["newest"]]
        assert "do-not-show" not in str(after) and "whsec_" not in str(after)

        dead = after["dead_letters"]
        assert dead["count"] == before["dead_letters"]["count"] + 1
        assert (dead["newest"][0]["kind"], dead["newest"][0]["subject_id"]) == ("job", dead_id)

        [queue] = [q for q in after["queues"]["partners"] if q["partner_id"] == partner["id"]]
        assert queue == {
            "partner_id": partner["id"],
            "queued": 0,
            "running": 0,
            "delayed": 1,
            "total": 1,
            "name": partner["name"],
        }
        assert after["queues"]["totals"]["delayed"] >= 1
        assert {first["job_id"], second["job_id"]}  # both ran: counted above
    finally:
        if delayed:
            client.post(
                f"/v1/jobs/{delayed['job_id']}/revoke",
                json={"reason": "test over"},
                headers=admin_headers,
            )
        failing.stop()
        fine.stop()
