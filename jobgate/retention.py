"""Retention: what the database keeps of finished work is deleted once it is older than
``JOBGATE_JOB_RETENTION`` (the worker holding the pruner's lease runs ``prune``,
``tasks.upkeep``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from sqlalchemy import delete, select

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
    deleted = 0
    while True:
        with db.session() as session:
            ids = list(
                session.scalars(select(Job.job_id).where(Job.finished_at < before).limit(chunk))
            )
            batch_ids = list(
                session.scalars(
                    select(Batch.batch_id).where(Batch.completed_at < before).limit(chunk)
                )
            )
            # Endpoint messages' attempts: by their own time (a message outlives no job).
            message_ids = list(
                session.scalars(
                    select(Attempt.subject_id)
                    .where(Attempt.kind == "msg", Attempt.at < before)
                    .limit(chunk)
                )
            )
            dead = list(
                session.scalars(select(DeadLetter.id).where(DeadLetter.at < before).limit(chunk))
            )
            kept = list(
                session.scalars(
                    select(Message.msg_id).where(Message.created_at < before).limit(chunk)
                )
            )
            ops = list(
                session.scalars(
                    select(OperationalEvent.op_id)
                    .where(OperationalEvent.created_at < before)
                    .limit(chunk)
                )
            )
            if not (ids or batch_ids or message_ids or dead or kept or ops):
                return deleted
            session.execute(delete(OperationalEvent).where(OperationalEvent.op_id.in_(ops)))
            session.execute(delete(DeadLetter).where(DeadLetter.id.in_(dead)))
            session.execute(delete(Message).where(Message.msg_id.in_(kept)))
            subjects = ids + batch_ids + message_ids
            session.execute(delete(Attempt).where(Attempt.subject_id.in_(subjects)))
            session.execute(delete(WebhookBody).where(WebhookBody.subject_id.in_(subjects)))
            session.execute(delete(Job).where(Job.job_id.in_(ids)))
            session.execute(delete(Batch).where(Batch.batch_id.in_(batch_ids)))
            deleted += len(ids)
