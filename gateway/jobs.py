"""Job operations behind the routes: submit, find, show, wait, list.

Views stay thin; this module holds the rules (catalog, SSRF, idempotency, isolation).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import g, has_app_context
from marshmallow import ValidationError
from redis.exceptions import RedisError

from gateway.auth import Principal
from gateway.errors import APIError, not_found
from gateway.extensions import Services
from gateway.schemas import load_or_422
from gateway.schemas.jobs import JobSubmitSchema
from jobgate import history, outbox, streams, tracing
from jobgate.lifecycle import queue_job
from jobgate.limits import defaults
from jobgate.outbox import IdempotencyKey, KeyTaken
from jobgate.partners import CHANGED_CHANNEL
from jobgate.ssrf import CallbackRefused, check_callback_url, lookups_for
from jobgate.status import DEFAULT_PRIORITY, TERMINAL, job_view
from jobgate.store import QueueFull, as_stored, digest, key_hash, new_id
from jobgate.times import format_time, utcnow
from jobgate.webhooks.fanout import message_summaries
from tasks.registry import JobType, job_types

log = logging.getLogger("jobgate.jobs")
_submit_schema = JobSubmitSchema()
MAX_SCAN = 1000  # index entries one list request may read while filtering


def catalog(svc: Services) -> dict[str, JobType]:
    """The job types this gateway accepts (``demo.*`` only if enabled)."""
    return job_types(demo=svc.settings.demo_tasks)


def validate_job(svc: Services, body: Any) -> dict[str, Any]:
    """Check a job body: known task, its params, a callback URL that passes the guard."""
    job = load_or_422(_submit_schema, body)
    job_type = catalog(svc).get(job["task"])
    if job_type is None:
        raise APIError(
            422,
            "unknown_task",
            f"There is no task named {job['task']!r}.",
            {"task": [f"Unknown task. Known: {', '.join(catalog(svc))}."]},
        )
    try:
        job["params"] = job_type.params_schema.load(job["params"])
    except ValidationError as exc:
        raise APIError(
            422, "validation_error", "The task's params are invalid.", {"params": exc.messages}
        ) from None
    if job["callback_url"]:
        check_callback(svc, job["callback_url"])
    return job


def check_callback(svc: Services, url: str, field: str = "callback_url") -> None:
    """422 ``callback_url_refused`` (reason under ``details[field]``) unless the URL
    passes the SSRF guard; its DNS lookup counts against the caller's share of the slots."""
    principal = g.get("principal") if has_app_context() else None
    try:
        with lookups_for(principal.partner_id or "" if principal else ""):
            check_callback_url(
                url,
                allow_http=svc.settings.callback_allow_http,
                allowlist=svc.allowlist,
                ports=svc.settings.callback_ports,
                dns_timeout=svc.settings.callback_dns_timeout,
            )
    except CallbackRefused as exc:
        raise APIError(422, "callback_url_refused", exc.reason, {field: [exc.reason]}) from None


def new_record(
    principal: Principal, job: dict[str, Any], queue: str = "", **extra: Any
) -> dict[str, Any]:
    """A new job's record; it keeps its params and queue so that the sweeper can queue a
    lost message again, and its priority and run_at for the dispatcher."""
    job_id = new_id()
    run_at = job.get("run_at")
    if job.get("delay_seconds"):
        run_at = datetime.now(UTC) + timedelta(seconds=job["delay_seconds"])
    return {
        "job_id": job_id,
        "task_id": job_id,
        "task": job["task"],
        "queue": queue or None,
        "partner_id": principal.partner_id,
        "params": job["params"],
        "params_digest": digest(job["params"]),
        "metadata": job.get("metadata") or {},
        "callback_url": job.get("callback_url"),
        "priority": job.get("priority", DEFAULT_PRIORITY),
        "run_at": format_time(run_at) if run_at else None,
        "created_at": utcnow(),
        **extra,
    }


def enqueue(svc: Services, principal: Principal, record: dict[str, Any]) -> None:
    """Hand an accepted job (its row committed) to Redis: its partner's queue
    (``jobgate.lifecycle.queue_job``), as ``hand_off`` says."""
    hand_off(
        svc,
        principal,
        lambda: queue_job(
            svc.store, svc.messenger, record, queued_limit=queued_limit(svc, principal)
        ),
        [record["job_id"]],
    )


def hand_off(
    svc: Services,
    principal: Principal,
    create: Callable[[], Any],
    job_ids: list[str],
    batch_id: str | None = None,
) -> Any:
    """Run ``create``, the Redis side of a submit whose rows are committed; what it
    returns. Refused past ``max_queued_jobs``: the rows are withdrawn and the answer is
    429 ``limit_exceeded``. Redis failing: None, the submit stays accepted, and the relay
    hands it over from the database (``jobgate.outbox``)."""
    try:
        return create()
    except QueueFull:
        outbox.withdraw(svc.db, job_ids, batch_id)
        raise limit_exceeded(
            "max_queued_jobs",
            queued_limit(svc, principal),
            "Too many jobs waiting to start; submit more once some have started.",
            QUEUE_FULL_RETRY_AFTER,
        ) from None
    except RedisError as exc:
        subject = f"batch {batch_id}" if batch_id else f"job {job_ids[0]}"
        log.warning(
            "submit: %s is committed but Redis failed its hand-off (%s); the relay will queue it",
            subject,
            exc,
            extra={"job_id": None if batch_id else job_ids[0]},
        )
        return None


def queued_limit(svc: Services, principal: Principal) -> int:
    """The caller's ``max_queued_jobs`` (0: none)."""
    return limit_of(svc, principal, "max_queued_jobs")


def limit_of(svc: Services, principal: Principal, name: str) -> int:
    """One of the caller's limits in effect (``jobgate.limits``; 0: none). A partner's
    principal carries them all; the defaults are built only for a caller without them."""
    value = principal.limits.get(name)
    return value if value is not None else defaults(svc.settings)[name]


QUEUE_FULL_RETRY_AFTER = 5  # seconds; jobs leave the queue as the partner's earlier ones run


def limit_exceeded(limit: str, value: int, message: str, retry_after: int) -> APIError:
    """429 ``limit_exceeded``: ``details.limit`` names the partner's limit, ``details.value``
    its value (``jobgate.limits``)."""
    return APIError(
        429,
        "limit_exceeded",
        message,
        {"limit": limit, "value": value},
        headers={"Retry-After": str(retry_after)},
    )


def enforce_rate_limit(svc: Services, principal: Principal) -> None:
    """Count one submission (a job or a whole batch) against the caller's
    ``submit_per_minute``; 429 with Retry-After over it."""
    limit = limit_of(svc, principal, "submit_per_minute")
    retry_after = svc.store.hit_rate_limit(principal.partner_id or "", limit)
    if retry_after is not None:
        raise APIError(
            429,
            "rate_limited",
            "Too many submissions; slow down.",
            {"limit_per_minute": limit, "limit": "submit_per_minute", "value": limit},
            headers={"Retry-After": str(retry_after)},
        )


def trace_of(traceparent: str | None) -> dict[str, str]:
    """The record fields that keep a submit's trace (W3C ``traceparent``, ``jobgate.tracing``):
    none when the header is absent or invalid (and OpenTelemetry is off)."""
    kept = tracing.kept(traceparent)
    return {"traceparent": kept} if kept else {}


def submit(
    svc: Services,
    principal: Principal,
    body: Any,
    idempotency_key: str | None,
    traceparent: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Validate a job, commit its row, queue it; returns (job view, created): created is
    False on a replay of its Idempotency-Key. A valid ``traceparent`` is kept with it."""
    job = validate_job(svc, body)
    record = new_record(principal, job, svc.messenger.jobs_queue, **trace_of(traceparent))
    key = None
    if idempotency_key:
        key = IdempotencyKey(principal.partner_id or "", key_hash(idempotency_key), digest(body))
        earlier = svc.store.claim_idempotency(
            key.partner_id, idempotency_key, key.digest, record["job_id"]
        )
        if earlier is not None:
            # A replay creates nothing, so it does not count against the rate limit.
            return replay(svc, earlier["job_id"], earlier["digest"], key.digest), False
    try:
        enforce_rate_limit(svc, principal)
        outbox.accept(svc.db, svc.store.prefix, [as_stored(record)], idempotency=key)
    except KeyTaken as taken:
        # Redis lost the key's claim; the database kept it with the job it made.
        svc.store.release_idempotency(principal.partner_id, idempotency_key or "")
        digest_sent = key.digest if key else ""
        return replay(svc, taken.job_id, taken.digest or "", digest_sent, committed=True), False
    except Exception:
        # Refused or failed: nothing was created, so the key is free for a retry.
        if idempotency_key:
            svc.store.release_idempotency(principal.partner_id, idempotency_key)
        raise
    try:
        enqueue(svc, principal, record)
    except APIError:
        if idempotency_key:
            svc.store.release_idempotency(principal.partner_id, idempotency_key)
        raise
    # Just queued: PENDING by definition, no need to ask Celery.
    return job_view(record), True


def replay(
    svc: Services, job_id: str, earlier_digest: str, body_digest: str, *, committed: bool = False
) -> dict[str, Any]:
    """The view of the job an Idempotency-Key names (``committed``: found in the
    database, so Redis may not hold it); 409 if it came with another body."""
    if earlier_digest != body_digest:
        raise APIError(
            409, "idempotency_conflict", "This Idempotency-Key was used with a different body."
        )
    if committed:
        record = svc.store.job(job_id) or history.job(svc.db, job_id)
        if record is not None:
            return job_view(record)
    return job_view(wait_for_record(svc, job_id))


def wait_for_record(svc: Services, job_id: str, timeout: float = 2.0) -> dict[str, Any]:
    """The record of a job a concurrent request with the same key is creating (Redis,
    or the database if its hand-off to Redis failed)."""
    deadline = time.monotonic() + timeout
    while (record := svc.store.job(job_id)) is None:
        if time.monotonic() > deadline:
            if (record := history.job(svc.db, job_id)) is not None:
                return record
            raise APIError(
                409,
                "idempotency_conflict",
                "A request with this Idempotency-Key is still being processed.",
            )
        time.sleep(0.02)
    return record


def find(svc: Services, principal: Principal, job_id: str) -> dict[str, Any]:
    """The job record if the caller may see it (Redis, then the database); 404 for unknown
    and for others' jobs."""
    return visible(principal, svc.store.job(job_id) or history.job(svc.db, job_id), "job")


def visible(principal: Principal, record: dict[str, Any] | None, what: str) -> dict[str, Any]:
    """``record`` if the caller may see it (an admin any, a partner its own); 404 naming
    ``what`` for none and for another partner's."""
    if record is None or not (
        principal.is_admin or record.get("partner_id") == principal.partner_id
    ):
        raise not_found(what)
    return record


def show(svc: Services, principal: Principal, job_id: str) -> tuple[dict[str, Any], dict]:
    """(record, view) of a job the caller may see: one read of its record (Redis, then
    the database). The view is the record's alone (``jobgate.status.job_view``), the one
    record every answer and webhook is built from; Celery's meta, written beside it for
    ``AsyncResult`` users, is not read (it is stored before the worker records the end,
    so a view that read it could announce an end the record does not hold)."""
    record = find(svc, principal, job_id)
    return record, job_view(record)


def endpoint_webhook(svc: Services, record: dict[str, Any], view: dict[str, Any]) -> dict[str, Any]:
    """``view`` with its ``webhook`` read from the job's endpoint messages when it has no
    ``callback_url`` but its end went to registered endpoints: the state of them all
    (``failed`` if any failed, else ``retrying``, ``pending``, or ``delivered`` once every
    one is), their attempts, and each message (``endpoint_messages``). A job that is not
    finished has no event yet: its view is left as it is, without a read."""
    if record.get("callback_url") or view.get("status") not in TERMINAL:
        return view
    messages = endpoint_messages(svc, view["job_id"])
    if not messages:
        return view
    return {**view, "webhook": messages_summary(messages)}


def endpoint_messages(svc: Services, job_id: str) -> list[dict[str, Any]]:
    """The job's endpoint messages from Redis (kept there for days, longer than the job's
    record); from the database only once Redis has forgotten the job itself, so reading a
    recent job of a partner without endpoints costs no query."""
    store = svc.store
    with store.redis.pipeline(transaction=False) as pipe:  # one round trip for both
        pipe.smembers(store.key("msgs", job_id))
        pipe.exists(store.key("job", job_id))
        ids, kept = pipe.execute()
    if ids or kept:
        return message_summaries(store, job_id, ids)
    return history.messages(svc.db, job_id)


def messages_summary(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``webhook`` field of a job whose events went to endpoint messages."""
    states = {m["state"] for m in messages}
    state = next(
        (s for s in ("failed", "retrying") if s in states),
        "delivered" if states == {"delivered"} else "pending",
    )
    return {
        "state": state,
        "attempts": sum(m["attempts"] for m in messages),
        "endpoint_messages": messages,
    }


STREAMS_FULL_RETRY_AFTER = 5  # seconds; a partner's streams end as its jobs do


class OpenStream:
    """A partner's open stream or held read: its lease against ``max_open_streams``
    (``jobgate.streams``), and the key it was opened with, which must keep working.

    The stream also listens on the partners' change channel (``Partners.changed``): a
    partner disabled, or its key rotated with no grace, ends it at once; each refresh of
    the lease checks the key again, should a change message be lost.
    """

    def __init__(
        self, svc: Services, principal: Principal, api_key: str, lease: streams.StreamLease
    ) -> None:
        self.svc = svc
        self.principal = principal
        self.api_key = api_key
        self.lease = lease
        self.channel = svc.store.key(CHANGED_CHANNEL)

    def allowed(self) -> bool:
        """Does the stream's key still work (read past this process's key cache)?"""
        partner = self.svc.partners.by_key(self.api_key, cached=False)
        return partner is not None and partner["id"] == self.principal.partner_id

    def is_change(self, message: dict[str, Any]) -> bool:
        """Is ``message`` a partner change (``Partners.changed``), not a job event?"""
        return message.get("channel") == self.channel

    def concerns(self, message: dict[str, Any]) -> bool:
        """Is the change about this stream's partner (or any partner)?"""
        return message.get("data") in (self.principal.partner_id, "1")

    def keep(self) -> bool:
        """Refresh the lease when due (checking the key again); False: end the stream."""
        if self.lease.due() > 0:
            return True
        if not self.allowed():
            return False
        self.lease.refresh()
        return True

    def close(self) -> None:
        """Give the lease back (once, whoever calls first)."""
        self.lease.release()


def open_stream(svc: Services, principal: Principal, api_key: str) -> OpenStream | None:
    """Count one more open stream or held read of the caller (None for an admin: no
    limit); 429 ``limit_exceeded`` when it has ``max_open_streams`` open."""
    if principal.partner_id is None:
        return None
    limit = limit_of(svc, principal, "max_open_streams")
    lease = streams.take(svc.store, principal.partner_id, limit)
    if lease is None:
        raise limit_exceeded(
            "max_open_streams",
            limit,
            "Too many open event streams and held reads; close one first.",
            STREAMS_FULL_RETRY_AFTER,
        )
    return OpenStream(svc, principal, api_key, lease)


def wait(
    svc: Services, record: dict[str, Any], seconds: float, holder: OpenStream | None = None
) -> dict[str, Any]:
    """Hold until the job is finished or ``seconds`` pass; woken by the job's events.

    The job is read each time ``events`` yields, the first time right after subscribing,
    so an end published between the caller's read and the subscription is not missed.
    Finished means the job's record is (its end is published, so the wait wakes for it).
    A ``holder`` whose key stops working answers the view at once.
    """
    deadline = time.monotonic() + seconds
    for _ in events(svc, record["job_id"], deadline, holder=holder):
        current = svc.store.job(record["job_id"]) or record
        view = job_view(current)
        if current.get("status") in TERMINAL:
            break
    return view


def events(
    svc: Services,
    job_id: str,
    deadline: float,
    poll: float = 1.0,
    holder: OpenStream | None = None,
) -> Iterator[dict[str, Any] | None]:
    """Yield each published event of a job until ``deadline`` (None every ``poll`` s),
    or until the ``holder``'s key stops working."""
    pubsub = svc.store.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(svc.store.channel(job_id), *([holder.channel] if holder else []))
    try:
        yield None  # subscribed: the caller re-reads once to close the race
        while (left := deadline - time.monotonic()) > 0:
            message = pubsub.get_message(timeout=min(poll, left))
            if holder is not None:
                if message is not None and holder.is_change(message):
                    if holder.concerns(message) and not holder.allowed():
                        return
                    message = None
                if not holder.keep():
                    return
            yield json.loads(message["data"]) if message else None
    finally:
        pubsub.close()


def listing(
    svc: Services,
    principal: Principal,
    *,
    status: str | None,
    task: str | None,
    limit: int,
    cursor: str | None,
    include: str | None = None,
) -> dict[str, Any]:
    """The caller's jobs, newest first, filtered; ``next_cursor`` continues the list.

    Entries carry no ``result`` unless ``include="result"``: a result may be up to
    ``JOBGATE_MAX_RESULT_BYTES``, and a page of twenty is read far more often than any
    one result is wanted.

    Pages come from the database (every job is archived when created and when it ends,
    so a new job shows here within the archive lag). A job not ended when last archived
    is shown as Redis holds it now; filtering on a live status (queued, started,
    processing) reads at most ``MAX_SCAN`` candidates per request.
    """
    partner_id = None if principal.is_admin else principal.partner_id
    jobs: list[dict[str, Any]] = []
    try:
        after = cursor
        scanned = 0
        while True:
            size = limit if status in TERMINAL or not status else min(MAX_SCAN, 4 * limit)
            rows = history.page(
                svc.db, partner_id=partner_id, status=status, task=task, limit=size, cursor=after
            )
            live = [r["job_id"] for r in rows if r.get("status") not in TERMINAL]
            current = dict(zip(live, svc.store.jobs(live), strict=True))
            for row in rows:
                scanned += 1
                after = history.encode_cursor(row)
                view = job_view(current.get(row["job_id"]) or row)
                if include != "result":
                    del view["result"]
                if not status or view["status"] == status:
                    if principal.is_admin:  # whose job it is: the status page's partner column
                        view["partner_id"] = row.get("partner_id")
                    jobs.append(view)
                if len(jobs) == limit or scanned >= MAX_SCAN:
                    return {"jobs": jobs, "next_cursor": after}
            if len(rows) < size:
                return {"jobs": jobs, "next_cursor": None}
    except history.BadCursor:  # the schema checks cursors first; kept for direct callers
        raise APIError(
            422,
            "validation_error",
            "Invalid query parameters.",
            {"cursor": ["Not a cursor this API returned; use next_cursor as is."]},
        ) from None
