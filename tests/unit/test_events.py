"""The event registry is whole: every event jobgate fires is declared, with a known subject."""

from __future__ import annotations

from jobgate.events import (
    BATCH_COMPLETED,
    EVENT_TYPES,
    JOB_EVENTS,
    SUBJECTS,
    delivery_task_id,
    parse_delivery_task_id,
    webhook_id,
)
from jobgate.status import TERMINAL


def test_every_fired_event_is_declared_with_its_subject():
    assert set(JOB_EVENTS) == TERMINAL
    assert {EVENT_TYPES[name].subject for name in JOB_EVENTS.values()} == {"job"}
    assert EVENT_TYPES[BATCH_COMPLETED].subject == "batch"
    assert set(EVENT_TYPES) == {*JOB_EVENTS.values(), BATCH_COMPLETED}
    assert {event.subject for event in EVENT_TYPES.values()} <= set(SUBJECTS)


def test_ids_are_stable_and_delivery_task_ids_round_trip():
    assert webhook_id("j1", "job.succeeded") == webhook_id("j1", "job.succeeded")
    assert webhook_id("j1", "job.succeeded") != webhook_id("j1", "job.failed")
    task_id = delivery_task_id("batch", "b-1", "batch.completed", "r0a1", 3)
    assert parse_delivery_task_id(task_id) == ("batch", "b-1", "batch.completed", "r0a1", 3)
    assert parse_delivery_task_id("3f2a-job-id") is None
    assert parse_delivery_task_id("whk:job:j:job.failed:auto:x") is None
