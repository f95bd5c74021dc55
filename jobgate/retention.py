"""Retention: what the database keeps of finished work is deleted once it is older than
``JOBGATE_JOB_RETENTION`` (the worker holding the pruner's lease runs ``prune``,
``tasks.upkeep``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, select

from jobgate.db import Database
from jobgate.db.models import (
    Attempt,
    Batch,
    DeadLetter,
    Job,
    Message,
    OperationalEvent,
    SigningSecret,
    WebhookBody,
)


def prune(db: Database, retention: int, *, chunk: int = 1000, now: float | None = None) -> int:
    """Delete finished jobs (and their attempts) older than ``retention`` s, completed
    batches, endpoint messages, operational events and dead letters, one chunk per
    transaction, and the signing secrets past their grace period; returns the jobs
    deleted."""
    moment = time.time() if now is None else now
    before = datetime.fromtimestamp(moment - retention, UTC)
    with db.session() as session:
        expired = SigningSecret.expires_at < datetime.fromtimestamp(moment, UTC)
        session.execute(delete(SigningSecret).where(expired))
    # What ages out: the id each row is deleted by, and which rows are old. Endpoint
    # messages' attempts go by their own time (a message outlives no job).
    ageing: dict[str, tuple[Any, Any]] = {
        "jobs": (Job.job_id, Job.finished_at < before),
        "batches": (Batch.batch_id, Batch.completed_at < before),
        "messages": (Attempt.subject_id, and_(Attempt.kind == "msg", Attempt.at < before)),
        "dead": (DeadLetter.id, DeadLetter.at < before),
        "kept": (Message.msg_id, Message.created_at < before),
        "ops": (OperationalEvent.op_id, OperationalEvent.created_at < before),
    }
    deleted = 0
    while True:
        with db.session() as session:
            found = {
                name: list(session.scalars(select(key).where(old).limit(chunk)))
                for name, (key, old) in ageing.items()
            }
            if not any(found.values()):
                return deleted
            ids, batch_ids = found["jobs"], found["batches"]
            session.execute(
                delete(OperationalEvent).where(OperationalEvent.op_id.in_(found["ops"]))
            )
            session.execute(delete(DeadLetter).where(DeadLetter.id.in_(found["dead"])))
            session.execute(delete(Message).where(Message.msg_id.in_(found["kept"])))
            subjects = ids + batch_ids + found["messages"]
            session.execute(delete(Attempt).where(Attempt.subject_id.in_(subjects)))
            session.execute(delete(WebhookBody).where(WebhookBody.subject_id.in_(subjects)))
            session.execute(delete(Job).where(Job.job_id.in_(ids)))
            session.execute(delete(Batch).where(Batch.batch_id.in_(batch_ids)))
            deleted += len(ids)
