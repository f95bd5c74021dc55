"""The job view, built from the job's record alone (its one record: status, progress,
result and error come from the same read; Celery's meta, written beside it for
``AsyncResult``, is never read for it). Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

STATUSES = ("PENDING", "STARTED", "PROCESSING", "SUCCESS", "FAILURE", "REVOKED")
TERMINAL = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
DEFAULT_PRIORITY = 5  # a job's priority (0-9, higher first among its partner's waiting jobs)

MESSAGES = {
    "PENDING": "Task is queued",
    "STARTED": "Task is starting",
    "SUCCESS": "Task completed",
    "FAILURE": "Task failed",
    "REVOKED": "Task was revoked",
}


def error_message(error: Any) -> str:
    """The human message of a task's exception, never a traceback."""
    if isinstance(error, BaseException):
        text = str(error)
        return text or type(error).__name__
    if isinstance(error, Mapping):  # raw Celery meta: {"exc_type", "exc_message", ...}
        message = error.get("exc_message")
        if isinstance(message, list | tuple):
            message = " ".join(str(part) for part in message)
        return str(message or error.get("exc_type") or "Task failed")
    return str(error) if error is not None else "Task failed"


def progress_of(info: Any) -> dict[str, Any]:
    """Progress from a PROCESSING meta: current, total, percent (0-100) and message."""
    info = info if isinstance(info, Mapping) else {}
    current = int(info.get("current", 0) or 0)
    total = int(info.get("total", 0) or 0)
    percent = info.get("percent")
    if percent is None:
        percent = round(100 * current / total) if total else 0
    return {
        "current": current,
        "total": total,
        "percent": int(percent),
        "message": str(info.get("message", info.get("status", "")) or ""),
    }


def live_state(record: Mapping[str, Any]) -> dict[str, Any]:
    """Status and progress of a job whose record holds no end: processing once it has
    reported progress, started once a worker took it, pending before."""
    info = record.get("progress")
    state = "PROCESSING" if info else "STARTED" if record.get("started_at") else "PENDING"
    progress = progress_of(info) if info else {"message": MESSAGES[state]}
    return {"status": state, "progress": progress, "result": None, "error": None}


def _end(record: Mapping[str, Any], status: str, result: Any, error: Any) -> dict[str, Any]:
    """A terminal status as the view shows it: its progress, result and error (the error
    of a FAILURE only)."""
    return {
        "status": status,
        "progress": _done(record) if status == "SUCCESS" else {"message": MESSAGES[status]},
        "result": result,
        "error": error if status == "FAILURE" else None,
    }


def _done(record: Mapping[str, Any]) -> dict[str, Any]:
    last = record.get("progress") or {}
    total = last.get("total")
    done = {"percent": 100, "message": MESSAGES["SUCCESS"]}
    if total:
        done.update(current=total, total=total)
    return done


def job_view(record: Mapping[str, Any]) -> dict[str, Any]:
    """The job as ``GET /v1/jobs/{id}`` returns it (and as webhooks carry it), from its
    record alone."""
    status = record.get("status")
    if status in TERMINAL:
        state = _end(record, status, record.get("result"), record.get("error"))
    else:
        state = live_state(record)
    view: dict[str, Any] = {
        "job_id": record["job_id"],
        "task_id": record.get("task_id", record["job_id"]),
        "task": record["task"],
        **state,
        "metadata": record.get("metadata") or {},
        "callback_url": record.get("callback_url"),
        "batch_id": record.get("batch_id"),
        "priority": int(record.get("priority", DEFAULT_PRIORITY)),
        "run_at": record.get("run_at"),
        "created_at": record.get("created_at"),
        "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at") if status in TERMINAL else None,
        "webhook": webhook_summary(record),
        "revocation": None,
    }
    if status == "REVOKED":
        view["revocation"] = {
            "revoked_at": record.get("finished_at"),
            "revoked_by": record.get("revoked_by"),
            "reason": record.get("revoke_reason"),
        }
    return view


def webhook_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """The job's ``webhook`` field: delivery state and attempts so far."""
    if not record.get("callback_url"):
        return {"state": "none", "attempts": 0}
    return {
        "state": record.get("webhook_state") or "pending",
        "attempts": int(record.get("webhook_attempts") or 0),
    }
