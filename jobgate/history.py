"""Reading what the archiver wrote: jobs, batches and attempts from the database.

A row keeps the record exactly as Redis held it (``jobgate.archive``), so a job read here
gives the same view as one read from Redis. Listings page here, newest first, with a
keyset cursor over (created_at, job_id) that the indexes of ``jobgate.db.models`` serve.
"""

from __future__ import annotations

import base64
import functools
import json
from typing import Any

from sqlalchemy import bindparam, select, tuple_

from jobgate.db import UNSTORABLE, Database
from jobgate.db.models import Attempt, Batch, DeadLetter, Job, Message, WebhookBody
from jobgate.status import TERMINAL
from jobgate.times import iso_time, parse_time


class BadCursor(ValueError):
    """A listing cursor this gateway did not write."""


# The reads by id, built once: building a statement per call cost about as much as
# running it (bench.archive, reads).
JOB_SQL = "SELECT record FROM jobs WHERE job_id = %s"  # PostgreSQL decodes JSONB, SQLite not
JOBS = select(Job.job_id, Job.record).where(Job.job_id.in_(bindparam("ids", expanding=True)))
BATCH = select(Batch.record).where(Batch.batch_id == bindparam("id"))
ATTEMPTS = (
    select(Attempt.entry, Attempt.response, WebhookBody.body)
    .outerjoin(WebhookBody, WebhookBody.webhook_id == Attempt.webhook_id)
    .where(Attempt.subject_id == bindparam("id"))
    .order_by(Attempt.attempt)
)


def job(db: Database, job_id: str) -> dict[str, Any] | None:
    """The archived record of ``job_id``, or None (the read every status poll of a job
    Redis has forgotten makes: ``Database.read_first``)."""
    return _json(db.read_first(JOB_SQL, (job_id,)))


def jobs(db: Database, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Archived records by id (ids not archived are absent)."""
    if not job_ids:
        return {}
    return {job_id: dict(record) for job_id, record in db.read(JOBS, {"ids": job_ids})}


def batch(db: Database, batch_id: str) -> dict[str, Any] | None:
    """The archived batch record (with ``member_ids``), or None."""
    rows = db.read(BATCH, {"id": batch_id})
    return dict(rows[0][0]) if rows else None


def attempts(db: Database, subject_id: str) -> list[dict[str, Any]]:
    """Every archived attempt of a job's or batch's webhook, oldest first, with what it
    sent and was answered (``jobgate.webhooks.messagelog``)."""
    from jobgate.webhooks.messagelog import exchange

    return [
        exchange(dict(entry), body, _json(response))
        for entry, response, body in db.read(ATTEMPTS, {"id": subject_id})
    ]


def exchanges(
    db: Database, wanted: list[tuple[str, dict[str, Any]]]
) -> tuple[dict[str, str], dict[tuple[str, int], dict[str, Any]], dict[tuple[str, int], Any]]:
    """For (subject id, attempt entry) pairs: the archived bodies by ``webhook-id``, and
    answers and requests (headers whole, or said incomplete) by (subject id, attempt
    number), of those the database holds."""
    pairs = sorted({(subject, int(entry.get("attempt") or 0)) for subject, entry in wanted})
    ids = sorted({str(entry.get("webhook_id")) for _, entry in wanted})
    responses: dict[tuple[str, int], dict[str, Any]] = {}
    requests: dict[tuple[str, int], Any] = {}
    query = select(Attempt.subject_id, Attempt.attempt, Attempt.entry, Attempt.response).where(
        tuple_(Attempt.subject_id, Attempt.attempt).in_(pairs)
    )
    for subject, number, entry, response in db.read(query):
        answer = _json(response)
        if answer is not None:
            responses[(subject, int(number))] = answer
        sent = (_json(entry) or {}).get("request")
        if isinstance(sent, dict) and "endpoint_headers" not in sent:
            requests[(subject, int(number))] = sent  # as archived: whole, or said incomplete
    found = select(WebhookBody.webhook_id, WebhookBody.body).where(WebhookBody.webhook_id.in_(ids))
    bodies = {webhook_id: body for webhook_id, body in db.read(found)}
    return bodies, responses, requests


def _json(value: Any) -> dict[str, Any] | None:
    """A JSON column's value as a dict (SQLite's driver may hand back text)."""
    if value is None:
        return None
    return dict(json.loads(value) if isinstance(value, str) else value)


MESSAGES = (
    select(Message.msg_id, Message.endpoint_id, Message.event, Message.held)
    .where(Message.subject_id == bindparam("id"))
    .order_by(Message.msg_id)
)
MESSAGE_ATTEMPTS = (
    select(Attempt.subject_id, Attempt.outcome)
    .where(Attempt.subject_id.in_(bindparam("ids", expanding=True)))
    .order_by(Attempt.subject_id, Attempt.attempt)
)


def messages(db: Database, subject_id: str) -> list[dict[str, Any]]:
    """The archived endpoint messages of a job or batch, as
    ``jobgate.webhooks.fanout.message_summaries`` gives them from Redis: state (the last
    attempt's outcome; ``held`` or ``pending`` before any) and attempts."""
    rows = db.read(MESSAGES, {"id": subject_id})
    if not rows:
        return []
    outcomes: dict[str, list[str]] = {}
    for msg_id, outcome in db.read(MESSAGE_ATTEMPTS, {"ids": [row.msg_id for row in rows]}):
        outcomes.setdefault(msg_id, []).append(outcome)
    found = []
    for row in rows:
        done = outcomes.get(row.msg_id, [])
        if done:  # an attempt that neither delivered nor ended the delivery: a retry follows
            state = done[-1] if done[-1] in ("delivered", "failed") else "retrying"
        else:
            state = "held" if row.held else "pending"
        found.append(
            {
                "webhook_id": row.msg_id,
                "endpoint_id": row.endpoint_id,
                "event": row.event,
                "state": state,
                "attempts": len(done),
            }
        )
    return found


def encode_cursor(record: dict[str, Any]) -> str:
    raw = f"{record['created_at']}|{record['job_id']}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[Any, str]:
    """(created_at, job_id) of a cursor; BadCursor for anything ``encode_cursor`` did not
    write, text the database cannot store included (a NUL in it failed PostgreSQL's read)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, job_id = raw.partition("|")
        if UNSTORABLE.search(job_id):
            raise ValueError(job_id)
        return parse_time(created), job_id
    except (ValueError, UnicodeDecodeError):
        raise BadCursor(cursor) from None


def page(
    db: Database,
    *,
    partner_id: str | None,
    status: str | None = None,
    task: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> list[dict[str, Any]]:
    """Up to ``limit`` archived records, newest first, after ``cursor``.

    ``status`` filters on the archived status: a terminal one exactly; any other
    (queued, started, processing) selects the jobs not ended when last archived, which
    the caller refines with their live state.
    """
    params: dict[str, Any] = {"partner_id": partner_id, "task": task, "limit": limit}
    kind = None
    if status in TERMINAL:
        kind, params["status"] = "ended", status
    elif status:
        kind = "live"
    if cursor:
        params["created"], params["after_id"] = decode_cursor(cursor)
    statement = _page_statement(partner_id is not None, bool(task), kind, bool(cursor))
    return [dict(record) for (record,) in db.read(statement, params)]


@functools.cache
def _page_statement(by_partner: bool, by_task: bool, status: str | None, after: bool) -> Any:
    """The listing select for one combination of filters, built once (bind parameters
    carry the values)."""
    query = select(Job.record)
    if by_partner:
        query = query.where(Job.partner_id == bindparam("partner_id"))
    if by_task:
        query = query.where(Job.task == bindparam("task"))
    if status == "ended":
        query = query.where(Job.status == bindparam("status"))
    elif status == "live":
        query = query.where(Job.status.is_(None))
    if after:
        position = tuple_(bindparam("created", type_=Job.created_at.type), bindparam("after_id"))
        query = query.where(tuple_(Job.created_at, Job.job_id) < position)
    return query.order_by(Job.created_at.desc(), Job.job_id.desc()).limit(bindparam("limit"))


DEAD_LETTER_COLUMNS = (
    DeadLetter.id,
    DeadLetter.kind,
    DeadLetter.subject_id,
    DeadLetter.keyspace,
    DeadLetter.at,
    DeadLetter.error,
    DeadLetter.record,
)


def dead_letters(
    db: Database, *, limit: int = 50, cursor: int | None = None
) -> tuple[list[dict[str, Any]], int | None]:
    """What the archiver set aside (``jobgate.archive``), newest first, ids below
    ``cursor``: (page, the next page's cursor or None at the end)."""
    query = select(*DEAD_LETTER_COLUMNS).order_by(DeadLetter.id.desc()).limit(limit)
    if cursor is not None:
        query = query.where(DeadLetter.id < cursor)
    page = [
        {
            **row._mapping,
            "at": iso_time(row.at),
            "record": json.loads(row.record) if row.record else None,
        }
        for row in db.read(query)
    ]
    return page, page[-1]["id"] if len(page) == limit else None
