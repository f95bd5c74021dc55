"""messages: every event's message to every registered endpoint, held ones included

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 00:10:00.000000

A row per (event, endpoint) from the moment the event matched the endpoint, kept for the
retention period (``created_at``, indexed: retention deletes by it; with the endpoint:
``recover`` reads by both). ``held`` marks a message made while its endpoint was
disabled: nothing was sent until ``recover``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("msg_id", sa.String(length=64), nullable=False),
        sa.Column("endpoint_id", sa.String(length=32), nullable=False),
        sa.Column("partner_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subject_id", sa.String(length=64), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("held", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("msg_id"),
    )
    with op.batch_alter_table("messages") as batch:
        batch.create_index("messages_endpoint_created", ["endpoint_id", "created_at"])
        batch.create_index(batch.f("ix_messages_created_at"), ["created_at"])


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_index(batch.f("ix_messages_created_at"))
        batch.drop_index("messages_endpoint_created")
    op.drop_table("messages")
