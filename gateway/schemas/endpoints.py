"""Registered webhook endpoints: create and patch bodies, an endpoint as read, its attempts."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from gateway.schemas import PageArgs, url_field
from gateway.schemas.webhooks import DeliverySchema
from jobgate.endpoint_headers import MAX_HEADERS, check_headers
from jobgate.events import EVENT_TYPES
from jobgate.signing import SCHEMES
from jobgate.webhooks.throttle import MAX_RATE_LIMIT


def _unique(values: list[str]) -> None:
    if len(set(values)) != len(values):
        raise ValidationError("Must not repeat an event type.")


def _event_types_field() -> fields.List:
    return fields.List(
        fields.String(validate=validate.OneOf(sorted(EVENT_TYPES))),
        validate=_unique,
        metadata={
            "description": "Events to send; empty or absent: every job and batch event (no "
            "operational event)."
        },
    )


def _rate_limit_field(**options: Any) -> fields.Integer:
    return fields.Integer(
        allow_none=True,
        strict=True,
        validate=validate.Range(min=1, max=MAX_RATE_LIMIT),
        metadata={
            "description": "Deliveries per second the endpoint takes at most; null: no limit. "
            "Messages over it wait their turn (no attempt spent)."
        },
        **options,
    )


class _HeadersChecked(Schema):
    """An endpoint body with ``headers``: refusals keyed by header name (``_headers``: the
    whole set) under ``details.headers`` (jobgate.endpoint_headers.check_headers)."""

    @validates_schema
    def _headers(self, data: dict[str, Any], **_: Any) -> None:
        errors = check_headers(data.get("headers") or {})
        if errors:
            raise ValidationError({"headers": errors})


def _headers_field(description: str) -> fields.Dict:
    return fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        metadata={
            "description": description,
            "maxProperties": MAX_HEADERS,
            "example": {"Authorization": "Bearer partner-token", "X-Tenant": "acme"},
        },
    )


class EndpointCreateSchema(_HeadersChecked):
    url = url_field(required=True)
    description = fields.String(load_default="", validate=validate.Length(max=500))
    event_types = _event_types_field()
    headers = _headers_field(
        "Headers sent with every delivery to the endpoint: at most 20, names HTTP tokens "
        "of up to 64 characters (not webhook-*, proxy-*, Content-Type, Content-Length, "
        "Content-Encoding, Accept-Encoding, Host, User-Agent, Connection, Keep-Alive, "
        "Transfer-Encoding, TE, Trailer, Upgrade or Expect; case does not matter), values "
        "printable ASCII of up to "
        "2048 characters, 4096 characters of names and values in all."
    )
    signature_scheme = fields.String(
        load_default="hmac",
        validate=validate.OneOf(SCHEMES),
        metadata={
            "description": "hmac (default): a whsec_ secret, v1 signatures; ed25519: a "
            "whpk_ public key is returned, v1a signatures (the private key stays in jobgate)."
        },
    )
    rate_limit = _rate_limit_field(load_default=None)


class EndpointPatchSchema(_HeadersChecked):
    url = url_field()
    description = fields.String(validate=validate.Length(max=500))
    event_types = _event_types_field()
    enabled = fields.Boolean(metadata={"description": "true re-enables a disabled endpoint."})
    headers = _headers_field("Replaces every header of the endpoint; {} removes them.")
    rate_limit = _rate_limit_field()


class RecoverSchema(Schema):
    since = fields.AwareDateTime(
        required=True,
        default_timezone=None,
        metadata={"description": "ISO 8601 time with a zone, e.g. 2026-05-01T00:00:00Z."},
    )


class EndpointListArgs(Schema):
    state = fields.String(
        load_default=None, validate=validate.OneOf(["enabled", "disabled", "failing"])
    )


class EndpointAttemptsArgs(PageArgs):
    status = fields.String(
        load_default=None, validate=validate.OneOf(["delivered", "retry", "failed"])
    )
    since = fields.AwareDateTime(load_default=None)


class EndpointSchema(Schema):
    id = fields.String(required=True)
    partner_id = fields.String(required=True)
    url = fields.String(required=True)
    description = fields.String(required=True)
    event_types = fields.List(fields.String(), required=True)
    headers = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        required=True,
        metadata={"description": "Sent with every delivery to the endpoint."},
    )
    signature_scheme = fields.String(required=True, validate=validate.OneOf(SCHEMES))
    enabled = fields.Boolean(required=True)
    disabled_at = fields.String(required=True, allow_none=True)
    disabled_reason = fields.String(required=True, allow_none=True)
    failing_since = fields.String(required=True, allow_none=True)
    rate_limit = fields.Integer(required=True, allow_none=True)
    created_at = fields.String(required=True)
    updated_at = fields.String(required=True)


class EndpointReadSchema(EndpointSchema):
    public_key = fields.String(
        metadata={"description": "signature_scheme ed25519: the current whpk_ public key."}
    )


class EndpointCreatedSchema(EndpointSchema):
    webhook_secret = fields.String(
        metadata={"description": "signature_scheme hmac: the whsec_ secret, shown once."}
    )
    public_key = fields.String(
        metadata={"description": "signature_scheme ed25519: the whpk_ public key (v1a)."}
    )


class EndpointSecretSchema(Schema):
    webhook_secret = fields.String(
        metadata={"description": "signature_scheme hmac: the new whsec_ secret."}
    )
    public_key = fields.String(
        metadata={"description": "signature_scheme ed25519: the new key pair's whpk_."}
    )
    previous_secret_valid_for = fields.Integer(
        required=True,
        metadata={"description": "Seconds the previous secret or key still signs (both sent)."},
    )


class EndpointListSchema(Schema):
    endpoints = fields.List(fields.Nested(EndpointSchema), required=True)


class EndpointAttemptSchema(DeliverySchema):
    """One attempt to a registered endpoint: which message, about what."""

    endpoint_id = fields.String(required=True)
    subject_kind = fields.String(required=True, allow_none=True)
    subject_id = fields.String(required=True, allow_none=True)


class EndpointAttemptsSchema(Schema):
    attempts = fields.List(fields.Nested(EndpointAttemptSchema), required=True)
    next_cursor = fields.Integer(required=True, allow_none=True)


class RecoveredSchema(Schema):
    recovered = fields.Integer(required=True)
    webhook_ids = fields.List(fields.String(), required=True)
