"""The database's lists an admin reads: the archive's dead letters and the audit log."""

from __future__ import annotations

from marshmallow import Schema, fields, validate


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
