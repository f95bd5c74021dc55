"""Partners: create, limits and key rotation bodies, and a partner as read."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates


class PartnerCreateSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=100))

    @validates("name")
    def _printable(self, value: str, **_: Any) -> None:
        if not value.strip() or not value.isprintable():
            raise ValidationError("Must be printable and not blank.")


class RotateKeySchema(Schema):
    grace = fields.Integer(
        load_default=0,
        validate=validate.Range(min=0, max=30 * 86400),
        metadata={"description": "Seconds the old key keeps working (default 0: stops now)."},
    )


class PartnerSchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    created_at = fields.String(required=True)


class PartnerCreatedSchema(PartnerSchema):
    api_key = fields.String(required=True)
    webhook_secret = fields.String(required=True)


class PartnerListSchema(Schema):
    partners = fields.List(fields.Nested(PartnerSchema), required=True)


class SecretSchema(Schema):
    webhook_secret = fields.String(required=True)
    previous_secret_valid_for = fields.Integer(
        metadata={"description": "Seconds the old secret still signs (both signatures sent)."}
    )


class KeySchema(Schema):
    api_key = fields.String(required=True)
    previous_key_valid_for = fields.Integer(
        required=True, metadata={"description": "Seconds the old key keeps working."}
    )


class PartnerStateSchema(PartnerSchema):
    enabled = fields.Boolean(required=True)
    disabled_at = fields.String(required=True, allow_none=True)


class PartnerPatchSchema(Schema):
    limits = fields.Dict(
        keys=fields.String(),
        values=fields.Raw(allow_none=True),
        required=True,
        metadata={
            "description": "Limits to change (jobgate.limits: max_running_jobs, "
            "max_queued_jobs, submit_per_minute, weight, max_open_streams, max_endpoints, "
            "max_inflight_deliveries); null resets one to its default."
        },
    )


def _counts(description: str) -> fields.Dict:
    """Numbers by name."""
    return fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        required=True,
        metadata={"description": description},
    )


class PartnerDetailSchema(PartnerStateSchema):
    limits = _counts("Every limit in effect (0: none).")
    waiting = _counts("Jobs queued, delayed and running (dispatched, not ended).")
    jobs = _counts("Archived jobs by status (PENDING: not started yet).")
    endpoints = _counts("total, enabled, disabled, failing.")
    failing_deliveries = fields.Integer(
        required=True,
        metadata={"description": "Messages to its endpoints now retrying or failed."},
    )
