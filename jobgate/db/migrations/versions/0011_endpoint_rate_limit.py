"""endpoints.rate_limit: deliveries per second an endpoint takes at most

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 06:15:00.000000

A nullable integer: no value means no limit (the endpoint takes what comes).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("rate_limit", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("rate_limit")
