"""The event registry is whole: every event jobgate fires is declared, with a known subject."""

from __future__ import annotations

import json
from typing import Any

from jobgate.endpoints import matches
from jobgate.events import (
    BATCH_COMPLETED,
    EVENT_TYPES,
    JOB_EVENTS,
    OPERATIONAL,
    OPERATIONAL_SUBJECT,
    SUBJECTS,
    build_body,
    delivery_task_id,
    parse_delivery_task_id,
    webhook_id,
)
from jobgate.status import TERMINAL


def test_every_fired_event_is_declared_with_its_subject():
    assert set(JOB_EVENTS) == TERMINAL
    assert {EVENT_TYPES[name].subject for name in JOB_EVENTS.values()} == {"job"}
    assert EVENT_TYPES[BATCH_COMPLETED].subject == "batch"
    assert set(EVENT_TYPES) == {*JOB_EVENTS.values(), BATCH_COMPLETED, *OPERATIONAL}
    assert {event.subject for event in EVENT_TYPES.values()} <= set(SUBJECTS)


def test_operational_events_are_declared_with_a_sample_and_go_only_where_named():
    """The five operational events (what Svix and Convoy send), each with a sample data
    for the catalog; an endpoint without event types takes every job and batch event and
    none of them, one that names one takes it."""
    assert OPERATIONAL == {
        "endpoint.disabled",
        "endpoint.enabled",
        "message.attempt.failing",
        "message.attempt.exhausted",
        "message.attempt.recovered",
    }
    for name in OPERATIONAL:
        assert EVENT_TYPES[name].subject == OPERATIONAL_SUBJECT
        assert isinstance(EVENT_TYPES[name].sample, dict)
        json.dumps(EVENT_TYPES[name].sample)
    every = {"event_types": ""}
    named = {"event_types": "job.failed,message.attempt.exhausted"}
    assert all(matches(every, name) for name in (*JOB_EVENTS.values(), BATCH_COMPLETED))
    assert not any(matches(every, name) for name in OPERATIONAL)
    assert matches(named, "message.attempt.exhausted") and matches(named, "job.failed")
    assert not matches(named, "message.attempt.failing")
    assert not matches(named, "job.succeeded")


def test_ids_are_stable_and_delivery_task_ids_round_trip():
    assert webhook_id("j1", "job.succeeded") == webhook_id("j1", "job.succeeded")
    assert webhook_id("j1", "job.succeeded") != webhook_id("j1", "job.failed")
    task_id = delivery_task_id("batch", "b-1", "batch.completed", "r0a1", 3)
    assert parse_delivery_task_id(task_id) == ("batch", "b-1", "batch.completed", "r0a1", 3)
    assert parse_delivery_task_id("3f2a-job-id") is None
    assert parse_delivery_task_id("whk:job:j:job.failed:auto:x") is None


ENDED = {
    "job_id": "j1",
    "task": "demo.sleep",
    "status": "SUCCESS",
    "result": '{"ok": true}',
    "callback_url": "https://partner.example/hooks",
    "created_at": "2026-05-01T12:00:00.000Z",
    "finished_at": "2026-05-01T12:00:03.512Z",
}


def test_the_body_is_the_job_as_it_ended_whenever_it_is_built():
    """``timestamp`` is the end's ``finished_at``, not the time of building; the delivery
    fields a later attempt writes on the record change nothing: the same bytes every time."""
    store: Any = None  # a job's body needs nothing but its record
    at_end = build_body(store, "job", "j1", "job.succeeded", dict(ENDED))
    later = {**ENDED, "webhook_state": "retrying", "webhook_attempts": "3"}
    assert build_body(store, "job", "j1", "job.succeeded", later) == at_end
    assert at_end is not None
    payload = json.loads(at_end)
    assert (payload["type"], payload["timestamp"]) == ("job.succeeded", ENDED["finished_at"])
    assert payload["data"]["finished_at"] == ENDED["finished_at"]
    assert payload["data"]["webhook"] == {"state": "pending", "attempts": 0}
    assert payload["data"]["result"] == {"ok": True}
    assert build_body(store, "job", "j1", "job.succeeded", {}) is None
