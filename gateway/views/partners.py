"""Partners (admin): create, list, rotate the webhook secret."""

from __future__ import annotations

from flask import Blueprint, jsonify

from gateway.auth import admin_required
from gateway.errors import not_found
from gateway.extensions import services
from gateway.openapi import AUTH, EMPTY_BODY, READ, WRITE, ok, operation
from gateway.schemas import (
    PartnerCreatedSchema,
    PartnerCreateSchema,
    PartnerListSchema,
    SecretSchema,
    load_or_422,
)
from gateway.views.common import json_body, json_body_or_empty
from jobgate.signing import generate_secret

bp = Blueprint("partners", __name__, url_prefix="/v1/partners")

PUBLIC_FIELDS = ("id", "name", "created_at")


def public(record: dict[str, str]) -> dict[str, str]:
    """A partner as listed: never its key hash or secrets."""
    return {name: record[name] for name in PUBLIC_FIELDS}


def create_partner(name: str) -> dict[str, str]:
    """Create a partner; the answer holds the API key and secret, shown this once."""
    record, api_key = services().partners.create(name, generate_secret())
    return {**public(record), "api_key": api_key, "webhook_secret": record["webhook_secret"]}


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
    svc = services()
    secret = generate_secret()
    if not svc.partners.rotate_secret(partner_id, secret, svc.settings.webhook_secret_grace):
        raise not_found("partner")
    return jsonify(
        {"webhook_secret": secret, "previous_secret_valid_for": svc.settings.webhook_secret_grace}
    )
