"""signing_secrets.secret: room for a sealed secret (jobgate.sealing)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 06:40:00

A sealed ``whsec_`` secret is about 170 characters, a sealed signing key about as long:
the column grows from 200 to 500. Secrets already stored stay as they are until
``jobgate secrets reseal`` seals them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("signing_secrets", schema=None) as batch_op:
        batch_op.alter_column(
            "secret", existing_type=sa.String(length=200), type_=sa.String(length=500)
        )


def downgrade() -> None:
    with op.batch_alter_table("signing_secrets", schema=None) as batch_op:
        batch_op.alter_column(
            "secret", existing_type=sa.String(length=500), type_=sa.String(length=200)
        )
