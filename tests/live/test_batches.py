"""Batches against a real worker: aggregation, partial failure, one batch.completed."""

from __future__ import annotations

import pytest
from standardwebhooks.webhooks import Webhook

from jobgate import batches
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

SLEEP0 = {"task": "demo.sleep", "params": {"seconds": 0, "steps": 1}}


def submit_batch(client, partner, body):
    response = client.post("/v1/batches", json=body, headers=partner["headers"])
    assert response.status_code == 202, response.get_json()
    assert response.headers["Location"] == f"/v1/batches/{response.get_json()['batch_id']}"
    return response.get_json()


def completed_batch(client, batch_id, headers, timeout=30.0):
    def done():
        view = client.get(f"/v1/batches/{batch_id}", headers=headers).get_json()
        return view["status"] == "COMPLETED" and view

    return wait_until(done, timeout=timeout, interval=0.1, message=f"batch {batch_id} to end")


def test_partial_failure_completes_with_counts_and_one_signed_webhook(
    app, client, partner, worker, receiver
):
    jobs = [
        SLEEP0,
        {"task": "demo.fail", "params": {"message": "bad row"}},
        {**SLEEP0, "metadata": {"row": 3}, "callback_url": receiver.url + "?member"},
        {"task": "demo.fail", "params": {}},
    ]
    batch = submit_batch(
        client, partner, {"jobs": jobs, "callback_url": receiver.url, "metadata": {"upload": "u1"}}
    )
    assert batch["total"] == 4 and len(batch["job_ids"]) == 4
    assert batch["status"] in ("PENDING", "PROCESSING")

    view = completed_batch(client, batch["batch_id"], partner["headers"])
    assert (
        view["total"],
        view["completed"],
        view["succeeded"],
        view["failed"],
        view["revoked"],
        view["percent"],
    ) == (4, 4, 2, 2, 0, 100)
    assert [m["status"] for m in view["jobs"]] == ["SUCCESS", "FAILURE", "SUCCESS", "FAILURE"]
    assert view["jobs"][1]["error"] == "bad row"
    assert view["metadata"] == {"upload": "u1"} and view["finished_at"]

    # Each member is a normal job that knows its batch.
    member = client.get(f"/v1/jobs/{batch['job_ids'][2]}", headers=partner["headers"])
    assert member.get_json()["batch_id"] == batch["batch_id"]
    assert member.get_json()["metadata"] == {"row": 3}

    hooks = wait_until(
        lambda: receiver.of_type("batch.completed"), timeout=20, message="batch.completed webhook"
    )
    payload = Webhook(partner["webhook_secret"]).verify(hooks[0]["body"], hooks[0]["headers"])
    assert payload["data"]["batch_id"] == batch["batch_id"]
    assert (payload["data"]["succeeded"], payload["data"]["failed"]) == (2, 2)
    # Only the member with its own callback_url got a job webhook of its own.
    member_hooks = wait_until(
        lambda: receiver.of_type("job.succeeded"), timeout=20, message="the member's own webhook"
    )
    assert [h["payload"]["data"]["job_id"] for h in member_hooks] == [batch["job_ids"][2]]
    assert all(h["path"].endswith("?member") for h in member_hooks)
    assert len(receiver.of_type("batch.completed")) == 1
    assert not receiver.of_type("job.failed")

    # Counting is idempotent: a member reported again changes nothing and fires nothing.
    svc = app.extensions["jobgate"]
    record = svc.store.job(batch["job_ids"][0])
    assert batches.member_finished(svc.store, record) is None
    again = client.get(f"/v1/batches/{batch['batch_id']}", headers=partner["headers"])
    assert again.get_json()["completed"] == 4


def test_invalid_member_is_422_keyed_by_index_and_nothing_is_queued(client, partner):
    body = {
        "jobs": [
            SLEEP0,
            {"task": "no.such"},
            {"task": "demo.sleep", "params": {"seconds": -1}},
            "not a job",
        ]
    }
    response = client.post("/v1/batches", json=body, headers=partner["headers"])
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    assert set(error["details"]["jobs"]) == {"1", "2", "3"}
    assert "task" in error["details"]["jobs"]["1"]
    assert "seconds" in error["details"]["jobs"]["2"]["params"]
    listed = client.get("/v1/jobs", headers=partner["headers"]).get_json()
    assert listed["jobs"] == []


def test_batch_size_is_capped_and_empty_batches_refused(client, partner):
    too_many = client.post(
        "/v1/batches", json={"jobs": [SLEEP0] * (batches.MAX_BATCH + 1)}, headers=partner["headers"]
    )
    assert too_many.status_code == 422
    assert "jobs" in too_many.get_json()["error"]["details"]
    empty = client.post("/v1/batches", json={"jobs": []}, headers=partner["headers"])
    assert empty.status_code == 422
    assert client.get("/v1/jobs", headers=partner["headers"]).get_json()["jobs"] == []


def test_batches_are_isolated_per_partner_and_partner_only_for_submit(
    client, partner, other_partner, admin_headers, worker
):
    batch = submit_batch(client, partner, {"jobs": [SLEEP0]})
    url = f"/v1/batches/{batch['batch_id']}"
    other = client.get(url, headers=other_partner["headers"])
    assert other.status_code == 404
    unknown = client.get("/v1/batches/does-not-exist", headers=partner["headers"])
    assert other.get_json() == unknown.get_json()
    assert client.get(url, headers=admin_headers).status_code == 200
    assert (
        client.post("/v1/batches", json={"jobs": [SLEEP0]}, headers=admin_headers).status_code
        == 403
    )
    assert client.get(url).status_code == 401
    completed_batch(client, batch["batch_id"], partner["headers"])


def test_admin_revokes_a_whole_batch_and_revoked_members_count_as_ended(
    client, partner, admin_headers, worker, receiver
):
    slow = {"task": "demo.sleep", "params": {"seconds": 60, "steps": 60}}
    batch = submit_batch(
        client, partner, {"jobs": [SLEEP0, slow, slow, slow], "callback_url": receiver.url}
    )
    url = f"/v1/batches/{batch['batch_id']}"
    wait_until(
        lambda: client.get(url, headers=partner["headers"]).get_json()["succeeded"],
        message="the quick member to succeed",
    )
    assert client.post(url + "/revoke", json={}, headers=partner["headers"]).status_code == 403
    response = client.post(
        url + "/revoke", json={"reason": "cancelled upload"}, headers=admin_headers
    )
    assert response.status_code == 202, response.get_json()
    view = response.get_json()
    assert (view["status"], view["succeeded"], view["revoked"], view["percent"]) == (
        "COMPLETED",
        1,
        3,
        100,
    )
    assert [m["status"] for m in view["jobs"]][1:] == ["REVOKED"] * 3
    hooks = wait_until(
        lambda: receiver.of_type("batch.completed"),
        timeout=20,
        message="batch.completed after revoke",
    )
    assert hooks[0]["payload"]["data"]["revoked"] == 3
    # Revoking again changes nothing (ended members are left alone).
    again = client.post(url + "/revoke", json={}, headers=admin_headers)
    assert again.status_code == 202 and again.get_json()["revoked"] == 3


def test_a_thousand_zero_second_jobs_complete_and_report_once(client, partner, worker, receiver):
    total = batches.MAX_BATCH
    batch = submit_batch(client, partner, {"jobs": [SLEEP0] * total, "callback_url": receiver.url})
    assert batch["total"] == total and len(set(batch["job_ids"])) == total
    view = completed_batch(client, batch["batch_id"], partner["headers"], timeout=240)
    assert (
        view["total"],
        view["completed"],
        view["succeeded"],
        view["failed"],
        view["percent"],
    ) == (total, total, total, 0, 100)
    assert all(m["status"] == "SUCCESS" for m in view["jobs"])
    hooks = wait_until(
        lambda: receiver.of_type("batch.completed"),
        timeout=30,
        message="batch.completed for 1000 jobs",
    )
    assert len(hooks) == 1
    assert hooks[0]["payload"]["data"]["succeeded"] == total
