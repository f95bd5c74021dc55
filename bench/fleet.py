"""Fleet: N jobs through several gateways and workers on Redis Sentinel, with kills.

The shape users deploy when they outgrow one box, with processes standing for machines:
``--gateways`` gunicorn masters sharing one address (``--reuse-port``: the kernel spreads
connections; a dead one's share goes to the others), ``--workers`` ``jobgate worker``s
with distinct node names (each a prefork job pool plus its gevent delivery pool), and
Redis as a primary, a replica and three sentinels (``bench.sentinel``) that the store, the
broker and the result backend all follow.

Jobs are submitted at ``--rate`` per second by ``--submitters`` threads, each POST with
its own ``Idempotency-Key`` and sent again (same key) on a connection error or a 5xx,
as a partner's client would. When the given share of jobs has been accepted, one fault
each (``--faults``): SIGKILL one gateway master with its workers (restarted
``--restart-after`` s later, as a supervisor would), SIGKILL one worker's whole tree (a
replacement starts at once), SIGKILL the Redis primary (the sentinels promote the
replica; the old primary comes back as a replica ``--restart-after`` s later).

Reported: jobs accepted, lost (accepted, no terminal webhook), of those the ones the
gateway answers 404 for, accepted jobs without a row in the database (the record: Redis
replicates asynchronously, so a failover may drop what it acknowledged, and the relay
rebuilds it from the row), statuses as the database holds them, jobs with more than one
terminal webhook id, same-id redeliveries, stranded records; per fault the longest
stretch with no submission accepted, the tries refused, and submit -> webhook latency of
the jobs accepted within 10 s of it (against the run's); and what ``WAIT 1`` costs per
write on this group.

    python -m bench.fleet [--jobs 20000] [--rate 60] [--faults gateway:0.25,worker:0.5,primary:0.75]
"""

from __future__ import annotations

import random
import shlex
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis
import requests

from bench.common import (
    SLEEP_PARAMS,
    Service,
    Stack,
    base_parser,
    fresh_database,
    gateway_env,
    gunicorn_shape,
    http_status,
    leftover_detail,
    leftovers,
    machine,
    print_table,
    spawn,
    stranded_count,
    wait_for,
    write_result,
)
from bench.common import free_port as new_port
from bench.recovery import Fleet, receiver_detail
from bench.sentinel import MASTER, SentinelGroup
from jobgate.connections import redis_client


class SentinelStack(Stack):
    """A bench stack whose Redis is reached through the sentinels."""

    def redis(self) -> redis.Redis:
        return redis_client(self.redis_url, sentinel_master=MASTER)


@dataclass
class Gateways:
    """``count`` gunicorn masters on one port (SO_REUSEPORT), restartable by index."""

    stack: Stack
    flags: str
    port: int = field(default_factory=new_port)
    started: int = 0

    def start(self, index: int) -> Service:
        name = f"gateway{index}-{self.started}"
        self.started += 1
        service = spawn(
            name,
            [
                sys.executable,
                "-m",
                "gunicorn",
                *shlex.split(self.flags),
                "--reuse-port",
                "-b",
                f"127.0.0.1:{self.port}",
                "--log-level",
                "warning",
                "wsgi:app",
            ],
            self.stack.env,
            self.stack.root,
        )
        self.stack.services[f"gateway{index}"] = service
        self.stack.ports["gateway"] = self.port
        service.wait_ready(
            lambda: http_status(self.stack.url("gateway", "/healthz")) == 200, 30, name
        )
        return service


@dataclass
class Submitted:
    """What the partner's client saw: accepted job ids, when, and how many tries."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    jobs: dict[int, str] = field(default_factory=dict)
    accepted_at: dict[str, float] = field(default_factory=dict)  # job id -> time.time()
    failed_at: list[float] = field(default_factory=list)  # tries answered 5xx or no answer
    first_try_at: dict[str, float] = field(default_factory=dict)  # job id -> its first try
    tries: Counter = field(default_factory=Counter)
    answers: Counter = field(default_factory=Counter)
    given_up: list[int] = field(default_factory=list)

    def count(self) -> int:
        with self.lock:
            return len(self.jobs)


def submit_one(
    session: requests.Session,
    url: str,
    key: str,
    body: dict[str, Any],
    index: int,
    run: str,
    out: Submitted,
    give_up: float,
) -> None:
    """POST job ``index`` until accepted (same Idempotency-Key on every try)."""
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": f"{run}-{index}"}
    deadline = time.monotonic() + give_up
    first_try = time.time()
    tries = 0
    while True:
        tries += 1
        try:
            answer = session.post(url, json=body, headers=headers, timeout=10)
            code = str(answer.status_code)
        except requests.RequestException as exc:
            answer, code = None, type(exc).__name__
        with out.lock:
            out.answers[code] += 1
        # 200: an earlier try created the job and its answer was lost (a replay).
        if answer is not None and answer.status_code in (200, 202):
            with out.lock:
                out.jobs[index] = job_id = answer.json()["job_id"]
                out.accepted_at[job_id] = time.time()
                out.first_try_at[job_id] = first_try
                out.tries[tries] += 1
            return
        with out.lock:
            out.failed_at.append(time.time())
        if answer is not None and answer.status_code < 500 and answer.status_code != 409:
            raise RuntimeError(f"job {index} refused: {answer.status_code} {answer.text[:200]}")
        if time.monotonic() > deadline:
            with out.lock:
                out.given_up.append(index)
            return
        time.sleep(0.2)


def submit_all(
    stack: Stack,
    key: str,
    body: dict[str, Any],
    jobs: int,
    rate: float,
    threads: int,
    out: Submitted,
    give_up: float,
) -> None:
    """``jobs`` submissions paced at ``rate``/s over ``threads`` connections."""
    url = stack.url("gateway", "/v1/jobs")
    run = f"fleet-{int(time.time())}"
    local = threading.local()
    start = time.monotonic()

    def one(index: int) -> None:
        pause = start + index / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        if not hasattr(local, "session"):
            local.session = requests.Session()
        submit_one(local.session, url, key, body, index, run, out, give_up)

    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(one, range(jobs)):
            pass


class Faults(threading.Thread):
    """Fires each fault once the given share of jobs is accepted."""

    def __init__(
        self, plan: list[tuple[str, float]], jobs: int, submitted: Submitted, act: Any
    ) -> None:
        super().__init__(daemon=True)
        self.plan, self.jobs, self.submitted, self.act = plan, jobs, submitted, act
        self.log: list[dict[str, Any]] = []
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for kind, share in self.plan:
                while self.submitted.count() < share * self.jobs:
                    if self.halt.wait(0.1):
                        return
                entry = {
                    "fault": kind,
                    "at": time.time(),
                    "accepted_before": self.submitted.count(),
                }
                entry.update(self.act(kind) or {})
                self.log.append(entry)
                print(f"fault: {kind} at {entry['accepted_before']} accepted {entry}", flush=True)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc


def load_under(
    faults: Faults,
    stack: Stack,
    partner: dict[str, Any],
    body: dict[str, Any],
    args: Any,
    submitted: Submitted,
    *,
    finish_faults: bool = False,
) -> tuple[float, float]:
    """Submit ``args.jobs`` at ``args.rate`` while ``faults`` run; (start, end of the
    submits). Then the faults are halted, or with ``finish_faults`` waited for first (one
    that outlasts the load, as a partition's heal may). Raises a fault's own error."""
    t0 = time.time()
    faults.start()
    submit_all(
        stack,
        partner["api_key"],
        body,
        args.jobs,
        args.rate,
        args.submitters,
        submitted,
        args.give_up,
    )
    submitted_at = time.time()
    if not finish_faults:
        faults.halt.set()
    faults.join(300)
    faults.halt.set()
    if faults.is_alive():
        raise RuntimeError("a fault was still in progress 300 s after the last submit")
    if faults.error:
        raise faults.error
    return t0, submitted_at


def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch in [start, end] with none of ``times`` in it, in seconds."""
    inside = sorted(t for t in times if start <= t <= end)
    edges = [start, *inside, end]
    return max(b - a for a, b in zip(edges, edges[1:], strict=False))


def kept_records(database_url: str, ids: list[str]) -> list[dict[str, Any] | None]:
    """Each accepted job as the database, the record, holds it (None: no row); Redis
    forgets settled jobs, so counting from it would call them not terminal."""
    from sqlalchemy import select

    from jobgate.db import Database
    from jobgate.db.models import Job

    db = Database(database_url)
    try:
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 1000):
            query = select(Job.job_id, Job.status, Job.record).where(
                Job.job_id.in_(ids[start : start + 1000])
            )
            for job_id, status, record in db.read(query):
                fields = {"runs": record.get("runs"), "error": record.get("error")}
                found[job_id] = {"status": status, **fields}
        return [found.get(job_id) for job_id in ids]
    finally:
        db.dispose()


def wait_cost(group: SentinelGroup, rounds: int = 2000) -> dict[str, Any]:
    """Mean ms per ``SET`` alone and ``SET`` followed by ``WAIT 1 1000`` on the primary."""
    port = group.master_port()
    client = group.client(port) if port else None
    if client is None:
        return {}
    try:
        timings = {}
        for name, wait in (("set", False), ("set_then_wait_1", True), ("set", False)):
            started = time.perf_counter()
            for n in range(rounds):
                client.set(f"bench:wait:{n}", "x")
                if wait:
                    client.execute_command("WAIT", 1, 1000)
            timings[name] = round((time.perf_counter() - started) / rounds * 1000, 4)
        client.delete(*(f"bench:wait:{n}" for n in range(rounds)))
        replicas = client.info("replication").get("connected_slaves")
    finally:
        client.close()
    return {"rounds": rounds, "mean_ms": timings, "replicas": replicas}


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=60.0, help="submissions per second")
    parser.add_argument("--submitters", type=int, default=16, help="submitting threads")
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="jobgate worker processes")
    parser.add_argument(
        "--faults", default="gateway:0.25,worker:0.5,primary:0.75", help="kind:share,…"
    )
    parser.add_argument("--restart-after", type=float, default=5.0)
    parser.add_argument(
        "--down-after", type=int, default=5000, help="sentinel down-after-milliseconds"
    )
    parser.add_argument("--retry-delays", default="1,2,3,5,5,10,10,10")
    parser.add_argument("--give-up", type=float, default=120.0, help="s a submission retries")
    parser.add_argument("--cap", type=float, default=1800.0)
    parser.add_argument("--quiet-cap", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not args.gunicorn:
        args.gunicorn = "-w 1"
    plan = [(kind, float(share)) for kind, share in (p.split(":") for p in args.faults.split(","))]
    rng = random.Random(args.seed)
    started = machine()
    group = SentinelGroup(down_after_ms=args.down_after).start()
    database_url = fresh_database()
    env = {
        **gateway_env(group.url),
        "JOBGATE_REDIS_SENTINEL_MASTER": MASTER,
        "JOBGATE_DATABASE_URL": database_url,
        "JOBGATE_WEBHOOK_RETRY_DELAYS": args.retry_delays,
    }
    stack = SentinelStack(group.url, env)
    gateways = Gateways(stack, args.gunicorn)
    fleet = Fleet(stack, args.worker_concurrency)
    submitted = Submitted()
    faults: Faults | None = None
    try:
        waited = wait_cost(group)
        print(f"WAIT cost: {waited}", flush=True)
        for index in range(args.gateways):
            gateways.start(index)
        partner = stack.create_partner()
        stack.start_receiver(partner["webhook_secret"])
        for _ in range(args.workers):
            fleet.add()
        fleet.wait_ready(args.workers)

        def act(kind: str) -> dict[str, Any]:
            if kind == "gateway":
                victim = stack.services["gateway0"]
                victim.kill()
                time.sleep(args.restart_after)
                gateways.start(0)
                return {"restarted_after_s": args.restart_after}
            if kind == "worker":
                node = rng.choice(sorted(fleet.ready()))
                fleet.kill(node)
                fleet.add()
                return {"node": node}
            if kind == "primary":
                promoted = group.kill_primary()
                time.sleep(args.restart_after)
                group.rejoin()
                return {"promoted_after_s": round(promoted, 2)}
            raise ValueError(f"unknown fault {kind!r}")

        body = {
            "task": "demo.sleep",
            "params": SLEEP_PARAMS,
            "callback_url": stack.url("receiver", "/hook"),
        }
        faults = Faults(plan, args.jobs, submitted, act)
        # A fault whose share was never reached does not fire.
        t0, submitted_at = load_under(faults, stack, partner, body, args, submitted)
        ids = list(submitted.jobs.values())
        print(f"accepted {len(ids)} jobs in {submitted_at - t0:.1f} s", flush=True)

        def hooked() -> int:
            return requests.get(stack.url("receiver", "/stats"), timeout=30).json()["jobs"]

        try:
            wait_for(lambda: hooked() >= len(ids), t0 + args.cap - time.time(), "webhooks", 1.0)
        except RuntimeError as exc:
            print(exc, flush=True)
        done_at = time.time()
        try:
            wait_for(lambda: stranded_count(leftovers(stack)) == 0, args.quiet_cap, "quiet", 1.0)
        except RuntimeError as exc:
            print(exc, flush=True)
        quiet_at = time.time()
        left = leftovers(stack)
        evidence = leftover_detail(stack) if stranded_count(left) else None
        seen = receiver_detail(stack)
        recs = kept_records(database_url, ids)
        by_job = seen["by_job"]
        lost = [j for j in ids if j not in by_job]
        gone = [
            j
            for j in lost
            if requests.get(
                stack.url("gateway", f"/v1/jobs/{j}"),
                headers={"Authorization": f"Bearer {partner['api_key']}"},
                timeout=10,
            ).status_code
            == 404
        ]
    finally:
        if faults is not None:
            faults.halt.set()
        stack.close()
        group.stop()
    several = {j: by_job[j]["ids"] for j in ids if j in by_job and len(by_job[j]["ids"]) > 1}
    statuses = Counter(r["status"] or "not terminal" for r in recs if r is not None)
    unkept = [j for j, r in zip(ids, recs, strict=True) if r is None]
    errors = Counter((r["error"] or "")[:60] for r in recs if r and r["status"] == "FAILURE")
    runs = Counter(int(r["runs"] or 0) for r in recs if r is not None)
    arrivals = [entry["first_at"] for entry in by_job.values()]
    # From the partner's first try, so the time a fault made it retry counts.
    latency = {
        job: by_job[job]["first_at"] - at
        for job, at in submitted.first_try_at.items()
        if job in by_job
    }
    accepted_times = list(submitted.accepted_at.values())
    pauses = []
    for entry in faults.log if faults else []:
        at = entry["at"]
        near = [v for j, v in latency.items() if abs(submitted.accepted_at[j] - at) <= 10]
        pauses.append(
            {
                "fault": entry["fault"],
                "at_s": round(at - t0, 1),
                "accepted_before": entry["accepted_before"],
                # The longest stretch with no submission accepted, from 1 s before the
                # fault to 30 s after (or the last acceptance), and the tries refused then.
                "submit_pause_s": round(
                    longest_gap(
                        accepted_times, at - 1, min(at + 30, max(accepted_times, default=at))
                    ),
                    2,
                ),
                "submit_tries_failed": sum(at - 1 <= t <= at + 30 for t in submitted.failed_at),
                # Submit -> webhook of the jobs accepted within 10 s of the fault.
                "latency_p50_s": round(statistics.median(near), 2) if near else None,
                "latency_max_s": round(max(near), 2) if near else None,
                **{k: v for k, v in entry.items() if k not in ("fault", "at", "accepted_before")},
            }
        )
    result = {
        "jobs_offered": args.jobs,
        "jobs_accepted": len(ids),
        "submissions_given_up": len(submitted.given_up),
        "submit_answers": dict(submitted.answers),
        "tries_per_accepted_job": {str(k): v for k, v in sorted(submitted.tries.items())},
        "statuses": dict(statuses),
        "failure_errors": dict(errors),
        "runs": {str(k): v for k, v in sorted(runs.items())},
        "lost": len(lost),
        "lost_jobs": lost[:20],
        "acknowledged_then_gone": len(gone),
        "gone_jobs": gone[:20],
        "accepted_without_row": len(unkept),
        "unkept_jobs": unkept[:20],
        "jobs_with_several_ids": len(several),
        "several_ids": dict(list(several.items())[:20]),
        "redeliveries_same_id": seen["duplicates"],
        "bad_signatures": seen["bad_signatures"],
        "leftovers": left,
        "stranded": stranded_count(left),
        "stranded_evidence": evidence,
        "repairs": left["repairs"],
        "faults": pauses,
        "wait_cost": waited,
        "submit_seconds": round(submitted_at - t0, 1),
        "all_webhooked_s": round(done_at - t0, 1),
        "quiet_s": round(quiet_at - t0, 1),
        "jobs_per_s": round(len(by_job) / (max(arrivals) - t0), 1) if arrivals else None,
        "latency_p50_s": round(statistics.median(latency.values()), 2) if latency else None,
        "latency_max_s": round(max(latency.values()), 2) if latency else None,
    }
    print()
    print_table(
        ["metric", "value"],
        [
            ["jobs accepted / offered", f"{len(ids)} / {args.jobs}"],
            ["submissions given up", result["submissions_given_up"]],
            ["statuses", dict(statuses)],
            ["runs per job", result["runs"]],
            ["lost (accepted, no terminal webhook)", result["lost"]],
            ["of those gone everywhere (404)", result["acknowledged_then_gone"]],
            ["accepted, no row in the database", result["accepted_without_row"]],
            ["jobs with >1 terminal webhook id", result["jobs_with_several_ids"]],
            ["same-id redeliveries", result["redeliveries_same_id"]],
            ["bad signatures", result["bad_signatures"]],
            ["stranded", result["stranded"]],
            ["sweeper repairs", result["repairs"] or "none"],
            ["jobs/s (webhooked)", result["jobs_per_s"]],
            [
                "submit -> webhook p50 / max, s",
                f"{result['latency_p50_s']} / {result['latency_max_s']}",
            ],
            ["all webhooked after, s", result["all_webhooked_s"]],
        ],
    )
    print()
    print_table(
        ["fault", "at s", "submit pause s", "tries failed", "latency p50 / max s", "detail"],
        [
            [
                p["fault"],
                p["at_s"],
                p["submit_pause_s"],
                p["submit_tries_failed"],
                f"{p['latency_p50_s']} / {p['latency_max_s']}",
                p.get("node") or p.get("promoted_after_s") or p.get("restarted_after_s"),
            ]
            for p in pauses
        ],
    )
    write_result(
        "fleet",
        {
            "benchmark": "fleet",
            "task": "demo.sleep",
            "params": SLEEP_PARAMS,
            "config": {
                "gateways": f"{args.gateways} x gunicorn {gunicorn_shape(args.gunicorn)} "
                "on one port (--reuse-port)",
                "workers": f"{args.workers} x jobgate worker -c {args.worker_concurrency}",
                "redis": "Sentinel: primary, replica, 3 sentinels, "
                f"down-after-milliseconds {args.down_after}",
                "rate": args.rate,
                "submitters": args.submitters,
                "faults": args.faults,
                "restart_after_s": args.restart_after,
                "webhook_retry_delays": args.retry_delays,
            },
            "machine": started,
            "results": result,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
