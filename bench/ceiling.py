"""Celery's ceiling: how many do-nothing tasks a worker drains per second on this machine.

Every jobgate job is two Celery tasks (the job, then its webhook on its own queue), so
half this rate bounds the end-to-end jobs/s from above, before the gateway, the job's own
work, signing, HTTP and the receiver take their share of the same cores.

N ``bench.noop`` messages are queued first; then ``celery worker -P prefork -c C`` starts
and the rate is timed from its first message to an empty queue with nothing unacked.

    python -m bench.ceiling [--tasks 20000] [--worker-concurrency 2]
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from typing import Any

import redis

from bench.ceiling_app import MODES, build
from bench.common import (
    base_parser,
    cpu_seconds,
    descendants,
    fresh_database,
    gateway_env,
    machine,
    print_table,
    redis_pid,
    spawn,
    wait_for,
    write_result,
)
from config import Settings
from tasks.publish import task_message


def queue_noops(client: redis.Redis, app: Any, count: int) -> str:
    """Push ``count`` noop messages onto the app's default queue, as kombu would."""
    queue = app.conf.task_default_queue
    pipe = client.pipeline(transaction=False)
    for index in range(count):
        pipe.lpush(queue, task_message(app, "bench.noop", str(uuid.uuid4()), {}, queue))
        if index % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    return queue


def drain(
    redis_url: str, mode: str, count: int, concurrency: int, instances: int = 1
) -> dict[str, Any]:
    """Queue ``count`` noops for ``mode``, start ``instances`` workers, time them emptying
    the queue."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    # A jobgate worker starts on a migrated database only (its start check), used or not.
    env = {
        **gateway_env(redis_url),
        "JOBGATE_DATABASE_URL": fresh_database(),
        "BENCH_CEILING_MODE": mode,
    }
    queue = queue_noops(client, build(mode, Settings.from_env(env)), count)
    redis_process = redis_pid(client)
    workers = [
        spawn(
            f"ceiling-worker-{n}",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.ceiling_app",
                "worker",
                "-P",
                "prefork",
                "-c",
                str(concurrency),
                "-Q",
                queue,
                "-l",
                "WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"ceiling-{os.getpid()}-{n}@localhost",
            ],
            env,
        )
        for n in range(instances)
    ]
    try:
        wait_for(lambda: client.llen(queue) < count, 60, "the worker's first task", interval=0.002)
        pids = [p for w in workers for p in (w.proc.pid, *descendants(w.proc.pid))]
        start, left = time.perf_counter(), client.llen(queue)
        worker_cpu, redis_cpu = cpu_seconds(pids), cpu_seconds([redis_process])
        wait_for(
            lambda: client.llen(queue) == 0 and client.hlen("unacked") == 0,
            600,
            "the queue to drain",
            interval=0.01,
        )
        elapsed = time.perf_counter() - start
        worker_cpu = cpu_seconds(pids) - worker_cpu
        redis_cpu = cpu_seconds([redis_process]) - redis_cpu
    finally:
        for worker in workers:
            worker.stop()
        client.close()
    return {
        "settings": MODES[mode],
        "tasks": left,
        "seconds": round(elapsed, 3),
        "tasks_per_s": round(left / elapsed, 1),
        "worker_cpu_pct": round(100 * worker_cpu / elapsed, 1),
        "redis_cpu_pct": round(100 * redis_cpu / elapsed, 1),
        "worker_cpu_ms_per_task": round(1000 * worker_cpu / left, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20000)
    args = parser.parse_args(argv)
    started = machine()
    results = {
        mode: drain(
            args.redis_url, mode, args.tasks, args.worker_concurrency, args.worker_instances
        )
        for mode in MODES
    }
    print_table(
        [
            "settings",
            "tasks",
            "tasks/s",
            "worker CPU %",
            "Redis CPU %",
            "worker CPU ms/task",
            "jobs/s bound (2 tasks/job)",
        ],
        [
            [
                mode,
                r["tasks"],
                r["tasks_per_s"],
                r["worker_cpu_pct"],
                r["redis_cpu_pct"],
                r["worker_cpu_ms_per_task"],
                round(r["tasks_per_s"] / 2, 1),
            ]
            for mode, r in results.items()
        ],
    )
    write_result(
        "ceiling",
        {
            "benchmark": "ceiling",
            "task": "bench.noop",
            "config": {
                "worker": f"{args.worker_instances} x celery worker -P prefork -c "
                f"{args.worker_concurrency}",
                "tasks": args.tasks,
            },
            "machine": started,
            "results": results,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
