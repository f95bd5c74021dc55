"""The archive (admin): what it set aside, subjects the database refused even alone."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from gateway.auth import admin_required
from gateway.extensions import services
from gateway.openapi import AUTH, PAGE_PARAMS, ok, operation
from gateway.schemas import DeadLettersSchema, PageArgs, load_or_422
from jobgate import history

bp = Blueprint("archive", __name__, url_prefix="/v1/archive")

ARGS = PageArgs()


@bp.get("/dead-letters")
@operation(
    "What the archiver set aside, newest first (admin)",
    ok(200, "A page of dead letters", DeadLettersSchema),
    (*AUTH, 403, 422),
    tag="operations",
    params=PAGE_PARAMS,
)
@admin_required
def dead_letters():
    args = load_or_422(ARGS, request.args.to_dict())
    page, cursor = history.dead_letters(services().db, **args)
    return jsonify({"dead_letters": page, "next_cursor": cursor})
