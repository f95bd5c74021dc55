"""The gateway's own records in Redis: partners, jobs, idempotency keys.

Celery's result backend forgets a task after ``result_expires`` and answers PENDING for
any id it does not know; the job record kept here decides whether a job exists and keeps
its terminal status, result and error for the retention period.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import redis

from config import Settings
from jobgate.connections import redis_client
from jobgate.scripts import Scripts

TERMINAL = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
KEY_CACHE_TTL = 30.0  # seconds a partner found by its API key is remembered in-process
KEY_CACHE_SIZE = 10_000
POOL_WAIT = 5.0  # seconds a caller waits for a free Redis connection when all are in use
JSON_FIELDS = ("metadata", "result", "progress", "params")
CLAIM_MARGIN = 30.0  # seconds an attempt's claim outlives its HTTP timeout


def utcnow() -> str:
    """Current UTC time as ISO 8601 with milliseconds and a Z."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def new_id() -> str:
    return str(uuid.uuid4())


def hash_key(api_key: str) -> str:
    """Partner keys are random 256-bit tokens, so one SHA-256 is the right hash."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def digest(payload: Any) -> str:
    """Stable digest of a JSON-able value (key order does not matter)."""
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


class Store:
    """Typed access to jobgate's Redis keys; every key starts with ``prefix``.

    The client always decodes responses (``decode_responses=True``), so replies are
    ``str``; redis-py's annotations say ``bytes | str``, hence the ``cast``s on reads.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "jobgate",
        retention: int = 604800,
        live_ttl: int | None = None,
        open_grace: float = 10.0 + CLAIM_MARGIN,
    ) -> None:
        self.redis = client
        self.prefix = prefix
        self.retention = retention
        # How long past its due time a queued delivery may go unrecorded before the
        # sweeper looks for its message: one attempt's claim (its HTTP timeout plus
        # CLAIM_MARGIN), so a running attempt is never mistaken for a lost one.
        self.open_grace = open_grace
        # A live job keeps its record at least as long as a finished one, plus the
        # longest time a job may stay queued or running.
        self.live_ttl = live_ttl or retention + 2 * 86400
        self.scripts = Scripts(client)
        self._key_cache: dict[str, tuple[float, dict[str, str]]] = {}

    @classmethod
    def from_url(
        cls, url: str, *, max_connections: int = 1000, sentinel_master: str = "", **kwargs: Any
    ) -> Store:
        """A store on ``url`` (``sentinel://`` with ``sentinel_master`` follows failovers) with
        a bounded pool: past ``max_connections`` a caller waits (up to POOL_WAIT s, then
        ``ConnectionError``, a 503) instead of failing at once."""
        client = redis_client(
            url,
            sentinel_master=sentinel_master,
            max_connections=max_connections,
            pool_wait=POOL_WAIT,
        )
        return cls(client, **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """The store ``settings`` describe (gateway and worker build theirs here)."""
        return cls.from_url(
            settings.redis_url,
            sentinel_master=settings.sentinel_master_for(settings.redis_url),
            prefix=settings.key_prefix,
            retention=settings.job_retention,
            max_connections=settings.redis_max_connections,
            open_grace=settings.webhook_timeout + CLAIM_MARGIN,
        )

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # ------------------------------------------------------------------ partners
    def create_partner(self, name: str, webhook_secret: str) -> tuple[dict[str, str], str]:
        """Create a partner; returns (record, api_key). Only the key's hash is stored."""
        partner_id = "ptn_" + uuid.uuid4().hex[:20]
        api_key = "jgp_" + secrets.token_urlsafe(32)
        record = {
            "id": partner_id,
            "name": name,
            "created_at": utcnow(),
            "key_hash": hash_key(api_key),
            "webhook_secret": webhook_secret,
        }
        pipe = self.redis.pipeline()
        # redis-py types ``mapping`` as Mapping[FieldT, ...], invariant in its key type,
        # so a dict[str, str] is refused although str is a FieldT.
        pipe.hset(self.key("partner", partner_id), mapping=record)  # type: ignore[arg-type]
        pipe.set(self.key("partnerkey", record["key_hash"]), partner_id)
        pipe.zadd(self.key("partners"), {partner_id: time.time()})
        pipe.execute()
        return record, api_key

    def partner(self, partner_id: str) -> dict[str, str] | None:
        record = cast("dict[str, str]", self.redis.hgetall(self.key("partner", partner_id)))
        return record or None

    def partner_by_key(self, api_key: str) -> dict[str, str] | None:
        """The partner owning ``api_key``; found keys are cached in-process briefly.

        Auth runs on every request, so a hit saves two Redis round trips. Only keys that
        exist are cached (a wrong key is looked up each time), for ``KEY_CACHE_TTL`` s.
        """
        hashed = hash_key(api_key)
        hit = self._key_cache.get(hashed)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        partner_id = cast("str | None", self.redis.get(self.key("partnerkey", hashed)))
        partner = self.partner(partner_id) if partner_id else None
        if partner is not None:
            if len(self._key_cache) >= KEY_CACHE_SIZE:
                self._key_cache.clear()
            self._key_cache[hashed] = (time.monotonic() + KEY_CACHE_TTL, partner)
        return partner

    def partners(self) -> list[dict[str, str]]:
        ids = cast("list[str]", self.redis.zrange(self.key("partners"), 0, -1))
        pipe = self.redis.pipeline()
        for partner_id in ids:
            pipe.hgetall(self.key("partner", partner_id))
        return [record for record in pipe.execute() if record]

    def rotate_secret(self, partner_id: str, new_secret: str, grace: int) -> bool:
        """Replace the webhook secret; the old one keeps signing for ``grace`` seconds."""
        key = self.key("partner", partner_id)
        old = self.redis.hget(key, "webhook_secret")
        if old is None:
            return False
        self.redis.hset(
            key,
            mapping={
                "webhook_secret": new_secret,
                "previous_secret": old,
                "previous_secret_until": str(time.time() + grace),
            },
        )
        return True

    # ---------------------------------------------------------------------- jobs
    def create_job(self, job: dict[str, Any], message: tuple[str, str] | None = None) -> None:
        """Store a new job record and index it for listing, newest first.

        ``message`` (queue, payload) is pushed onto the broker queue in the same
        MULTI/EXEC: the job and its Celery message exist together or not at all.
        """
        pipe = self.redis.pipeline()
        self._add_job(pipe, job, time.time(), message)
        pipe.execute()

    def create_batch(
        self,
        batch: dict[str, Any],
        jobs: list[dict[str, Any]],
        messages: list[tuple[str, str]] | None = None,
    ) -> None:
        """Store a batch, its member jobs and (when given) their messages in one MULTI/EXEC:
        a batch exists with all its members queued, or not at all."""
        batch_id = batch["batch_id"]
        hash_key, jobs_key = self.key("batch", batch_id), self.key("batch", batch_id, "jobs")
        score = time.time()
        pipe = self.redis.pipeline()
        pipe.hset(hash_key, mapping=batch)  # type: ignore[arg-type]  # see create_partner
        pipe.rpush(jobs_key, *(job["job_id"] for job in jobs))
        pipe.expire(hash_key, self.live_ttl)
        pipe.expire(jobs_key, self.live_ttl)
        pipe.zadd(self.key("batches", "live"), {batch_id: score})
        queued: Sequence[tuple[str, str] | None] = messages or [None] * len(jobs)
        for job, message in zip(jobs, queued, strict=True):
            self._add_job(pipe, job, score, message)
        pipe.execute()

    def _add_job(
        self, pipe: Any, job: dict[str, Any], score: float, message: tuple[str, str] | None
    ) -> None:
        job_id = job["job_id"]
        pipe.hset(self.key("job", job_id), mapping=_encode(job))
        pipe.expire(self.key("job", job_id), self.live_ttl)
        pipe.hincrby(self.key("stats"), "submitted", 1)
        pipe.zadd(self.key("live"), {job_id: score})
        for index in self._indexes(job):
            pipe.zadd(self.key("jobs", index), {job_id: score})
            pipe.zremrangebyscore(self.key("jobs", index), "-inf", score - self.live_ttl)
        if message is not None:
            pipe.lpush(*message)

    @staticmethod
    def _indexes(job: dict[str, Any]) -> list[str]:
        """Listing indexes a job belongs to: everyone's and its partner's.

        A batch keeps its own ordered member list (gateway.batches), with its TTL.
        """
        return ["all", job["partner_id"]]

    def delete_job(self, job: dict[str, Any]) -> None:
        """Undo create_job (used when the broker refused the message)."""
        pipe = self.redis.pipeline()
        pipe.delete(self.key("job", job["job_id"]))
        pipe.zrem(self.key("live"), job["job_id"])
        for index in self._indexes(job):
            pipe.zrem(self.key("jobs", index), job["job_id"])
        pipe.execute()

    def job(self, job_id: str) -> dict[str, Any] | None:
        return decode_job(cast("dict[str, str]", self.redis.hgetall(self.key("job", job_id))))

    def job_and(self, job_id: str, key: str) -> tuple[dict[str, Any] | None, str | None]:
        """A job record and the string at ``key`` (Celery's meta), in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.key("job", job_id))
        pipe.get(key)
        record, value = pipe.execute()
        return decode_job(record), value

    def jobs(self, job_ids: Iterable[str]) -> list[dict[str, Any] | None]:
        pipe = self.redis.pipeline()
        for job_id in job_ids:
            pipe.hgetall(self.key("job", job_id))
        return [decode_job(raw) for raw in pipe.execute()]

    def start_job(self, job_id: str, worker: str = "") -> tuple[str | None, int]:
        """Record a worker's start (Celery keeps no start time), which worker runs the job
        and its run count, and publish STARTED.

        Returns (refusal, runs): refusal is None when the job may run, else why not (its
        terminal status, or "missing" when it has no record); runs counts this run (more
        than 1: an earlier run was lost with its worker).
        """
        event = json.dumps({"job_id": job_id, "status": "STARTED"})
        answer = self.scripts["job_start"](
            keys=[self.key("job", job_id), self.channel(job_id)], args=[utcnow(), event, worker]
        )
        if answer[0] == -1:
            return "missing", 0
        return (answer[1], 0) if answer[0] == 0 else (None, int(answer[1]))

    def report_progress(
        self,
        job_id: str,
        progress: dict[str, Any],
        celery_meta: tuple[str, str, int | None] | None = None,
    ) -> int:
        """Keep a job's last progress and publish it, and write ``celery_meta`` (key, value,
        expires) with it: 1 done, 0 the job already ended, 2 it has no record (nothing
        written)."""
        event = json.dumps({"job_id": job_id, "status": "PROCESSING", "progress": progress})
        key, value, expires = celery_meta or (self.key("no-meta"), "", None)
        return int(
            self.scripts["job_progress"](
                keys=[self.key("job", job_id), self.channel(job_id), key],
                args=[json.dumps(progress), event, value, "" if not expires else int(expires)],
            )
        )

    def finish_job(
        self,
        job_id: str,
        status: str,
        *,
        webhook_message: tuple[str, str, str] | None = None,
        **fields: Any,
    ) -> dict[str, Any] | None:
        """Record a terminal status once and publish it.

        ``webhook_message`` (queue, message, delivery task id) is pushed in the same script
        when the job has a callback URL, and the delivery marked open. Returns what the
        other side effects of the end need ({job_id, status, callback_url, batch_id,
        webhook_queued}) to the one caller that recorded it; None if a terminal status was
        already recorded, or the job has no record.
        """
        if status not in TERMINAL:
            raise ValueError(f"{status} is not a terminal status")
        values = {"status": status, "finished_at": utcnow(), **fields}
        flat: list[str] = []
        for name, value in _encode(values).items():
            flat += [name, value]
        event = json.dumps({"job_id": job_id, "status": status})
        queue, message, task_id = webhook_message or (self.key("no-webhook"), "", "")
        keys = [
            self.key("job", job_id),
            self.key("stats"),
            self.channel(job_id),
            queue,
            self.key("live"),
            self.open_key,
        ]
        answer = self.scripts["job_finish"](
            keys=keys,
            args=[
                self.retention,
                status,
                event,
                message,
                task_id,
                time.time() + self.open_grace,
                job_id,
                *flat,
            ],
        )
        if answer[0] != 1:
            return None
        return {
            "job_id": job_id,
            "status": status,
            "callback_url": answer[1] or None,
            "batch_id": answer[2] or None,
            "webhook_queued": answer[3] == 1,
        }

    def page(self, index: str, *, limit: int, cursor: str | None) -> list[tuple[str, str]]:
        """Up to ``limit`` (job id, cursor) pairs of a listing index, newest first.

        A cursor is "<score>:<job id>", the position of the last item seen, so new jobs
        arriving between pages never shift or repeat the items of later pages.
        """
        key = self.key("jobs", index)
        rows: list[tuple[str, float]]
        if cursor:
            score, _, after = cursor.partition(":")
            raw = cast(
                "list[tuple[str, float]]",
                self.redis.zrevrangebyscore(
                    key, score, "-inf", start=0, num=limit + 64, withscores=True
                ),
            )
            rows = [(m, s) for m, s in raw if not (repr(s) == score and m >= after)]
        else:
            rows = cast(
                "list[tuple[str, float]]", self.redis.zrevrange(key, 0, limit - 1, withscores=True)
            )
        return [(member, f"{score!r}:{member}") for member, score in rows[:limit]]

    def iter_index(
        self, index: str, *, cursor: str | None, batch: int = 100
    ) -> Iterator[tuple[dict[str, Any] | None, str]]:
        """Every entry of an index, newest first: its record (None once expired) and the
        cursor just past it; ends at the end of the index.

        Expired entries are yielded too, so a caller with a scan budget counts them, and
        are dropped from the index on the way.
        """
        while True:
            rows = self.page(index, limit=batch, cursor=cursor)
            records = self.jobs(job_id for job_id, _ in rows)
            stale = [
                job_id for (job_id, _), record in zip(rows, records, strict=True) if record is None
            ]
            if stale:
                self.redis.zrem(self.key("jobs", index), *stale)
            for (_, position), record in zip(rows, records, strict=True):
                yield record, position
            if len(rows) < batch:
                return
            cursor = rows[-1][1]

    # ------------------------------------------------------------- idempotency
    def claim_idempotency(
        self, partner_id: str, key: str, body_digest: str, job_id: str, ttl: int = 86400
    ) -> dict[str, str] | None:
        """Claim an Idempotency-Key; returns the earlier claim if the key was taken."""
        name = self.key("idem", partner_id, hashlib.sha256(key.encode()).hexdigest())
        claim = json.dumps({"digest": body_digest, "job_id": job_id})
        if self.redis.set(name, claim, nx=True, ex=ttl):
            return None
        earlier = self.redis.get(name)
        return json.loads(earlier) if earlier else None

    def release_idempotency(self, partner_id: str, key: str) -> None:
        self.redis.delete(self.key("idem", partner_id, hashlib.sha256(key.encode()).hexdigest()))

    # --------------------------------------------------------------- rate limit
    def hit_rate_limit(self, partner_id: str, limit: int, window: int = 60) -> int | None:
        """Count one submission; returns seconds to wait if over ``limit`` per window."""
        if limit <= 0:
            return None
        now = int(time.time())
        slot = now // window
        name = self.key("rate", partner_id, str(slot))
        pipe = self.redis.pipeline()
        pipe.incr(name)
        pipe.expire(name, window + 1)
        count = pipe.execute()[0]
        return (slot + 1) * window - now if count > limit else None

    # ------------------------------------------------------------------ events
    def channel(self, job_id: str) -> str:
        return self.key("events", job_id)

    # ------------------------------------------------------------- bookkeeping
    @property
    def open_key(self) -> str:
        """Deliveries queued or scheduled and not yet recorded: task id -> deadline."""
        return self.key("deliveries", "open")

    @property
    def due_key(self) -> str:
        """Deliveries scheduled for later (the retry set): entry -> due time."""
        return self.key("due")

    def mark_open(self, task_id: str, deadline: float | None = None) -> None:
        """Mark a delivery open until an attempt records it (sent outside a script)."""
        self.redis.zadd(self.open_key, {task_id: deadline or time.time() + self.open_grace})


def secrets_of(partner: dict[str, str], now: float | None = None) -> list[str]:
    """A partner hash's signing secrets: current, plus the previous one during its grace."""
    found = [partner["webhook_secret"]] if partner.get("webhook_secret") else []
    until = float(partner.get("previous_secret_until") or 0)
    if partner.get("previous_secret") and until > (time.time() if now is None else now):
        found.append(partner["previous_secret"])
    return found


def _encode(values: dict[str, Any]) -> dict[str, str]:
    out = {}
    for name, value in values.items():
        if value is None:
            continue
        if name in JSON_FIELDS:
            out[name] = json.dumps(value, default=str)
        else:
            out[name] = str(value)
    return out


def decode_job(raw: dict[str, str]) -> dict[str, Any] | None:
    """A raw job hash as Store.job returns it (JSON fields parsed), None if empty."""
    if not raw:
        return None
    record: dict[str, Any] = dict(raw)
    for name in JSON_FIELDS:
        if name in record:
            record[name] = json.loads(record[name])
    return record
