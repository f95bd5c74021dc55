"""marshmallow schemas: request bodies (validated) and responses (documented in OpenAPI)."""

from __future__ import annotations

import json
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates

from jobgate.batches import MAX_BATCH
from jobgate.history import BadCursor, decode_cursor
from jobgate.status import STATUSES

METADATA_MAX_BYTES = 16 * 1024


def _small_json(value: Any) -> None:
    if len(json.dumps(value, default=str)) > METADATA_MAX_BYTES:
        raise ValidationError(f"Must be at most {METADATA_MAX_BYTES} bytes of JSON.")


# --------------------------------------------------------------------------- requests
class JobSubmitSchema(Schema):
    task = fields.String(
        required=True,
        validate=validate.Length(min=1, max=200),
        metadata={"example": "documents.process"},
    )
    params = fields.Dict(
        keys=fields.String(),
        load_default=dict,
        metadata={"description": "Validated by the task's own params schema."},
    )
    callback_url = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Length(min=1, max=2048),
        metadata={"example": "https://partner.example/hooks"},
    )
    metadata = fields.Dict(
        keys=fields.String(),
        load_default=dict,
        validate=_small_json,
        metadata={"description": "Any JSON object, returned as is."},
    )


class BatchMemberField(fields.Nested):
    """A batch member: documented as a JobSubmit, loaded as it came.

    ``gateway.batches.validate_members`` validates each member as a job (schema, catalog,
    callback URL) and reports errors by the member's index, so this field does not.
    """

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        return value


class BatchSubmitSchema(Schema):
    """Shape of ``POST /v1/batches``; each member is then validated as a job. More than
    ``MAX_BATCH`` members is refused before this schema runs, without reading them."""

    jobs = fields.List(
        BatchMemberField(JobSubmitSchema),
        required=True,
        validate=validate.Length(min=1),
        metadata={"maxItems": MAX_BATCH},
    )
    callback_url = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Length(min=1, max=2048),
        metadata={"description": "Receives batch.completed only."},
    )
    metadata = fields.Dict(keys=fields.String(), load_default=dict)


class PartnerCreateSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=100))

    @validates("name")
    def _printable(self, value: str, **_: Any) -> None:
        if not value.strip() or not value.isprintable():
            raise ValidationError("Must be printable and not blank.")


class RevokeSchema(Schema):
    reason = fields.String(load_default="", validate=validate.Length(max=500))
    terminate = fields.Boolean(load_default=True)


class ListJobsArgs(Schema):
    status = fields.String(load_default=None, validate=validate.OneOf(STATUSES))
    task = fields.String(load_default=None, validate=validate.Length(max=200))
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(load_default=None, validate=validate.Length(max=200))

    @validates("cursor")
    def _cursor(self, value: str | None, **_: Any) -> None:
        """A cursor is a position a previous page returned (jobgate.history); nothing else."""
        if value is None:
            return
        try:
            decode_cursor(value)
        except BadCursor:
            raise ValidationError(
                "Not a cursor this API returned; use next_cursor as is."
            ) from None


class WaitArgs(Schema):
    wait = fields.Float(
        load_default=None, validate=validate.Range(min=0, max=30, min_inclusive=False)
    )


# -------------------------------------------------------------------------- responses
class ErrorBodySchema(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Dict(required=True)


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBodySchema, required=True)


class ProgressSchema(Schema):
    current = fields.Integer()
    total = fields.Integer()
    percent = fields.Integer()
    message = fields.String()


class WebhookSummarySchema(Schema):
    state = fields.String(
        validate=validate.OneOf(["none", "pending", "delivered", "retrying", "failed"])
    )
    attempts = fields.Integer()


class RevocationSchema(Schema):
    revoked_at = fields.String(allow_none=True)
    revoked_by = fields.String(allow_none=True)
    reason = fields.String(allow_none=True)


class JobSchema(Schema):
    job_id = fields.String(required=True)
    task_id = fields.String(required=True)
    task = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    progress = fields.Nested(ProgressSchema, allow_none=True)
    result = fields.Raw(allow_none=True)
    error = fields.String(allow_none=True)
    metadata = fields.Dict()
    callback_url = fields.String(allow_none=True)
    batch_id = fields.String(allow_none=True)
    created_at = fields.String()
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    webhook = fields.Nested(WebhookSummarySchema)
    revocation = fields.Nested(RevocationSchema, allow_none=True)


class JobListSchema(Schema):
    jobs = fields.List(fields.Nested(JobSchema), required=True)
    next_cursor = fields.String(allow_none=True, required=True)


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


class TaskInfoSchema(Schema):
    name = fields.String(required=True)
    description = fields.String(required=True)
    params = fields.Dict(required=True, metadata={"description": "JSON schema of the params"})


class DeliverySchema(Schema):
    """One webhook delivery attempt (``jobgate.attempts``)."""

    webhook_id = fields.String(required=True)
    event = fields.String(required=True)
    at = fields.String(required=True)
    status_code = fields.Integer(required=True, allow_none=True)
    error = fields.String(required=True, allow_none=True)
    duration_ms = fields.Integer(required=True)
    next_attempt_at = fields.String(required=True, allow_none=True)
    outcome = fields.String(
        required=True, validate=validate.OneOf(["delivered", "retry", "failed"])
    )
    redelivery = fields.Boolean(required=True)
    attempt = fields.Integer(required=True)


class DeliveriesSchema(Schema):
    job_id = fields.String(required=True)
    webhook = fields.Nested(WebhookSummarySchema, required=True)
    deliveries = fields.List(
        fields.Nested(DeliverySchema),
        required=True,
        metadata={"description": "Oldest first; the last 200."},
    )


class RedeliverySchema(Schema):
    job_id = fields.String(required=True)
    event = fields.String(required=True)
    webhook_id = fields.String(required=True)
    webhook = fields.Nested(WebhookSummarySchema, required=True)


class BatchMemberSchema(Schema):
    """A member as the batch lists it (``jobgate.batches.member_summary``): no result, read
    it with ``GET /v1/jobs/{id}``. A member whose record expired is only
    ``{"job_id", "status": null}``."""

    job_id = fields.String(required=True)
    task = fields.String()
    status = fields.String(required=True, allow_none=True, validate=validate.OneOf(STATUSES))
    progress = fields.Nested(ProgressSchema, allow_none=True)
    error = fields.String(allow_none=True)
    metadata = fields.Dict()
    finished_at = fields.String(allow_none=True)


class BatchSchema(Schema):
    """A batch as ``GET /v1/batches/{id}`` returns it (``jobgate.batches.batch_view``)."""

    batch_id = fields.String(required=True)
    status = fields.String(
        required=True, validate=validate.OneOf(["PENDING", "PROCESSING", "COMPLETED"])
    )
    total = fields.Integer(required=True)
    completed = fields.Integer(required=True)
    succeeded = fields.Integer(required=True)
    failed = fields.Integer(required=True)
    revoked = fields.Integer(required=True)
    pending = fields.Integer(required=True)
    percent = fields.Integer(required=True)
    callback_url = fields.String(required=True, allow_none=True)
    metadata = fields.Dict(required=True)
    created_at = fields.String(required=True, allow_none=True)
    finished_at = fields.String(required=True, allow_none=True)
    job_ids = fields.List(fields.String(), required=True)
    jobs = fields.List(
        fields.Nested(BatchMemberSchema),
        required=True,
        metadata={"description": "Members in submission order."},
    )


class HealthSchema(Schema):
    status = fields.String(required=True)
    checks = fields.Dict()


def load_or_422(schema: Schema, data: Any) -> dict[str, Any]:
    """Validate ``data``; marshmallow's messages go to ``details`` of a 422."""
    from gateway.errors import APIError

    try:
        return schema.load(data)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise APIError(
            422, "validation_error", "The request has invalid fields.", messages
        ) from None
