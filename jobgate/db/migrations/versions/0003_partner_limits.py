"""partners.limits: a partner's own limits (jobgate.limits)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 18:20:00.000000

A nullable JSON column: no value means every limit takes its default.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("partners") as batch:
        batch.add_column(
            sa.Column(
                "limits",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("partners") as batch:
        batch.drop_column("limits")
