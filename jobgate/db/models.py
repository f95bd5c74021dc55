"""The tables: what must outlast Redis (partners, their keys and secrets, job history,
delivery attempts, batches).

A job or batch row keeps the whole record as the gateway shows it (``record``, JSON) next
to the columns that listings filter and sort on, so a job read from the database is the
same job read from Redis, field for field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedColumn, mapped_column

JSONType = JSON().with_variant(JSONB(), "postgresql")
Time = DateTime(timezone=True)
# A partial index of the rows not settled, the same on both databases.
NOT_SETTLED: dict[str, Any] = {
    "postgresql_where": text("NOT settled"),
    "sqlite_where": text("NOT settled"),
}


def _partner_id() -> MappedColumn[str]:
    """A partner's id in a row of its own (an API key, an endpoint, a signing secret):
    indexed, and deleted with the partner."""
    return mapped_column(ForeignKey("partners.id", ondelete="CASCADE"), index=True)


class Base(DeclarativeBase):
    """Declarative base of every jobgate table (Alembic reads its metadata)."""


class Partner(Base):
    __tablename__ = "partners"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(Time)
    disabled_at: Mapped[datetime | None] = mapped_column(Time, nullable=True)
    # The partner's own limits (jobgate.limits): name -> value; absent names take the default.
    limits: Mapped[dict[str, int] | None] = mapped_column(JSONType, nullable=True)


class ApiKey(Base):
    """A partner's API key, by its SHA-256 only; ``expires_at`` ends a rotated key's grace."""

    __tablename__ = "api_keys"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    partner_id: Mapped[str] = _partner_id()
    created_at: Mapped[datetime] = mapped_column(Time)
    expires_at: Mapped[datetime | None] = mapped_column(Time, nullable=True)


class Endpoint(Base):
    """A partner's registered webhook endpoint (issue 10). ``event_types`` empty: every
    event. ``failing_since``: the first failed attempt with no delivery since (None while
    it delivers); ``disabled_at`` set by a ``PATCH``, a ``410 Gone`` or a failing period.
    ``headers``: the partner's own headers sent with every delivery to it (None: none);
    ``signature_scheme``: ``hmac`` (``whsec_`` secrets) or ``ed25519`` (``whsk_`` keys)."""

    __tablename__ = "endpoints"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    partner_id: Mapped[str] = _partner_id()
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str] = mapped_column(String(500), default="")
    event_types: Mapped[list[str]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(Time)
    updated_at: Mapped[datetime] = mapped_column(Time)
    disabled_at: Mapped[datetime | None] = mapped_column(Time, nullable=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(300), nullable=True)
    failing_since: Mapped[datetime | None] = mapped_column(Time, nullable=True)
    headers: Mapped[dict[str, str] | None] = mapped_column(JSONType, nullable=True)
    signature_scheme: Mapped[str] = mapped_column(String(16), default="hmac", server_default="hmac")
    # Deliveries per second it takes at most (None: no limit; jobgate.webhooks.throttle).
    rate_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)


class SigningSecret(Base):
    """A webhook signing secret; the current one has no ``expires_at``, rotated ones sign
    until theirs. A partner's own secrets have no ``endpoint_id``; an endpoint's have."""

    __tablename__ = "signing_secrets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    partner_id: Mapped[str] = _partner_id()
    endpoint_id: Mapped[str | None] = mapped_column(
        ForeignKey("endpoints.id", ondelete="CASCADE"), nullable=True, index=True
    )
    secret: Mapped[str] = mapped_column(String(500))  # sealed (jobgate.sealing)
    created_at: Mapped[datetime] = mapped_column(Time)
    expires_at: Mapped[datetime | None] = mapped_column(Time, nullable=True)


class Job(Base):
    """A job: its row is committed before its 202 (jobgate.outbox), then kept up to date
    by the archiver, so that listings page here and Redis can be rebuilt from it."""

    __tablename__ = "jobs"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    partner_id: Mapped[str] = mapped_column(String(32))
    task: Mapped[str] = mapped_column(String(200))
    status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    batch_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(Time)
    finished_at: Mapped[datetime | None] = mapped_column(Time, nullable=True, index=True)
    record: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # How far along the record is (jobgate.archive.revision): an archiver that read an
    # older record never overwrites a newer one.
    rev: Mapped[int] = mapped_column(Integer, default=0)
    # Ended with its webhook final: nothing of it lives in Redis any more. The rows not
    # settled are what a Redis that lost its data must get back (jobgate.archive.restore).
    settled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The Redis key prefix the job lives under: a database shared by deployments (or by
    # test runs) restores each one's jobs into its own Redis only.
    keyspace: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # The SHA-256 of the Idempotency-Key it was sent with, unique per partner (null: none),
    # and the digest of the body it came with (jobgate.outbox).
    idempotency_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    request_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (
        Index("jobs_partner_created", "partner_id", "created_at", "job_id"),
        Index("jobs_partner_idempotency_key", "partner_id", "idempotency_key", unique=True),
        Index("jobs_partner_status_created", "partner_id", "status", "created_at", "job_id"),
        Index("jobs_partner_task_created", "partner_id", "task", "created_at", "job_id"),
        Index("jobs_created", "created_at", "job_id"),
        Index("jobs_unsettled", "keyspace", "created_at", **NOT_SETTLED),
    )


class Batch(Base):
    __tablename__ = "batches"

    batch_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    partner_id: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[datetime] = mapped_column(Time)
    completed_at: Mapped[datetime | None] = mapped_column(Time, nullable=True, index=True)
    record: Mapped[dict[str, Any]] = mapped_column(JSONType)
    rev: Mapped[int] = mapped_column(Integer, default=0)


class Attempt(Base):
    """One delivery attempt of a subject's (a job's or a batch's) webhook, as logged."""

    __tablename__ = "attempts"

    subject_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    webhook_id: Mapped[str] = mapped_column(String(100), index=True)
    event: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(Time, index=True)
    entry: Mapped[dict[str, Any]] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The receiver's answer as the message log keeps it (jobgate.webhooks.http
    # .logged_response): bounded headers, the first 64 KiB of the body; None without one.
    response: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)


class WebhookBody(Base):
    """The body a message sent (its ``webhook-id``), once: every attempt of the message
    sends these bytes, and the message log shows them with each attempt. Pruned with its
    subject's attempts."""

    __tablename__ = "webhook_bodies"

    webhook_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    subject_id: Mapped[str] = mapped_column(String(64), index=True)
    event: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)


class Message(Base):
    """One event's message to one registered endpoint (its ``webhook-id``), kept for the
    retention period from the moment the event matched the endpoint. ``held``: the
    endpoint was disabled then, so nothing was sent; ``recover`` sends it (same id)."""

    __tablename__ = "messages"
    __table_args__ = (Index("messages_endpoint_created", "endpoint_id", "created_at"),)

    msg_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(String(32))
    partner_id: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    subject_id: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Time, index=True)
    held: Mapped[bool] = mapped_column(Boolean, default=False)


class DeadLetter(Base):
    """A subject the archiver could not write even alone (``jobgate.archive``), set aside
    so that the archive goes on: why it failed and what Redis held of it (JSON text,
    escaped: it may hold the very text the database refused). One row each time."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    keyspace: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    subject_id: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(Time, index=True)
    error: Mapped[str] = mapped_column(Text)
    record: Mapped[str | None] = mapped_column(Text, nullable=True)


class AuditEntry(Base):
    """One admin action (``jobgate.audit``): who took it, what, on what, and when; kept
    for good (job retention does not prune it)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(Time)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(120))
    target: Mapped[str] = mapped_column(String(200))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)


class OperationalEvent(Base):
    """An operational event (``endpoint.disabled``, ``message.attempt.failing``, …:
    ``jobgate.webhooks.operational``), committed before Redis announces it, with the body every
    endpoint gets; ``settled`` once its fan-out step ran (its messages are rows of their
    own then). The rows not settled are what the relay gives back to a Redis that lost
    them. ``exclude``: the endpoint it is about that must not get it (its own disabling)."""

    __tablename__ = "operational_events"
    __table_args__ = (
        Index("operational_events_unsettled", "keyspace", "created_at", **NOT_SETTLED),
    )

    op_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    keyspace: Mapped[str] = mapped_column(String(64))
    partner_id: Mapped[str] = mapped_column(String(32))
    event: Mapped[str] = mapped_column(String(64))
    exclude: Mapped[str] = mapped_column(String(32), default="")
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Time, index=True)
    settled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
