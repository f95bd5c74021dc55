"""The audit log (admin): ``GET /v1/audit``, and the hook that records every admin
request that changed something (``jobgate.audit``)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, g, jsonify, request

from gateway.auth import admin_required
from gateway.extensions import services
from gateway.openapi import AUTH, PAGE_PARAMS, ok, operation
from gateway.schemas import AuditSchema, PageArgs, load_or_422
from jobgate import audit

bp = Blueprint("audit", __name__, url_prefix="/v1/audit")
log = logging.getLogger("jobgate.audit")

ARGS = PageArgs()
CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@bp.get("")
@operation(
    "Every admin action, newest first (admin)",
    ok(200, "A page of the audit log", AuditSchema),
    (*AUTH, 403, 422),
    tag="operations",
    params=PAGE_PARAMS,
)
@admin_required
def index():
    args = load_or_422(ARGS, request.args.to_dict())
    page, cursor = audit.entries(services().db, **args)
    return jsonify({"entries": page, "next_cursor": cursor})


def record_admin_action(response: Response) -> Response:
    """After an admin's request that changed something (a write method, answered 2xx):
    one entry, named after its route (``POST /v1/partners/<partner_id>/disable``), its
    target the ids in the path or, for a create, the new resource's id. The action is
    done by then; an entry that cannot be written is logged as an error, and the answer
    stands."""
    principal = g.get("principal")
    if (
        principal is None
        or not principal.is_admin
        or request.method not in CHANGES
        or not 200 <= response.status_code < 300
    ):
        return response
    target = "/".join(str(value) for value in (request.view_args or {}).values())
    if not target and response.is_json:
        target = str((response.get_json(silent=True) or {}).get("id", ""))
    details = request.get_json(silent=True) if request.is_json else None
    rule = request.url_rule.rule if request.url_rule is not None else request.path
    action = f"{request.method} {rule}"
    try:
        audit.record(
            services().db,
            principal.name,
            action,
            target,
            details if isinstance(details, dict) else None,
        )
    except Exception:  # noqa: BLE001 - the action stands; the miss is loud
        log.error("audit: %s by %s on %r could not be recorded", action, principal.name, target)
    return response
