"""The job view from its record alone (no services)."""

from __future__ import annotations

import pytest

from jobgate.status import error_message, job_view, progress_of

RECORD = {
    "job_id": "j1",
    "task_id": "j1",
    "task": "demo.sleep",
    "partner_id": "p",
    "metadata": {"k": 1},
    "created_at": "2026-01-01T00:00:00.000Z",
}


STARTED = {**RECORD, "started_at": "2026-01-01T00:00:01.000Z"}


def test_pending_is_queued():
    view = job_view(RECORD)
    assert view["status"] == "PENDING"
    assert view["progress"] == {"message": "Task is queued"}
    assert view["result"] is None and view["error"] is None


def test_a_recorded_start_is_started():
    view = job_view(STARTED)
    assert view["status"] == "STARTED"
    assert view["progress"] == {"message": "Task is starting"}


def test_processing_carries_the_recorded_progress():
    info = {"current": 5, "total": 10, "percent": 50, "message": "half"}
    view = job_view({**STARTED, "progress": info})
    assert view["status"] == "PROCESSING"
    assert view["progress"] == info


def test_progress_percent_is_derived_when_missing():
    assert progress_of({"current": 1, "total": 4})["percent"] == 25
    assert progress_of({"current": 0, "total": 0})["percent"] == 0
    assert progress_of(None) == {"current": 0, "total": 0, "percent": 0, "message": ""}


def test_without_a_recorded_end_a_job_is_not_ended():
    """Whatever Celery's meta says (it is stored before the worker records the end, and
    a worker may die in between), the view is the record's: one end, the recorded one."""
    view = job_view(STARTED)
    assert (view["status"], view["result"], view["error"], view["finished_at"]) == (
        "STARTED",
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    "raw, expected",
    [
        (ValueError("x"), "x"),
        (RuntimeError(), "RuntimeError"),
        ({"exc_type": "KeyError", "exc_message": ["missing", "key"]}, "missing key"),
        ({"exc_type": "KeyError", "exc_message": []}, "KeyError"),
        (None, "Task failed"),
    ],
)
def test_error_message(raw, expected):
    assert error_message(raw) == expected


def test_a_recorded_end_is_the_view():
    record = {
        **RECORD,
        "status": "SUCCESS",
        "result": {"n": 1},
        "finished_at": "2026-01-01T00:00:02.000Z",
    }
    view = job_view(record)
    assert view["status"] == "SUCCESS"
    assert view["result"] == {"n": 1}
    assert view["finished_at"] == "2026-01-01T00:00:02.000Z"


def test_revoked_record_says_who_when_why():
    record = {
        **RECORD,
        "status": "REVOKED",
        "revoked_by": "admin",
        "revoke_reason": "dup",
        "finished_at": "2026-01-01T00:00:03.000Z",
    }
    view = job_view({**record, "progress": {"current": 1, "total": 2}})
    assert view["status"] == "REVOKED"
    assert view["revocation"] == {
        "revoked_at": "2026-01-01T00:00:03.000Z",
        "revoked_by": "admin",
        "reason": "dup",
    }
    assert view["progress"] == {"message": "Task was revoked"}


def test_failure_record_keeps_error_only_for_failure():
    view = job_view({**RECORD, "status": "FAILURE", "error": "boom"})
    assert (view["status"], view["error"]) == ("FAILURE", "boom")


def test_webhook_summary_none_without_callback_and_pending_with_one():
    assert job_view(RECORD)["webhook"] == {"state": "none", "attempts": 0}
    with_cb = {**RECORD, "callback_url": "https://x.example/h"}
    assert job_view(with_cb)["webhook"] == {"state": "pending", "attempts": 0}
