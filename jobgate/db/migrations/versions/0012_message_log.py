"""message log: attempts.response and webhook_bodies

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 07:00:00.000000

The message log (docs/webhooks.md): each attempt's answer, bounded (a nullable JSON column
of ``attempts``: its headers and the first 64 KiB of its body), and the body a message
sent, once per message (``webhook_bodies``, by its ``webhook-id``: every attempt of a
message sends the same bytes), pruned with the attempts of its subject.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(
            sa.Column(
                "response",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )
    op.create_table(
        "webhook_bodies",
        sa.Column("webhook_id", sa.String(length=100), nullable=False),
        sa.Column("subject_id", sa.String(length=64), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("webhook_id"),
    )
    with op.batch_alter_table("webhook_bodies") as batch:
        batch.create_index(batch.f("ix_webhook_bodies_subject_id"), ["subject_id"])


def downgrade() -> None:
    with op.batch_alter_table("webhook_bodies") as batch:
        batch.drop_index(batch.f("ix_webhook_bodies_subject_id"))
    op.drop_table("webhook_bodies")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("response")
