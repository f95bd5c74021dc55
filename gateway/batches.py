"""Batch routes' rules: validate and queue a batch, read it, revoke its members.

The batch itself (records, counting, the view ``batch.completed`` carries) is the domain's
(``jobgate.batches``); this module adds what HTTP needs: validation, visibility, errors.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from gateway.auth import Principal
from gateway.errors import APIError, or_404
from gateway.extensions import Services
from gateway.jobs import (
    check_callback,
    enforce_rate_limit,
    hand_off,
    new_record,
    queued_limit,
    trace_of,
    validate_job,
    visible,
)
from gateway.revoke import revoke_job
from gateway.schemas import load_or_422
from gateway.schemas.jobs import BatchSubmitSchema
from jobgate import history, lifecycle, outbox
from jobgate.batches import COUNTERS, MAX_BATCH, batch_record, batch_view, member_ids
from jobgate.failpoints import failpoint
from jobgate.status import TERMINAL
from jobgate.store import as_stored, new_id
from jobgate.times import utcnow

log = logging.getLogger("jobgate.batches")


# ------------------------------------------------------------------------- submit
def validate_members(svc: Services, jobs: list[Any]) -> list[dict[str, Any]]:
    """Every member validated as a job; one bad member is a 422 keyed by its index."""
    valid, errors = [], {}
    for index, body in enumerate(jobs):
        if not isinstance(body, dict):
            errors[str(index)] = {"_schema": ["Each job must be a JSON object."]}
            continue
        try:
            valid.append(validate_job(svc, body))
        except APIError as exc:
            errors[str(index)] = exc.details or {"_schema": [exc.message]}
    if errors:
        raise APIError(
            422,
            "validation_error",
            f"{len(errors)} of {len(jobs)} jobs are invalid; nothing was queued.",
            {"jobs": errors},
        )
    return valid


def submit(
    svc: Services, principal: Principal, body: Any, traceparent: str | None = None
) -> dict[str, Any]:
    """Validate every member, store the batch and its jobs, queue them all; the batch view.
    A valid ``traceparent`` is kept with the batch and each member."""
    if (
        isinstance(body, dict)
        and isinstance(body.get("jobs"), list)
        and len(body["jobs"]) > MAX_BATCH
    ):
        raise APIError(
            422,
            "validation_error",
            f"A batch holds at most {MAX_BATCH} jobs; split it.",
            {"jobs": [f"At most {MAX_BATCH} jobs ({len(body['jobs'])} sent)."]},
        )
    batch = load_or_422(BatchSubmitSchema(), body)
    if batch["callback_url"]:
        check_callback(svc, batch["callback_url"])
    members = validate_members(svc, batch["jobs"])
    enforce_rate_limit(svc, principal)
    batch_id = new_id()
    trace = trace_of(traceparent)
    records = [
        new_record(principal, job, svc.messenger.jobs_queue, batch_id=batch_id, **trace)
        for job in members
    ]
    batch_hash = {
        "batch_id": batch_id,
        "partner_id": principal.partner_id or "",
        "callback_url": batch["callback_url"] or "",
        "created_at": utcnow(),
        "total": len(records),
        "completed": 0,
        **dict.fromkeys(COUNTERS, 0),
        "metadata": json.dumps(batch["metadata"]),
        **trace,
    }
    failpoint("batch.create.before")
    # The rows first (jobgate.outbox): the batch as the archiver would read it back.
    ids = [r["job_id"] for r in records]
    row = {**batch_hash, "metadata": batch["metadata"], "member_ids": ids}
    stored = [as_stored(r) for r in records]
    outbox.accept(svc.db, svc.store.prefix, stored, batch=row)
    unsent = hand_off(
        svc,
        principal,
        lambda: svc.store.create_batch(
            batch_hash,
            records,
            [lifecycle.job_message(svc.messenger, r) for r in records],
            queued_limit=queued_limit(svc, principal),
            committed=True,
        ),
        ids,
        batch_id,
    )
    if unsent is None:  # kept; the relay hands it to Redis
        return batch_view(svc.store, batch_id, record=row, jobs=stored)
    lifecycle.send_dispatched(svc.store, svc.messenger, unsent)
    return view(svc, batch_id)


# ------------------------------------------------------------------------ reading
def find(svc: Services, principal: Principal, batch_id: str) -> dict[str, Any]:
    """The batch record if the caller may see it (Redis, then the database); 404 for
    unknown and others' batches."""
    return visible(principal, _stored(svc, batch_id), "batch")


def _stored(svc: Services, batch_id: str) -> dict[str, Any] | None:
    """The batch's record: Redis's, else the database's (None: neither holds it)."""
    return batch_record(svc.store, batch_id) or history.batch(svc.db, batch_id)


def view(svc: Services, batch_id: str, record: dict[str, Any] | None = None) -> dict[str, Any]:
    """The batch view, every member as its record has it."""
    record = or_404(record or _stored(svc, batch_id), "batch")
    return batch_view(
        svc.store,
        batch_id,
        record=record,
        archived=lambda ids: history.jobs(svc.db, ids),
    )


# ------------------------------------------------------------------------- revoke
def revoke(
    svc: Services, principal: Principal, batch_id: str, *, reason: str, terminate: bool
) -> dict[str, Any]:
    """Revoke every member not ended yet (admin); ended members are left as they are."""
    record = find(svc, principal, batch_id)
    ids = record.get("member_ids") or member_ids(svc.store, batch_id)
    for job_id, job in zip(ids, svc.store.jobs(ids), strict=True):
        if job is None or job.get("status") in TERMINAL:
            continue
        try:
            revoke_job(
                svc,
                job_id,
                by=principal.name or principal.role,
                reason=reason or "batch revoked",
                terminate=terminate,
            )
        except APIError as exc:
            if exc.status != 409:  # ended meanwhile: fine
                raise
    return view(svc, batch_id)
