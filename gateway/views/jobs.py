"""Jobs: submit, read (optionally waiting), list."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from gateway import jobs
from gateway.auth import authenticate, login_required, partner_required
from gateway.errors import APIError
from gateway.extensions import services
from gateway.schemas import ListJobsArgs, WaitArgs, load_or_422
from gateway.views.common import accepted, json_body
from jobgate.status import TERMINAL

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")

POLL_AFTER = "1"  # seconds a poller should wait before its first GET
# Schemas are stateless once built: build them once, not per request.
WAIT_ARGS = WaitArgs()
LIST_ARGS = ListJobsArgs()


@bp.post("")
@partner_required
def submit():
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        raise APIError(422, "validation_error", "Idempotency-Key must be 1 to 255 characters.",
                       {"Idempotency-Key": ["Must be 1 to 255 characters."]})
    view, created = jobs.submit(services(), authenticate(), json_body(), key)
    return accepted(view, f"/v1/jobs/{view['job_id']}", POLL_AFTER, 202 if created else 200)


@bp.get("/<job_id>")
@login_required
def show(job_id: str):
    wait = load_or_422(WAIT_ARGS, request.args.to_dict())["wait"] if request.args else None
    svc = services()
    record, view = jobs.show(svc, authenticate(), job_id)
    if wait and view["status"] not in TERMINAL:
        return jsonify(jobs.wait(svc, record, min(wait, svc.settings.max_wait)))
    return jsonify(view)


@bp.get("")
@login_required
def index():
    args = load_or_422(LIST_ARGS, request.args.to_dict())
    return jsonify(jobs.listing(services(), authenticate(), **args))
