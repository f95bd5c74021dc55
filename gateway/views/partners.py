"""Partners (admin): create, list, read with counts, disable/enable, rotate key and secret."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from gateway.auth import admin_required
from gateway.errors import APIError, not_found, or_404
from gateway.extensions import services
from gateway.openapi import AUTH, EMPTY_BODY, READ, WRITE, ok, operation
from gateway.schemas import load_or_422
from gateway.schemas.partners import (
    KeySchema,
    PartnerCreatedSchema,
    PartnerCreateSchema,
    PartnerDetailSchema,
    PartnerListSchema,
    PartnerPatchSchema,
    PartnerStateSchema,
    RotateKeySchema,
    SecretSchema,
)
from gateway.views.common import json_body, json_body_or_empty
from jobgate.endpoints import failing_messages
from jobgate.lifecycle import dispatch
from jobgate.limits import check as check_limits
from jobgate.limits import effective
from jobgate.signing import generate_secret

bp = Blueprint("partners", __name__, url_prefix="/v1/partners")

PUBLIC_FIELDS = ("id", "name", "created_at")


def public(record: dict[str, str]) -> dict[str, str]:
    """A partner as listed: never its key hash or secrets."""
    return {name: record[name] for name in PUBLIC_FIELDS}


def create_partner(name: str) -> dict[str, str]:
    """Create a partner; the answer holds the API key and secret, shown this once."""
    secret = generate_secret()
    record, api_key = services().partners.create(name, secret)
    return {**public(record), "api_key": api_key, "webhook_secret": secret}


@bp.post("")
@operation(
    "Create a partner (admin); key and secret shown once",
    ok(201, "Created", PartnerCreatedSchema),
    (*WRITE, 403),
    tag="partners",
    body=PartnerCreateSchema,
)
@admin_required
def create():
    body = load_or_422(PartnerCreateSchema(), json_body())
    return jsonify(create_partner(body["name"])), 201


@bp.get("")
@operation(
    "List partners (admin); never keys or secrets",
    ok(200, "Partners", PartnerListSchema),
    (*AUTH, 403),
    tag="partners",
)
@admin_required
def index():
    return jsonify({"partners": [public(p) for p in services().partners.all()]})


@bp.post("/<partner_id>/rotate-secret")
@operation(
    "Rotate a partner's webhook secret (admin)",
    ok(200, "New secret", SecretSchema),
    (*READ, 400, 403, 413),
    tag="partners",
    body=EMPTY_BODY,
    body_required=False,
)
@admin_required
def rotate_secret(partner_id: str):
    json_body_or_empty()
    return jsonify(new_webhook_secret(partner_id))


def new_webhook_secret(partner_id: str) -> dict[str, Any]:
    """A new webhook secret for the partner; the old one still signs during the grace."""
    svc = services()
    secret = generate_secret()
    grace = svc.settings.webhook_secret_grace
    if not svc.partners.rotate_secret(partner_id, secret, grace):
        raise not_found("partner")
    return {"webhook_secret": secret, "previous_secret_valid_for": grace}


def partner_detail(partner_id: str) -> dict[str, Any]:
    """The partner's state with counts: jobs by status, endpoints, failing deliveries."""
    svc = services()
    state = or_404(svc.partners.state(partner_id), "partner")
    endpoints = svc.registry.find(partner_id)
    return {
        **state,
        "limits": effective(svc.settings, svc.partners.own_limits(partner_id)),
        "waiting": svc.store.waiting(partner_id),
        "jobs": svc.partners.job_counts(partner_id),
        "endpoints": {
            "total": len(endpoints),
            "enabled": sum(1 for e in endpoints if e["enabled"]),
            "disabled": sum(1 for e in endpoints if not e["enabled"]),
            "failing": sum(1 for e in endpoints if e["enabled"] and e["failing_since"]),
        },
        "failing_deliveries": failing_messages(svc.store, [e["id"] for e in endpoints]),
    }


def set_disabled(partner_id: str, disabled: bool) -> dict[str, Any]:
    """Disable or enable a partner; its state (404 if unknown)."""
    svc = services()
    or_404(svc.partners.set_disabled(partner_id, disabled), "partner")
    return svc.partners.state(partner_id) or {}


def rotate_key(partner_id: str, grace: int) -> dict[str, Any]:
    """A new API key for the partner; the old ones work ``grace`` s more."""
    api_key = or_404(services().partners.rotate_key(partner_id, grace), "partner")
    return {"api_key": api_key, "previous_key_valid_for": grace}


@bp.get("/<partner_id>")
@operation(
    "Read a partner with counts (admin)",
    ok(200, "The partner", PartnerDetailSchema),
    (*READ, 403),
    tag="partners",
)
@admin_required
def read(partner_id: str):
    return jsonify(partner_detail(partner_id))


@bp.patch("/<partner_id>")
@operation(
    "Change a partner's limits (admin); null resets one to its default",
    ok(200, "The partner", PartnerDetailSchema),
    (*READ, 400, 403, 413, 422),
    tag="partners",
    body=PartnerPatchSchema,
)
@admin_required
def patch(partner_id: str):
    body = load_or_422(PartnerPatchSchema(), json_body())
    return jsonify(set_limits(partner_id, body["limits"]))


def set_limits(partner_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Change a partner's own limits (``None`` resets one); the partner as ``GET`` shows
    it. 422 for a bad limit, 404 for an unknown partner."""
    errors = check_limits(changes)
    if errors:
        raise APIError(422, "validation_error", "Invalid limits.", {"limits": errors})
    svc = services()
    or_404(svc.partners.set_limits(partner_id, changes), "partner")
    # A higher max_running_jobs may let the partner's waiting jobs start now.
    dispatch(svc.store, svc.messenger, (partner_id,))
    return partner_detail(partner_id)


@bp.post("/<partner_id>/disable")
@operation(
    "Disable a partner (admin): its keys answer 401 at once; its jobs still run",
    ok(200, "Disabled", PartnerStateSchema),
    (*READ, 400, 403, 413),
    tag="partners",
    body=EMPTY_BODY,
    body_required=False,
)
@admin_required
def disable(partner_id: str):
    json_body_or_empty()
    return jsonify(set_disabled(partner_id, True))


@bp.post("/<partner_id>/enable")
@operation(
    "Enable a disabled partner (admin)",
    ok(200, "Enabled", PartnerStateSchema),
    (*READ, 400, 403, 413),
    tag="partners",
    body=EMPTY_BODY,
    body_required=False,
)
@admin_required
def enable(partner_id: str):
    json_body_or_empty()
    return jsonify(set_disabled(partner_id, False))


@bp.post("/<partner_id>/rotate-key")
@operation(
    "Give a partner a new API key (admin); the old one works for grace seconds",
    ok(200, "New key, shown once", KeySchema),
    (*READ, 400, 403, 413, 422),
    tag="partners",
    body=RotateKeySchema,
    body_required=False,
)
@admin_required
def rotate_key_view(partner_id: str):
    body = load_or_422(RotateKeySchema(), json_body_or_empty())
    return jsonify(rotate_key(partner_id, body["grace"]))
