"""W3C Trace Context: a ``traceparent`` sent with a submit is kept with the job (record and
row) and arrives with its webhooks in the same trace; an invalid one is ignored. A real
gateway, the session's ``jobgate worker`` and real receivers; OpenTelemetry is off here
(tests/webhooks/test_otel.py turns it on)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from jobgate import history
from tests.webhooks.conftest import Receiver
from tests.webhooks.test_events import webhook_settles

FLAGS = "01"


def new_traceparent(flags: str = FLAGS) -> tuple[str, str, str]:
    """(header, trace id, parent id) of a fresh trace."""
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return f"00-{trace_id}-{parent_id}-{flags}", trace_id, parent_id


def submit_traced(
    client: Any, partner: dict[str, Any], traceparent: str, **fields: Any
) -> dict[str, Any]:
    body = {"task": "demo.sleep", "params": {"seconds": 0, "steps": 1}, **fields}
    response = client.post(
        "/v1/jobs", json=body, headers={**partner["headers"], "traceparent": traceparent}
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def same_trace(header: str | None, trace_id: str, parent_id: str, flags: str = FLAGS) -> None:
    """``header`` is a valid traceparent in trace ``trace_id``, a hop of its own."""
    assert header is not None, "no traceparent arrived"
    version, got_trace, got_parent, got_flags = header.split("-")
    assert (version, got_trace, got_flags) == ("00", trace_id, flags), header
    assert len(got_parent) == 16 and got_parent != "0" * 16
    assert got_parent != parent_id  # the webhook is a hop of its own


@pytest.mark.parametrize("flags", ["01", "00"])
def test_a_jobs_traceparent_is_kept_and_sent_with_its_webhook(
    app, client, worker, partner, receiver: Receiver, flags: str
) -> None:
    header, trace_id, parent_id = new_traceparent(flags)
    job = submit_traced(client, partner, header, callback_url=receiver.url)
    [request] = receiver.wait_for(1)
    same_trace(request.headers.get("traceparent"), trace_id, parent_id, flags)
    request.verify(partner["webhook_secret"])
    svc = app.extensions["jobgate"]
    assert svc.store.job(job["job_id"])["traceparent"] == header  # the record
    assert history.job(svc.db, job["job_id"])["traceparent"] == header  # its row
    assert (
        "traceparent"
        not in client.get(f"/v1/jobs/{job['job_id']}", headers=partner["headers"]).get_json()
    )  # kept, not shown


@pytest.mark.parametrize(
    "header",
    [
        "not-a-traceparent",
        f"00-{'0' * 32}-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  # uppercase
        None,  # no header at all
    ],
)
def test_an_invalid_or_absent_traceparent_is_ignored(
    app, client, worker, partner, header: str | None
) -> None:
    """Beside a job with a valid header (which carries it), one with ``header`` is
    accepted and delivered as ever, with no ``traceparent`` kept or sent."""
    traced, plain = Receiver(), Receiver()
    try:
        valid, trace_id, parent_id = new_traceparent()
        submit_traced(client, partner, valid, callback_url=traced.url)
        if header is None:
            job = client.post(
                "/v1/jobs",
                json={"task": "demo.sleep", "params": {"seconds": 0}, "callback_url": plain.url},
                headers=partner["headers"],
            ).get_json()
        else:
            job = submit_traced(client, partner, header, callback_url=plain.url)
        [request] = plain.wait_for(1)
        [beside] = traced.wait_for(1)
        same_trace(beside.headers.get("traceparent"), trace_id, parent_id)
        assert "traceparent" not in request.headers
        view = webhook_settles(client, job["job_id"], partner["headers"])
        assert view["webhook"]["state"] == "delivered"
        svc = app.extensions["jobgate"]
        assert "traceparent" not in svc.store.job(job["job_id"])
        assert "traceparent" not in history.job(svc.db, job["job_id"])
    finally:
        traced.stop()
        plain.stop()


def test_a_batch_keeps_its_traceparent_for_its_members_and_its_completion(
    client, worker, partner
) -> None:
    members, batch_hook = Receiver(), Receiver()
    try:
        header, trace_id, parent_id = new_traceparent()
        member = {
            "task": "demo.sleep",
            "params": {"seconds": 0, "steps": 1},
            "callback_url": members.url,
        }
        response = client.post(
            "/v1/batches",
            json={"jobs": [member, member], "callback_url": batch_hook.url},
            headers={**partner["headers"], "traceparent": header},
        )
        assert response.status_code == 202, response.get_json()
        for request in [*members.wait_for(2), *batch_hook.wait_for(1)]:
            same_trace(request.headers.get("traceparent"), trace_id, parent_id)
        [done] = batch_hook.requests
        assert done.verify(partner["webhook_secret"])["type"] == "batch.completed"
    finally:
        members.stop()
        batch_hook.stop()


def test_an_endpoint_message_carries_its_jobs_traceparent(
    client, worker, partner, receiver: Receiver
) -> None:
    registered = client.post(
        "/v1/endpoints", json={"url": receiver.url}, headers=partner["headers"]
    )
    assert registered.status_code == 201, registered.get_json()
    header, trace_id, parent_id = new_traceparent()
    submit_traced(client, partner, header)  # no callback_url: fanned out to the endpoint
    [request] = receiver.wait_for(1)
    request.verify(registered.get_json()["webhook_secret"])
    same_trace(request.headers.get("traceparent"), trace_id, parent_id)
