"""Archive benchmark (issue 12): the job history in the database, end to end and at rest.

Four parts, one run, each optional (``--parts``):

- ``e2e``: N ``demo.sleep`` 0 s jobs with a signed callback through the real gateway,
  ``jobgate worker`` and receiver, archiving into ``--database-url``, with a short
  ``JOBGATE_JOB_CACHE_TTL`` and ``JOBGATE_RESULT_EXPIRES``: Redis ``used_memory`` before,
  at peak and once both have passed (keys per job left, by family); the archive stream's
  length and oldest entry's age sampled through the run (p50/p99/max) and the time from
  the last job's end to an empty stream; every job checked in the database.
- ``drain``: a standalone ``Archiver`` draining a pre-filled stream of finished jobs
  (records, attempt log and webhook state written straight to Redis, three stream entries
  per job as the live system writes: created, finished, attempt recorded) into a fresh
  SQLite file and into ``--database-url``; jobs/s against the end-to-end job rate.
- ``ab``: end-to-end jobs/s of this tree against ``--before`` (the commit before the
  database, run from its own source tree), rounds alternating.
- ``reads``: ``--read-rows`` archived job rows bulk-loaded (COPY on PostgreSQL), ANALYZEd,
  then ``GET /v1/jobs/{id}`` (Redis holds none of them) and listing pages through the real
  gateway at ``--read-concurrency``, with EXPLAIN ANALYZE of each query the gateway runs.

    python -m bench.archive --redis-url redis://127.0.0.1:6379/9 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/jobgate_bench
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import event, text

from bench.common import (
    ADMIN_KEY,
    LOGS,
    ROOT,
    SLEEP_PARAMS,
    Stack,
    base_parser,
    fresh_database,
    gunicorn_shape,
    machine,
    ms,
    percentile,
    print_table,
    worker_shape,
    write_result,
)
from bench.e2e import key_family, stats, wait_for_webhooks
from bench.loadgen import request_bytes, run_load
from bench.submit import pooled

PARTS = ("e2e", "drain", "ab", "reads")
BEFORE = "c99bfd4"  # main without the database commit (7c61d84): the other merge parent
TARGETS = {"job_p99_ms": 15.0, "page_p99_ms": 30.0, "drain_ratio": 5.0}
READ_PARTNER = "ptn_benchreads000000000"  # the partner whose jobs the read bench lists
READ_KEY = "jgp_bench-reads-key"
TASKS = (  # task name, share of rows
    ("demo.sleep", 0.50),
    ("report.render", 0.20),
    ("image.resize", 0.15),
    ("mail.send", 0.10),
    ("data.export", 0.05),
)
STATUSES = (("SUCCESS", 0.93), ("FAILURE", 0.05), ("REVOKED", 0.02))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def spread(values: list[float]) -> dict[str, float | None]:
    return {
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


# ---------------------------------------------------------------------- sampling
class Sampler(threading.Thread):
    """Every ``every`` s: Redis used_memory, key count, the archive stream's length and
    its oldest entry's age (what ``jobgate.archive.lag`` reports)."""

    def __init__(self, redis_url: str, stream: str, every: float = 0.25) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.client = redis.Redis.from_url(redis_url, decode_responses=True)
        self.stream, self.every = stream, every
        self.samples: list[dict[str, float]] = []
        self._halt = threading.Event()

    def sample(self) -> dict[str, float]:
        pipe = self.client.pipeline(transaction=False)
        pipe.info("memory")
        pipe.dbsize()
        pipe.xlen(self.stream)
        pipe.xrange(self.stream, "-", "+", count=1)
        memory, keys, length, first = pipe.execute()
        now = time.time()
        age = max(0.0, now - int(first[0][0].split("-")[0]) / 1000) if first else 0.0
        row = {
            "t": now,
            "used_memory": int(memory["used_memory"]),
            "keys": int(keys),
            "xlen": int(length),
            "age": age,
        }
        self.samples.append(row)
        return row

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.sample()
            except redis.RedisError:
                pass
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self.client.close()


def key_census(client: redis.Redis) -> dict[str, dict[str, int]]:
    """Keys, bytes (MEMORY USAGE) and the longest TTL left, by key family."""
    out: dict[str, dict[str, int]] = {}
    keys = list(client.scan_iter(count=1000))
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.memory_usage(key, samples=0)
            pipe.ttl(key)
        answers = pipe.execute()
        for i, key in enumerate(chunk):
            family = key_family(key)
            if ":claim:" in key:
                family = "jobgate:webhook:*:claim:*"
            elif key.startswith("jobgate:webhook:") and key.endswith(":body"):
                family = "jobgate:webhook:*:body"
            row = out.setdefault(family, {"keys": 0, "bytes": 0, "max_ttl_s": -1})
            row["keys"] += 1
            row["bytes"] += answers[2 * i] or 0
            row["max_ttl_s"] = max(row["max_ttl_s"], int(answers[2 * i + 1]))
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["bytes"]))


# ---------------------------------------------------------------------- part 1
def submit_and_wait(stack: Stack, partner: dict[str, Any], jobs: int, args: Any) -> dict[str, Any]:
    """Submit ``jobs`` callback jobs at ``args.concurrency``; wait for their webhooks."""
    job = {
        "task": "demo.sleep",
        "params": SLEEP_PARAMS,
        "callback_url": stack.url("receiver", "/hook"),
    }
    raw = request_bytes(
        "POST", "/v1/jobs", body=job, headers={"Authorization": f"Bearer {partner['api_key']}"}
    )
    t0 = time.time()
    load = run_load(
        stack.ports["gateway"],
        lambda _i: raw,
        concurrency=args.concurrency,
        total=jobs,
        seconds=args.cap,
        keep_bodies=True,
    )
    ids = [body["job_id"] for body in load.json_bodies() if "job_id" in body]
    wait_for_webhooks(stack, len(ids), args.stall, args.cap)
    seen = stats(stack, with_jobs=True)
    return {"t0": t0, "ids": ids, "load": load, "seen": seen, "done_at": time.time()}


def database_jobs(url: str, ids: list[str]) -> dict[str, Any]:
    """What the database holds of the run: rows, statuses, attempts, last finished_at."""
    from jobgate.db import Database

    db = Database(url)
    try:
        with db.session() as session:
            jobs, last, first = session.execute(
                text("SELECT count(*), max(finished_at), min(created_at) FROM jobs")
            ).one()
            statuses = dict(
                session.execute(text("SELECT coalesce(status, '-'), count(*) FROM jobs GROUP BY 1"))
                .tuples()
                .all()
            )
            attempts = session.execute(text("SELECT count(*) FROM attempts")).scalar_one()
            delivered = session.execute(
                text("SELECT count(*) FROM jobs WHERE record->>'webhook_state' = 'delivered'")
            ).scalar_one()
    finally:
        db.dispose()
    last_ts = _ts(last)
    return {
        "rows": int(jobs),
        "expected": len(ids),
        "statuses": statuses,
        "attempt_rows": int(attempts),
        "webhook_delivered_rows": int(delivered),
        "first_created": _ts(first),
        "last_finished": last_ts,
    }


def _ts(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def part_e2e(args: Any) -> dict[str, Any]:
    stack = Stack.fresh(args.redis_url, args.database_url)
    stack.env.update(
        JOBGATE_JOB_CACHE_TTL=str(args.cache_ttl), JOBGATE_RESULT_EXPIRES=str(args.result_expires)
    )
    sampler: Sampler | None = None
    try:
        gateway = stack.start_gateway(args.gunicorn)
        worker = stack.start_worker(args.worker_concurrency, instances=args.worker_instances)
        partner = stack.create_partner()
        stack.start_receiver(partner["webhook_secret"])
        client = stack.redis()
        time.sleep(1.0)  # the worker's first upkeep writes
        before = {
            "used_memory": int(client.info("memory")["used_memory"]),
            "keys": client.dbsize(),
        }
        cpu = stack.cpu_meter(
            {"gateway": gateway, "worker": worker, "receiver": stack.services["receiver"]}
        )
        sampler = Sampler(args.redis_url, "jobgate:archive", args.sample_every)
        sampler.start()
        run = submit_and_wait(stack, partner, args.jobs, args)
        cpu_used = cpu.used()
        ids, t0 = run["ids"], run["t0"]
        # Archive caught up: the stream is empty (an entry is deleted once its chunk
        # committed), checked after the last webhook.
        deadline = time.monotonic() + args.cap
        while time.monotonic() < deadline:
            if client.xlen("jobgate:archive") == 0:
                break
            time.sleep(0.05)
        caught_up_at = time.time()
        in_db = database_jobs(stack.env["JOBGATE_DATABASE_URL"], ids)
        peak = max((s["used_memory"] for s in sampler.samples), default=0)
        peak_keys = max((s["keys"] for s in sampler.samples), default=0)
        at_caught_up = {
            "used_memory": int(client.info("memory")["used_memory"]),
            "keys": client.dbsize(),
        }
        # Wait for the cache TTL (counted from the last archiving) and Celery's result
        # expiry (from the last job's end) to pass, then until the key count settles.
        wait_until = max(
            caught_up_at + args.cache_ttl, (in_db["last_finished"] or 0) + args.result_expires
        )
        time.sleep(max(0.0, wait_until - time.time()) + 2)
        # At most --settle s more: claim keys (600 s) keep expiring one by one past that.
        settled, last_keys = time.monotonic(), -1
        settle_until = time.monotonic() + args.settle
        while time.monotonic() - settled < 3 and time.monotonic() < settle_until:
            keys = client.dbsize()
            if keys != last_keys:
                settled, last_keys = time.monotonic(), keys
            time.sleep(0.5)
        sampler.stop()
        after = {
            "used_memory": int(client.info("memory")["used_memory"]),
            "keys": client.dbsize(),
            "seconds_after_caught_up": round(time.time() - caught_up_at, 1),
        }
        census = key_census(client)
        rss = {"gateway": gateway.rss(), "worker": worker.rss()}
        client.close()
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        stack.close()
    seen, load = run["seen"], run["load"]
    lost = len(set(ids) - set(seen.pop("job_ids")))
    during = [s for s in sampler.samples if t0 <= s["t"] <= caught_up_at]
    last_finished = in_db["last_finished"] or run["done_at"]
    jobs_per_s = round(len(ids) / (last_finished - t0), 1) if ids else None
    claims = census.get("jobgate:webhook:*:claim:*", {"keys": 0, "bytes": 0, "max_ttl_s": -1})
    n = max(1, len(ids))
    return {
        "jobs": len(ids),
        "submit": load.summary(),
        "jobs_per_s_finished": jobs_per_s,
        "jobs_per_s_webhooked": round(seen["jobs"] / ((seen["last_at"] or 0) - t0), 1)
        if seen["jobs"]
        else None,
        "lost": lost,
        "duplicated": seen["duplicates"],
        "bad_signatures": seen["bad_signatures"],
        "webhook_latency_p50_ms": seen["latency_p50_ms"],
        "webhook_latency_p99_ms": seen["latency_p99_ms"],
        "database": in_db,
        "archive_lag": {
            "samples": len(during),
            "sample_every_s": args.sample_every,
            "stream_length": spread([s["xlen"] for s in during]),
            "oldest_entry_age_ms": {
                k: ms(v) for k, v in spread([s["age"] for s in during]).items()
            },
            "caught_up_after_last_job_end_s": round(caught_up_at - last_finished, 2),
            "caught_up_after_last_webhook_s": round(caught_up_at - (seen["last_at"] or 0), 2)
            if seen["last_at"]
            else None,
        },
        "redis": {
            "cache_ttl_s": args.cache_ttl,
            "result_expires_s": args.result_expires,
            "before": before,
            "peak": {"used_memory": peak, "keys": peak_keys},
            "at_caught_up": at_caught_up,
            "after": after,
            "after_minus_before_bytes": after["used_memory"] - before["used_memory"],
            "after_minus_before_bytes_per_job": round(
                (after["used_memory"] - before["used_memory"]) / n, 1
            ),
            "peak_minus_before_bytes_per_job": round((peak - before["used_memory"]) / n, 1),
            "keys_left_per_job": round((after["keys"] - before["keys"]) / n, 3),
            "claim_keys_per_job": round(claims["keys"] / n, 3),
            "claim_bytes_per_job": round(claims["bytes"] / n, 1),
            "claim_max_ttl_s": claims["max_ttl_s"],
            "keys_after_by_family": census,
            "note": "a delivered attempt's claim key keeps max(cache TTL, 600 s) "
            "(jobgate.store.DONE_TTL_MIN), so with a short cache TTL it outlives the rest",
        },
        "memory_timeline": [
            {"t": round(s["t"] - t0, 2), "used_memory": s["used_memory"], "xlen": s["xlen"]}
            for s in sampler.samples[:: max(1, len(sampler.samples) // 200)]
        ],
        "cpu_ms_per_job": {k: round(1000 * v / n, 3) for k, v in cpu_used.items()},
        "rss": rss,
    }


# ---------------------------------------------------------------------- part 2
def finished_template(now: datetime, job_id: str, partner_id: str, callback: str) -> dict:
    """One finished, delivered job as Redis holds it (the field set of a real run)."""
    created = now - timedelta(milliseconds=60)
    return {
        "params": json.dumps({"seconds": 0.0, "steps": 1}),
        "job_id": job_id,
        "status": "SUCCESS",
        "params_digest": uuid.uuid4().hex * 2,
        "webhook_state": "delivered",
        "queue": "jobs",
        "worker": "bench0-1@localhost",
        "task_id": job_id,
        "webhook_attempts": "1",
        "task": "demo.sleep",
        "created_at": iso(created),
        "callback_url": callback,
        "progress": json.dumps({"current": 1, "total": 1, "percent": 100, "message": "Done"}),
        "finished_at": iso(now - timedelta(milliseconds=5)),
        "partner_id": partner_id,
        "runs": "1",
        "result": json.dumps({"slept": 0.0, "steps": 1}),
        "metadata": "{}",
        "started_at": iso(now - timedelta(milliseconds=10)),
    }


def fill_stream(store: Any, jobs: int, group: int, entries_per_job: int) -> list[str]:
    """``jobs`` finished jobs in Redis (record, attempt log, webhook hash, stored body)
    and their stream entries: with 3 per job, group g's "created" entries come with group
    g-1's "finished" and group g-2's "attempt recorded", as a live stream interleaves them."""
    r = store.redis
    now = datetime.now(UTC)
    ids = [str(uuid.uuid4()) for _ in range(jobs)]
    pipe = r.pipeline(transaction=False)
    for n, job_id in enumerate(ids):
        record = finished_template(now, job_id, "ptn_benchdrain", "http://127.0.0.1:9/hook")
        pipe.hset(store.key("job", job_id), mapping=record)
        pipe.rpush(
            store.key("deliveries", job_id),
            json.dumps(
                {
                    "webhook_id": "msg_" + uuid.uuid4().hex,
                    "event": "job.succeeded",
                    "at": iso(now),
                    "status_code": 204,
                    "error": None,
                    "duration_ms": 4,
                    "next_attempt_at": None,
                    "outcome": "delivered",
                    "redelivery": False,
                    "attempt": 1,
                }
            ),
        )
        pipe.hset(
            store.key("webhook", job_id),
            mapping={
                "attempts": 1,
                "state": "delivered",
                "webhook_id": "msg_x",
                "event": "job.succeeded",
                "last_attempt_at": iso(now),
            },
        )
        pipe.set(store.key("webhook", job_id, "job.succeeded", "body"), "x" * 700)
        if n % 500 == 499:
            pipe.execute()
    pipe.execute()
    groups = [ids[i : i + group] for i in range(0, len(ids), group)]
    stages = max(1, entries_per_job)
    for step in range(len(groups) + stages - 1):
        for stage in range(stages):
            g = step - stage
            if 0 <= g < len(groups):
                for job_id in groups[g]:
                    pipe.xadd(store.archive_key, {"s": f"job:{job_id}"})
        pipe.execute()
    return ids


def drain_one(args: Any, url: str) -> dict[str, Any]:
    from sqlalchemy import func, select

    from jobgate.archive import Archiver
    from jobgate.db import Database
    from jobgate.db.models import Attempt, Batch, Job
    from jobgate.store import Store

    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    client.close()
    url = fresh_database(url)
    store = Store.from_url(args.redis_url, cache_ttl=args.cache_ttl)
    db = Database(url)
    try:
        t = time.perf_counter()
        ids = fill_stream(store, args.drain_jobs, args.archive_batch, args.entries_per_job)
        filled = time.perf_counter() - t
        entries = store.redis.xlen(store.archive_key)
        archiver = Archiver(store, db, consumer="bench", batch=args.archive_batch)
        archiver.ensure_group()
        cpu0, t0 = time.process_time(), time.perf_counter()
        done, deadline = 0, time.monotonic() + args.cap
        while time.monotonic() < deadline and (n := archiver.run_once()):
            done += n
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        with db.session() as session:
            rows = {
                model.__tablename__: int(
                    session.scalar(select(func.count()).select_from(model)) or 0
                )
                for model in (Job, Batch, Attempt)
            }
        expiring = store.redis.ttl(store.key("job", ids[-1]))
        left = store.redis.xlen(store.archive_key)
    finally:
        db.dispose()
        store.redis.close()
    return {
        "database": "postgresql" if url.startswith("postgresql") else "sqlite",
        "jobs": args.drain_jobs,
        "entries": entries,
        "entries_acked": done,
        "entries_left": left,
        "rows": rows,
        "fill_seconds": round(filled, 2),
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(args.drain_jobs / elapsed, 1),
        "entries_per_s": round(done / elapsed, 1),
        "archiver_cpu_ms_per_job": round(1000 * cpu / args.drain_jobs, 3),
        "archive_batch": args.archive_batch,
        "sample_ttl_after_s": expiring,
    }


def part_drain(args: Any) -> dict[str, Any]:
    out = {}
    for name, url in (
        ("sqlite", "sqlite:///" + str(sqlite_file())),
        ("postgresql", args.database_url),
    ):
        if name == "postgresql" and not (url or "").startswith("postgresql"):
            continue
        out[name] = drain_one(args, url)
    return out


def sqlite_file() -> Path:
    LOGS.mkdir(parents=True, exist_ok=True)
    return LOGS / f"drain-{os.getpid()}-{time.time_ns()}.sqlite3"


# ---------------------------------------------------------------------- part 3
def before_tree(rev: str) -> Path:
    """The source tree of ``rev`` (``git archive``, kept under LOGS between runs)."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    tree = LOGS / f"before-{sha}"
    if not (tree / "wsgi.py").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def ab_round(args: Any, arm: str, root: Path) -> dict[str, Any]:
    stack = Stack.fresh(args.redis_url, args.database_url, root=root)
    try:
        gateway = stack.start_gateway(args.gunicorn)
        worker = stack.start_worker(args.worker_concurrency, instances=args.worker_instances)
        partner = stack.create_partner()
        stack.start_receiver(partner["webhook_secret"])
        cpu = stack.cpu_meter(
            {"gateway": gateway, "worker": worker, "receiver": stack.services["receiver"]}
        )
        run = submit_and_wait(stack, partner, args.ab_jobs, args)
        used = cpu.used()
        client = stack.redis()
        pipe = client.pipeline(transaction=False)
        for job_id in run["ids"]:
            pipe.hget(f"jobgate:job:{job_id}", "finished_at")
        finished = [_ts(v.replace("Z", "+00:00")) for v in pipe.execute() if v]
        client.close()
    finally:
        stack.close()
    seen, ids, t0 = run["seen"], run["ids"], run["t0"]
    lost = len(set(ids) - set(seen.pop("job_ids")))
    n = max(1, len(ids))
    return {
        "arm": arm,
        "jobs": len(ids),
        "jobs_per_s_finished": round(len(finished) / (max(finished) - t0), 1) if finished else None,
        "jobs_per_s_webhooked": round(seen["jobs"] / (seen["last_at"] - t0), 1)
        if seen["jobs"]
        else None,
        "lost": lost,
        "duplicated": seen["duplicates"],
        "cpu_ms_per_job": {k: round(1000 * v / n, 3) for k, v in used.items()},
        "loadavg": list(os.getloadavg()),
    }


def part_ab(args: Any) -> dict[str, Any]:
    arms = {"after": ROOT}
    if args.before:
        arms = {"before": before_tree(args.before), "after": ROOT}
    rounds: list[dict[str, Any]] = []
    for r in range(args.ab_rounds):
        order = list(arms) if r % 2 == 0 else list(arms)[::-1]
        for arm in order:
            row = ab_round(args, arm, arms[arm])
            row["round"] = r
            rounds.append(row)
            print(f"  A/B round {r} {arm}: {row['jobs_per_s_finished']} jobs/s finished")
    summary = {}
    for arm in arms:
        rows = [x for x in rounds if x["arm"] == arm]
        fin = [x["jobs_per_s_finished"] for x in rows if x["jobs_per_s_finished"]]
        hooked = [x["jobs_per_s_webhooked"] for x in rows if x["jobs_per_s_webhooked"]]
        cpu = [sum(x["cpu_ms_per_job"].values()) for x in rows]
        worker = [x["cpu_ms_per_job"].get("worker", 0) for x in rows]
        summary[arm] = {
            "jobs_per_s_finished": fin,
            "jobs_per_s_finished_mean": round(statistics.mean(fin), 1) if fin else None,
            "jobs_per_s_webhooked_mean": round(statistics.mean(hooked), 1) if hooked else None,
            "cpu_ms_per_job_all_mean": round(statistics.mean(cpu), 2) if cpu else None,
            "cpu_ms_per_job_worker_mean": round(statistics.mean(worker), 2) if worker else None,
        }
    ratio = None
    if "before" in summary and summary["before"]["jobs_per_s_finished_mean"]:
        ratio = round(
            (summary["after"]["jobs_per_s_finished_mean"] or 0)
            / summary["before"]["jobs_per_s_finished_mean"],
            3,
        )
    return {
        "before": args.before or None,
        "rounds": rounds,
        "summary": summary,
        "after_over_before_finished": ratio,
    }


# ---------------------------------------------------------------------- part 4
def read_rows(count: int, partners: int, seed: int = 12):
    """``count`` archived job rows, newest first over the last 30 days: (columns, record)."""
    rng = random.Random(seed)
    now = datetime.now(UTC).replace(microsecond=0)
    partner_ids = [READ_PARTNER] + [f"ptn_benchother{n:08d}" for n in range(1, partners)]
    task_names = [t for t, _ in TASKS]
    task_weights = [w for _, w in TASKS]
    status_names = [s for s, _ in STATUSES]
    status_weights = [w for _, w in STATUSES]
    span_ms = 30 * 86400 * 1000
    for n in range(count):
        job_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        partner = partner_ids[n % partners]
        task = rng.choices(task_names, task_weights)[0]
        status = rng.choices(status_names, status_weights)[0]
        created = now - timedelta(milliseconds=rng.randrange(span_ms))
        started = created + timedelta(milliseconds=rng.randrange(5, 500))
        finished = started + timedelta(milliseconds=rng.randrange(10, 60_000))
        failed = status == "FAILURE"
        record = {
            "job_id": job_id,
            "task_id": job_id,
            "partner_id": partner,
            "task": task,
            "status": status,
            "queue": "jobs",
            "worker": f"worker{n % 8}@host",
            "params": {
                "source": f"s3://bucket-{n % 97}/input/{job_id}.json",
                "options": {"format": "pdf", "pages": n % 40 + 1, "locale": "en-GB"},
            },
            "params_digest": f"{rng.getrandbits(256):064x}",
            "metadata": {"customer": f"cust-{n % 5000}", "order": f"ord-{n}", "source": "api"},
            "progress": {"current": 1, "total": 1, "percent": 100, "message": "Done"},
            "result": None
            if failed or status == "REVOKED"
            else {
                "output": f"s3://bucket-{n % 97}/output/{job_id}.pdf",
                "bytes": rng.randrange(1, 10**7),
                "pages": n % 40 + 1,
                "checksum": f"{rng.getrandbits(256):064x}",
            },
            "error": {"type": "RenderError", "message": "template missing: invoice.html"}
            if failed
            else None,
            "callback_url": f"https://hooks.partner{n % partners}.example/jobgate/callback",
            "webhook_state": "delivered",
            "webhook_attempts": 1,
            "created_at": iso(created),
            "started_at": iso(started),
            "finished_at": iso(finished),
            "runs": 1,
        }
        yield (job_id, partner, task, status, created, finished, record)


def load_rows(url: str, count: int, partners: int) -> dict[str, Any]:
    """Empty the job tables, add the read partner (with a known key), load ``count`` rows."""
    from jobgate.db import Database
    from jobgate.store import hash_key

    db = Database(url)
    t = time.perf_counter()
    try:
        now = datetime.now(UTC)
        with db.session() as session:
            if db.is_sqlite:
                for table in ("attempts", "jobs", "batches"):
                    session.execute(text(f"DELETE FROM {table}"))
            else:
                session.execute(text("TRUNCATE attempts, jobs, batches"))
            session.execute(text("DELETE FROM partners WHERE id = :id"), {"id": READ_PARTNER})
            session.execute(
                text("INSERT INTO partners (id, name, created_at) VALUES (:id, 'reads', :now)"),
                {"id": READ_PARTNER, "now": now},
            )
            session.execute(
                text(
                    "INSERT INTO api_keys (key_hash, partner_id, created_at) VALUES (:h, :id, :now)"
                ),
                {"h": hash_key(READ_KEY), "id": READ_PARTNER, "now": now},
            )
            session.execute(
                text(
                    "INSERT INTO signing_secrets (partner_id, secret, created_at) "
                    "VALUES (:id, 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', :now)"
                ),
                {"id": READ_PARTNER, "now": now},
            )
        sizes: list[int] = []
        if db.is_sqlite:
            rows = []
            with db.session() as session:
                for job_id, partner, task, status, created, finished, record in read_rows(
                    count, partners
                ):
                    raw = json.dumps(record)
                    sizes.append(len(raw))
                    rows.append(
                        {
                            "j": job_id,
                            "p": partner,
                            "t": task,
                            "s": status,
                            "c": created.strftime("%Y-%m-%d %H:%M:%S.%f"),
                            "f": finished.strftime("%Y-%m-%d %H:%M:%S.%f"),
                            "r": raw,
                        }
                    )
                session.execute(
                    text(
                        "INSERT INTO jobs (job_id, partner_id, task, status, batch_id, "
                        "created_at, finished_at, record, rev) "
                        "VALUES (:j, :p, :t, :s, NULL, :c, :f, :r, 10000003)"
                    ),
                    rows,
                )
                session.execute(text("ANALYZE"))
            indexes: list[str] = []
        else:
            raw_connection = db.engine.raw_connection()
            try:
                cur = raw_connection.cursor()
                cur.execute(
                    "SELECT indexname, indexdef FROM pg_indexes "
                    "WHERE tablename = 'jobs' AND indexname <> 'jobs_pkey'"
                )
                indexes = [row[1] for row in cur.fetchall()]
                # Build the secondary indexes once, after the load (faster than keeping
                # them up to date row by row); the primary key stays.
                cur.execute("SET synchronous_commit = off")
                for definition in indexes:
                    name = definition.split(" INDEX ", 1)[1].split(" ON ", 1)[0]
                    cur.execute(f"DROP INDEX {name}")
                with cur.copy(
                    "COPY jobs (job_id, partner_id, task, status, batch_id, created_at, "
                    "finished_at, record, rev) FROM STDIN"
                ) as copy:
                    for job_id, partner, task, status, created, finished, record in read_rows(
                        count, partners
                    ):
                        raw = json.dumps(record)
                        sizes.append(len(raw))
                        copy.write_row(
                            (job_id, partner, task, status, None, created, finished, raw, 10000003)
                        )
                cur.execute("SET maintenance_work_mem = '256MB'")
                for definition in indexes:
                    cur.execute(definition)
                raw_connection.commit()
                cur.execute("ANALYZE jobs")
                raw_connection.commit()
                cur.execute("SELECT pg_total_relation_size('jobs'), pg_relation_size('jobs')")
                total_size, heap_size = cur.fetchone()
            finally:
                raw_connection.close()
    finally:
        db.dispose()
    out = {
        "rows": count,
        "partners": partners,
        "rows_per_partner": count // partners,
        "record_json_bytes_mean": round(statistics.mean(sizes)) if sizes else None,
        "seconds": round(time.perf_counter() - t, 1),
        "indexes_rebuilt": indexes,
    }
    if not db.is_sqlite:
        out["table_bytes"] = {"total": total_size, "heap": heap_size}
    return out


def capture_sql(db: Any, call: Any) -> list[tuple[str, Any]]:
    """The statements (with parameters) ``call()`` sends through ``db``'s engines (its
    transactions' and its autocommit reads')."""
    seen: list[tuple[str, Any]] = []

    def hook(_conn, _cursor, statement, parameters, _context, _many):  # noqa: ANN001
        seen.append((statement, parameters))

    engines = (db.engine, db.reader)
    for engine in engines:
        event.listen(engine, "before_cursor_execute", hook)
    try:
        call()
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", hook)
    return [s for s in seen if "jobs" in s[0]]


def plan_indexes(plan: Any) -> dict[str, Any]:
    """Node types and index names in an EXPLAIN (FORMAT JSON) plan."""
    nodes, indexes = [], []

    def walk(node: dict[str, Any]) -> None:
        nodes.append(node.get("Node Type"))
        if node.get("Index Name"):
            indexes.append(node["Index Name"])
        for child in node.get("Plans", []):
            walk(child)

    walk(plan["Plan"])
    return {"nodes": nodes, "indexes": indexes}


def explain(db: Any, call: Any) -> dict[str, Any]:
    """EXPLAIN ANALYZE of the query ``call()`` runs (PostgreSQL: JSON plan; SQLite: the
    query plan rows)."""
    statements = capture_sql(db, call)
    if not statements:
        return {"error": "no statement captured"}
    return explain_statement(db, *statements[-1])


def explain_statement(db: Any, statement: str, parameters: Any) -> dict[str, Any]:
    """EXPLAIN ANALYZE of one statement as the driver takes it."""
    raw_connection = db.engine.raw_connection()
    try:
        cur = raw_connection.cursor()
        if db.is_sqlite:
            cur.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            return {"sql": statement, "plan": [list(row) for row in cur.fetchall()]}
        cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, parameters)
        plan = cur.fetchone()[0][0]
        raw_connection.rollback()
    finally:
        raw_connection.close()
    found = plan_indexes(plan)
    return {
        "sql": " ".join(statement.split()),
        "execution_ms": plan.get("Execution Time"),
        "planning_ms": plan.get("Planning Time"),
        "index_used": bool(found["indexes"]),
        "indexes": found["indexes"],
        "nodes": found["nodes"],
        "shared_hit_blocks": plan["Plan"].get("Shared Hit Blocks"),
        "shared_read_blocks": plan["Plan"].get("Shared Read Blocks"),
    }


def in_process(db: Any, call: Any, repeat: int) -> dict[str, Any]:
    """Median and p99 of ``call()`` in this process (no HTTP, no Redis): the database
    query plus SQLAlchemy and JSON decoding."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return {"p50_ms": ms(percentile(times, 50)), "p99_ms": ms(percentile(times, 99))}


def part_reads(args: Any) -> dict[str, Any]:
    from jobgate import history
    from jobgate.db import Database

    url = args.database_url or "sqlite:///" + str(sqlite_file())
    loaded = None
    db = Database(url)
    try:
        db.upgrade()
        if args.reuse_rows:
            with db.session() as session:
                have = session.execute(
                    text("SELECT count(*) FROM jobs WHERE partner_id LIKE 'ptn_bench%'")
                ).scalar_one()
            if have == args.read_rows:
                loaded = {"rows": have, "reused": True}
        if loaded is None:
            loaded = load_rows(url, args.read_rows, args.read_partners)
        with db.session() as session:
            ids = list(
                session.execute(
                    text(
                        "SELECT job_id FROM jobs WHERE partner_id = :p ORDER BY random() LIMIT 2000"
                    ),
                    {"p": READ_PARTNER},
                ).scalars()
            )
            # Deep cursors: positions 1000..N-100 of the partner's list, newest first.
            mine = session.execute(
                text("SELECT count(*) FROM jobs WHERE partner_id = :p"), {"p": READ_PARTNER}
            ).scalar_one()
            positions = sorted(random.Random(1).sample(range(min(1000, mine // 2), mine - 40), 20))
            deep = []
            for position in positions:
                row = session.execute(
                    text(
                        "SELECT created_at, job_id FROM jobs WHERE partner_id = :p "
                        "ORDER BY created_at DESC, job_id DESC LIMIT 1 OFFSET :o"
                    ),
                    {"p": READ_PARTNER, "o": position},
                ).one()
                deep.append(
                    history.encode_cursor({"created_at": iso(_aware(row[0])), "job_id": row[1]})
                )
        rare_task = TASKS[-1][0]
        queries = {
            "list: first page": dict(limit=20),
            "list: status=FAILURE": dict(status="FAILURE", limit=20),
            f"list: task={rare_task}": dict(task=rare_task, limit=20),
            "list: deep cursor page": dict(limit=20, cursor=deep[0]),
        }
        plans = {
            # Read on the DBAPI connection itself (Database.read_first): no engine event.
            "job by id": explain_statement(
                db,
                history.JOB_SQL.replace("%s", "?") if db.is_sqlite else history.JOB_SQL,
                (ids[0],),
            ),
            **{
                name: explain(db, lambda q=q: history.page(db, partner_id=READ_PARTNER, **q))
                for name, q in queries.items()
            },
            "admin list: status=FAILURE": explain(
                db, lambda: history.page(db, partner_id=None, status="FAILURE", limit=20)
            ),
        }
        local = {
            "job by id": in_process(db, lambda: history.job(db, random.choice(ids)), 300),
            **{
                name: in_process(
                    db, lambda q=q: history.page(db, partner_id=READ_PARTNER, **q), 300
                )
                for name, q in queries.items()
            },
        }
    finally:
        db.dispose()

    # Nothing cached, except the reference set: the first 200 sampled jobs written back
    # to Redis as the gateway holds a finished job, so that the same gateway serves them
    # from Redis (what a read cost before the database, measured in the same run).
    from jobgate.history import jobs as archived
    from jobgate.store import _encode

    cached = ids[:200]
    db = Database(url)
    try:
        records = archived(db, cached)
    finally:
        db.dispose()
    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    pipe = client.pipeline(transaction=False)
    for job_id, record in records.items():
        pipe.hset(f"jobgate:job:{job_id}", mapping=_encode(record))
    pipe.execute()
    client.close()
    ids = ids[200:]
    stack = Stack(args.redis_url, {**_gateway_env(args.redis_url), "JOBGATE_DATABASE_URL": url})
    auth = {"Authorization": f"Bearer {READ_KEY}"}
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    targets: dict[str, list[bytes]] = {
        "GET /v1/jobs/{id} (database)": [
            request_bytes("GET", f"/v1/jobs/{i}", headers=auth) for i in ids
        ],
        "GET /v1/jobs/{id} (Redis, reference)": [
            request_bytes("GET", f"/v1/jobs/{i}", headers=auth) for i in cached
        ],
        "list: first page": [request_bytes("GET", "/v1/jobs?limit=20", headers=auth)],
        "list: status=FAILURE": [
            request_bytes("GET", "/v1/jobs?status=FAILURE&limit=20", headers=auth)
        ],
        f"list: task={rare_task}": [
            request_bytes("GET", f"/v1/jobs?task={rare_task}&limit=20", headers=auth)
        ],
        "list: deep cursor page": [
            request_bytes("GET", f"/v1/jobs?limit=20&cursor={c}", headers=auth) for c in deep
        ],
        "admin list: status=FAILURE (all partners)": [
            request_bytes("GET", "/v1/jobs?status=FAILURE&limit=20", headers=admin)
        ],
    }
    checks: dict[str, Any] = {}
    runs: dict[str, list] = {name: [] for name in targets}
    try:
        gateway = stack.start_gateway(args.gunicorn)
        import requests as http

        for name, raws in targets.items():
            path = raws[0].split(b" ", 2)[1].decode()
            headers = admin if name.startswith("admin") else auth
            answer = http.get(stack.url("gateway", path), headers=headers, timeout=30)
            body = answer.json()
            checks[name] = {
                "status": answer.status_code,
                "jobs": len(body.get("jobs", [])) if "jobs" in body else None,
                "bytes": len(answer.content),
            }
        # Warm both gunicorn processes' pools and caches.
        for raws in targets.values():
            run_load(
                stack.ports["gateway"],
                lambda n, raws=raws: raws[n % len(raws)],
                concurrency=args.read_concurrency,
                total=200,
            )
        cpu = stack.cpu_meter({"gateway": gateway})
        backends = Backends(url)
        backends.start()
        for round_no in range(args.read_rounds):
            names = list(targets) if round_no % 2 == 0 else list(targets)[::-1]
            for name in names:
                raws = targets[name]
                runs[name].append(
                    run_load(
                        stack.ports["gateway"],
                        lambda n, raws=raws: raws[n % len(raws)],
                        concurrency=args.read_concurrency,
                        total=args.read_requests,
                        seconds=60,
                    )
                )
        cpu_used = cpu.used()
        backends.stop()
    finally:
        stack.close()
    total = sum(len(load.latencies) for loads in runs.values() for load in loads) or 1
    http_results = {}
    for name, loads in runs.items():
        summary = pooled(loads).summary()
        summary["rounds_p99_ms"] = [load.summary()["p99_ms"] for load in loads]
        target = TARGETS["job_p99_ms"] if name.startswith("GET") else TARGETS["page_p99_ms"]
        informative = name.startswith("admin") or "reference" in name
        summary["target_p99_ms"] = None if informative else target
        summary["met"] = None if informative else (summary["p99_ms"] or 1e9) < target
        http_results[name] = summary
    return {
        "database": "postgresql" if url.startswith("postgresql") else "sqlite",
        "loaded": loaded,
        "concurrency": args.read_concurrency,
        "checks": checks,
        "http": http_results,
        "explain": plans,
        "in_process": local,
        "database_connections": {
            "backends_at_end": backends.last,
            "distinct_backends_seen": len(backends.seen),
            "requests": total,
            "note": "distinct PostgreSQL backends serving the gateway during the measured "
            "runs (sampled every 50 ms): more than the pool holds means connections were "
            "opened and closed while serving",
        },
        "cpu_us_per_request": {k: round(1e6 * v / total, 1) for k, v in cpu_used.items()},
    }


class Backends(threading.Thread):
    """The PostgreSQL backends connected to the bench database, sampled every 50 ms."""

    def __init__(self, url: str) -> None:
        super().__init__(name="bench-backends", daemon=True)
        self.url = url
        self.seen: set[int] = set()
        self.last = 0
        self._halt = threading.Event()

    def run(self) -> None:
        if not self.url.startswith("postgresql"):
            return
        import psycopg

        dsn = self.url.replace("postgresql+psycopg://", "postgresql://")
        name = dsn.rsplit("/", 1)[1].split("?", 1)[0]
        with psycopg.connect(dsn.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            while not self._halt.is_set():
                pids = [
                    row[0]
                    for row in conn.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,)
                    )
                ]
                self.seen.update(pids)
                self.last = len(pids)
                self._halt.wait(0.05)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def _aware(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _gateway_env(redis_url: str) -> dict[str, str]:
    from bench.common import gateway_env

    return gateway_env(redis_url)


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL"),
        help="PostgreSQL for e2e, A/B and reads (its job tables are emptied); "
        "default: a new SQLite file (reads then run on SQLite)",
    )
    parser.add_argument("--parts", default=",".join(PARTS), help="comma list of " + "/".join(PARTS))
    parser.add_argument("--jobs", type=int, default=100_000, help="e2e jobs")
    parser.add_argument("--concurrency", type=int, default=32, help="submitting connections")
    parser.add_argument("--cache-ttl", type=int, default=30, help="JOBGATE_JOB_CACHE_TTL, s")
    parser.add_argument("--result-expires", type=int, default=30, help="JOBGATE_RESULT_EXPIRES")
    parser.add_argument("--sample-every", type=float, default=0.25, help="lag sampling, s")
    parser.add_argument(
        "--settle", type=float, default=30.0, help="after the TTLs: wait for the key count"
    )
    parser.add_argument("--stall", type=float, default=60.0)
    parser.add_argument("--cap", type=float, default=1800.0, help="time cap of a wait, s")
    parser.add_argument("--drain-jobs", type=int, default=50_000)
    parser.add_argument("--entries-per-job", type=int, default=3, choices=(1, 2, 3))
    parser.add_argument("--archive-batch", type=int, default=500, help="JOBGATE_ARCHIVE_BATCH")
    parser.add_argument("--before", default=BEFORE, help="A/B: the commit before ('' = none)")
    parser.add_argument("--ab-jobs", type=int, default=5000)
    parser.add_argument("--ab-rounds", type=int, default=3)
    parser.add_argument("--read-rows", type=int, default=1_000_000)
    parser.add_argument("--read-partners", type=int, default=100)
    parser.add_argument("--read-requests", type=int, default=3000, help="per target and round")
    parser.add_argument("--read-rounds", type=int, default=2)
    parser.add_argument("--read-concurrency", type=int, default=16)
    parser.add_argument(
        "--reuse-rows", action="store_true", help="keep the read rows a previous run loaded"
    )
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {sorted(unknown)}")
    started = machine()
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for part in PARTS:
        if part not in parts:
            continue
        t = time.perf_counter()
        print(f"== {part} (load {os.getloadavg()[0]:.2f})", flush=True)
        results[part] = globals()[f"part_{part}"](args)
        timings[part] = round(time.perf_counter() - t, 1)
    results["ratios"] = ratios(results)
    report(results)
    write_result(
        "archive",
        {
            "benchmark": "archive",
            "config": {
                "gunicorn": gunicorn_shape(args.gunicorn),
                "worker": worker_shape(args.worker_concurrency, args.worker_instances),
                "database": _safe(args.database_url),
                "parts": parts,
                "jobs": args.jobs,
                "cache_ttl_s": args.cache_ttl,
                "result_expires_s": args.result_expires,
                "drain_jobs": args.drain_jobs,
                "entries_per_job": args.entries_per_job,
                "archive_batch": args.archive_batch,
                "before": args.before,
                "ab_jobs": args.ab_jobs,
                "ab_rounds": args.ab_rounds,
                "read_rows": args.read_rows,
                "read_partners": args.read_partners,
                "read_requests": args.read_requests,
                "read_rounds": args.read_rounds,
                "read_concurrency": args.read_concurrency,
                "targets": TARGETS,
            },
            "machine": started,
            "part_seconds": timings,
            "results": results,
        },
        args.out,
    )
    return 0


def _safe(url: str | None) -> str | None:
    if not url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.split('@', 1)[1]}"


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """Archive throughput over the end-to-end job rate measured in the same run."""
    rates = []
    if "e2e" in results and results["e2e"]["jobs_per_s_finished"]:
        rates.append(results["e2e"]["jobs_per_s_finished"])
    if "ab" in results and results["ab"]["summary"]["after"]["jobs_per_s_finished_mean"]:
        rates.append(results["ab"]["summary"]["after"]["jobs_per_s_finished_mean"])
    out: dict[str, Any] = {"e2e_jobs_per_s": max(rates) if rates else None}
    for name, row in results.get("drain", {}).items():
        out[f"drain_{name}_over_e2e"] = round(row["jobs_per_s"] / max(rates), 2) if rates else None
    return out


def report(results: dict[str, Any]) -> None:
    rows: list[list[Any]] = []
    if "e2e" in results:
        e = results["e2e"]
        lag, mem = e["archive_lag"], e["redis"]
        rows += [
            ["e2e jobs", e["jobs"], ""],
            ["e2e jobs/s finished", e["jobs_per_s_finished"], ""],
            ["e2e lost / duplicated", f"{e['lost']} / {e['duplicated']}", "0 / 0"],
            ["rows in the database", f"{e['database']['rows']} of {e['jobs']}", ""],
            ["archive stream length p50/p99/max", _triple(lag["stream_length"]), ""],
            ["oldest entry age ms p50/p99/max", _triple(lag["oldest_entry_age_ms"]), ""],
            ["caught up after last job end s", lag["caught_up_after_last_job_end_s"], ""],
            ["Redis used_memory before MiB", _mib(mem["before"]["used_memory"]), ""],
            ["Redis used_memory peak MiB", _mib(mem["peak"]["used_memory"]), ""],
            ["Redis used_memory after TTLs MiB", _mib(mem["after"]["used_memory"]), "~ before"],
            [
                "keys left per job (claims)",
                f"{mem['keys_left_per_job']} ({mem['claim_keys_per_job']})",
                "~0",
            ],
        ]
    for name, row in results.get("drain", {}).items():
        rows.append([f"archiver drain {name} jobs/s", row["jobs_per_s"], ""])
    for name, value in results.get("ratios", {}).items():
        if name.startswith("drain_"):
            rows.append([f"{name}", value, f">= {TARGETS['drain_ratio']}"])
    if "ab" in results:
        for arm, row in results["ab"]["summary"].items():
            rows.append([f"A/B {arm} jobs/s finished", row["jobs_per_s_finished"], ""])
        rows.append(["A/B after / before", results["ab"]["after_over_before_finished"], "~1"])
    if "reads" in results:
        for name, row in results["reads"]["http"].items():
            target = row["target_p99_ms"]
            rows.append(
                [
                    f"{name} p50/p99 ms",
                    f"{row['p50_ms']} / {row['p99_ms']} ({row['rps']} req/s)",
                    f"p99 < {target}" if target else "",
                ]
            )
    print()
    print_table(["metric", "value", "target"], rows)


def _triple(row: dict[str, Any]) -> str:
    return " / ".join(str(round(v, 1)) if v is not None else "-" for v in row.values())


def _mib(value: int) -> float:
    return round(value / 2**20, 1)


if __name__ == "__main__":
    raise SystemExit(main())
