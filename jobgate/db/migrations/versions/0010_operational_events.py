"""operational_events: endpoint.* and message.attempt.* events, committed before Redis

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 06:20:00.000000

A row per operational event (``jobgate.webhooks.operational``) with its body, committed before
Redis announces it; ``settled`` once its fan-out step ran. The relay gives back the rows
not settled whose Redis record is gone (partial index, like ``jobs_unsettled``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operational_events",
        sa.Column("op_id", sa.String(length=64), nullable=False),
        sa.Column("keyspace", sa.String(length=64), nullable=False),
        sa.Column("partner_id", sa.String(length=32), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("exclude", sa.String(length=32), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("op_id"),
    )
    with op.batch_alter_table("operational_events") as batch:
        batch.create_index(batch.f("ix_operational_events_created_at"), ["created_at"])
        batch.create_index(
            "operational_events_unsettled",
            ["keyspace", "created_at"],
            postgresql_where=sa.text("NOT settled"),
            sqlite_where=sa.text("NOT settled"),
        )


def downgrade() -> None:
    with op.batch_alter_table("operational_events") as batch:
        batch.drop_index("operational_events_unsettled")
        batch.drop_index(batch.f("ix_operational_events_created_at"))
    op.drop_table("operational_events")
