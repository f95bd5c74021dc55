"""marshmallow schemas: request bodies (validated) and responses (documented in OpenAPI),
one module per resource (jobs and batches, webhooks, endpoints, partners); here, what
every resource uses (``load_or_422``, errors, a page of a list, a URL) and the small
reads: health, the catalog, the archive's dead letters, the audit log."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate


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


EXAMPLE_URL = "https://partner.example/hooks"


def url_field(description: str = "", **options: Any) -> fields.String:
    """A callback or endpoint URL (2048 characters at most), with an example unless
    ``description`` says what it is for."""
    return fields.String(
        validate=validate.Length(min=1, max=2048),
        metadata={"description": description} if description else {"example": EXAMPLE_URL},
        **options,
    )


class PageArgs(Schema):
    """A page of a list read newest first by id: ``limit`` rows with ids below ``cursor``."""

    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    # Below SQL's largest integer: a larger one is a 422, not a query SQLite refuses.
    cursor = fields.Integer(load_default=None, validate=validate.Range(min=1, max=2**63 - 1))


class ErrorBodySchema(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Dict(required=True)


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBodySchema, required=True)


class HealthSchema(Schema):
    status = fields.String(required=True)
    checks = fields.Dict()


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
