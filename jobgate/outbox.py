"""The database as the record of every accepted job: its row is committed before its 202.

The gateway commits the rows of the jobs it accepts (``accept``: a job, or a batch and its
members, in one transaction) and only then hands them to Redis
(``jobgate.lifecycle.queue_job``). Redis can lose what it was handed (a restart without
persistence, a failover to a replica that missed the last writes), and a hand-off can fail
after the commit; ``relay`` repairs both from the database: every job it holds as not
settled whose Redis record is gone is queued again, or, if it had ended, gets its record
and its event back. A job handed over twice is queued once (``jobgate/scripts/submit.lua``
leaves a job whose record exists as it is).

Its end is committed the same way before anything announces it (``jobgate.ends``).

A job's Idempotency-Key is kept with its row, unique per partner, so a retry after Redis
lost its claim still finds the job it made.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from jobgate.archive import job_row, upsert_batches, upsert_jobs, upsert_jobs_statement
from jobgate.batches import COUNTERS
from jobgate.batches import keys as batch_keys
from jobgate.db import Database
from jobgate.db.models import Batch, Job
from jobgate.events import JOB_EVENTS
from jobgate.lifecycle import count_batch_member, enqueue_webhook, queue_job
from jobgate.messages import Messenger
from jobgate.status import TERMINAL
from jobgate.store import IDEMPOTENCY_TTL, Store

log = logging.getLogger("jobgate.outbox")

# Fields a running job gathers; a job queued again starts without them.
LIVE_FIELDS = frozenset({"started_at", "runs", "worker", "progress", "send", "sent"})
# How long after its commit a job may still be on its way to Redis from its gateway: the
# relay's ``older_than`` in the workers (a second hand-off is harmless, only wasted).
HANDOFF_GRACE = 10.0
PAGE = 1000  # unsettled rows read per query by the relay


@dataclass(frozen=True)
class IdempotencyKey:
    """A job's Idempotency-Key as its row keeps it: the key's SHA-256 and the body's digest."""

    partner_id: str
    key_hash: str
    digest: str


class KeyTaken(Exception):
    """The Idempotency-Key belongs to an earlier job of the partner (the database says so
    where Redis, having lost its claim, did not)."""

    def __init__(self, job_id: str, digest: str | None) -> None:
        super().__init__(job_id)
        self.job_id, self.digest = job_id, digest


def accept(
    db: Database,
    keyspace: str,
    jobs: list[dict[str, Any]],
    *,
    batch: dict[str, Any] | None = None,
    idempotency: IdempotencyKey | None = None,
) -> None:
    """Commit the rows of newly accepted jobs (records as ``Store.job`` reads them) and
    of their batch, in one transaction; a job alone is committed with the other jobs its
    process accepts meanwhile (``Database.write_grouped``). With ``idempotency``
    (one job): ``KeyTaken`` when the partner's key names an earlier job younger than the
    key's 24 h."""
    rows = [job_row(job, keyspace) for job in jobs]
    if idempotency is not None:
        rows[0] |= {"idempotency_key": idempotency.key_hash, "request_digest": idempotency.digest}
    try:
        _commit_rows(db, rows, batch)
    except IntegrityError:
        if idempotency is None:
            raise
        _check_key(db, idempotency)  # KeyTaken, or the key freed: one more try
        _commit_rows(db, rows, batch)


def _commit_rows(db: Database, rows: list[dict[str, Any]], batch: dict[str, Any] | None) -> None:
    if batch is None and len(rows) == 1:  # with the other submits of the moment
        db.write_grouped(upsert_jobs_statement(), rows[0])
    elif batch is None:
        db.write(upsert_jobs_statement(), rows)
    else:
        db.transaction(lambda connection: _batch_rows(connection, batch, rows))


def _batch_rows(connection: Any, batch: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    upsert_batches(connection, [batch])
    upsert_jobs(connection, rows)


def _check_key(db: Database, key: IdempotencyKey) -> None:
    """Raise ``KeyTaken`` if a job younger than 24 h holds ``key``; free an older one."""
    with db.session() as session:
        holder = session.execute(
            select(Job.job_id, Job.request_digest, Job.created_at).where(
                Job.partner_id == key.partner_id, Job.idempotency_key == key.key_hash
            )
        ).first()
        if holder is None:
            return
        if holder.created_at.timestamp() > time.time() - IDEMPOTENCY_TTL:
            raise KeyTaken(holder.job_id, holder.request_digest)
        session.execute(update(Job).where(Job.job_id == holder.job_id).values(idempotency_key=None))


def withdraw(db: Database, job_ids: list[str], batch_id: str | None = None) -> None:
    """Delete the rows of jobs Redis refused (``QueueFull``): nothing was accepted."""
    with db.session() as session:
        session.execute(delete(Job).where(Job.job_id.in_(job_ids)))
        if batch_id is not None:
            session.execute(delete(Batch).where(Batch.batch_id == batch_id))


def relay(store: Store, db: Database, messenger: Messenger, *, older_than: float) -> int:
    """Give Redis every job of this store's key prefix the database holds as not settled,
    committed more than ``older_than`` s ago, whose Redis record is gone (never handed
    over, or lost). A job not ended is queued again in its partner's queue (it runs
    again: at least once; the dispatcher takes partners in turn); an ended one whose
    webhook was not final gets its record back and its event queued again, with the same
    ``webhook-id`` and body. Every unsettled row is looked at, a page of ids at a time, so
    no number of live jobs holds a lost one back. Returns how many were given back."""
    cutoff = datetime.fromtimestamp(time.time() - older_than, UTC)
    restored, after = 0, ("", datetime.fromtimestamp(0, UTC))
    while True:
        page = db.read(
            select(Job.job_id, Job.created_at)
            .where(
                Job.keyspace == store.prefix,
                Job.settled.is_(False),
                Job.created_at < cutoff,
                (Job.created_at > after[1])
                | ((Job.created_at == after[1]) & (Job.job_id > after[0])),
            )
            .order_by(Job.created_at, Job.job_id)
            .limit(PAGE)
        )
        if not page:
            return restored
        pipe = store.redis.pipeline(transaction=False)
        for row in page:
            pipe.exists(store.key("job", row.job_id))
        lost = [row.job_id for row, there in zip(page, pipe.execute(), strict=True) if not there]
        restored += _give_back(store, db, messenger, lost)
        after = (page[-1].job_id, page[-1].created_at)


def _give_back(store: Store, db: Database, messenger: Messenger, job_ids: list[str]) -> int:
    if not job_ids:
        return 0
    records = [dict(r) for (r,) in db.read(select(Job.record).where(Job.job_id.in_(job_ids)))]
    for batch_id in {r["batch_id"] for r in records if r.get("batch_id")}:
        _put_back_batch(store, db, messenger, batch_id)
    for record in records:
        job_id = record["job_id"]
        if record.get("status") in TERMINAL:
            store.put_back(record)
            enqueue_webhook(
                store, messenger, "job", job_id, JOB_EVENTS[record["status"]], chain="restored"
            )
        else:
            queue_job(store, messenger, {k: v for k, v in record.items() if k not in LIVE_FIELDS})
        store.redis.hincrby(store.key("repairs"), "restored", 1)
        log.warning("outbox: gave Redis back job %s", job_id, extra={"job_id": job_id})
    return len(records)


def _put_back_batch(store: Store, db: Database, messenger: Messenger, batch_id: str) -> None:
    """A batch Redis lost, rebuilt from its row, then its members that ended counted
    again, as they were at their ends (the last one completes the batch and queues its
    event); the others count as they end."""
    key, done_key, jobs_key = batch_keys(store, batch_id)
    if store.redis.exists(key):
        return
    found = db.read(select(Batch.record).where(Batch.batch_id == batch_id))
    if not found:
        return
    batch = dict(found[0][0])
    members = db.read(
        select(Job.job_id, Job.status).where(Job.batch_id == batch_id).order_by(Job.created_at)
    )
    mapping: dict[str, Any] = {
        name: batch[name]
        for name in ("batch_id", "partner_id", "callback_url", "created_at", "total")
        if batch.get(name) is not None
    }
    mapping |= {**dict.fromkeys(COUNTERS, 0), "completed": 0}
    mapping["metadata"] = json.dumps(batch.get("metadata") or {})
    pipe = store.redis.pipeline()
    pipe.delete(jobs_key, done_key)  # whatever is left of them, rebuilt whole
    pipe.hset(key, mapping=cast(Any, mapping))
    pipe.rpush(jobs_key, *(batch.get("member_ids") or [job_id for job_id, _ in members]))
    for name in (key, jobs_key):
        pipe.expire(name, store.live_ttl)
    pipe.zadd(store.key("batches", "live"), {batch_id: time.time()})
    pipe.execute()
    for job_id, status in members:
        if status in TERMINAL:
            count_batch_member(
                messenger, store, {"job_id": job_id, "batch_id": batch_id, "status": status}
            )
