"""Serving shapes: ``GET /v1/jobs/{id}`` of finished jobs under several gunicorn flag sets,
against Flower's ``/api/task/info/<id>``, with the CPU each request costs each process.

Throughput at a fixed concurrency hides why one server is faster; CPU microseconds per
request (server processes, Redis, the load generator, read from /proc over the run) say
where the time goes. Each shape is started afresh per round; rounds alternate the order.

    python -m bench.serving [--shape '-k gthread --threads 8'] ... [--requests 10000]
"""

from __future__ import annotations

from typing import Any

from bench.common import (
    Service,
    Stack,
    base_parser,
    gunicorn_shape,
    machine,
    print_table,
    wait_for,
    write_result,
)
from bench.loadgen import request_bytes, run_load
from bench.status import all_finished, flower_knows, submit_jobs
from bench.submit import pooled

# The shipped config, threads instead of gevent, and the previous default (no config
# file: 2 gthread workers with 8 threads each, one shared listening socket).
DEFAULT_SHAPES = ("", "-k gthread --threads 8", "-c /dev/null -w 2 -k gthread --threads 8")


def measure(
    stack: Stack, service: Service, port: int, raws: list[bytes], args: Any
) -> dict[str, Any]:
    """One warm-up, then ``args.requests`` reads at ``args.concurrency``; CPU per request."""
    run_load(
        port,
        lambda n: raws[n % len(raws)],
        concurrency=args.concurrency,
        total=min(2000, args.requests),
    )
    cpu = stack.cpu_meter({"server": service})
    load = run_load(
        port,
        lambda n: raws[n % len(raws)],
        concurrency=args.concurrency,
        total=args.requests,
        seconds=args.seconds,
    )
    done = max(len(load.latencies), 1)
    per_request = {name: round(1e6 * used / done) for name, used in cpu.used().items()}
    return {"load": load, "cpu_us_per_request": {**per_request, "total": sum(per_request.values())}}


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--shape",
        action="append",
        metavar="FLAGS",
        help="gunicorn flags over gunicorn.conf.py (repeat; '' = as shipped)",
    )
    parser.add_argument("--jobs", type=int, default=300, help="distinct finished jobs read")
    parser.add_argument("--requests", type=int, default=10000, help="per shape and round")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0, help="time cap of one run")
    args = parser.parse_args(argv)
    shapes = args.shape if args.shape is not None else list(DEFAULT_SHAPES)
    started = machine()
    stack = Stack.fresh(args.redis_url)
    runs: dict[str, list[dict[str, Any]]] = {"flower info": []}
    runs.update({gunicorn_shape(shape): [] for shape in shapes})
    try:
        stack.start_gateway(args.gunicorn)
        flower = stack.start_flower()
        partner = stack.create_partner()
        auth = {"Authorization": f"Bearer {partner['api_key']}"}
        ids = submit_jobs(stack, partner, args.jobs)
        worker = stack.start_worker(
            args.worker_concurrency, events=True, instances=args.worker_instances
        )
        wait_for(lambda: all_finished(stack, ids), 120, "every job to finish", interval=0.5)
        wait_for(lambda: flower_knows(stack, ids), 60, "Flower to see every job", interval=0.5)
        worker.stop()
        ours = [request_bytes("GET", f"/v1/jobs/{i}", headers=auth) for i in ids]
        theirs = [request_bytes("GET", f"/api/task/info/{i}") for i in ids]
        for round_no in range(args.rounds):
            order = shapes if round_no % 2 == 0 else shapes[::-1]
            runs["flower info"].append(measure(stack, flower, stack.ports["flower"], theirs, args))
            for shape in order:
                stack.services.pop("gateway").stop()
                gateway = stack.start_gateway(f"{args.gunicorn} {shape}")
                runs[gunicorn_shape(shape)].append(
                    measure(stack, gateway, stack.ports["gateway"], ours, args)
                )
    finally:
        stack.close()
    results = {}
    for name, measured in runs.items():
        summary = pooled([m["load"] for m in measured]).summary()
        cpu = {
            part: round(sum(m["cpu_us_per_request"][part] for m in measured) / len(measured))
            for part in measured[0]["cpu_us_per_request"]
        }
        results[name] = {
            **summary,
            "cpu_us_per_request": cpu,
            "rps_per_round": [m["load"].summary()["rps"] for m in measured],
        }
    flower_rps = results["flower info"]["rps"]
    print_table(
        [
            "target",
            "req/s",
            "per round",
            "p50 ms",
            "p99 ms",
            "failed",
            "vs Flower",
            "CPU us/req: server",
            "Redis",
            "load gen",
        ],
        [
            [
                name,
                r["rps"],
                " / ".join(str(x) for x in r["rps_per_round"]),
                r["p50_ms"],
                r["p99_ms"],
                r["failed"],
                round(r["rps"] / flower_rps, 2) if r["rps"] and flower_rps else None,
                r["cpu_us_per_request"]["server"],
                r["cpu_us_per_request"]["redis"],
                r["cpu_us_per_request"]["load generator"],
            ]
            for name, r in results.items()
        ],
    )
    write_result(
        "serving",
        {
            "benchmark": "serving",
            "jobs": args.jobs,
            "config": {
                "shapes": [gunicorn_shape(f"{args.gunicorn} {s}") for s in shapes],
                "requests": args.requests,
                "rounds": args.rounds,
                "concurrency": args.concurrency,
            },
            "machine": started,
            "results": results,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
