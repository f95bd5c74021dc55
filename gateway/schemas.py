"""marshmallow schemas: request bodies (validated) and responses (documented in OpenAPI)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates, validates_schema

from jobgate.batches import MAX_BATCH
from jobgate.endpoints import MAX_HEADERS, check_headers
from jobgate.events import EVENT_TYPES
from jobgate.history import BadCursor, decode_cursor
from jobgate.signing import SCHEMES
from jobgate.status import DEFAULT_PRIORITY, STATUSES
from jobgate.webhooks.throttle import MAX_RATE_LIMIT

METADATA_MAX_BYTES = 16 * 1024
MAX_DELAY = 30 * 86400  # a delayed job runs at most 30 days after its submit


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
    callback_url = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Length(min=1, max=2048),
        metadata={"description": "Receives batch.completed only."},
    )
    metadata = fields.Dict(
        keys=fields.String(),
        load_default=dict,
        validate=_small_json,
        metadata={"description": "Any JSON object, returned as is (16 KiB, as a job's)."},
    )


class PartnerCreateSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=100))

    @validates("name")
    def _printable(self, value: str, **_: Any) -> None:
        if not value.strip() or not value.isprintable():
            raise ValidationError("Must be printable and not blank.")


def _unique(values: list[str]) -> None:
    if len(set(values)) != len(values):
        raise ValidationError("Must not repeat an event type.")


def _url_field(required: bool) -> fields.String:
    return fields.String(
        required=required,
        validate=validate.Length(min=1, max=2048),
        metadata={"example": "https://partner.example/hooks"},
    )


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
    whole set) under ``details.headers`` (jobgate.endpoints.check_headers)."""

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
    url = _url_field(required=True)
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
    url = _url_field(required=False)
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


class RotateKeySchema(Schema):
    grace = fields.Integer(
        load_default=0,
        validate=validate.Range(min=0, max=30 * 86400),
        metadata={"description": "Seconds the old key keeps working (default 0: stops now)."},
    )


class EndpointListArgs(Schema):
    state = fields.String(
        load_default=None, validate=validate.OneOf(["enabled", "disabled", "failing"])
    )


class EndpointAttemptsArgs(Schema):
    status = fields.String(
        load_default=None, validate=validate.OneOf(["delivered", "retry", "failed"])
    )
    since = fields.AwareDateTime(load_default=None)
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    cursor = fields.Integer(load_default=None, validate=validate.Range(min=1))


class PageArgs(Schema):
    """A page of a list read newest first by id: ``limit`` rows with ids below ``cursor``."""

    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    cursor = fields.Integer(load_default=None, validate=validate.Range(min=1))


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


class EndpointMessageSchema(Schema):
    webhook_id = fields.String(required=True)
    endpoint_id = fields.String(required=True, allow_none=True)
    event = fields.String(required=True, allow_none=True)
    state = fields.String(required=True)
    attempts = fields.Integer(required=True)


class WebhookSummarySchema(Schema):
    state = fields.String(
        validate=validate.OneOf(["none", "pending", "delivered", "retrying", "failed"])
    )
    attempts = fields.Integer()
    endpoint_messages = fields.List(
        fields.Nested(EndpointMessageSchema),
        metadata={
            "description": "A job without a callback_url whose end went to registered "
            "endpoints: each message (state and attempts above are of them all)."
        },
    )


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


class PartnerDetailSchema(PartnerStateSchema):
    limits = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        required=True,
        metadata={"description": "Every limit in effect (0: none)."},
    )
    waiting = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        required=True,
        metadata={"description": "Jobs queued, delayed and running (dispatched, not ended)."},
    )
    jobs = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        required=True,
        metadata={"description": "Archived jobs by status (PENDING: not started yet)."},
    )
    endpoints = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        required=True,
        metadata={"description": "total, enabled, disabled, failing."},
    )
    failing_deliveries = fields.Integer(
        required=True,
        metadata={"description": "Messages to its endpoints now retrying or failed."},
    )


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


class TaskInfoSchema(Schema):
    name = fields.String(required=True)
    description = fields.String(required=True)
    params = fields.Dict(required=True, metadata={"description": "JSON schema of the params"})


class EventTypeSchema(Schema):
    name = fields.String(required=True)
    description = fields.String(required=True)
    operational = fields.Boolean(
        required=True,
        metadata={"description": "sent only to endpoints whose event_types name it"},
    )
    sample = fields.Dict(
        required=True,
        allow_none=True,
        metadata={"description": "a sample body ({type, timestamp, data}); null for job events"},
    )


class EventTypeListSchema(Schema):
    event_types = fields.List(fields.Nested(EventTypeSchema), required=True)


class SentRequestSchema(Schema):
    """What an attempt sent, as signed (the message log, ``jobgate.webhooks.messagelog``)."""

    headers = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        required=True,
        metadata={
            "description": "Every header sent: the Standard Webhooks ones (webhook-id, "
            "webhook-timestamp, webhook-signature), the endpoint's own, traceparent if any."
        },
    )
    body = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "The message's body, the same bytes on every attempt."},
    )


class ReceivedResponseSchema(Schema):
    """What the receiver answered, bounded (the message log)."""

    headers = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        required=True,
        metadata={"description": "At most 50 headers, 1024 characters a value, 8 KiB in all."},
    )
    headers_truncated = fields.Boolean(required=True)
    body = fields.String(
        required=True,
        metadata={"description": "The first 64 KiB of the body, as UTF-8 text."},
    )
    truncated = fields.Boolean(
        required=True, metadata={"description": "The body was longer than 64 KiB (or cut off)."}
    )


class DeliverySchema(Schema):
    """One webhook delivery attempt (``jobgate.webhooks.attempt``)."""

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
    request = fields.Nested(
        SentRequestSchema,
        required=True,
        allow_none=True,
        metadata={"description": "What was sent; null when nothing was (refused)."},
    )
    response = fields.Nested(
        ReceivedResponseSchema,
        required=True,
        allow_none=True,
        metadata={"description": "What was answered; null without an answer."},
    )


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


class DeliveriesSchema(Schema):
    job_id = fields.String(required=True)
    webhook = fields.Nested(WebhookSummarySchema, required=True)
    deliveries = fields.List(
        fields.Nested(DeliverySchema),
        required=True,
        metadata={"description": "Oldest first; the last 200."},
    )
    endpoint_messages = fields.List(
        fields.Nested(EndpointMessageSchema),
        metadata={"description": "A job without callback_url: its message to each endpoint."},
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


class DeadLetterSchema(Schema):
    """A subject the archiver set aside (``jobgate.archive``): the database refused it alone."""

    id = fields.Integer(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(["job", "batch", "msg"]))
    subject_id = fields.String(required=True)
    keyspace = fields.String(
        required=True, metadata={"description": "The Redis key prefix it lives under."}
    )
    at = fields.String(required=True)
    error = fields.String(required=True, metadata={"description": "Why the database refused it."})
    record = fields.Raw(
        required=True,
        allow_none=True,
        metadata={"description": "What Redis held of it then (its hash, or attempt log)."},
    )


class DeadLettersSchema(Schema):
    dead_letters = fields.List(fields.Nested(DeadLetterSchema), required=True)
    next_cursor = fields.Integer(required=True, allow_none=True)


class AuditEntrySchema(Schema):
    """One admin action (``jobgate.audit``)."""

    id = fields.Integer(required=True)
    at = fields.String(required=True)
    actor = fields.String(
        required=True,
        metadata={"description": "The admin key's name, or `key:` and its fingerprint."},
    )
    action = fields.String(
        required=True, metadata={"example": "POST /v1/partners/<partner_id>/disable"}
    )
    target = fields.String(required=True, metadata={"description": "The id acted on."})
    details = fields.Dict(
        required=True, metadata={"description": "The request's fields, secrets left out."}
    )


class AuditSchema(Schema):
    entries = fields.List(fields.Nested(AuditEntrySchema), required=True)
    next_cursor = fields.Integer(required=True, allow_none=True)


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
