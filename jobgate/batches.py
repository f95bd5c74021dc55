"""Batches: many jobs submitted together, counted as they end, one ``batch.completed``.

A Celery chord's callback does not run when a member fails (``ChordError``), so a batch
is not a chord: every member is a normal job (own record, status, revoke, own webhook if
it has its own callback), queued together, and each member's end is counted here by
``member_finished`` (called from ``jobgate.lifecycle`` whatever the outcome). The count is
an atomic Lua script, idempotent per member, so the last member to end fires
``batch.completed`` exactly once. See docs/batches.md.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from jobgate.status import TERMINAL, job_view
from jobgate.store import Store
from jobgate.times import utcnow

log = logging.getLogger("jobgate.batches")

MAX_BATCH = 1000  # members one batch may hold; more is a 422
COUNTERS = ("succeeded", "failed", "revoked")
OUTCOME = {"SUCCESS": "succeeded", "FAILURE": "failed", "REVOKED": "revoked"}


def batch_key(store: Store, batch_id: str, *suffix: str) -> str:
    return store.key("batch", batch_id, *suffix)


def keys(store: Store, batch_id: str) -> list[str]:
    """The batch hash, its set of counted members, its ordered member ids."""
    return [
        batch_key(store, batch_id),
        batch_key(store, batch_id, "done"),
        batch_key(store, batch_id, "jobs"),
    ]


# ----------------------------------------------------------------------- counting
def member_finished(
    store: Store,
    job_record: dict[str, Any],
    message: tuple[str, str, str] | None = None,
    fan_out: tuple[str, str, str] | None = None,
) -> str | None:
    """Count a member's outcome once (revoked members count as ended).

    The call that completes the batch gets "queued" when its script pushed ``message``
    (queue, message, task id: ``batch.completed``'s first delivery) or, for a batch with
    no callback, ``fan_out`` (the fan-out step to the partner's endpoints); "send" when
    the batch wants the event and the caller must send it; "fan_out" when the caller must
    queue the fan-out step; "completed" when nothing is to be sent; every other call gets
    None.
    """
    batch_id = job_record.get("batch_id")
    outcome = OUTCOME.get(job_record.get("status", ""))
    if not batch_id or outcome is None:
        return None
    queue, body, task_id = message or (store.key("no-webhook"), "", "")
    _, fan_body, fan_id = fan_out or ("", "", "")
    answer = store.scripts["batch_count"](
        keys=[
            *keys(store, batch_id),
            queue,
            store.open_key,
            store.key("batches", "live"),
            store.archive_key,
        ],
        args=[
            job_record["job_id"],
            outcome,
            utcnow(),
            store.retention,
            body,
            task_id,
            time.time() + store.open_grace,
            batch_id,
            fan_body,
            fan_id,
            store.key("partner", ""),
        ],
    )
    if answer[0] != 1:
        return None
    log.info("batch %s completed", batch_id, extra={"batch_id": batch_id})
    if not answer[1]:
        fan = int(answer[3]) if len(answer) > 3 else 0
        return {0: "fan_out", 1: "queued", 2: "completed"}[fan]
    return "queued" if answer[2] else "send"


# ------------------------------------------------------------------------ reading
def batch_record(store: Store, batch_id: str) -> dict[str, Any] | None:
    """The stored batch hash with counters as ints, or None."""
    if len(batch_id) > 64:  # longer than any batch's id (its row's key)
        return None
    raw = cast("dict[str, str]", store.redis.hgetall(batch_key(store, batch_id)))
    if not raw:
        return None
    record: dict[str, Any] = dict(raw)
    for name in ("total", "completed", *COUNTERS):
        record[name] = int(record.get(name) or 0)
    record["metadata"] = json.loads(record.get("metadata") or "{}")
    return record


def member_ids(store: Store, batch_id: str) -> list[str]:
    return cast("list[str]", store.redis.lrange(batch_key(store, batch_id, "jobs"), 0, -1))


def member_summary(view: dict[str, Any]) -> dict[str, Any]:
    """A member as the batch lists it (the full job, result included, is GET /v1/jobs/{id})."""
    return {
        name: view[name]
        for name in ("job_id", "task", "status", "progress", "error", "metadata", "finished_at")
    }


def batch_view(
    store: Store,
    batch_id: str,
    *,
    record: dict[str, Any],
    archived: Callable[[list[str]], dict[str, dict[str, Any]]] | None = None,
    jobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The batch as ``GET /v1/batches/{id}`` returns it (and ``batch.completed`` carries).

    Counts come from the atomic counters; ``percent`` averages the members' progress (an
    ended member is 100), so it moves while long members run: each member as its record
    has it (``jobgate.status.job_view``); members Redis no longer holds are read with
    ``archived`` (``jobgate.history.jobs``) when given. ``jobs``: the
    members' records, already read (nothing is read from Redis).
    """
    ids = record.get("member_ids") or member_ids(store, batch_id)
    records: list[dict[str, Any] | None] = list(jobs) if jobs is not None else store.jobs(ids)
    if archived is not None and None in records:  # members Redis no longer caches
        found = archived([i for i, r in zip(ids, records, strict=True) if r is None])
        records = [r if r is not None else found.get(i) for i, r in zip(ids, records, strict=True)]
    members = [
        # None: the expired record of a long-finished batch
        member_summary(job_view(job)) if job is not None else {"job_id": job_id, "status": None}
        for job_id, job in zip(ids, records, strict=True)
    ]
    total, completed = record["total"], record["completed"]
    done = bool(record.get("finished_at"))
    if done or not total:
        percent = 100 if done else 0
    else:
        points = sum(
            100 if m["status"] in TERMINAL else int((m.get("progress") or {}).get("percent") or 0)
            for m in members
        )
        percent = min(99, points // total)
    started = any(m["status"] not in (None, "PENDING") for m in members)
    return {
        "batch_id": record["batch_id"],
        "status": "COMPLETED" if done else ("PROCESSING" if started or completed else "PENDING"),
        "total": total,
        "completed": completed,
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
