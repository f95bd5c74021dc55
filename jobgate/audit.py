"""The audit log: every admin action (who took it, what, on what, when), a row in the
database, kept for good. The gateway records each admin request that changed something
(``gateway.views.audit``); the CLI records its own verbs with the operator as actor."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select

from jobgate.db import Database
from jobgate.db.models import AuditEntry
from jobgate.times import iso_time, now_utc

# Request fields never copied into an entry: a secret stays out of the log.
SECRET_FIELDS = frozenset({"api_key", "secret", "webhook_secret", "private_key", "key"})
MAX_FIELD = 200  # characters kept of any one string in an entry's details


def redacted(details: Any) -> Any:
    """``details`` with secret fields dropped and long strings cut (a request body, say);
    of an endpoint's ``headers``, only the names (a value may be a receiver's token)."""
    if isinstance(details, dict):
        return {
            str(name)[:MAX_FIELD]: (
                sorted(str(header)[:MAX_FIELD] for header in value)
                if str(name).lower() == "headers" and isinstance(value, dict)
                else redacted(value)
            )
            for name, value in details.items()
            if str(name).lower() not in SECRET_FIELDS
        }
    if isinstance(details, list):
        return [redacted(value) for value in details[:50]]
    if isinstance(details, str):
        return details[:MAX_FIELD]
    return details


def record(db: Database, actor: str, action: str, target: str, details: Any = None) -> None:
    """Add one entry (committed before this returns)."""
    with db.session() as session:
        session.execute(
            insert(AuditEntry).values(
                at=now_utc(),
                actor=actor[:200],
                action=action[:120],
                target=target[:200],
                details=redacted(details) if details else None,
            )
        )


def entries(
    db: Database, *, limit: int = 50, cursor: int | None = None
) -> tuple[list[dict[str, Any]], int | None]:
    """Entries newest first, ids below ``cursor``: (page, the next page's cursor or None)."""
    query = select(AuditEntry.__table__).order_by(AuditEntry.id.desc()).limit(limit)
    if cursor is not None:
        query = query.where(AuditEntry.id < cursor)
    with db.session() as session:
        rows = session.execute(query).all()
    page = [{**row._mapping, "at": iso_time(row.at), "details": row.details or {}} for row in rows]
    return page, rows[-1].id if len(rows) == limit else None
