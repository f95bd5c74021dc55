"""Jobs: submit, read (optionally waiting), list."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from gateway import jobs
from gateway.auth import authenticate, login_required, partner_required, presented_key
from gateway.errors import APIError
from gateway.extensions import services
from gateway.openapi import ACCEPTED_HEADERS, AUTH, READ, WRITE, ok, operation
from gateway.schemas import load_or_422
from gateway.schemas.jobs import JobListSchema, JobSchema, JobSubmitSchema, ListJobsArgs, WaitArgs
from gateway.views.common import accepted, json_body
from jobgate.status import STATUSES, TERMINAL

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")

POLL_AFTER = "1"  # seconds a poller should wait before its first GET
# Schemas are stateless once built: build them once, not per request.
WAIT_ARGS = WaitArgs()
LIST_ARGS = ListJobsArgs()

# Query and header parameters as the document shows them (the schemas above check them).
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "schema": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 30},
}
LIST_PARAMS = [
    {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(STATUSES)}},
    {"name": "task", "in": "query", "schema": {"type": "string", "maxLength": 200}},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
    {"name": "cursor", "in": "query", "schema": {"type": "string", "maxLength": 200}},
    {
        "name": "include",
        "in": "query",
        "description": "`result`: each entry carries its job's result (left out by default).",
        "schema": {"type": "string", "enum": ["result"]},
    },
]


@bp.post("")
@operation(
    "Submit a job (partner)",
    {
        **ok(202, "Queued; Location names the job", JobSchema, headers=ACCEPTED_HEADERS),
        **ok(200, "Replay of an earlier Idempotency-Key", JobSchema, headers=ACCEPTED_HEADERS),
    },
    (*WRITE, 403, 409, 429),
    tag="jobs",
    body=JobSubmitSchema,
    params=[IDEMPOTENCY_KEY],
)
@partner_required
def submit():
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        raise APIError(
            422,
            "validation_error",
            "Idempotency-Key must be 1 to 255 characters.",
            {"Idempotency-Key": ["Must be 1 to 255 characters."]},
        )
    view, created = jobs.submit(
        services(), authenticate(), json_body(), key, request.headers.get("traceparent")
    )
    return accepted(view, f"/v1/jobs/{view['job_id']}", POLL_AFTER, 202 if created else 200)


@bp.get("/<job_id>")
@operation(
    "Read a job, optionally waiting for its end",
    ok(200, "The job", JobSchema),
    (*READ, 422, 429),
    tag="jobs",
    params=[WAIT],
)
@login_required
def show(job_id: str):
    wait = load_or_422(WAIT_ARGS, request.args.to_dict())["wait"] if request.args else None
    svc = services()
    record, view = jobs.show(svc, authenticate(), job_id)
    if wait and view["status"] not in TERMINAL:
        # A held read counts against the caller's max_open_streams while it waits.
        holder = jobs.open_stream(svc, authenticate(), presented_key())
        try:
            view = jobs.wait(svc, record, min(wait, svc.settings.max_wait), holder)
        finally:
            if holder is not None:
                holder.close()
    return jsonify(jobs.endpoint_webhook(svc, record, view))


@bp.get("")
@operation(
    "List the caller's jobs, newest first",
    ok(200, "A page of jobs", JobListSchema),
    (*AUTH, 422),
    tag="jobs",
    params=LIST_PARAMS,
)
@login_required
def index():
    args = load_or_422(LIST_ARGS, request.args.to_dict())
    return jsonify(jobs.listing(services(), authenticate(), **args))
