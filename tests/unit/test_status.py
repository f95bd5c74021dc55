"""The status merge: job record + one Celery meta read -> the job view (no services)."""

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


def meta(status, result=None):
    return {"status": status, "result": result, "task_id": "j1"}


def test_pending_is_queued():
    view = job_view(RECORD, meta("PENDING"))
    assert view["status"] == "PENDING"
    assert view["progress"] == {"message": "Task is queued"}
    assert view["result"] is None and view["error"] is None


def test_pending_meta_after_a_recorded_start_is_started():
    # Celery's meta not written yet (or expired) but the worker recorded the start.
    view = job_view({**RECORD, "started_at": "2026-01-01T00:00:01.000Z"}, meta("PENDING"))
    assert view["status"] == "STARTED"
    assert view["progress"] == {"message": "Task is starting"}


def test_started_info_is_not_progress():
    view = job_view(RECORD, meta("STARTED", {"pid": 42, "hostname": "w1"}))
    assert view["status"] == "STARTED"
    assert view["progress"] == {"message": "Task is starting"}


def test_processing_carries_progress_from_the_same_read():
    info = {"current": 5, "total": 10, "percent": 50, "message": "half"}
    view = job_view(RECORD, meta("PROCESSING", info))
    assert view["status"] == "PROCESSING"
    assert view["progress"] == info


def test_progress_percent_is_derived_when_missing():
    assert progress_of({"current": 1, "total": 4})["percent"] == 25
    assert progress_of({"current": 0, "total": 0})["percent"] == 0
    assert progress_of(None) == {"current": 0, "total": 0, "percent": 0, "message": ""}


@pytest.mark.parametrize("state", ["SUCCESS", "FAILURE", "REVOKED"])
def test_an_end_only_celery_stored_is_not_announced(state):
    """The worker stored the meta, then died or lost Redis before recording the end: the
    job will run again, so it reads as it was (one terminal status, the recorded one)."""
    view = job_view(RECORD, meta(state, {"ok": True}))
    assert (view["status"], view["result"], view["error"]) == ("STARTED", None, None)
    assert view["finished_at"] is None
    info = {"current": 3, "total": 4, "percent": 75, "message": "almost"}
    view = job_view({**RECORD, "progress": info}, meta(state, ValueError("bad")))
    assert (view["status"], view["progress"]) == ("PROCESSING", info)


def test_without_a_sweeper_the_end_celery_stored_is_answered():
    """The broker is not the store's Redis: nothing reruns such a job, so reading it as
    running would be for ever; Celery's end is the best answer there is."""
    view = job_view(RECORD, meta("SUCCESS", {"ok": True}), meta_may_end=True)
    assert (view["status"], view["result"], view["progress"]["percent"]) == (
        "SUCCESS",
        {"ok": True},
        100,
    )
    view = job_view(RECORD, meta("FAILURE", ValueError("bad input")), meta_may_end=True)
    assert (view["status"], view["error"], view["result"]) == ("FAILURE", "bad input", None)


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


def test_terminal_record_wins_over_any_meta():
    record = {
        **RECORD,
        "status": "SUCCESS",
        "result": {"n": 1},
        "finished_at": "2026-01-01T00:00:02.000Z",
    }
    # Celery's result expired long ago: the meta says PENDING, the record decides.
    view = job_view(record, meta("PENDING"))
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
    view = job_view(record, meta("PROCESSING", {"current": 1, "total": 2}))
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
    assert job_view(RECORD, meta("PENDING"))["webhook"] == {"state": "none", "attempts": 0}
    with_cb = {**RECORD, "callback_url": "https://x.example/h"}
    assert job_view(with_cb, meta("PENDING"))["webhook"] == {"state": "pending", "attempts": 0}


def test_unknown_celery_state_reads_as_running():
    assert job_view(RECORD, meta("RETRY"))["status"] == "STARTED"
