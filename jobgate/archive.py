"""The archiver: copies jobs, batches and delivery attempts from Redis into the database.

Every change the database must get puts its subject on the archive stream
(``Store.archive_key``): a job when it ends, a batch when it completes, either when an
attempt is recorded, and a job or batch made without a committed row (outside the
gateway and the relay) when it is created. Archivers (a thread in
every worker process) read the stream in a consumer group, in chunks: each chunk reads the
current Redis records of its subjects in one pipeline (a job's attempt log only when one
of its entries may have changed it: a created or ended job's entry says it cannot), writes
them in one transaction (upserts: a subject archived twice is one row, and ``rev`` keeps
an older read from overwriting a newer row), then acknowledges the entries. An entry is
only removed once its transaction committed, so a database outage delays archiving and
loses nothing; the entries of an archiver that died are claimed by another after
``CLAIM_IDLE`` s. A subject the database refuses even alone (``refuses_record``: text it
cannot store, a record that does not parse) is set aside in ``dead_letters`` instead, so
that it never holds up the entries after it.

Once a finished subject is in the database and its webhook has no attempt to come, its
Redis keys are given ``Store.cache_ttl``: Redis then forgets it, and reads fall back to the
database (``jobgate.history``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any, cast

import redis
from sqlalchemy import Connection, Table, insert, select
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError
from sqlalchemy.orm import Session

from jobgate.batches import batch_key, batch_record, member_ids
from jobgate.batches import keys as batch_keys
from jobgate.db import Database, escape_unstorable, insert_statement
from jobgate.db.models import Attempt, Batch, DeadLetter, Endpoint, Job, WebhookBody
from jobgate.events import JOB_EVENTS
from jobgate.status import TERMINAL
from jobgate.store import Store, decode_job
from jobgate.times import parse_time
from jobgate.webhooks.ledger import Deliveries
from jobgate.webhooks.messagelog import headers_key, rebuilt, with_endpoint_headers

log = logging.getLogger("jobgate.archive")

GROUP = "archivers"
CLAIM_IDLE = 60.0  # seconds an entry may stay with an archiver before another takes it
FINAL = frozenset({"none", "delivered", "failed"})  # webhook states with no attempt to come


Subject = tuple[str, str]  # (kind, id) as an archive entry names it: job, batch or msg


@dataclass
class Chunk:
    """One read of the stream: entry ids and the subjects they name, deduplicated."""

    ids: list[str]
    jobs: list[str]
    batches: list[str]
    messages: list[str] = field(default_factory=list)  # endpoint messages (their attempts)
    # Jobs named only by entries that touched no attempt (created, ended): their attempt
    # logs are not read.
    records_only: frozenset[str] = frozenset()

    def subjects(self) -> list[Subject]:
        return [
            *(("job", job_id) for job_id in self.jobs),
            *(("batch", batch_id) for batch_id in self.batches),
            *(("msg", message_id) for message_id in self.messages),
        ]


def revision(status: str | None, webhook_state: str | None, attempts: int) -> int:
    """How far along a record is: ended beats live, more attempts beat fewer, a final
    webhook state beats the same attempts still pending."""
    ended = 1 if status in TERMINAL else 0
    final = 1 if (webhook_state or "none") in FINAL else 0
    return ended * 10_000_000 + attempts * 2 + final


class Archiver:
    """Drains the archive stream into the database (one per worker process)."""

    def __init__(self, store: Store, db: Database, *, consumer: str, batch: int = 500) -> None:
        self.store = store
        self.db = db
        self.consumer = consumer
        self.batch = batch
        self._group_ready = False

    # ------------------------------------------------------------------ stream
    def ensure_group(self) -> None:
        """Create the consumer group (from the stream's start) unless it exists."""
        if self._group_ready:
            return
        try:
            self.store.redis.xgroup_create(self.store.archive_key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def read(self, block_ms: int = 0) -> Chunk:
        """Entries to archive: others' stale ones first, then this archiver's own
        unacknowledged ones (a chunk whose transaction failed), then new ones.

        A Redis that lost its data lost the group too: it is created again."""
        try:
            return self._read(block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._group_ready = False
            return self._read(block_ms)

    def _read(self, block_ms: int) -> Chunk:
        self.ensure_group()
        key, r = self.store.archive_key, self.store.redis
        claimed = r.xautoclaim(
            key, GROUP, self.consumer, int(CLAIM_IDLE * 1000), "0-0", count=self.batch
        )
        entries = list(claimed[1]) if claimed and len(claimed) > 1 else []
        # None claimed: this archiver's own pending entries ("0"), else new ones (">").
        for start, block in (("0", None), (">", block_ms or None)):
            if entries:
                break
            read = r.xreadgroup(GROUP, self.consumer, {key: start}, count=self.batch, block=block)
            entries = list(cast("list[Any]", read)[0][1]) if read else []
        return _chunk(entries)

    def run_once(self, block_ms: int = 0) -> int:
        """Archive one chunk; returns how many entries it acknowledged. Subjects the
        database refuses alone go to ``dead_letters``; an outage raises (nothing is
        acknowledged: the chunk is read again)."""
        chunk = self.read(block_ms)
        if not chunk.ids:
            return 0
        done, refused = self._write(chunk.subjects(), chunk.records_only)
        if refused:
            self.set_aside(refused)
        # Acknowledge, delete and let ``done`` expire, in one round trip.
        self.store.scripts["archive_done"](
            keys=[self.store.archive_key, *done],
            args=[GROUP, self.store.cache_ttl, *chunk.ids],
        )
        return len(chunk.ids)

    def _write(
        self, subjects: list[Subject], records_only: Collection[str]
    ) -> tuple[list[str], list[tuple[Subject, BaseException]]]:
        """Archive ``subjects`` in one transaction: (keys that may expire, subjects refused
        alone with why). A transaction refused for what a record holds is split in halves
        until each failing subject is tried alone; any other failure (Redis or the database
        unreachable) is raised, whatever the split, so an outage is retried, never set aside."""
        jobs = [subject_id for kind, subject_id in subjects if kind == "job"]
        batches = [subject_id for kind, subject_id in subjects if kind == "batch"]
        messages = [subject_id for kind, subject_id in subjects if kind == "msg"]
        try:
            return self.archive(jobs, batches, messages, records_only), []
        except Exception as exc:
            if not refuses_record(exc):
                raise
            if len(subjects) == 1:
                return [], [(subjects[0], exc)]
        half = len(subjects) // 2
        first, first_refused = self._write(subjects[:half], records_only)
        second, second_refused = self._write(subjects[half:], records_only)
        return first + second, first_refused + second_refused

    def set_aside(self, refused: list[tuple[Subject, BaseException]]) -> None:
        """One ``dead_letters`` row per subject refused alone (what Redis holds of it, why it
        failed), counted in ``<prefix>:stats`` as ``dead_letters`` (/metrics). Raises if the
        database takes not even these rows: the entries are then read again."""
        store = self.store
        pipe = store.redis.pipeline(transaction=False)
        for (kind, subject_id), _ in refused:
            if kind == "msg":
                pipe.lrange(store.key("deliveries", subject_id), 0, -1)
            elif kind == "batch":
                pipe.hgetall(batch_key(store, subject_id))
            else:
                pipe.hgetall(store.key("job", subject_id))
        held = pipe.execute()
        now = datetime.now(UTC)
        rows = [
            {
                "keyspace": store.prefix,
                "kind": kind,
                "subject_id": escape_unstorable(subject_id)[:200],
                "at": now,
                "error": _describe(exc),
                "record": json.dumps(record) if record else None,  # ASCII: \u escapes
            }
            for ((kind, subject_id), exc), record in zip(refused, held, strict=True)
        ]
        with self.db.session() as session:
            session.execute(insert(DeadLetter), rows)
        store.redis.hincrby(store.key("stats"), "dead_letters", len(rows))
        for row in rows:
            log.error(
                "archive: set %s %s aside in dead_letters: %s",
                row["kind"],
                row["subject_id"],
                row["error"],
            )

    # ---------------------------------------------------------------- archive
    def archive(
        self,
        job_ids: Sequence[str],
        batch_ids: Sequence[str],
        message_ids: Sequence[str] = (),
        records_only: Collection[str] = (),
    ) -> list[str]:
        """Write the subjects' current Redis records to the database in one transaction
        (with their attempts, except for jobs in ``records_only``); returns the Redis keys
        that may now expire (finished subjects, webhook final)."""
        # One row per subject per statement: PostgreSQL refuses an upsert that names a
        # row twice.
        job_ids, batch_ids = list(dict.fromkeys(job_ids)), list(dict.fromkeys(batch_ids))
        message_ids = list(dict.fromkeys(message_ids))
        store = self.store
        pipe = store.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(store.key("job", job_id))
            if job_id not in records_only:
                pipe.lrange(store.key("deliveries", job_id), 0, -1)
        for batch_id in batch_ids:
            pipe.lrange(store.key("deliveries", batch_id), 0, -1)
            pipe.hgetall(store.key("webhook", batch_id))
        for message_id in message_ids:
            pipe.lrange(store.key("deliveries", message_id), 0, -1)
        raw = pipe.execute()
        jobs, attempts, expiring = [], [], []
        replies = iter(raw)
        for job_id in job_ids:
            record = next(replies)
            log_entries = [] if job_id in records_only else next(replies)
            job = decode_job(record)
            if job is None:
                continue  # expired or never written (a refused submit): nothing to keep
            jobs.append(job)
            attempts += _attempts(job_id, "job", log_entries)
            status = job.get("status")
            if status in TERMINAL and _webhook_state(job) in FINAL:
                # A job has one webhook event, its end's: no need to read it back.
                expiring += self._subject_keys(job_id, JOB_EVENTS[status])
        batches = []
        for batch_id in batch_ids:
            log_entries, summary = next(replies), next(replies)
            found = batch_record(store, batch_id)
            if found is None:
                continue
            found["member_ids"] = member_ids(store, batch_id)
            found["webhook_state"] = summary.get("state") if found.get("callback_url") else "none"
            found["webhook_attempts"] = int(summary.get("attempts") or 0)
            batches.append(found)
            attempts += _attempts(batch_id, "batch", log_entries)
            if found.get("finished_at") and (found["webhook_state"] or "pending") in FINAL:
                expiring += [
                    *batch_keys(store, batch_id),
                    *self._subject_keys(batch_id, summary.get("event")),
                ]
        # An endpoint message's attempts go to the database too; its own keys stay in Redis
        # for the hold period, which is the window of `recover` (jobgate.webhooks.fanout),
        # except the receiver's answers (up to 64 KiB each), which `recover` does not need:
        # once in the database, they keep only the cache's time in Redis.
        for message_id in message_ids:
            attempts += _attempts(message_id, "msg", next(replies))
            expiring.append(Deliveries(store).responses_key(message_id))
        attempts, bodies = self._message_log(attempts)
        with self.db.session() as session:
            upsert_jobs(session, [job_row(job, store.prefix) for job in jobs])
            upsert_batches(session, batches)
            if attempts:
                session.execute(_upsert(Attempt, "subject_id, attempt"), attempts)
            if bodies:
                session.execute(_upsert(WebhookBody, "webhook_id"), bodies)
        return expiring

    def _message_log(
        self, attempts: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The attempts not archived yet, each with its answer (the message log), and the
        bodies they sent that the database lacks (``webhook_bodies`` rows): what Redis
        holds of them, read in one round trip. A subject's log is read whole at each of
        its attempts; its answers (up to 64 KiB each) and body only once."""
        if not attempts:
            return attempts, []
        subjects = sorted({row["subject_id"] for row in attempts})
        ids = sorted({row["webhook_id"] for row in attempts})
        archived = select(Attempt.subject_id, Attempt.attempt).where(
            Attempt.subject_id.in_(subjects)
        )
        known = {(subject, int(number)) for subject, number in self.db.read(archived)}
        stored = select(WebhookBody.webhook_id).where(WebhookBody.webhook_id.in_(ids))
        kept = {webhook_id for (webhook_id,) in self.db.read(stored)}
        fresh = [row for row in attempts if (row["subject_id"], row["attempt"]) not in known]
        logged = [row for row in fresh if isinstance(row["entry"].get("request"), dict)]
        wanted = {
            row["webhook_id"]: (row["subject_id"], row["event"])
            for row in logged
            if row["webhook_id"] not in kept
        }
        if not logged:
            return fresh, []
        books = Deliveries(self.store)
        apart = [(row, key) for row in logged if (key := headers_key(self.store, row["entry"]))]
        pipe = self.store.redis.pipeline(transaction=False)
        for row in logged:
            pipe.hget(books.responses_key(row["subject_id"]), str(row["attempt"]))
        for _, key in apart:
            pipe.get(key)
        for subject_id, event in wanted.values():
            pipe.get(books.body_key(subject_id, event))
        replies = pipe.execute()
        answers = replies[: len(logged)]
        headers_apart = replies[len(logged) : len(logged) + len(apart)]
        sent_bodies = replies[len(logged) + len(apart) :]
        for row, answer in zip(logged, answers, strict=True):
            row["response"] = json.loads(answer) if answer else None
        lost = {
            row["entry"].get("endpoint_id")
            for (row, _), found in zip(apart, headers_apart, strict=True)
            if not found
        }
        current = self._endpoint_headers(lost) if lost else {}
        for (row, _), found in zip(apart, headers_apart, strict=True):
            # The database keeps each attempt's headers whole (the endpoint's are kept once
            # in Redis, jobgate.webhooks.messagelog.sent_apart; if Redis lost them, the
            # endpoint's row has them while they are unchanged).
            entry = row["entry"]
            theirs = found or rebuilt(entry, current.get(entry.get("endpoint_id")))
            row["entry"] = with_endpoint_headers(entry, theirs)
        bodies = [
            {
                "webhook_id": webhook_id,
                "subject_id": subject_id,
                "event": event,
                "body": escape_unstorable(body),  # what PostgreSQL refuses, written escaped
            }
            for (webhook_id, (subject_id, event)), body in zip(
                wanted.items(), sent_bodies, strict=True
            )
            if body is not None
        ]
        return fresh, bodies

    def _endpoint_headers(self, endpoint_ids: Collection[Any]) -> dict[str, dict[str, str]]:
        """The partner's own headers of these endpoints, from their rows."""
        query = select(Endpoint.id, Endpoint.headers).where(Endpoint.id.in_(list(endpoint_ids)))
        return {endpoint_id: dict(headers or {}) for endpoint_id, headers in self.db.read(query)}

    def _subject_keys(self, subject_id: str, event: str | None) -> list[str]:
        store = self.store
        keys = [
            store.key("job", subject_id),
            store.key("webhook", subject_id),
            store.key("deliveries", subject_id),
            Deliveries(store).responses_key(subject_id),
        ]
        if event:
            keys.append(store.key("webhook", subject_id, event, "body"))
        return keys


def lag(store: Store) -> tuple[int, float]:
    """(entries waiting on the archive stream, age in seconds of the oldest): what
    /readyz shows, in one round trip."""
    pipe = store.redis.pipeline(transaction=False)
    pipe.xlen(store.archive_key)
    pipe.xrange(store.archive_key, "-", "+", count=1)
    length, first = pipe.execute()
    return int(length), oldest_age(first)


def oldest_age(first: list[Any]) -> float:
    """Seconds since the stream entry in ``first`` (an XRANGE of count 1) was added: its
    id is the Unix time in ms; 0 for an empty stream."""
    if not first:
        return 0.0
    return max(0.0, time.time() - int(str(first[0][0]).split("-")[0]) / 1000)


def refuses_record(exc: BaseException) -> bool:
    """Whether ``exc`` is about what a record holds, so that it fails the same way every
    time (the database refused a value, the record does not parse), rather than about
    reaching Redis or the database, which is retried until they answer."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError) and exc.orig:
        exc = exc.orig  # raised while binding a value: about the value
    if isinstance(exc, SQLAlchemyError | redis.RedisError | OSError):
        return False
    return isinstance(exc, ValueError | TypeError | LookupError)


def _describe(exc: BaseException) -> str:
    """Why a subject was refused, in at most 1000 storable characters."""
    cause = exc.orig if isinstance(exc, StatementError) and exc.orig else exc
    return escape_unstorable(f"{type(cause).__name__}: {cause}")[:1000]


# --------------------------------------------------------------------- helpers
def _chunk(entries: Iterable[Any]) -> Chunk:
    ids: list[str] = []
    named: dict[str, dict[str, None]] = {"job": {}, "batch": {}, "msg": {}}  # ordered sets
    with_attempts: set[str] = set()
    for entry_id, raw_fields in entries:
        ids.append(entry_id)
        fields = raw_fields or {}  # an entry deleted while pending has none
        kind, _, subject_id = fields.get("s", "").partition(":")
        if kind in named and subject_id:
            named[kind][subject_id] = None
            if kind == "job" and fields.get("a") != "0":  # an attempt, or it does not say
                with_attempts.add(subject_id)
    jobs, batches, messages = (list(named[kind]) for kind in ("job", "batch", "msg"))
    return Chunk(ids, jobs, batches, messages, frozenset(jobs) - with_attempts)


def _webhook_state(job: dict[str, Any]) -> str:
    """The job's own delivery state; a fan-out step to its partner's endpoints that has
    not run yet counts as pending (the step reads the record in Redis)."""
    if not job.get("callback_url"):
        return "pending" if job.get("fanout") == "queued" else "none"
    return str(job.get("webhook_state") or "pending")


def _attempts(subject_id: str, kind: str, raw: list[str]) -> list[dict[str, Any]]:
    """The attempts table's rows of a subject's attempts log (``response`` filled in by
    ``Archiver._message_log``)."""
    return [
        {
            "subject_id": subject_id,
            "attempt": int(entry["attempt"]),
            "kind": kind,
            "webhook_id": entry.get("webhook_id", ""),
            "event": entry.get("event", ""),
            "outcome": entry.get("outcome", ""),
            "at": parse_time(entry["at"]),
            "entry": entry,
            "error": entry.get("error"),
            "response": None,
        }
        for entry in map(json.loads, raw)
    ]


def job_row(job: dict[str, Any], keyspace: str) -> dict[str, Any]:
    """A job record (as ``Store.job`` reads it) as its row in ``jobs``."""
    return {
        "job_id": job["job_id"],
        "partner_id": job.get("partner_id") or "",
        "task": job.get("task") or "",
        "status": job.get("status") if job.get("status") in TERMINAL else None,
        "batch_id": job.get("batch_id"),
        "created_at": parse_time(job["created_at"]),
        "finished_at": parse_time(job["finished_at"]) if job.get("finished_at") else None,
        "record": job,
        "rev": revision(
            job.get("status"), _webhook_state(job), int(job.get("webhook_attempts") or 0)
        ),
        "settled": job.get("status") in TERMINAL and _webhook_state(job) in FINAL,
        "keyspace": keyspace,
        "idempotency_key": None,
        "request_digest": None,
    }


def upsert_jobs(session: Session | Connection, rows: list[dict[str, Any]]) -> None:
    """Insert job rows (``job_row``), or update each row older than the one given."""
    if rows:
        session.execute(upsert_jobs_statement(), rows)


@cache
def upsert_jobs_statement() -> Any:
    """``upsert_jobs``'s statement, for rows as parameters (``job_row``'s). A row is
    updated only by a record further along (``revision``): the archiver's read of a job
    the gateway or its end has just committed (same revision) writes nothing."""
    return _upsert(Job, "job_id", ("status", "finished_at", "record", "rev", "settled"), "<")


@cache
def _upsert(model: Any, key: str, updated: tuple[str, ...] = (), older: str = "") -> Any:
    """``INSERT`` of ``model``'s rows (``insert_statement``, the same SQL on SQLite and
    PostgreSQL). A row whose ``key`` exists is left as it is, or, with ``updated``, gets
    these columns from the row given when its ``rev`` compares to the given one's with
    ``older`` (``<``: only a record further along; ``<=``: the same revision too)."""
    table = cast(Table, model.__table__)
    if not updated:
        return insert_statement(table, f"ON CONFLICT ({key}) DO NOTHING")
    changes = ", ".join(f"{name} = excluded.{name}" for name in updated)
    return insert_statement(
        table,
        f"ON CONFLICT ({key}) DO UPDATE SET {changes} WHERE {table.name}.rev {older} excluded.rev",
    )


def upsert_batches(session: Session | Connection, batches: list[dict[str, Any]]) -> None:
    """Insert batch records (as the archiver reads them), or update each row older."""
    if not batches:
        return
    rows = [
        {
            "batch_id": batch["batch_id"],
            "partner_id": batch.get("partner_id") or "",
            "created_at": parse_time(batch["created_at"]),
            "completed_at": parse_time(batch["finished_at"]) if batch.get("finished_at") else None,
            "record": batch,
            "rev": revision(
                "SUCCESS" if batch.get("finished_at") else None,
                batch.get("webhook_state"),
                int(batch.get("webhook_attempts") or 0),
            ),
        }
        for batch in batches
    ]
    session.execute(_upsert(Batch, "batch_id", ("completed_at", "record", "rev"), "<="), rows)
