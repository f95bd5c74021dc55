"""Alembic's environment: migrations run on the connection ``Database.upgrade`` passes."""

from __future__ import annotations

from alembic import context

from jobgate.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `jobgate db upgrade` (jobgate.db.Database.upgrade)")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
