"""A job's webhooks: its summary, each delivery attempt as sent and answered, a redelivery."""

from __future__ import annotations

from marshmallow import Schema, fields, validate


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
    headers_incomplete = fields.Boolean(
        metadata={
            "description": "Present (true) when the endpoint's own headers this attempt sent "
            "were lost with Redis and its headers have changed since: only jobgate's are shown."
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
