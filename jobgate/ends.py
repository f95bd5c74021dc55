"""A job's end, committed to its database row before anything announces it.

``jobgate.lifecycle.finish_job`` commits the end here first (first one wins), then records
it in Redis with the webhook message in one script: so every webhook body is built from
the committed end, and whatever Redis loses, a job has one end. A later run of a job
whose end Redis lost (its message redelivered) finds the committed end and records that
instead of running the task again; a success whose Redis end failed for longer than the
retries, which Celery then reports as a failure, is still announced as the success it was.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, select, update

from jobgate.archive import revision
from jobgate.db import Database
from jobgate.db.models import Job
from jobgate.partners import parse_time
from jobgate.status import TERMINAL

# What a job's end writes into its record (``Store.finish_job``'s fields).
END_FIELDS = ("status", "finished_at", "result", "error", "progress", "revoked_by", "revoke_reason")


def commit_end(db: Database, job_id: str, end: dict[str, Any]) -> dict[str, Any] | None:
    """Commit a job's end (``status``, ``finished_at`` and the fields it records: result,
    error, progress, who revoked it) to its row, unless an end is committed already.
    Returns the committed end: this one, or the earlier one that won. None if the job has
    no row (created outside the gateway, or before rows were written at submit)."""
    for _ in range(3):
        found = db.read(select(Job.status, Job.record).where(Job.job_id == job_id))
        if not found:
            return None
        status, record = found[0]
        if status in TERMINAL:
            return _ended_part(record)
        ended = {**record, **end}
        with db.session() as session:
            changed = cast(
                "CursorResult[Any]",
                session.execute(
                    update(Job)
                    .where(Job.job_id == job_id, Job.status.is_(None))
                    .values(
                        status=end["status"],
                        finished_at=parse_time(end["finished_at"]),
                        record=ended,
                        rev=revision(end["status"], "pending", 0),  # the archiver's next wins
                    )
                ),
            ).rowcount
        if changed:
            return end
    raise RuntimeError(f"job {job_id}: its end could not be committed")


def committed_end(db: Database, job_id: str) -> dict[str, Any] | None:
    """The end committed to a job's row, or None (not ended, or no row)."""
    found = db.read(select(Job.status, Job.record).where(Job.job_id == job_id))
    if not found or found[0][0] not in TERMINAL:
        return None
    return _ended_part(found[0][1])


def _ended_part(record: dict[str, Any]) -> dict[str, Any]:
    """The fields of a record an end writes (``Store.finish_job``'s)."""
    return {name: record[name] for name in END_FIELDS if name in record}
