"""Batches: submit many jobs at once, read their aggregate, revoke them all (admin)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from gateway import batches
from gateway.auth import admin_required, authenticate, login_required, partner_required
from gateway.extensions import services
from gateway.schemas import RevokeSchema, load_or_422
from gateway.views.common import accepted, json_body, json_body_or_empty

bp = Blueprint("batches", __name__, url_prefix="/v1/batches")

POLL_AFTER = "2"  # seconds a poller should wait before its first GET


@bp.post("")
@partner_required
def submit():
    view = batches.submit(services(), authenticate(), json_body())
    return accepted(view, f"/v1/batches/{view['batch_id']}", POLL_AFTER)


@bp.get("/<batch_id>")
@login_required
def show(batch_id: str):
    svc = services()
    record = batches.find(svc, authenticate(), batch_id)
    return jsonify(batches.view(svc, batch_id, record))


@bp.post("/<batch_id>/revoke")
@admin_required
def revoke(batch_id: str):
    args = load_or_422(RevokeSchema(), json_body_or_empty())
    view = batches.revoke(services(), authenticate(), batch_id, reason=args["reason"],
                          terminate=args["terminate"])
    return jsonify(view), 202
