"""Batches: submit many jobs at once, read their aggregate, revoke them all (admin)."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from gateway import batches
from gateway.auth import admin_required, authenticate, login_required, partner_required
from gateway.extensions import services
from gateway.openapi import ACCEPTED_HEADERS, READ, WRITE, ok, operation
from gateway.schemas import load_or_422
from gateway.schemas.jobs import BatchSchema, BatchSubmitSchema, RevokeSchema
from gateway.views.common import accepted, json_body, json_body_or_empty

bp = Blueprint("batches", __name__, url_prefix="/v1/batches")

POLL_AFTER = "2"  # seconds a poller should wait before its first GET


@bp.post("")
@operation(
    "Submit a batch of jobs (partner)",
    ok(202, "Queued; Location names the batch", BatchSchema, headers=ACCEPTED_HEADERS),
    (*WRITE, 403, 429),
    tag="batches",
    body=BatchSubmitSchema,
)
@partner_required
def submit():
    view = batches.submit(
        services(), authenticate(), json_body(), request.headers.get("traceparent")
    )
    return accepted(view, f"/v1/batches/{view['batch_id']}", POLL_AFTER)


@bp.get("/<batch_id>")
@operation(
    "A batch with counts and its jobs", ok(200, "The batch", BatchSchema), READ, tag="batches"
)
@login_required
def show(batch_id: str):
    svc = services()
    record = batches.find(svc, authenticate(), batch_id)
    return jsonify(batches.view(svc, batch_id, record))


@bp.post("/<batch_id>/revoke")
@operation(
    "Revoke every unfinished job of a batch (admin)",
    ok(202, "Revoked", BatchSchema),
    (*READ, 400, 403, 413, 422),
    tag="batches",
    body=RevokeSchema,
    body_required=False,
)
@admin_required
def revoke(batch_id: str):
    args = load_or_422(RevokeSchema(), json_body_or_empty())
    view = batches.revoke(
        services(), authenticate(), batch_id, reason=args["reason"], terminate=args["terminate"]
    )
    return jsonify(view), 202
