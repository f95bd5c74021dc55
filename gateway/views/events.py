"""Live job events as Server-Sent Events, fed by the job's Redis pub/sub channel.

``GET /v1/jobs/{id}/events`` sends the current job view first, then one event per status
or progress change (woken by the messages the worker, the progress helper and the revoke
path publish on ``store.channel(job_id)`` — no polling loop), a heartbeat comment when
nothing was sent for a while, and ends right after the terminal event. Redis lost
mid-stream ends it with an ``error`` event (the client reconnects after ``retry``) and one
log line, not a traceback per stream. Each open stream holds one connection: serve it
with gevent (gunicorn.conf.py) or threads, not the sync worker.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response
from redis.exceptions import RedisError

from gateway import jobs
from gateway.auth import authenticate, login_required, presented_key
from gateway.extensions import Services, services
from gateway.openapi import READ, ok, operation
from jobgate.status import TERMINAL, job_view, progress_of

bp = Blueprint("events", __name__, url_prefix="/v1/jobs")
log = logging.getLogger(__name__)

RETRY_MS = 2000  # EventSource reconnection delay we ask for


@bp.get("/<job_id>/events")
@operation(
    "Server-Sent Events: one per status/progress change, ends after the terminal one",
    ok(200, "text/event-stream", {"type": "string"}, media="text/event-stream"),
    (*READ, 429),
    tag="jobs",
)
@login_required
def stream(job_id: str) -> Response:
    svc = services()
    principal = authenticate()
    record = jobs.find(svc, principal, job_id)
    # Counts against the caller's max_open_streams until the stream ends (429 past it).
    holder = jobs.open_stream(svc, principal, presented_key())
    pubsub = svc.store.redis.pubsub(ignore_subscribe_messages=True)
    # Subscribe before the first read, so no change between the two is missed; and to
    # the partners' changes, which end the stream of a key that stops working.
    pubsub.subscribe(svc.store.channel(job_id), *([holder.channel] if holder else []))
    body = job_events(
        svc,
        record,
        pubsub,
        heartbeat=svc.settings.sse_heartbeat,
        max_seconds=svc.settings.sse_max_seconds,
        holder=holder,
    )
    response = Response(body, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    response.call_on_close(pubsub.close)
    if holder is not None:
        response.call_on_close(holder.close)
    return response


def current_view(svc: Services, job_id: str, fallback: dict[str, Any]) -> dict[str, Any]:
    """The job view, with the record's last progress for a running job.

    The progress helper writes the record's progress before Celery's meta, so the
    record is never behind the event that woke us, and progress never goes backwards.
    """
    record = svc.store.job(job_id) or fallback
    view = job_view(record)
    if view["status"] not in TERMINAL and record.get("progress"):
        view["status"] = "PROCESSING"
        view["progress"] = progress_of(record["progress"])
    return view


UNAVAILABLE = {
    "error": {
        "code": "unavailable",
        "message": "The job store is unreachable; the stream resumes on reconnection.",
    }
}


def sse(event: str, data: dict[str, Any], event_id: int) -> str:
    """One SSE message (JSON never contains a raw newline, so one data line)."""
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, default=str)}\n\n"


def job_events(
    svc: Services,
    record: dict[str, Any],
    pubsub: Any,
    *,
    heartbeat: float,
    max_seconds: float,
    holder: jobs.OpenStream | None = None,
) -> Iterator[str]:
    """The stream body: events ``status`` / ``progress`` carrying the job view. It ends
    after the terminal one, at ``max_seconds``, or once the ``holder``'s key stops
    working (partner disabled, key rotated with no grace)."""
    job_id = record["job_id"]
    deadline = time.monotonic() + max_seconds
    sent = 0
    last: tuple[str, str] | None = None
    try:
        yield f"retry: {RETRY_MS}\n\n"
        last_write = time.monotonic()
        view = current_view(svc, job_id, record)
        while True:
            key = (view["status"], json.dumps(view["progress"], sort_keys=True))
            if key != last:
                sent += 1
                kind = "status" if last is None or last[0] != key[0] else "progress"
                yield sse(kind, view, sent)
                last, last_write = key, time.monotonic()
            if view["status"] in TERMINAL:
                return
            now = time.monotonic()
            if now >= deadline:
                return
            if now - last_write >= heartbeat:
                yield ": heartbeat\n\n"
                last_write = now
            wait = min(heartbeat - (now - last_write), deadline - now)
            if holder is not None:
                wait = min(wait, holder.lease.due())  # until keep is due
            message = pubsub.get_message(timeout=max(wait, 0.01))
            woken = False
            # Drain what is queued, then read the job once for all of it.
            while message is not None:
                if holder is not None and holder.is_change(message):
                    if holder.concerns(message) and not holder.allowed():
                        return
                else:
                    woken = True
                message = pubsub.get_message(timeout=0)
            if holder is not None and not holder.keep():
                return
            if woken:
                view = current_view(svc, job_id, record)
    except RedisError as exc:
        log.warning("the event stream of job %s ended: Redis is unreachable (%s)", job_id, exc)
        yield sse("error", UNAVAILABLE, sent + 1)
    finally:
        pubsub.close()
        if holder is not None:
            holder.close()
