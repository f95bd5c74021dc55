"""The gateway's live records in Redis: jobs, batches, idempotency keys, rate limits.

Celery's result backend forgets a task after ``result_expires`` and answers PENDING for
any id it does not know; the job record kept here decides whether a job exists while it
is live. Every job and batch is also put on the archive stream (``archive_key``) when it
ends or records a delivery attempt (and when it is created, unless its row was committed
first: ``jobgate.outbox``); ``jobgate.archive`` copies it into the database and then lets
Redis forget it after ``cache_ttl``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, cast

import redis

from config import DEFAULT_WEBHOOK_TIMEOUT, Settings
from jobgate.connections import redis_client
from jobgate.scripts import Scripts
from jobgate.sealing import Sealer
from jobgate.status import DEFAULT_PRIORITY, TERMINAL
from jobgate.times import epoch, utcnow

KEY_CACHE_TTL = 30.0  # seconds a partner found by its API key is remembered in-process
KEY_CACHE_SIZE = 10_000
# How long Redis holds a record the archiver has not copied into the database yet: a
# database outage shorter than this loses nothing (docs/reliability.md).
HOLD = 7 * 86400
DONE_TTL_MIN = 600  # a done attempt's claim outlives any duplicate of its message
POOL_WAIT = 5.0  # seconds a caller waits for a free Redis connection when all are in use
JSON_FIELDS = ("metadata", "result", "progress", "params")
HANDED_GRACE = 3600.0  # seconds a delivery handed to a broker apart is left to it
DEFAULT_HANDOFF_GRACE = 45.0  # the default visibility timeout plus the sweep interval
CLAIM_MARGIN = 30.0  # seconds an attempt's claim outlives its HTTP timeout
WORKERS_FORGOTTEN_AFTER = 86400  # a node silent this long leaves the set of workers
# What an end's script did about the partner's endpoints (its last answer, 0/1/2).
FAN_OUT_STATES = ("", "queued", "none")


def new_id() -> str:
    return str(uuid.uuid4())


def hash_key(api_key: str) -> str:
    """Partner keys are random 256-bit tokens, so one SHA-256 is the right hash."""
    return hashlib.sha256(api_key.encode()).hexdigest()


IDEMPOTENCY_TTL = 86400  # seconds an Idempotency-Key names its job


# An Idempotency-Key as it is kept (Redis and the database): its SHA-256, as an API key's.
key_hash = hash_key


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
        retention: int = HOLD,
        live_ttl: int | None = None,
        open_grace: float = DEFAULT_WEBHOOK_TIMEOUT + CLAIM_MARGIN,
        cache_ttl: int = 3600,
        dispatch_window: int = 0,
        max_running_jobs: int = 0,
        max_inflight_deliveries: int = 0,
        handoff_grace: float = DEFAULT_HANDOFF_GRACE,
        handed_grace: float = HANDED_GRACE,
        sealer: Sealer | None = None,
    ) -> None:
        self.redis = client
        # Seals the signing secrets the database and Redis hold (jobgate.sealing).
        self.sealer = sealer or Sealer("")
        # Fair dispatch (jobgate/scripts/dispatch.lua): jobs dispatched and not ended at
        # most (0: the live workers' job-pool slots), and the default per partner.
        self.dispatch_window = dispatch_window
        self.max_running_jobs = max_running_jobs
        # Webhook deliveries of one partner sent at once, for a partner without its own
        # max_inflight_deliveries (0: none; jobgate/scripts/inflight.lua).
        self.max_inflight_deliveries = max_inflight_deliveries
        self.prefix = prefix
        # Redis keeps finished records this long unless the archiver, once it has copied
        # them, shortens that to ``cache_ttl``.
        self.retention = retention
        self.cache_ttl = cache_ttl
        self.done_ttl = max(cache_ttl, DONE_TTL_MIN)
        # How long past its due time a queued delivery may go unrecorded before the
        # sweeper looks for its message: one attempt's claim (its HTTP timeout plus
        # CLAIM_MARGIN), so a running attempt is never mistaken for a lost one.
        self.open_grace = open_grace
        # A broker apart from this Redis (jobgate.handoff): how long a sender has to hand
        # a message over and mark it so, and how long a handed delivery is left to it
        # before the sweeper sends it again (harmless: the attempt's claim).
        self.handoff_grace = handoff_grace
        self.handed_grace = handed_grace
        # A live job keeps its record at least as long as a finished one, plus the
        # longest time a job may stay queued or running.
        self.live_ttl = live_ttl or retention + 2 * 86400
        self.scripts = Scripts(client)

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
            cache_ttl=settings.job_cache_ttl,
            max_connections=settings.redis_max_connections,
            open_grace=settings.webhook_timeout + CLAIM_MARGIN,
            dispatch_window=settings.dispatch_window,
            max_running_jobs=settings.max_running_jobs,
            max_inflight_deliveries=settings.max_inflight_deliveries,
            handoff_grace=settings.visibility_timeout + settings.sweep_interval,
            sealer=Sealer(settings.secret_key),
        )

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # ---------------------------------------------------------------------- jobs
    def create_job(
        self,
        job: dict[str, Any],
        message: tuple[str, str] | None = None,
        *,
        queued_limit: int = 0,
        committed: bool = False,
    ) -> list[str]:
        """Store a new job, put it in its partner's queue and dispatch what the window has
        room for (``jobgate/scripts/submit.lua``); returns the ids dispatched without a
        message, for the caller to send.

        ``message`` (queue, payload) is the job's Celery message, pushed when the job is
        dispatched. Raises ``QueueFull`` (nothing written) when the partner already has
        ``queued_limit`` jobs waiting (0: no limit). Unless its row is ``committed``
        (``jobgate.outbox``), the job goes on the archive stream, for the archiver to write
        it.
        """
        return self._submit(None, [job], [message], queued_limit, committed)

    def create_batch(
        self,
        batch: dict[str, Any],
        jobs: list[dict[str, Any]],
        messages: Sequence[tuple[str, str] | None] | None = None,
        *,
        queued_limit: int = 0,
        committed: bool = False,
    ) -> list[str]:
        """``create_job`` for a batch and all its members, in one atomic step: a batch
        exists with all its members queued, or not at all."""
        return self._submit(batch, jobs, messages or [None] * len(jobs), queued_limit, committed)

    def _submit(
        self,
        batch: dict[str, Any] | None,
        jobs: list[dict[str, Any]],
        messages: Sequence[tuple[str, str] | None],
        queued_limit: int,
        committed: bool,
    ) -> list[str]:
        partner = str(jobs[0].get("partner_id") or "")
        # The batch hash is written as given (its metadata already JSON), like the jobs'.
        batch_pairs = _pairs({k: str(v) for k, v in (batch or {}).items() if v is not None})
        args: list[Any] = [
            *self.dispatch_args(),
            partner,
            queued_limit,
            self.live_ttl,
            "1" if committed else "",
            batch["batch_id"] if batch else "",
            len(batch_pairs) // 2,
            *batch_pairs,
        ]
        for job, message in zip(jobs, messages, strict=True):
            pairs = _pairs(_encode(job))
            args += [
                job["job_id"],
                job.get("priority", DEFAULT_PRIORITY),
                epoch(job["run_at"]) if job.get("run_at") else "",
                "\n".join(message) if message else "",
                len(pairs) // 2,
                *pairs,
            ]
        answer = self.scripts["submit"](keys=[], args=args)
        if answer[0] == 0:
            raise QueueFull(int(answer[1]))
        return [str(job_id) for job_id in answer[1:]]

    def dispatch_args(self) -> list[Any]:
        """prefix, now, fixed window, default max running: what every dispatching script
        takes first."""
        return [self.prefix, time.time(), self.dispatch_window, self.max_running_jobs]

    def dispatch(self, partners: Iterable[str] = ()) -> list[str]:
        """Move due delayed jobs and dispatch what the window has room for, giving
        ``partners`` (none: every partner that has run a job) their turn back; the ids
        dispatched without a message, for the caller to send."""
        answer = self.scripts["dispatch_tick"](keys=[], args=[*self.dispatch_args(), *partners])
        return [str(job_id) for job_id in answer]

    def waiting(self, partner_id: str) -> dict[str, int]:
        """A partner's jobs by where they wait: ``queued`` (its queue), ``delayed`` (for
        their run_at) and ``running`` (dispatched, not ended)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(self.key("waiting", partner_id))
        pipe.hget(self.key("dispatch", "delayed"), partner_id)
        pipe.hget(self.key("dispatch", "running"), partner_id)
        queued, delayed, running = pipe.execute()
        return {"queued": int(queued), "delayed": int(delayed or 0), "running": int(running or 0)}

    def put_back(self, job: dict[str, Any]) -> None:
        """Write an ended job's archived record back (Redis forgot it: its cache expired,
        or Redis lost its data) so a delivery attempt can read it; held until archived
        again."""
        pipe = self.redis.pipeline()
        pipe.hset(self.key("job", job["job_id"]), mapping=_encode(job))  # type: ignore[arg-type]
        pipe.expire(self.key("job", job["job_id"]), self.retention)
        pipe.execute()

    def job(self, job_id: str) -> dict[str, Any] | None:
        return decode_job(cast("dict[str, str]", self.redis.hgetall(self.key("job", job_id))))

    def job_started_at(self, job_id: str) -> str | None:
        """When a worker first started the job (None: not started, or no record)."""
        return cast("str | None", self.redis.hget(self.key("job", job_id), "started_at"))

    def jobs(self, job_ids: Iterable[str]) -> list[dict[str, Any] | None]:
        pipe = self.redis.pipeline()
        for job_id in job_ids:
            pipe.hgetall(self.key("job", job_id))
        return [decode_job(raw) for raw in pipe.execute()]

    def start_job(
        self,
        job_id: str,
        worker: str = "",
        celery_meta: tuple[str, str, int | None] | None = None,
        send: str = "",
    ) -> tuple[str | None, int, str | None]:
        """Record a worker's start (Celery keeps no start time), which worker runs the job
        and its run count, and publish STARTED; write ``celery_meta`` (key, value, expires:
        Celery's STARTED) with it when the job may run.

        Returns (refusal, runs, started_at): refusal is None when the job may run, else why
        not (its terminal status, "missing" when it has no record, "stale" when ``send``,
        the message's token, is not the job's last send: ``jobgate.handoff``); runs counts
        this run (more than 1: an earlier run was lost with its worker); started_at is the
        job's first start, for its end to commit without reading it back.
        """
        event = json.dumps({"job_id": job_id, "status": "STARTED"})
        meta_key, meta, expires = self._meta_parts(celery_meta)
        answer = self.scripts["job_start"](
            keys=[self.key("job", job_id), self.channel(job_id), meta_key],
            args=[utcnow(), event, worker, meta, expires, send],
        )
        if answer[0] == -1:
            return "missing", 0, None
        if answer[0] == 0:
            return answer[1], 0, None
        return None, int(answer[1]), answer[2]

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
        key, value, expires = self._meta_parts(celery_meta)
        answer = self.scripts["job_progress"](
            keys=[self.key("job", job_id), self.channel(job_id), key],
            args=[json.dumps(progress), event, value, expires],
        )
        return int(answer)

    def _meta_parts(
        self, celery_meta: tuple[str, str, int | None] | None
    ) -> tuple[str, str, int | str]:
        """(key, value, expiry) of a Celery meta for a script ('' for none)."""
        key, value, expires = celery_meta or (self.key("no-meta"), "", None)
        return key, value, int(expires) if expires else ""

    def finish_job(
        self,
        job_id: str,
        status: str,
        *,
        webhook_message: tuple[str, str, str] | None = None,
        fan_out_message: tuple[str, str, str] | None = None,
        celery_meta: tuple[str, str, int | None] | None = None,
        committed: bool = False,
        **fields: Any,
    ) -> dict[str, Any] | None:
        """Record a terminal status once and publish it (with ``celery_meta``, Celery's
        terminal meta, written by the same script when given). An end ``committed`` to the
        job's row whose webhook the script queues puts no entry on the archive stream (the
        attempt's record will).

        ``webhook_message`` (queue, message, delivery task id) is pushed in the same script
        when the job has a callback URL, and the delivery marked open; ``fan_out_message``
        (same shape, the fan-out step to the partner's endpoints) when it has none and its
        partner may have endpoints. Returns what the other side effects of the end need
        ({job_id, status, callback_url, batch_id, webhook_queued, fan_out, dispatched})
        to the one caller that recorded it; None if a terminal status was already
        recorded, or the job has no record. ``fan_out`` is "queued", "none" (no endpoint)
        or "" (not looked at: the caller decides); ``dispatched``, the jobs the end's freed
        slot dispatched without a message (the caller sends them).
        """
        if status not in TERMINAL:
            raise ValueError(f"{status} is not a terminal status")
        flat = _pairs(_encode({"status": status, "finished_at": utcnow(), **fields}))
        event = json.dumps({"job_id": job_id, "status": status})
        queue, message, task_id = webhook_message or (self.key("no-webhook"), "", "")
        _, fan_message, fan_id = fan_out_message or ("", "", "")
        meta_key, meta, expires = self._meta_parts(celery_meta)
        keys = [
            self.key("job", job_id),
            self.key("stats"),
            self.channel(job_id),
            queue,
            self.key("live"),
            self.open_key,
            self.archive_key,
            meta_key,
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
                fan_message,
                fan_id,
                self.key("partner", ""),
                meta,
                expires,
                "1" if committed else "",
                *self.dispatch_args(),
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
            "fan_out": FAN_OUT_STATES[int(answer[4])],
            "dispatched": [str(job) for job in answer[5:]],
        }

    # ------------------------------------------------------------- idempotency
    def claim_idempotency(
        self, partner_id: str, key: str, body_digest: str, job_id: str
    ) -> dict[str, str] | None:
        """Claim an Idempotency-Key; returns the earlier claim if the key was taken."""
        name = self.key("idem", partner_id, key_hash(key))
        claim = json.dumps({"digest": body_digest, "job_id": job_id})
        if self.redis.set(name, claim, nx=True, ex=IDEMPOTENCY_TTL):
            return None
        earlier = self.redis.get(name)
        return json.loads(earlier) if earlier else None

    def release_idempotency(self, partner_id: str, key: str) -> None:
        self.redis.delete(self.key("idem", partner_id, key_hash(key)))

    # --------------------------------------------------------------- rate limit
    def _rate_window(self, name: str, window: int) -> tuple[str, int]:
        """The counter of ``name``'s current window, and the seconds left in it."""
        now = int(time.time())
        slot = now // window
        return self.key("rate", name, str(slot)), (slot + 1) * window - now

    def hit_rate_limit(self, name: str, limit: int, window: int = 60) -> int | None:
        """Count one submission of partner ``name`` (or one failed authentication of
        ``auth:<address>``, one change of ``endpoint-toggle:<id>``); returns seconds to wait
        if over ``limit`` per window."""
        if limit <= 0:
            return None
        key, left = self._rate_window(name, window)
        pipe = self.redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, window + 1)
        count = pipe.execute()[0]
        return left if count > limit else None

    def rate_limit_wait(self, name: str, limit: int, window: int = 60) -> int | None:
        """Seconds to wait if ``hit_rate_limit`` already counted ``limit`` for ``name`` in
        this window (counting nothing), else None."""
        if limit <= 0:
            return None
        key, left = self._rate_window(name, window)
        count = self.redis.get(key)
        return left if count is not None and int(count) >= limit else None

    def take_turn(self, name: str, every: float) -> int | None:
        """Take ``name``'s one turn per ``every`` s, counted in Redis so that it holds across
        processes: None when this call took it, else whole seconds until the next (>= 1)."""
        key = self.key("turn", name)
        pipe = self.redis.pipeline(transaction=False)  # one round trip
        pipe.set(key, "1", nx=True, px=max(1, int(every * 1000)))
        pipe.pttl(key)
        took, left = pipe.execute()
        return None if took else max(1, math.ceil(int(left) / 1000))

    # ----------------------------------------------------------------- workers
    @property
    def workers_key(self) -> str:
        """Worker nodes by their last sign of life (what ``/readyz`` counts)."""
        return self.key("workers")

    def alive_key(self, node: str) -> str:
        """The short-lived key that says worker ``node`` is alive (``node`` '' gives the
        prefix a script appends a node name to)."""
        return self.key("worker", node)

    @property
    def pools_key(self) -> str:
        """Worker nodes -> what they run (JSON ``{"pools": [...], "slots": n}``)."""
        return self.key("workers", "pools")

    def mark_worker_alive(
        self, node: str, alive_for: int, slots: int = 0, pools: dict[str, Any] | None = None
    ) -> None:
        """Worker ``node`` is alive for ``alive_for`` s (by Redis's clock): the key a
        delivery claim checks before taking over a dead node's attempt, and the set
        ``live_workers`` counts; ``slots``, its job-pool processes, for the dispatcher;
        ``pools``, what it runs (its pools and their slots), for the dashboard."""
        keys = [self.alive_key(node), self.workers_key, self.key("dispatch", "slots")]
        args: list[Any] = [node, alive_for, WORKERS_FORGOTTEN_AFTER, slots]
        if pools is not None:
            keys.append(self.pools_key)
            args.append(json.dumps(pools, separators=(",", ":")))
        self.scripts["worker_alive"](keys=keys, args=args)

    def live_workers(self, alive_for: int) -> int:
        """Worker nodes that gave a sign of life in the last ``alive_for`` s."""
        return int(self.scripts["workers_live"](keys=[self.workers_key], args=[alive_for]))

    # ------------------------------------------------------------------ events
    def channel(self, job_id: str) -> str:
        return self.key("events", job_id)

    # ------------------------------------------------------------- bookkeeping
    @property
    def open_key(self) -> str:
        """Deliveries queued or scheduled and not yet recorded: task id -> deadline."""
        return self.key("deliveries", "open")

    @property
    def archive_key(self) -> str:
        """The archive stream: ``{"s": "job:<id>"|"batch:<id>"}`` for each change the
        database must get (``jobgate.archive`` drains it); ``"a": "0"`` when the change
        cannot have touched the subject's attempts (a job created or ended)."""
        return self.key("archive")

    @property
    def due_key(self) -> str:
        """Deliveries scheduled for later (the retry set): entry -> due time."""
        return self.key("due")

    def mark_open(self, task_id: str, deadline: float | None = None) -> None:
        """Mark a delivery open until an attempt records it (sent outside a script)."""
        self.redis.zadd(self.open_key, {task_id: deadline or time.time() + self.open_grace})


class QueueFull(Exception):
    """A partner has as many jobs waiting as its ``max_queued_jobs`` allows."""

    def __init__(self, waiting: int) -> None:
        super().__init__(f"{waiting} jobs waiting")
        self.waiting = waiting


def secrets_of(
    partner: dict[str, str], now: float | None = None, sealer: Sealer | None = None
) -> list[str]:
    """A mirrored partner's (or endpoint's) signing secrets (``jobgate.partners``): the
    current one, then every rotated one still within its grace period, opened with
    ``sealer`` (as stored without one)."""
    now = time.time() if now is None else now
    found = [partner["webhook_secret"]] if partner.get("webhook_secret") else []
    rotated = [s for s in (partner.get("previous_secrets") or "").split(",") if s]
    untils = [float(u) for u in (partner.get("previous_secrets_until") or "").split(",") if u]
    found += [s for s, until in zip(rotated, untils, strict=False) if until > now]
    return [sealer.open(secret) for secret in found] if sealer else found


def _encode(values: dict[str, Any]) -> dict[str, str]:
    return {
        name: json.dumps(value, default=str) if name in JSON_FIELDS else str(value)
        for name, value in values.items()
        if value is not None
    }


def _pairs(values: dict[str, str]) -> list[str]:
    return [item for pair in values.items() for item in pair]


def as_stored(record: dict[str, Any]) -> dict[str, Any]:
    """A new record as ``Store.job`` will read it back (its database row keeps that)."""
    stored = decode_job(_encode(record))
    assert stored is not None
    return stored


def decode_job(raw: dict[str, str]) -> dict[str, Any] | None:
    """A raw job hash as Store.job returns it (JSON fields parsed), None if empty."""
    if not raw:
        return None
    record: dict[str, Any] = dict(raw)
    for name in JSON_FIELDS:
        if name in record:
            record[name] = json.loads(record[name])
    return record
