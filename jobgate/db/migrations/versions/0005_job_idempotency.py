"""jobs.idempotency_key, jobs.request_digest: a job's Idempotency-Key kept with its row

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 21:00:00.000000

The row is committed before the job's 202 (jobgate.outbox); the key (its SHA-256, as
Redis holds it) is unique per partner, so a retry after Redis lost its claim still finds
the job it made. Both columns are null for jobs sent without a key.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("request_digest", sa.String(length=64), nullable=True))
        batch.create_index(
            "jobs_partner_idempotency_key", ["partner_id", "idempotency_key"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("jobs_partner_idempotency_key")
        batch.drop_column("request_digest")
        batch.drop_column("idempotency_key")
