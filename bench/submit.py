"""Submit benchmark: ``POST /v1/jobs`` against Flower's ``POST /api/task/async-apply/<task>``.

Both run in the same script run on the same Celery app and Redis, alternating per round,
so each ratio is measured under the same machine load; the queue is emptied between
levels. By default no worker consumes during the measurement. With ``--consuming`` a
``jobgate worker`` runs throughout, as users deploy: jobgate's jobs run on it (start,
progress, end), while the messages Flower sends have no job record and are refused at
start, so the worker takes less CPU from Flower's rounds than from jobgate's (a handicap
for jobgate).

    python -m bench.submit [--requests 3000] [--concurrency 1,16,64] [--rounds 2]
                           [--consuming]
"""

from __future__ import annotations

from typing import Any

from bench.common import (
    SLEEP_PARAMS,
    Stack,
    base_parser,
    gunicorn_shape,
    machine,
    print_table,
    write_result,
)
from bench.loadgen import Load, request_bytes, run_load

TARGETS = ("jobgate", "flower")


def pooled(loads: list[Load]) -> Load:
    """Several runs of one target and level as one (latencies pooled, times added)."""
    total = Load()
    for load in loads:
        total.latencies += load.latencies
        total.errors += load.errors
        total.elapsed += load.elapsed
        for code, count in load.statuses.items():
            total.statuses[code] = total.statuses.get(code, 0) + count
    return total


def requests_for(stack: Stack, partner: dict[str, Any]) -> dict[str, tuple[int, bytes]]:
    """(port, request bytes) that submit one ``demo.sleep`` job, per target."""
    auth = {"Authorization": f"Bearer {partner['api_key']}"}
    job = {"task": "demo.sleep", "params": SLEEP_PARAMS}
    return {
        "jobgate": (
            stack.ports["gateway"],
            request_bytes("POST", "/v1/jobs", body=job, headers=auth),
        ),
        "flower": (
            stack.ports["flower"],
            request_bytes(
                "POST", "/api/task/async-apply/demo.sleep", body={"kwargs": SLEEP_PARAMS}
            ),
        ),
    }


def ratio(ours: float | None, theirs: float | None) -> float | None:
    return round(ours / theirs, 2) if ours and theirs else None


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", type=int, default=3000, help="requests per target, level and round"
    )
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0, help="time cap of one run")
    parser.add_argument(
        "--consuming", action="store_true", help="a jobgate worker consumes throughout"
    )
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    started = machine()
    stack = Stack.fresh(args.redis_url)
    results: dict[str, Any] = {}
    try:
        stack.start_gateway(args.gunicorn)
        stack.start_flower()
        if args.consuming:
            stack.start_worker(args.worker_concurrency, instances=args.worker_instances)
        partner = stack.create_partner()
        targets = requests_for(stack, partner)
        queue = stack.redis()
        for port, raw in targets.values():  # warm up connections, imports, caches
            run_load(
                port,
                lambda _i, raw=raw: raw,
                concurrency=8,
                total=max(50, args.requests // 10),
                seconds=args.seconds,
            )
        for level in levels:
            runs: dict[str, list[Load]] = {name: [] for name in TARGETS}
            for round_no in range(args.rounds):
                order = TARGETS if round_no % 2 == 0 else TARGETS[::-1]
                for name in order:
                    port, raw = targets[name]
                    runs[name].append(
                        run_load(
                            port,
                            lambda _i, raw=raw: raw,
                            concurrency=level,
                            total=args.requests,
                            seconds=args.seconds,
                        )
                    )
            results[str(level)] = {name: pooled(loads).summary() for name, loads in runs.items()}
            queue.delete("jobs")
        queue.close()
    finally:
        stack.close()
    rows = []
    for level, by_target in results.items():
        for name in TARGETS:
            row = by_target[name]
            rows.append(
                [
                    level,
                    name,
                    row["rps"],
                    row["p50_ms"],
                    row["p99_ms"],
                    row["failed"],
                    ratio(row["rps"], by_target["flower"]["rps"]) if name == "jobgate" else "",
                ]
            )
    print_table(
        ["concurrency", "target", "req/s", "p50 ms", "p99 ms", "failed", "jobgate/flower"], rows
    )
    write_result(
        "submit-consuming" if args.consuming else "submit",
        {
            "benchmark": "submit",
            "task": "demo.sleep",
            "params": SLEEP_PARAMS,
            "config": {
                "gunicorn": gunicorn_shape(args.gunicorn),
                "requests": args.requests,
                "rounds": args.rounds,
                "levels": levels,
                "worker consuming": (
                    f"{args.worker_instances} x jobgate worker -c {args.worker_concurrency}"
                    if args.consuming
                    else "none"
                ),
            },
            "machine": started,
            "results": results,
            "ratios": {
                level: ratio(r["jobgate"]["rps"], r["flower"]["rps"])
                for level, r in results.items()
            },
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
