"""Jobs and batches: what a submit, a list and a revoke take, and a job and a batch as read."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates, validates_schema

from gateway.schemas import url_field
from gateway.schemas.webhooks import WebhookSummarySchema
from jobgate.batches import MAX_BATCH
from jobgate.history import BadCursor, decode_cursor
from jobgate.status import DEFAULT_PRIORITY, STATUSES

METADATA_MAX_BYTES = 16 * 1024


MAX_DELAY = 30 * 86400  # a delayed job runs at most 30 days after its submit


def _small_json(value: Any) -> None:
    if len(json.dumps(value, default=str)) > METADATA_MAX_BYTES:
        raise ValidationError(f"Must be at most {METADATA_MAX_BYTES} bytes of JSON.")


def _metadata_field(description: str) -> fields.Dict:
    """A submit's ``metadata``: any JSON object up to METADATA_MAX_BYTES."""
    return fields.Dict(
        keys=fields.String(),
        load_default=dict,
        validate=_small_json,
        metadata={"description": description},
    )


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
    callback_url = url_field(load_default=None, allow_none=True)
    metadata = _metadata_field("Any JSON object, returned as is.")
    priority = fields.Integer(
        load_default=DEFAULT_PRIORITY,
        validate=validate.Range(min=0, max=9),
        metadata={"description": "0-9, higher first among the partner's own waiting jobs."},
    )
    delay_seconds = fields.Integer(
        load_default=None,
        allow_none=True,
        validate=validate.Range(min=0, max=MAX_DELAY),
        metadata={"description": "Run no sooner than this many seconds from now."},
    )
    run_at = fields.AwareDateTime(
        load_default=None,
        allow_none=True,
        metadata={"description": "Run no sooner than this time (RFC 3339, within 30 days)."},
    )

    @validates_schema
    def _one_start(self, data: dict[str, Any], **_: Any) -> None:
        """``delay_seconds`` or ``run_at``, not both; ``run_at`` ahead, within 30 days."""
        at = data.get("run_at")
        if at is None:
            return
        if data.get("delay_seconds") is not None:
            raise ValidationError("Send delay_seconds or run_at, not both.", "run_at")
        ahead = (at - datetime.now(UTC)).total_seconds()
        if not 0 < ahead <= MAX_DELAY:
            raise ValidationError("Must be in the future, at most 30 days ahead.", "run_at")


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
    callback_url = url_field("Receives batch.completed only.", load_default=None, allow_none=True)
    metadata = _metadata_field("Any JSON object, returned as is (16 KiB, as a job's).")


class RevokeSchema(Schema):
    reason = fields.String(load_default="", validate=validate.Length(max=500))
    terminate = fields.Boolean(load_default=True)


LIST_INCLUDES = ("result",)


class ListJobsArgs(Schema):
    status = fields.String(load_default=None, validate=validate.OneOf(STATUSES))
    task = fields.String(load_default=None, validate=validate.Length(max=200))
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(load_default=None, validate=validate.Length(max=200))
    # What list entries carry beyond the job itself: "result" adds each job's result
    # (left out by default: one large result made every page that listed it large).
    include = fields.String(load_default=None, validate=validate.OneOf(LIST_INCLUDES))

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


class ProgressSchema(Schema):
    current = fields.Integer()
    total = fields.Integer()
    percent = fields.Integer()
    message = fields.String()


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
    result = fields.Raw(
        allow_none=True,
        metadata={
            "description": "The task's result (SUCCESS), else null. Left out of list "
            "entries (GET /v1/jobs) unless ?include=result."
        },
    )
    error = fields.String(allow_none=True)
    metadata = fields.Dict()
    callback_url = fields.String(allow_none=True)
    batch_id = fields.String(allow_none=True)
    priority = fields.Integer()
    run_at = fields.String(allow_none=True)
    created_at = fields.String()
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    webhook = fields.Nested(WebhookSummarySchema)
    revocation = fields.Nested(RevocationSchema, allow_none=True)
    partner_id = fields.String(
        metadata={"description": "An admin's list entries only: the job's partner."}
    )


class JobListSchema(Schema):
    jobs = fields.List(
        fields.Nested(JobSchema),
        required=True,
        metadata={
            "description": "Jobs without their `result` (read one job for it, or list with "
            "?include=result)."
        },
    )
    next_cursor = fields.String(allow_none=True, required=True)


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
