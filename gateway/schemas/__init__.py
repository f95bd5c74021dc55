"""marshmallow schemas: request bodies (validated) and responses (documented in OpenAPI),
one module per resource (jobs and batches, webhooks, endpoints, partners, records); here,
what every resource uses: ``load_or_422``, errors, a page of a list, health, the catalog."""

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


class PageArgs(Schema):
    """A page of a list read newest first by id: ``limit`` rows with ids below ``cursor``."""

    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    cursor = fields.Integer(load_default=None, validate=validate.Range(min=1))


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
