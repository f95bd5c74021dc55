"""endpoints.headers, endpoints.signature_scheme: a partner's own delivery headers, and
how the endpoint's webhooks are signed

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 06:30:00.000000

``headers``: a JSON object of header names to values sent with every delivery to the
endpoint (null: none; bounded by the API, jobgate.endpoint_headers.check_headers).
``signature_scheme``: ``hmac`` (``whsec_`` secrets, Standard Webhooks ``v1``) or
``ed25519`` (``whsk_`` private keys in signing_secrets, ``v1a``); every endpoint
registered before is ``hmac``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(
            sa.Column(
                "headers",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )
        batch.add_column(
            sa.Column(
                "signature_scheme",
                sa.String(length=16),
                server_default="hmac",
                nullable=False,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("signature_scheme")
        batch.drop_column("headers")
