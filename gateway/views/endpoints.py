"""Registered webhook endpoints (partners; admins read, re-enable and see failing ones)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from gateway.auth import Principal, authenticate, login_required, partner_required
from gateway.errors import APIError, not_found, or_404
from gateway.extensions import services
from gateway.jobs import check_callback, limit_exceeded, limit_of
from gateway.openapi import AUTH, EMPTY_BODY, READ, WRITE, ok, operation
from gateway.schemas import load_or_422
from gateway.schemas.endpoints import (
    EndpointAttemptsArgs,
    EndpointAttemptSchema,
    EndpointAttemptsSchema,
    EndpointCreatedSchema,
    EndpointCreateSchema,
    EndpointListArgs,
    EndpointListSchema,
    EndpointPatchSchema,
    EndpointReadSchema,
    EndpointSchema,
    EndpointSecretSchema,
    RecoveredSchema,
    RecoverSchema,
)
from gateway.views.common import json_body, json_body_or_empty
from jobgate import endpoints as registry
from jobgate.signing import new_secret, public_key
from jobgate.times import iso_time
from jobgate.webhooks import fanout, messagelog
from jobgate.webhooks.attempt import send_ping

bp = Blueprint("endpoints", __name__, url_prefix="/v1/endpoints")

CREATE, PATCH, RECOVER = EndpointCreateSchema(), EndpointPatchSchema(), RecoverSchema()
LIST_ARGS, ATTEMPT_ARGS = EndpointListArgs(), EndpointAttemptsArgs()
# Seconds; endpoints only go when the partner deletes one, so a retry is for a client that
# deleted one meanwhile.
ENDPOINTS_FULL_RETRY_AFTER = 60
ENDPOINT_STATES = ["enabled", "disabled", "failing"]
TESTS_PER_SECOND = 1  # POST /v1/endpoints/{id}/test, per endpoint, across gateway processes
# Disabling or enabling an endpoint announces it (operational events, rows and messages):
# at most this many changes of state per endpoint a minute, across gateway processes.
TOGGLES_PER_MINUTE = 6
ATTEMPT_PARAMS = [
    {
        "name": "status",
        "in": "query",
        "schema": {"type": "string", "enum": ["delivered", "retry", "failed"]},
    },
    {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
    {"name": "cursor", "in": "query", "schema": {"type": "integer", "minimum": 1}},
]


def owner(principal: Principal) -> str | None:
    """Whose endpoints the caller sees: a partner its own, an admin every partner's."""
    return None if principal.is_admin else principal.partner_id


def find(endpoint_id: str) -> dict[str, Any]:
    """The endpoint if the caller may see it, else 404 (another partner's too)."""
    return or_404(services().registry.get(endpoint_id, owner(authenticate())), "endpoint")


def query_args(schema: Any) -> dict[str, Any]:
    return load_or_422(schema, request.args.to_dict())


@bp.post("")
@operation(
    "Register an endpoint (partner); its signing secret (or public key) is shown once",
    ok(201, "Registered", EndpointCreatedSchema),
    (*WRITE, 403, 429),
    tag="endpoints",
    body=EndpointCreateSchema,
)
@partner_required
def create():
    body = load_or_422(CREATE, json_body())
    svc = services()
    check_callback(svc, body["url"], field="url")
    scheme = body["signature_scheme"]
    secret, shown = new_secret(scheme)  # hmac: the same whsec_; ed25519: whsk_, whpk_
    principal = authenticate()
    limit = limit_of(svc, principal, "max_endpoints")
    try:
        created = svc.registry.create(
            principal.partner_id or "",
            body["url"],
            secret,
            description=body["description"],
            event_types=body.get("event_types") or [],
            limit=limit,
            headers=body.get("headers") or {},
            signature_scheme=scheme,
            rate_limit=body["rate_limit"],
        )
    except registry.TooManyEndpoints:
        raise limit_exceeded(
            "max_endpoints",
            limit,
            "Too many endpoints; delete one before registering another.",
            ENDPOINTS_FULL_RETRY_AFTER,
        ) from None
    return jsonify({**or_404(created, "partner"), _shown_as(scheme): shown}), 201


def _shown_as(scheme: str) -> str:
    """The field the receiver's half of a new secret is shown in."""
    return "public_key" if scheme == "ed25519" else "webhook_secret"


@bp.get("")
@operation(
    "List endpoints (a partner's own; every partner's for an admin)",
    ok(200, "Endpoints, oldest first", EndpointListSchema),
    (*AUTH, 422),
    tag="endpoints",
    params=[
        {"name": "state", "in": "query", "schema": {"type": "string", "enum": ENDPOINT_STATES}}
    ],
)
@login_required
def index():
    args = query_args(LIST_ARGS)
    found = services().registry.find(owner(authenticate()), args["state"])
    return jsonify({"endpoints": found})


@bp.get("/<endpoint_id>")
@operation("Read an endpoint", ok(200, "The endpoint", EndpointReadSchema), READ, tag="endpoints")
@login_required
def read(endpoint_id: str):
    found = find(endpoint_id)
    if found["signature_scheme"] == "ed25519":
        # The receiver's half of the current key, from the sealed private key jobgate keeps
        # (a partner who lost it need not rotate to read it again).
        svc = services()
        current = svc.registry.mirrored(endpoint_id).get("webhook_secret", "")
        if current:
            found["public_key"] = public_key(svc.store.sealer.open(current))
    return jsonify(found)


@bp.patch("/<endpoint_id>")
@operation(
    "Change an endpoint; enabled: true re-enables it",
    ok(200, "Changed", EndpointSchema),
    (*READ, 400, 413, 422),
    tag="endpoints",
    body=EndpointPatchSchema,
)
@login_required
def update(endpoint_id: str):
    body = load_or_422(PATCH, json_body())
    current = find(endpoint_id)
    svc = services()
    if "url" in body:
        check_callback(svc, body["url"], field="url")
    if "enabled" in body and body["enabled"] != current["enabled"]:
        wait = svc.store.hit_rate_limit(f"endpoint-toggle:{endpoint_id}", TOGGLES_PER_MINUTE)
        if wait is not None:
            raise limit_exceeded(
                "endpoint_toggles_per_minute",
                TOGGLES_PER_MINUTE,
                f"An endpoint may be disabled or enabled {TOGGLES_PER_MINUTE} times a minute.",
                wait,
            )
    changed = or_404(svc.registry.update(endpoint_id, owner(authenticate()), body), "endpoint")
    return jsonify(changed)


@bp.delete("/<endpoint_id>")
@operation("Delete an endpoint", ok(204, "Deleted"), READ, tag="endpoints")
@login_required
def delete(endpoint_id: str):
    if not services().registry.delete(endpoint_id, owner(authenticate())):
        raise not_found("endpoint")
    return "", 204


@bp.post("/<endpoint_id>/rotate-secret")
@operation(
    "Rotate an endpoint's signing secret (or key pair)",
    ok(200, "New secret, or new public key", EndpointSecretSchema),
    (*READ, 400, 413),
    tag="endpoints",
    body=EMPTY_BODY,
    body_required=False,
)
@login_required
def rotate_secret(endpoint_id: str):
    json_body_or_empty()
    svc = services()
    whose = owner(authenticate())
    scheme = or_404(svc.registry.scheme(endpoint_id, whose), "endpoint")
    secret, shown = new_secret(scheme)
    grace = svc.settings.webhook_secret_grace
    if not svc.registry.rotate_secret(endpoint_id, whose, secret, grace, scheme=scheme):
        raise not_found("endpoint")
    return jsonify({_shown_as(scheme): shown, "previous_secret_valid_for": grace})


@bp.post("/<endpoint_id>/test")
@operation(
    "Send a signed ping event now; answers with the attempt",
    ok(200, "The attempt", EndpointAttemptSchema),
    (*READ, 400, 409, 413, 429),
    tag="endpoints",
    body=EMPTY_BODY,
    body_required=False,
)
@login_required
def test(endpoint_id: str):
    json_body_or_empty()
    find(endpoint_id)
    svc = services()
    mirror = svc.registry.mirrored(endpoint_id)
    if mirror.get("disabled"):
        raise APIError(409, "conflict", "The endpoint is disabled; enable it first.")
    # A ping is a POST to the partner's URL made on demand: one a second per endpoint.
    wait = svc.store.take_turn(f"endpoint-test:{endpoint_id}", 1.0 / TESTS_PER_SECOND)
    if wait is not None:
        raise limit_exceeded(
            "endpoint_test_per_second",
            TESTS_PER_SECOND,
            f"At most {TESTS_PER_SECOND} test ping a second per endpoint; try again shortly.",
            wait,
        )
    return jsonify(send_ping(svc.settings, svc.store, mirror, endpoint_id))


@bp.get("/<endpoint_id>/attempts")
@operation(
    "Every attempt to the endpoint, newest first",
    ok(200, "A page of attempts", EndpointAttemptsSchema),
    (*READ, 422),
    tag="endpoints",
    params=ATTEMPT_PARAMS,
)
@login_required
def attempts(endpoint_id: str):
    args = query_args(ATTEMPT_ARGS)
    find(endpoint_id)
    page, cursor = registry.attempts(
        services().store,
        endpoint_id,
        status=args["status"],
        since=iso_time(args["since"]) if args["since"] else None,
        limit=args["limit"],
        cursor=args["cursor"],
    )
    svc = services()
    page = messagelog.joined(svc.store, [(messagelog.subject_of(e), e) for e in page], svc.db)
    return jsonify({"attempts": page, "next_cursor": cursor})


@bp.post("/<endpoint_id>/recover")
@operation(
    "Send again what failed since a time, and what was held while the endpoint was disabled",
    ok(202, "Queued again", RecoveredSchema),
    (*WRITE, 404),
    tag="endpoints",
    body=RecoverSchema,
)
@login_required
def recover(endpoint_id: str):
    body = load_or_422(RECOVER, json_body())
    find(endpoint_id)
    svc = services()
    ids = fanout.recover(svc.store, svc.messenger, svc.db, endpoint_id, iso_time(body["since"]))
    return jsonify({"recovered": len(ids), "webhook_ids": ids}), 202
