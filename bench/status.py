"""Status benchmark: ``GET /v1/jobs/{id}`` against Flower's ``/api/task/info/<id>`` and
``/api/task/result/<id>``, on the same jobs, in the same run.

Two phases: jobs still queued (no worker yet: the gateway reads Celery's meta once, Flower's
``info`` does not know them), then the same jobs finished (a worker with events ran them,
so Flower's in-memory state has them).

    python -m bench.status [--jobs 500] [--requests 3000] [--concurrency 16]
"""

from __future__ import annotations

from typing import Any

import requests

from bench.common import (
    SLEEP_PARAMS,
    Stack,
    base_parser,
    gunicorn_shape,
    machine,
    print_table,
    wait_for,
    worker_shape,
    write_result,
)
from bench.loadgen import request_bytes, run_load
from bench.submit import pooled, ratio


def submit_jobs(stack: Stack, partner: dict[str, Any], count: int) -> list[str]:
    """Submit ``count`` demo.sleep jobs through the gateway; their ids."""
    raw = request_bytes(
        "POST",
        "/v1/jobs",
        body={"task": "demo.sleep", "params": SLEEP_PARAMS},
        headers={"Authorization": f"Bearer {partner['api_key']}"},
    )
    load = run_load(
        stack.ports["gateway"],
        lambda _i: raw,
        concurrency=8,
        total=count,
        seconds=120,
        keep_bodies=True,
    )
    if load.ok != count:
        raise RuntimeError(f"only {load.ok} of {count} submissions were accepted")
    return [body["job_id"] for body in load.json_bodies()]


def all_finished(stack: Stack, ids: list[str]) -> bool:
    client = stack.redis()
    try:
        pipe = client.pipeline()
        for job_id in ids:
            pipe.hget(f"jobgate:job:{job_id}", "status")
        return all(status == "SUCCESS" for status in pipe.execute())
    finally:
        client.close()


def flower_knows(stack: Stack, ids: list[str]) -> bool:
    """Flower's event state has every job as SUCCESS (checked on a spread sample)."""
    for job_id in ids[:: max(1, len(ids) // 20)] + ids[-1:]:
        answer = requests.get(stack.url("flower", f"/api/task/info/{job_id}"), timeout=5)
        if answer.status_code != 200 or answer.json().get("state") != "SUCCESS":
            return False
    return True


def measure(
    stack: Stack, paths: dict[str, tuple[str, str, dict[str, str]]], ids: list[str], args: Any
) -> dict[str, Any]:
    """Run each (service, path template, headers) over ``ids`` at each level, alternating."""
    out: dict[str, Any] = {}
    for level in args.levels:
        runs: dict[str, list] = {name: [] for name in paths}
        for round_no in range(args.rounds):
            names = list(paths) if round_no % 2 == 0 else list(paths)[::-1]
            for name in names:
                service, template, headers = paths[name]
                raws = [request_bytes("GET", template.format(id=i), headers=headers) for i in ids]
                runs[name].append(
                    run_load(
                        stack.ports[service],
                        lambda n, raws=raws: raws[n % len(raws)],
                        concurrency=level,
                        total=args.requests,
                        seconds=args.seconds,
                    )
                )
        out[str(level)] = {name: pooled(loads).summary() for name, loads in runs.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500, help="distinct jobs read")
    parser.add_argument(
        "--requests", type=int, default=3000, help="requests per target, level and round"
    )
    parser.add_argument("--concurrency", default="16")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0, help="time cap of one run")
    args = parser.parse_args(argv)
    args.levels = [int(c) for c in args.concurrency.split(",")]
    started = machine()
    stack = Stack.fresh(args.redis_url)
    results: dict[str, Any] = {}
    try:
        stack.start_gateway(args.gunicorn)
        stack.start_flower()
        partner = stack.create_partner()
        auth = {"Authorization": f"Bearer {partner['api_key']}"}
        ids = submit_jobs(stack, partner, args.jobs)
        results["queued"] = measure(
            stack,
            {
                "jobgate": ("gateway", "/v1/jobs/{id}", auth),
                "flower result": ("flower", "/api/task/result/{id}", {}),
            },
            ids,
            args,
        )
        stack.start_worker(args.worker_concurrency, events=True, instances=args.worker_instances)
        wait_for(lambda: all_finished(stack, ids), 120, "every job to finish", interval=0.5)
        wait_for(lambda: flower_knows(stack, ids), 60, "Flower to see every job", interval=0.5)
        results["finished"] = measure(
            stack,
            {
                "jobgate": ("gateway", "/v1/jobs/{id}", auth),
                "flower info": ("flower", "/api/task/info/{id}", {}),
                "flower result": ("flower", "/api/task/result/{id}", {}),
            },
            ids,
            args,
        )
    finally:
        stack.close()
    rows = []
    for phase, levels in results.items():
        for level, by_target in levels.items():
            best_flower = max(
                (r["rps"] or 0 for n, r in by_target.items() if n != "jobgate"), default=None
            )
            for name, row in by_target.items():
                rows.append(
                    [
                        phase,
                        level,
                        name,
                        row["rps"],
                        row["p50_ms"],
                        row["p99_ms"],
                        row["failed"],
                        ratio(row["rps"], best_flower) if name == "jobgate" else "",
                    ]
                )
    print_table(
        [
            "jobs",
            "concurrency",
            "target",
            "req/s",
            "p50 ms",
            "p99 ms",
            "failed",
            "jobgate/best flower",
        ],
        rows,
    )
    write_result(
        "status",
        {
            "benchmark": "status",
            "jobs": args.jobs,
            "config": {
                "gunicorn": gunicorn_shape(args.gunicorn),
                "requests": args.requests,
                "rounds": args.rounds,
                "levels": args.levels,
                "worker": worker_shape(args.worker_concurrency, args.worker_instances),
            },
            "machine": started,
            "results": results,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
