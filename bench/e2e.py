"""End-to-end benchmark: N ``demo.sleep`` 0 s jobs, each with a signed callback to a local
receiver that verifies every signature; throughput, webhook latency, lost and duplicated
events, and memory (gateway RSS, Celery worker RSS, Redis bytes per finished job).

    python -m bench.e2e [--jobs 10000] [--concurrency 32] [--profile DIR]
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from bench.common import (
    SLEEP_PARAMS,
    WORKER_SHAPES,
    Stack,
    base_parser,
    gunicorn_shape,
    machine,
    print_table,
    worker_roles,
    worker_shape,
    write_result,
)
from bench.loadgen import request_bytes, run_load
from bench.profile import PySpy, top_frames


def stats(stack: Stack, with_jobs: bool = False) -> dict[str, Any]:
    query = "?jobs=1" if with_jobs else ""
    return requests.get(stack.url("receiver", f"/stats{query}"), timeout=30).json()


def wait_for_webhooks(stack: Stack, expected: int, stall: float, cap: float) -> None:
    """Until ``expected`` jobs have a webhook, no new one for ``stall`` s, or ``cap`` s."""
    deadline = time.monotonic() + cap
    seen, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_seen = stats(stack)["jobs"]
        if now_seen >= expected:
            return
        if now_seen != seen:
            seen, last_change = now_seen, time.monotonic()
        elif time.monotonic() - last_change > stall:
            return
        time.sleep(0.5)


def queues_empty(stack: Stack) -> bool:
    client = stack.redis()
    try:
        return not any(client.llen(q) for q in ("jobs", "webhooks")) and not client.hlen("unacked")
    finally:
        client.close()


def finished_times(stack: Stack, ids: list[str]) -> list[float]:
    client = stack.redis()
    try:
        pipe = client.pipeline()
        for job_id in ids:
            pipe.hget(f"jobgate:job:{job_id}", "finished_at")
        return [
            datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
            for v in pipe.execute()
            if v
        ]
    finally:
        client.close()


def command_counts(stack: Stack) -> Counter[str]:
    """Redis calls so far by command (INFO commandstats)."""
    client = stack.redis()
    try:
        return Counter(
            {
                name.removeprefix("cmdstat_"): int(row["calls"])
                for name, row in client.info("commandstats").items()
            }
        )
    finally:
        client.close()


def key_family(key: str) -> str:
    """Group a Redis key by what it is: ``jobgate:job:<id>`` -> ``jobgate:job:*``."""
    if key.startswith("celery-task-meta-"):
        return "celery-task-meta-*"
    parts = key.split(":")
    if len(parts) >= 3 and parts[0] == "jobgate":
        return ":".join(parts[:2]) + ":*"
    return key


def redis_memory(stack: Stack, jobs: int, before: int) -> dict[str, Any]:
    """used_memory growth per job and MEMORY USAGE by key family, per job."""
    client = stack.redis()
    try:
        used = int(client.info("memory")["used_memory"])
        by_family: Counter[str] = Counter()
        count: Counter[str] = Counter()
        keys = list(client.scan_iter(count=1000))
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            pipe = client.pipeline()
            for key in chunk:
                pipe.memory_usage(key, samples=0)
            for key, size in zip(chunk, pipe.execute(), strict=True):
                by_family[key_family(key)] += size or 0
                count[key_family(key)] += 1
        kept = sum(v for k, v in by_family.items() if k != "celery-task-meta-*")
        return {
            "used_memory_delta_per_job": round((used - before) / jobs) if jobs else None,
            "bytes_per_job_by_family": {
                k: {"keys": count[k], "bytes_per_job": round(v / jobs)}
                for k, v in by_family.most_common()
            }
            if jobs
            else {},
            "retained_bytes_per_finished_job": round(kept / jobs) if jobs else None,
            "note": "retained = every key but celery-task-meta-* (expires after "
            "result_expires, 1 h); the job record stays for the retention period",
        }
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=32, help="submitting connections")
    parser.add_argument(
        "--stall", type=float, default=60.0, help="give up when no webhook arrives for this long"
    )
    parser.add_argument("--cap", type=float, default=600.0, help="overall time cap, seconds")
    parser.add_argument("--profile", type=Path, help="py-spy raw profiles into this folder")
    parser.add_argument(
        "--worker-shape",
        choices=WORKER_SHAPES,
        default="gevent",
        help="gevent: jobgate worker as shipped; threads: its delivery pool "
        "on threads; single: one prefork worker on both queues (before)",
    )
    args = parser.parse_args(argv)
    started = machine()
    stack = Stack.fresh(args.redis_url)
    spies: dict[str, PySpy] = {}
    try:
        gateway = stack.start_gateway(args.gunicorn)
        worker = stack.start_worker(
            args.worker_concurrency,
            events=False,
            instances=args.worker_instances,
            shape=args.worker_shape,
        )
        partner = stack.create_partner()
        stack.start_receiver(partner["webhook_secret"])
        client = stack.redis()
        redis_before = int(client.info("memory")["used_memory"])
        client.close()
        commands_before = command_counts(stack)
        job = {
            "task": "demo.sleep",
            "params": SLEEP_PARAMS,
            "callback_url": stack.url("receiver", "/hook"),
        }
        raw = request_bytes(
            "POST", "/v1/jobs", body=job, headers={"Authorization": f"Bearer {partner['api_key']}"}
        )
        if args.profile:
            spies = {
                name: PySpy(service.proc.pid, args.profile / f"{name}.txt")
                for name, service in (("gateway", gateway), ("worker", worker))
            }
        cpu = stack.cpu_meter(
            {"gateway": gateway, "worker": worker, "receiver": stack.services["receiver"]}
        )
        roles_before = worker_roles(worker)
        t0 = time.time()
        load = run_load(
            stack.ports["gateway"],
            lambda _i: raw,
            concurrency=args.concurrency,
            total=args.jobs,
            seconds=args.cap,
            keep_bodies=True,
        )
        submitted_at = time.time()
        ids = [body["job_id"] for body in load.json_bodies() if "job_id" in body]
        wait_for_webhooks(stack, len(ids), args.stall, args.cap)
        done_at = time.time()
        cpu_used = cpu.used()
        roles = worker_roles(worker, since=roles_before)
        for spy in spies.values():
            spy.stop()
        # Let retries or stray redeliveries show up before counting duplicates.
        settle = time.monotonic() + 10
        while time.monotonic() < settle and not queues_empty(stack):
            time.sleep(0.2)
        seen = stats(stack, with_jobs=True)
        commands = command_counts(stack)
        commands.subtract(commands_before)
        finished = finished_times(stack, ids)
        rss = {"gateway": gateway.rss(), "worker": worker.rss()}
        memory = redis_memory(stack, len(ids), redis_before)
    finally:
        for spy in spies.values():
            spy.stop()
        stack.close()
    lost = sorted(set(ids) - set(seen.pop("job_ids")))
    last = seen["last_at"] or done_at
    result = {
        "jobs_submitted": len(ids),
        "submit": load.summary(),
        "jobs_finished": len(finished),
        "jobs_per_s_finished": round(len(finished) / (max(finished) - t0), 1) if finished else None,
        "jobs_per_s_webhooked": round(seen["jobs"] / (last - t0), 1) if seen["jobs"] else None,
        "submit_seconds": round(submitted_at - t0, 2),
        "total_seconds": round(last - t0, 2),
        "webhook_latency_p50_ms": seen["latency_p50_ms"],
        "webhook_latency_p99_ms": seen["latency_p99_ms"],
        "webhook_latency_max_ms": seen["latency_max_ms"],
        "lost": len(lost),
        "lost_sample": lost[:10],
        "duplicated": seen["duplicates"],
        "jobs_with_several_ids": seen["jobs_with_several_ids"],
        "bad_signatures": seen["bad_signatures"],
        "receiver": seen,
        "rss": rss,
        "redis": memory,
        "cpu_ms_per_job": {
            name: round(1000 * used / len(ids), 3) for name, used in cpu_used.items()
        }
        if ids
        else {},
        "worker_cpu_ms_per_job_by_role": {
            role: round(1000 * used / len(ids), 3) for role, used in roles.items()
        }
        if ids
        else {},
        "cpu_busy_pct": round(100 * sum(cpu_used.values()) / (done_at - t0), 1),
        "redis_commands_per_job_server_wide": {
            name: round(n / len(ids), 2) for name, n in commands.most_common() if n > 0
        }
        if ids
        else {},
    }
    if args.profile:
        result["profile"] = {
            name: top_frames(args.profile / f"{name}.txt") for name in ("gateway", "worker")
        }
    print_table(
        ["metric", "value"],
        [
            ["jobs submitted", len(ids)],
            ["submit req/s", load.summary()["rps"]],
            ["jobs/s (finished)", result["jobs_per_s_finished"]],
            ["jobs/s (webhook received)", result["jobs_per_s_webhooked"]],
            ["webhook latency p50 ms", result["webhook_latency_p50_ms"]],
            ["webhook latency p99 ms", result["webhook_latency_p99_ms"]],
            ["lost", result["lost"]],
            ["duplicated", result["duplicated"]],
            ["bad signatures", result["bad_signatures"]],
            ["gateway RSS MiB", rss["gateway"]["total_mib"]],
            ["worker RSS MiB", rss["worker"]["total_mib"]],
            ["Redis bytes / retained job", memory["retained_bytes_per_finished_job"]],
            [
                "Redis cmds / job (server-wide)",
                round(sum(result["redis_commands_per_job_server_wide"].values()), 1),
            ],
            *[[f"CPU ms / job: {name}", ms] for name, ms in result["cpu_ms_per_job"].items()],
            ["CPU ms / job: total", round(sum(result["cpu_ms_per_job"].values()), 2)],
            *[
                [f"worker CPU ms / job: {role}", ms]
                for role, ms in result["worker_cpu_ms_per_job_by_role"].items()
            ],
            ["CPU busy % (of 100 per core)", result["cpu_busy_pct"]],
        ],
    )
    write_result(
        "e2e",
        {
            "benchmark": "e2e",
            "task": "demo.sleep",
            "params": SLEEP_PARAMS,
            "config": {
                "gunicorn": gunicorn_shape(args.gunicorn),
                "worker": worker_shape(
                    args.worker_concurrency, args.worker_instances, shape=args.worker_shape
                ),
                "submit_concurrency": args.concurrency,
            },
            "machine": started,
            "results": result,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
