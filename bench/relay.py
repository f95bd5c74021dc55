"""The relay after Redis lost its data: how long giving back N live jobs takes.

``--jobs`` accepted jobs (rows committed as the gateway commits them, spread over
``--partners`` partners) whose Redis was lost: one ``jobgate.outbox.relay`` pass gives
them all back into their partners' queues (no worker runs, so they wait there, as a
restored deployment's jobs do until its workers take them). Then the same pass again,
with nothing lost: what each periodic pass costs while Redis holds everything. Several
rounds, each on a fresh database and an empty Redis db.

    python -m bench.relay [--jobs 10000] [--partners 10] [--rounds 3]
                          [--database-url URL]  (default: a new SQLite file)
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import redis

from bench.common import base_parser, fresh_database, machine, print_table, write_result
from jobgate.db import Database
from jobgate.outbox import accept, relay
from jobgate.store import Store, as_stored
from jobgate.times import utcnow


class Idle:
    """A messenger for a broker that is not the store's Redis: nothing is dispatched
    here (no worker, a window of 0), so nothing is sent."""

    inline = False
    jobs_queue = "jobs"
    webhooks_queue = "webhooks"

    def send(self, name: str, **options: Any) -> None:
        raise AssertionError(f"nothing should be sent with no worker ({name})")


def accepted(db: Database, prefix: str, count: int, partners: int) -> None:
    """``count`` jobs' rows, committed 1 000 to a transaction."""
    for start in range(0, count, 1000):
        jobs = []
        for n in range(start, min(count, start + 1000)):
            job_id = str(uuid.uuid4())
            jobs.append(
                as_stored(
                    {
                        "job_id": job_id,
                        "task_id": job_id,
                        "task": "demo.sleep",
                        "partner_id": f"ptn_{n % partners}",
                        "params": {"seconds": 0, "steps": 1},
                        "metadata": {"n": n},
                        "created_at": utcnow(),
                    }
                )
            )
        accept(db, prefix, jobs)


def one_round(args: Any) -> dict[str, Any]:
    client = redis.Redis.from_url(args.redis_url, decode_responses=True)
    client.flushdb()
    db = Database(fresh_database(args.database_url))
    prefix = "relay-" + uuid.uuid4().hex[:6]
    store = Store(client, prefix=prefix)
    try:
        accepted(db, prefix, args.jobs, args.partners)
        t0 = time.perf_counter()
        given = relay(store, db, Idle(), older_than=-60)
        lost_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = relay(store, db, Idle(), older_than=-60)
        steady_s = time.perf_counter() - t0
        queued = [store.waiting(f"ptn_{p}")["queued"] for p in range(args.partners)]
    finally:
        db.dispose()
        client.close()
    return {
        "given_back": given,
        "seconds": round(lost_s, 2),
        "jobs_per_s": round(given / lost_s, 1) if lost_s else None,
        "queued_per_partner_min": min(queued),
        "queued_per_partner_max": max(queued),
        "pass_with_nothing_lost_s": round(steady_s, 3),
        "given_back_again": again,
    }


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--partners", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", help="default: a new SQLite file per round")
    args = parser.parse_args(argv)
    started = machine()
    rounds = []
    for n in range(args.rounds):
        found = one_round(args)
        rounds.append(found)
        print(f"round {n + 1}: {found}", flush=True)
    median = {
        name: statistics.median(r[name] for r in rounds)
        for name in ("seconds", "jobs_per_s", "pass_with_nothing_lost_s")
    }
    print_table(
        ["round", "given back", "seconds", "jobs/s", "pass, nothing lost (s)"],
        [
            [n + 1, r["given_back"], r["seconds"], r["jobs_per_s"], r["pass_with_nothing_lost_s"]]
            for n, r in enumerate(rounds)
        ]
        + [
            [
                "median",
                "",
                median["seconds"],
                median["jobs_per_s"],
                median["pass_with_nothing_lost_s"],
            ]
        ],
    )
    write_result(
        "relay",
        {
            "benchmark": "relay",
            "config": {
                "jobs": args.jobs,
                "partners": args.partners,
                "rounds": args.rounds,
                "database": args.database_url or "SQLite (a new file per round)",
                "redis": args.redis_url,
            },
            "machine": started,
            "results": {"rounds": rounds, "median": median},
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
