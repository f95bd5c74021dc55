"""A/B end to end: ``bench.e2e`` from two source trees, interleaved in one run.

Each pair runs ``python -m bench.e2e`` once from the ``--before`` tree, then once from the
``--after`` tree (before, after, before, after, ...), so both see the same hour of a
shared machine; the ratio after / before is taken per pair. Each run is that tree's code
throughout: the tree is the working directory and ``PYTHONPATH`` of the bench process,
which starts the gateway and the workers from it too (``bench.common.spawn``). Every run
gets a fresh private ``redis-server`` with ``--own-redis`` (else the ``--redis-url`` db,
which bench.e2e FLUSHES) and a new SQLite file, or with ``--database-url`` its arm's own
database (emptied; each tree migrates its own).

Which code ran is checked, not assumed: a tree with the fair dispatcher has
``jobgate/scripts/dispatch.lua``, and its workers leave ``jobgate:dispatch:slots`` in
Redis; a run whose keys disagree with its tree stops the bench.

    python -m bench.ab --before /work/wt-before [--after .] [--pairs 3] [--jobs 5000]
                       [--own-redis [--redis-server /usr/bin/redis-server]]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis

from bench.common import DEFAULT_REDIS_URL, ROOT, machine, print_table, write_result

ARMS = ("before", "after")
DISPATCHER = Path("jobgate/scripts/dispatch.lua")
MARK = "jobgate:dispatch:slots"  # written by the workers of a tree with the dispatcher


def commit_of(tree: Path) -> str | None:
    """The commit checked out at ``tree`` (None: not a git checkout)."""
    found = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    return found.stdout.strip() if found.returncode == 0 else None


def run_e2e(tree: Path, redis_url: str, args: Any, arm: str = "") -> dict[str, Any]:
    """One ``bench.e2e`` run from ``tree``; its JSON and whether its workers dispatched.
    With ``--database-url``, the arm's own database (each tree migrates its own)."""
    database = (
        {"BENCH_DATABASE_URL": args.database_url.format(arm=arm)} if args.database_url else {}
    )
    with tempfile.TemporaryDirectory(prefix="jobgate-ab-") as scratch:
        out = Path(scratch) / "e2e.json"
        command = [
            sys.executable,
            "-m",
            "bench.e2e",
            "--redis-url",
            redis_url,
            "--out",
            str(out),
            "--jobs",
            str(args.jobs),
            *shlex.split(args.e2e_args),
        ]
        completed = subprocess.run(
            command,
            cwd=tree,
            env={**os.environ, **database, "PYTHONPATH": str(tree)},
            capture_output=True,
            text=True,
            timeout=args.timeout,
        )
        if completed.returncode != 0:
            tail = completed.stdout[-3000:] + completed.stderr[-3000:]
            raise SystemExit(f"bench.e2e from {tree} failed:\n{tail}")
        data = json.loads(out.read_text())
    client = redis.Redis.from_url(redis_url)
    try:
        dispatched = bool(client.exists(MARK))
    finally:
        client.close()
    return {"e2e": data, "dispatcher_keys": dispatched}


def figures(run: dict[str, Any]) -> dict[str, Any]:
    """What the A/B keeps of one bench.e2e run."""
    data, result = run["e2e"], run["e2e"]["results"]
    return {
        "jobs_submitted": result["jobs_submitted"],
        "jobs_finished": result["jobs_finished"],
        "jobs_per_s_finished": result["jobs_per_s_finished"],
        "jobs_per_s_webhooked": result["jobs_per_s_webhooked"],
        "submit_rps": result["submit"]["rps"],
        "submit_p99_ms": result["submit"]["p99_ms"],
        "webhook_latency_p50_ms": result["webhook_latency_p50_ms"],
        "webhook_latency_p99_ms": result["webhook_latency_p99_ms"],
        "lost": result["lost"],
        "duplicated": result["duplicated"],
        "cpu_ms_per_job": result["cpu_ms_per_job"],
        "cpu_ms_per_job_total": round(sum(result["cpu_ms_per_job"].values()), 3),
        "redis_commands_per_job": round(
            sum(result["redis_commands_per_job_server_wide"].values()), 1
        ),
        "loadavg_start": data["machine"]["loadavg"],
        "loadavg_end": data["loadavg_end"],
        "dispatcher_keys": run["dispatcher_keys"],
    }


def ratio(after: float | None, before: float | None) -> float | None:
    return round(after / before, 3) if after and before else None


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the 'before' source tree")
    parser.add_argument("--after", type=Path, default=ROOT, help="the 'after' source tree")
    parser.add_argument("--pairs", type=int, default=3, help="before/after pairs")
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per bench.e2e run")
    parser.add_argument(
        "--e2e-args", default="", help="more bench.e2e options, e.g. '--concurrency 16'"
    )
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per run at most")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL),
        help="Redis db used (and FLUSHED) by every run without --own-redis",
    )
    parser.add_argument("--own-redis", action="store_true", help="a private redis-server per run")
    parser.add_argument(
        "--redis-server", help="the redis-server binary --own-redis runs (default: PATH's)"
    )
    parser.add_argument(
        "--database-url",
        help="a database per arm, '{arm}' standing for before/after (e.g. "
        "postgresql+psycopg://postgres@127.0.0.1/ab_{arm}); default a new SQLite file per run",
    )
    parser.add_argument("--out", type=Path, help="JSON result path (default bench/results/)")
    args = parser.parse_args(argv)
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    has_dispatcher = {arm: (tree / DISPATCHER).exists() for arm, tree in trees.items()}
    started = machine()
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for pair in range(args.pairs):
        for arm in ARMS:
            own = None
            if args.own_redis:
                from bench.peer import OwnRedis

                own = OwnRedis(args.redis_server)
            try:
                run = run_e2e(trees[arm], own.url if own else args.redis_url, args, arm)
            finally:
                if own:
                    own.close()
            if run["dispatcher_keys"] != has_dispatcher[arm]:
                raise SystemExit(
                    f"{arm} run {pair + 1}: the tree {'has' if has_dispatcher[arm] else 'lacks'} "
                    f"{DISPATCHER} but its workers {'did' if run['dispatcher_keys'] else 'did not'}"
                    f" write {MARK}: not that tree's code"
                )
            kept = figures(run)
            runs[arm].append(kept)
            print(
                f"pair {pair + 1}, {arm}: {kept['jobs_per_s_webhooked']} jobs/s webhooked, "
                f"{kept['jobs_per_s_finished']} finished, lost {kept['lost']}, "
                f"duplicated {kept['duplicated']}",
                flush=True,
            )
    pairs = [
        {
            "pair": n + 1,
            "webhooked": ratio(after["jobs_per_s_webhooked"], before["jobs_per_s_webhooked"]),
            "finished": ratio(after["jobs_per_s_finished"], before["jobs_per_s_finished"]),
            "cpu_ms_per_job": ratio(after["cpu_ms_per_job_total"], before["cpu_ms_per_job_total"]),
            "submit_rps": ratio(after["submit_rps"], before["submit_rps"]),
            "submit_p99_ms": ratio(after["submit_p99_ms"], before["submit_p99_ms"]),
        }
        for n, (before, after) in enumerate(zip(runs["before"], runs["after"], strict=True))
    ]
    medians = {
        name: median([p[name] for p in pairs])  # type: ignore[misc]
        for name in ("webhooked", "finished", "cpu_ms_per_job", "submit_rps", "submit_p99_ms")
    }
    print()
    print_table(
        [
            "pair",
            "before jobs/s webhooked",
            "after jobs/s webhooked",
            "after/before",
            "before finished/s",
            "after finished/s",
            "after/before",
            "CPU ms/job after/before",
            "submit req/s after/before",
            "submit p99 after/before",
        ],
        [
            [
                p["pair"],
                b["jobs_per_s_webhooked"],
                a["jobs_per_s_webhooked"],
                p["webhooked"],
                b["jobs_per_s_finished"],
                a["jobs_per_s_finished"],
                p["finished"],
                p["cpu_ms_per_job"],
                p["submit_rps"],
                p["submit_p99_ms"],
            ]
            for p, b, a in zip(pairs, runs["before"], runs["after"], strict=True)
        ]
        + [
            [
                "median",
                "",
                "",
                medians["webhooked"],
                "",
                "",
                medians["finished"],
                medians["cpu_ms_per_job"],
                medians["submit_rps"],
                medians["submit_p99_ms"],
            ]
        ],
    )
    write_result(
        "ab",
        {
            "benchmark": "ab",
            "config": {
                "trees": {
                    arm: {
                        "path": str(tree),
                        "commit": commit_of(tree),
                        "has_dispatcher": has_dispatcher[arm],
                    }
                    for arm, tree in trees.items()
                },
                "pairs": args.pairs,
                "order": "before, after in every pair",
                "e2e": f"python -m bench.e2e --jobs {args.jobs} {args.e2e_args}".strip(),
                "redis": "own redis-server per run" if args.own_redis else args.redis_url,
                "database": args.database_url or "a new SQLite file per run",
            },
            "machine": started,
            "results": {
                "runs": runs,
                "pairs": pairs,
                "median": medians,
                "target": {
                    "after_over_before_at_least": 0.95,
                    "met": (medians["webhooked"] or 0) >= 0.95,
                },
            },
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
