"""What the admin dashboard shows (``GET /v1/dashboard``), each part bounded.

One partner can make many jobs, endpoints and attempts, and there may be thousands of
partners: every read here is bounded in rows or time, and none is made once per partner.

- **Workers**: the store's set of worker nodes (nodes silent for a day are forgotten) and
  what each runs (``Store.pools_key``), in one pipeline.
- **Queues**: the dispatcher's per-partner counters (``P:dispatch:running``,
  ``P:dispatch:delayed``) and ready set read whole (one field per partner with work), then
  one pipelined ``ZCARD`` of each such partner's queue; the ``TOP_PARTNERS`` deepest are
  returned with the totals over all of them.
- **Activity**: the last hour by minute, grouped in the database (at most 60 rows a
  series), each query a range over an indexed time column: jobs ended
  (``ix_jobs_finished_at``), jobs started (the same range: the database learns a job's
  start with its end, so a job still running shows in the queues, not here), jobs
  submitted (``jobs_created``) and delivery attempts (``ix_attempts_at``).
- **Endpoints**: failing and disabled ones, counted, and the newest ``LIST_LIMIT`` of each
  (the endpoints table is bounded by partners times ``max_endpoints``).
- **Dead letters**: their count (the table is pruned with job retention) and the newest
  ``LIST_LIMIT`` by id (its primary key), without what Redis held of them.

Nothing here carries a secret: endpoints are shown without their headers, and their URLs
without query string or user info.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, func, select

from jobgate.db import Database
from jobgate.db.models import Attempt, DeadLetter, Endpoint, Job, Partner
from jobgate.logs import loggable
from jobgate.store import Store
from jobgate.times import format_time, iso_time

WINDOW_MINUTES = 60  # the activity chart's span
TOP_PARTNERS = 20  # partners listed by queue depth (the totals count every partner)
LIST_LIMIT = 5  # endpoints and dead letters listed of each kind
MAX_WORKERS = 200  # worker nodes listed, most recently seen first
ERROR_CHARS = 300  # a dead letter's error, cut to this


# ---------------------------------------------------------------------------- workers
def workers(store: Store, alive_for: int) -> dict[str, Any]:
    """Worker nodes, most recently seen first: name, last sign of life, whether that is
    within ``alive_for`` s (by Redis's clock), its pools and slots."""
    pipe = store.redis.pipeline(transaction=False)
    pipe.time()
    pipe.zrevrange(store.workers_key, 0, MAX_WORKERS - 1, withscores=True)
    pipe.zcard(store.workers_key)
    pipe.hgetall(store.pools_key)
    pipe.hgetall(store.key("dispatch", "slots"))
    now, nodes, count, pools, job_slots = pipe.execute()
    now = float(now[0])
    listed = []
    for node, seen in nodes:
        described = _json(pools.get(node)) or {}
        kinds = described.get("pools")
        if not isinstance(kinds, list):  # a node from before pools were recorded
            kinds = ["jobs"] if node in job_slots else []
        slots = described.get("slots", job_slots.get(node, 0))
        listed.append(
            {
                "node": node,
                "alive": seen >= now - alive_for,
                "last_seen": format_time(datetime.fromtimestamp(seen, UTC)),
                "pools": [str(kind) for kind in kinds],
                "slots": int(slots or 0),
            }
        )
    return {"alive": sum(node["alive"] for node in listed), "known": int(count), "nodes": listed}


def _json(raw: str | None) -> dict[str, Any] | None:
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# ----------------------------------------------------------------------------- queues
def queues(store: Store, db: Database | None = None, top: int = TOP_PARTNERS) -> dict[str, Any]:
    """Jobs waiting per partner (``queued``, ``running``, ``delayed``, as
    ``Store.waiting`` counts them), the ``top`` deepest partners with their names, and
    the totals over every partner."""
    pipe = store.redis.pipeline(transaction=False)
    pipe.hgetall(store.key("dispatch", "running"))
    pipe.hgetall(store.key("dispatch", "delayed"))
    pipe.zrange(store.key("dispatch", "ready"), 0, -1)
    running, delayed, ready = pipe.execute()
    candidates = sorted(
        {p for p, n in running.items() if int(n or 0) > 0}
        | {p for p, n in delayed.items() if int(n or 0) > 0}
        | set(ready)
    )
    pipe = store.redis.pipeline(transaction=False)
    for partner_id in candidates:
        pipe.zcard(store.key("waiting", partner_id))
    queued = pipe.execute() if candidates else []
    rows = []
    for partner_id, waiting in zip(candidates, queued, strict=True):
        row = {
            "partner_id": partner_id,
            "queued": int(waiting),
            "running": max(0, int(running.get(partner_id) or 0)),
            "delayed": max(0, int(delayed.get(partner_id) or 0)),
        }
        row["total"] = row["queued"] + row["running"] + row["delayed"]
        if row["total"]:
            rows.append(row)
    totals = {
        name: sum(row[name] for row in rows) for name in ("queued", "running", "delayed", "total")
    }
    rows.sort(key=lambda row: (-row["total"], row["partner_id"]))
    shown = rows[:top]
    names = _partner_names(db, [row["partner_id"] for row in shown]) if db else {}
    for row in shown:
        row["name"] = names.get(row["partner_id"])
    return {"partners": shown, "partners_total": len(rows), "totals": totals}


def _partner_names(db: Database, ids: list[str]) -> dict[str, str]:
    if not ids:
        return {}
    query = select(Partner.id, Partner.name).where(Partner.id.in_(ids))
    return {partner_id: name for partner_id, name in db.read(query)}


# --------------------------------------------------------------------------- activity
def _minute(db: Database, column: Any) -> ColumnElement[str]:
    """``column`` (a timestamp) as its UTC minute, ``YYYY-MM-DD HH:MM`` (SQLite keeps
    times as such text, in UTC)."""
    if db.dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD HH24:MI")
    return func.substr(column, 1, 16)


def activity_statements(db: Database, since: datetime, until: datetime) -> dict[str, Any]:
    """The activity's reads, by series: each groups by minute a range ``[since, until)``
    of one indexed time column (``tests/db/test_dashboard.py`` checks the plans)."""
    ended_minute = _minute(db, Job.finished_at)
    submitted_minute = _minute(db, Job.created_at)
    # Jobs that ended in the window and started in it: the start time is in the record
    # (ISO text, "...THH:MM:SS.mmmZ"), which sorts as the times do.
    started_at = Job.record["started_at"].as_string()
    started_minute = func.substr(started_at, 1, 16)
    attempt_minute = _minute(db, Attempt.at)
    delivered = func.sum(case((Attempt.outcome == "delivered", 1), else_=0))
    ended_in = (Job.finished_at >= since, Job.finished_at < until)
    return {
        "ended": select(ended_minute, func.count()).where(*ended_in).group_by(ended_minute),
        "submitted": select(submitted_minute, func.count())
        .where(Job.created_at >= since, Job.created_at < until)
        .group_by(submitted_minute),
        "started": select(started_minute, func.count())
        .where(*ended_in, started_at >= format_time(since))
        .group_by(started_minute),
        "attempts": select(attempt_minute, func.count(), delivered)
        .where(Attempt.at >= since, Attempt.at < until)
        .group_by(attempt_minute),
    }


def activity(
    db: Database, now: datetime | None = None, minutes: int = WINDOW_MINUTES
) -> dict[str, Any]:
    """The last ``minutes`` minutes (the current one last), each with the jobs submitted,
    started and ended in it, and the delivery attempts made and delivered; the totals
    and the success rate (delivered / attempts; None without attempts)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    last = now.replace(second=0, microsecond=0)
    since = last - timedelta(minutes=minutes - 1)
    until = last + timedelta(minutes=1)
    statements = activity_statements(db, since, until)
    series: dict[str, dict[str, int]] = {
        name: _counts(db.read(statements[name])) for name in ("submitted", "started", "ended")
    }
    series["attempts"], series["delivered"] = {}, {}
    for minute, count, ok in db.read(statements["attempts"]):
        key = _key(minute)
        series["attempts"][key] = int(count)
        series["delivered"][key] = int(ok or 0)

    rows = []
    for label in (since + timedelta(minutes=offset) for offset in range(minutes)):
        key = label.strftime("%Y-%m-%d %H:%M")
        row: dict[str, Any] = {"minute": format_time(label)}
        row |= {name: counts.get(key, 0) for name, counts in series.items()}
        row["success_rate"] = _rate(row["delivered"], row["attempts"])
        rows.append(row)
    totals: dict[str, Any] = {name: sum(row[name] for row in rows) for name in series}
    totals["success_rate"] = _rate(totals["delivered"], totals["attempts"])
    return {
        "since": format_time(since),
        "until": format_time(until),
        "minutes": rows,
        "totals": totals,
    }


def _key(minute: Any) -> str:
    return str(minute).replace("T", " ")[:16]


def _counts(rows: Iterable[Any]) -> dict[str, int]:
    return {_key(minute): int(count) for minute, count in rows if minute is not None}


def _rate(delivered: int, attempts: int) -> float | None:
    return round(delivered / attempts, 4) if attempts else None


# -------------------------------------------------------------------------- endpoints
def endpoints(db: Database, limit: int = LIST_LIMIT) -> dict[str, Any]:
    """Failing (enabled, failing since some time) and disabled endpoints: how many, and
    the ``limit`` most recent of each."""
    failing = (Endpoint.disabled_at.is_(None), Endpoint.failing_since.is_not(None))
    disabled = (Endpoint.disabled_at.is_not(None),)
    answer = {}
    for name, where, newest in (
        ("failing", failing, Endpoint.failing_since),
        ("disabled", disabled, Endpoint.disabled_at),
    ):
        [(count,)] = db.read(select(func.count()).select_from(Endpoint).where(*where))
        rows = db.read(
            select(*ENDPOINT_COLUMNS)
            .where(*where)
            .order_by(newest.desc(), Endpoint.id)
            .limit(limit)
        )
        answer[name] = {"count": int(count), "newest": [_endpoint(row) for row in rows]}
    return answer


ENDPOINT_COLUMNS = (
    Endpoint.id,
    Endpoint.partner_id,
    Endpoint.url,
    Endpoint.disabled_at,
    Endpoint.disabled_reason,
    Endpoint.failing_since,
)


def _endpoint(row: Any) -> dict[str, Any]:
    """An endpoint as the dashboard lists it: no headers, no secret in its URL."""
    return {
        "id": row.id,
        "partner_id": row.partner_id,
        "url": loggable(row.url),
        "enabled": row.disabled_at is None,
        "failing_since": iso_time(row.failing_since),
        "disabled_at": iso_time(row.disabled_at),
        "disabled_reason": row.disabled_reason,
    }


# ----------------------------------------------------------------------- dead letters
def dead_letters(db: Database, limit: int = LIST_LIMIT) -> dict[str, Any]:
    """How many subjects the archiver set aside, and the newest ``limit`` (without what
    Redis held of them: ``GET /v1/archive/dead-letters`` has that)."""
    [(count,)] = db.read(select(func.count()).select_from(DeadLetter))
    query = (
        select(
            DeadLetter.id, DeadLetter.kind, DeadLetter.subject_id, DeadLetter.at, DeadLetter.error
        )
        .order_by(DeadLetter.id.desc())
        .limit(limit)
    )
    newest = [
        {**row._mapping, "at": iso_time(row.at), "error": (row.error or "")[:ERROR_CHARS]}
        for row in db.read(query)
    ]
    return {"count": int(count), "newest": newest}


def snapshot(store: Store, db: Database, alive_for: int) -> dict[str, Any]:
    """Everything the dashboard shows, in one answer."""
    return {
        "generated_at": format_time(datetime.now(UTC)),
        "workers": workers(store, alive_for),
        "queues": queues(store, db),
        "activity": activity(db),
        "endpoints": endpoints(db),
        "dead_letters": dead_letters(db),
    }


__all__ = ["activity", "dead_letters", "endpoints", "queues", "snapshot", "workers"]
