"""Admin revoke: record REVOKED in the job store first, then tell the workers.

The revoke's end script writes Celery's ``REVOKED`` meta with the record, so
``AsyncResult`` agrees at once, also for a job that stops at its next report (Celery
writes nothing for that). The job record is the revocation that lasts: ``JobTask``
refuses a job whose record is REVOKED (so a worker started later, which never saw
Celery's in-memory revoke, still does not run it) and the progress helper stops a running
one at its next report when the pool could not terminate it. ``finish_job`` is
first-writer-wins, so a second revoke, or a revoke racing the job's own end, fires no
second webhook.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.errors import APIError, or_404
from gateway.extensions import Services
from jobgate.lifecycle import finish_job
from jobgate.status import TERMINAL, job_view
from tasks.publish import revoked_meta

log = logging.getLogger(__name__)

MAX_REASON = 500


def revoke_job(
    svc: Services, job_id: str, *, by: str, reason: str, terminate: bool = True
) -> dict[str, Any]:
    """Revoke a job; returns its view (REVOKED). 404 unknown, 409 already finished."""
    record = or_404(svc.store.job(job_id), "job")
    if record.get("status") not in TERMINAL:
        reason = (reason or "")[:MAX_REASON]
        if finish_job(
            svc.messenger,
            svc.store,
            job_id,
            "REVOKED",
            db=svc.db,
            celery_meta=revoked_meta(
                svc.celery, record, reason or "revoked", svc.messenger.jobs_queue
            ),
            revoked_by=by,
            revoke_reason=reason,
        ):
            _tell_workers(svc, record, terminate)
        record = svc.store.job(job_id) or record
    status = record.get("status")
    if status != "REVOKED":
        raise APIError(
            409, "conflict", f"The job already finished with status {status}.", {"status": status}
        )
    return job_view(record)


def _tell_workers(svc: Services, record: dict[str, Any], terminate: bool) -> None:
    """Revoke the Celery task; terminate (SIGTERM) only a job a worker has started.

    Celery terminates only a worker that has this task id among its active requests, so
    the signal never reaches a process that moved on to another task by id; a queued job
    needs no signal (the job record stops it before it starts).
    """
    fresh = svc.store.job(record["job_id"]) or record
    running = bool(fresh.get("started_at"))
    try:
        svc.celery.control.revoke(
            record["task_id"], terminate=terminate and running, signal="SIGTERM"
        )
    except Exception:  # noqa: BLE001 - the record already says REVOKED; workers check it
        log.warning(
            "could not broadcast the revoke of %s",
            record["job_id"],
            exc_info=True,
            extra={"job_id": record["job_id"]},
        )
