"""A job's end, committed to its database row before anything announces it.

``jobgate.lifecycle.finish_job`` commits the end here first (first one wins), then records
it in Redis with the webhook message in one script: so every webhook body is built from
the committed end, and whatever Redis loses, a job has one end. A later run of a job
whose end Redis lost (its message redelivered) finds the committed end and records that
instead of running the task again; a success whose Redis end failed for longer than the
retries, which Celery then reports as a failure, is still announced as the success it was.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from sqlalchemy import Text, bindparam, cast, func, select, update
from sqlalchemy.dialects.postgresql import JSONB

from jobgate.archive import refuses_record, revision
from jobgate.db import Database, escape_unstorable
from jobgate.db.models import Job, Time
from jobgate.times import parse_time

# What a job's end writes into its record (``Store.finish_job``'s fields, and the run it
# ends: its start, run count and worker).
END_FIELDS = (
    "status",
    "finished_at",
    "started_at",
    "runs",
    "worker",
    "result",
    "error",
    "progress",
    "revoked_by",
    "revoke_reason",
)


def commit_end(
    db: Database, job_id: str, end: dict[str, Any]
) -> tuple[dict[str, Any] | None, bool]:
    """Commit a job's end (``status``, ``finished_at`` and the fields it records: result,
    error, progress, who revoked it) to its row, unless an end is committed already, in
    one statement. Returns (the committed end, whether this call committed it); (None,
    False) if the job has no row (made outside the gateway). Text the database cannot
    store (NUL, lone surrogates) is committed escaped (``jobgate.db.escape_unstorable``)."""
    try:
        changed = _write_end(db, job_id, end)
    except Exception as exc:
        if not refuses_record(exc):
            raise
        end = storable(end)
        changed = _write_end(db, job_id, end)
    if changed:
        return end, True
    return committed_end(db, job_id), False


def _write_end(db: Database, job_id: str, end: dict[str, Any]) -> int:
    params: dict[str, Any] = {
        "end_job_id": job_id,
        "end_status": end["status"],
        "end_finished_at": parse_time(end["finished_at"]),
        # The archiver's next write wins once its record is further along (an attempt).
        "end_rev": revision(end["status"], "pending", 0),
    }
    if db.is_sqlite:
        for i, (name, value) in enumerate(end.items()):
            params |= {f"path_{i}": f"$.{name}", f"value_{i}": json.dumps(value)}
    else:
        params["end"] = json.dumps(end)
    return db.write(_end_statement(db.dialect, len(end)), params)


@cache
def _end_statement(dialect: str, fields: int) -> Any:
    """The ``UPDATE`` of a job's row with its end, if it has none: the database merges
    the end's ``fields`` into the record itself (one round trip, no read first). Built
    once per shape, with every value a parameter."""
    if dialect == "sqlite":
        pairs: list[Any] = []
        for i in range(fields):
            pairs += [bindparam(f"path_{i}"), func.json(bindparam(f"value_{i}"))]
        record: Any = func.json_set(Job.record, *pairs)
    else:
        record = Job.record.op("||")(cast(bindparam("end", type_=Text), JSONB))
    return (
        update(Job)
        .where(Job.job_id == bindparam("end_job_id"), Job.status.is_(None))
        .values(
            status=bindparam("end_status"),
            finished_at=bindparam("end_finished_at", type_=Time),
            record=record,
            rev=bindparam("end_rev"),
        )
    )


def storable(value: Any) -> Any:
    """``value`` with every string (and key) the database cannot store escaped."""
    if isinstance(value, str):
        return escape_unstorable(value)
    if isinstance(value, dict):
        return {escape_unstorable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    return value


def committed_end(db: Database, job_id: str) -> dict[str, Any] | None:
    """The end committed to a job's row, or None (not ended, or no row)."""
    return committed_ends(db, [job_id]).get(job_id)


def committed_ends(db: Database, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The ends committed to the rows of ``job_ids`` (jobs not ended, or without a row,
    are absent; a row's ``status`` is set by its end only)."""
    if not job_ids:
        return {}
    rows = db.read(
        select(Job.job_id, Job.record).where(Job.job_id.in_(job_ids), Job.status.is_not(None))
    )
    return {job_id: _ended_part(record) for job_id, record in rows}


def _ended_part(record: dict[str, Any]) -> dict[str, Any]:
    """The fields of a record an end writes (``Store.finish_job``'s)."""
    return {name: record[name] for name in END_FIELDS if name in record}
