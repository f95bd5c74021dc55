"""Batches: many jobs submitted together, counted as they end, one ``batch.completed``.

A Celery chord's callback does not run when a member fails (``ChordError``), so a batch
is not a chord: every member is a normal job (own record, status, revoke, own webhook if
it has its own callback), queued together, and each member's end is counted here by
``member_finished`` (called from ``tasks.lifecycle.finish_job``, whatever the outcome).
The count is an atomic Lua script, idempotent per member, so the last member to end
fires ``batch.completed`` exactly once. See docs/batches.md.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from celery import Celery
from marshmallow import Schema, fields, validate

from gateway.auth import Principal
from gateway.errors import APIError, not_found
from gateway.extensions import Services
from gateway.schemas import load_or_422
from gateway.status import TERMINAL, job_view
from gateway.store import Store, new_id, utcnow
from tasks import lifecycle

log = logging.getLogger("jobgate.batches")

MAX_BATCH = 1000  # members one batch may hold; more is a 422
COUNTERS = ("succeeded", "failed", "revoked")
OUTCOME = {"SUCCESS": "succeeded", "FAILURE": "failed", "REVOKED": "revoked"}
BATCH_EVENT = "batch.completed"

# Count one member's outcome once (a member already counted is ignored: re-runs and
# retries of the finish path cannot count twice). Returns 1 when this member was the
# last one, i.e. exactly once per batch; 0 otherwise; -1 if the batch is unknown.
_COUNT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('PEXPIRE', KEYS[2], redis.call('PTTL', KEYS[1]))
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
local completed = redis.call('HINCRBY', KEYS[1], 'completed', 1)
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
if completed < total or redis.call('HEXISTS', KEYS[1], 'finished_at') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'finished_at', ARGV[3])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], tonumber(ARGV[4])) end
return 1
"""


class BatchSubmitSchema(Schema):
    """Shape of ``POST /v1/batches``; each member is then validated as a job."""

    jobs = fields.List(fields.Raw(), required=True, validate=validate.Length(min=1))
    callback_url = fields.String(load_default=None, allow_none=True,
                                 validate=validate.Length(min=1, max=2048))
    metadata = fields.Dict(keys=fields.String(), load_default=dict)


def batch_key(store: Store, batch_id: str, *suffix: str) -> str:
    return store.key("batch", batch_id, *suffix)


def _keys(store: Store, batch_id: str) -> list[str]:
    """The batch hash, its set of counted members, its ordered member ids."""
    return [batch_key(store, batch_id), batch_key(store, batch_id, "done"),
            batch_key(store, batch_id, "jobs")]


# ------------------------------------------------------------------------- submit
def validate_members(svc: Services, jobs: list[Any]) -> list[dict[str, Any]]:
    """Every member validated as a job; one bad member is a 422 keyed by its index."""
    from gateway.jobs import validate_job

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
        raise APIError(422, "validation_error",
                       f"{len(errors)} of {len(jobs)} jobs are invalid; nothing was queued.",
                       {"jobs": errors})
    return valid


def submit(svc: Services, principal: Principal, body: Any) -> dict[str, Any]:
    """Validate every member, store the batch and its jobs, queue them all; the batch view."""
    from gateway.jobs import check_callback, enforce_rate_limit, new_record

    if isinstance(body, dict) and isinstance(body.get("jobs"), list) \
            and len(body["jobs"]) > MAX_BATCH:
        raise APIError(422, "validation_error",
                       f"A batch holds at most {MAX_BATCH} jobs; split it.",
                       {"jobs": [f"At most {MAX_BATCH} jobs ({len(body['jobs'])} sent)."]})
    batch = load_or_422(BatchSubmitSchema(), body)
    if batch["callback_url"]:
        check_callback(svc, batch["callback_url"])
    members = validate_members(svc, batch["jobs"])
    enforce_rate_limit(svc, principal)
    batch_id = new_id()
    records = [new_record(principal, job, batch_id=batch_id) for job in members]
    store = svc.store
    hash_key, _, jobs_key = _keys(store, batch_id)
    pipe = store.redis.pipeline()
    pipe.hset(hash_key, mapping={
        "batch_id": batch_id, "partner_id": principal.partner_id or "",
        "callback_url": batch["callback_url"] or "", "created_at": utcnow(),
        "total": len(records), "completed": 0, **dict.fromkeys(COUNTERS, 0),
        "metadata": json.dumps(batch["metadata"])})
    pipe.rpush(jobs_key, *(r["job_id"] for r in records))
    pipe.expire(hash_key, store.live_ttl)
    pipe.expire(jobs_key, store.live_ttl)
    pipe.execute()
    for record in records:
        store.create_job(record)
    _send_all(svc, batch_id, records, [job["params"] for job in members])
    return batch_view(store, batch_id, svc=svc)


def _send_all(svc: Services, batch_id: str, records: list[dict[str, Any]],
              params: list[dict[str, Any]]) -> None:
    """Queue every member over one broker connection (a group of send_task calls).

    If the broker fails part way, members not queued end as FAILURE (counted, so the batch
    still completes); if none was queued, the batch and its records are removed and the
    error propagates (503).
    """
    sent = 0
    try:
        with svc.celery.producer_or_acquire() as producer:
            for record, kwargs in zip(records, params, strict=True):
                svc.celery.send_task(record["task"], kwargs=kwargs, task_id=record["task_id"],
                                     queue=svc.settings.queue_jobs, producer=producer)
                sent += 1
    except Exception:
        if sent == 0:
            for record in records:
                svc.store.delete_job(record)
            svc.store.redis.delete(*_keys(svc.store, batch_id))
            raise
        log.exception("batch %s: broker failed after %d of %d jobs", batch_id, sent,
                      len(records))
        for record in records[sent:]:
            lifecycle.finish_job(svc.celery, svc.store, record["job_id"], "FAILURE",
                                 error="The broker refused this job; it was never queued.")


# ----------------------------------------------------------------------- counting
def member_finished(app: Celery, store: Store, job_record: dict[str, Any]) -> bool:
    """Count a member's outcome once; the last one fires ``batch.completed`` (if wanted).

    Returns True for the call that completed the batch. Revoked members count as ended.
    """
    batch_id = job_record.get("batch_id")
    outcome = OUTCOME.get(job_record.get("status", ""))
    if not batch_id or outcome is None:
        return False
    script = store.redis.register_script(_COUNT)
    last = script(keys=_keys(store, batch_id),
                  args=[job_record["job_id"], outcome, utcnow(), store.retention])
    if last != 1:
        return False
    record = batch_record(store, batch_id) or {}
    log.info("batch %s completed", batch_id, extra={"batch_id": batch_id})
    if record.get("callback_url"):
        lifecycle.enqueue_webhook(app, store, batch_id, BATCH_EVENT, kind="batch")
    return True


# ------------------------------------------------------------------------ reading
def batch_record(store: Store, batch_id: str) -> dict[str, Any] | None:
    """The stored batch hash with counters as ints, or None."""
    raw = store.redis.hgetall(batch_key(store, batch_id)) if len(batch_id) <= 64 else {}
    if not raw:
        return None
    record: dict[str, Any] = dict(raw)
    for name in ("total", "completed", *COUNTERS):
        record[name] = int(record.get(name) or 0)
    record["metadata"] = json.loads(record.get("metadata") or "{}")
    return record


def find(svc: Services, principal: Principal, batch_id: str) -> dict[str, Any]:
    """The batch record if the caller may see it; 404 for unknown and others' batches."""
    record = batch_record(svc.store, batch_id)
    if record is None or not (principal.is_admin or record["partner_id"] ==
                              principal.partner_id):
        raise not_found("batch")
    return record


def member_ids(store: Store, batch_id: str) -> list[str]:
    return store.redis.lrange(batch_key(store, batch_id, "jobs"), 0, -1)


def member_summary(view: dict[str, Any]) -> dict[str, Any]:
    """A member as the batch lists it (the full job, result included, is GET /v1/jobs/{id})."""
    return {name: view[name] for name in ("job_id", "task", "status", "progress", "error",
                                          "metadata", "finished_at")}


def batch_view(store: Store, batch_id: str, *, svc: Services | None = None,
               record: dict[str, Any] | None = None) -> dict[str, Any]:
    """The batch as ``GET /v1/batches/{id}`` returns it (and ``batch.completed`` carries).

    Counts come from the atomic counters; ``percent`` averages the members' progress (an
    ended member is 100), so it moves while long members run. Live members are refined
    by one Celery meta read each, only when ``svc`` is given.
    """
    record = record or batch_record(store, batch_id)
    if record is None:
        raise not_found("batch")
    members = []
    for job_id, job in zip(ids := member_ids(store, batch_id), store.jobs(ids), strict=True):
        if job is None:  # expired record of a long-finished batch
            members.append({"job_id": job_id, "status": None})
            continue
        meta = None
        if svc is not None and job.get("status") not in TERMINAL:
            meta = svc.celery.backend.get_task_meta(job["task_id"])
        members.append(member_summary(job_view(job, meta)))
    total, completed = record["total"], record["completed"]
    done = bool(record.get("finished_at"))
    if done or not total:
        percent = 100 if done else 0
    else:
        points = sum(100 if m["status"] in TERMINAL else
                     int((m.get("progress") or {}).get("percent") or 0) for m in members)
        percent = min(99, points // total)
    started = any(m["status"] not in (None, "PENDING") for m in members)
    return {
        "batch_id": record["batch_id"],
        "status": "COMPLETED" if done else ("PROCESSING" if started or completed else
                                            "PENDING"),
        "total": total, "completed": completed,
        **{name: record[name] for name in COUNTERS},
        "pending": total - completed,
        "percent": percent,
        "callback_url": record.get("callback_url") or None,
        "metadata": record["metadata"],
        "created_at": record.get("created_at"),
        "finished_at": record.get("finished_at"),
        "job_ids": ids,
        "jobs": members,
    }


def batch_webhook_subject(store: Store,
                          batch_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(batch record, webhook data) for delivering ``batch.completed``; None if it is gone.

    The record carries ``partner_id`` and ``callback_url`` (who signs, where to send); the
    data is the batch view as GET returns it.
    """
    record = batch_record(store, batch_id)
    if record is None:
        return None
    return record, batch_view(store, batch_id, record=record)


# ------------------------------------------------------------------------- revoke
def revoke(svc: Services, principal: Principal, batch_id: str, *, reason: str,
           terminate: bool) -> dict[str, Any]:
    """Revoke every member not ended yet (admin); ended members are left as they are."""
    from gateway.revoke import revoke_job

    find(svc, principal, batch_id)
    ids = member_ids(svc.store, batch_id)
    for job_id, job in zip(ids, svc.store.jobs(ids), strict=True):
        if job is None or job.get("status") in TERMINAL:
            continue
        try:
            revoke_job(svc, job_id, by=principal.name or principal.role,
                       reason=reason or "batch revoked", terminate=terminate)
        except APIError as exc:
            if exc.status != 409:  # ended meanwhile: fine
                raise
    return batch_view(svc.store, batch_id, svc=svc)

