"""Chaos: N jobs end to end while workers are SIGKILLed and receivers refuse attempts.

Two ``jobgate worker`` processes (default settings: visibility timeout 30 s) consume N
``demo.sleep`` 0 s jobs, each with a callback to ``bench.receiver`` (every signature
verified). Every ``--kill-every`` seconds a chaos loop SIGKILLs one ready worker's whole
tree (supervisor, job pool, delivery pool; chosen by a seeded RNG) and starts a
replacement at once. The receiver answers 500 to ``--fail-ratio`` of attempts (by a hash
of webhook id, attempt number and seed), so retries happen; retries wait
``--retry-delays`` (JOBGATE_WEBHOOK_RETRY_DELAYS, short so the run ends in bounded time).
Once every job has ended and its webhook arrived (or ``--cap``), the chaos stops and the
run waits, bounded by ``--quiet-cap``, until nothing is queued, held, due, open or live.

A message a kill lost in kombu's take-then-record gap is queued again only by the sweeper,
and no worker lives through a sweep interval while one is killed every ``--kill-every``
s (shorter than ``JOBGATE_SWEEP_INTERVAL``): such a run goes on to ``--cap``, and the
repair comes after the chaos stops, within ``repair_bound`` (``--quiet-cap`` must
allow it).

Counted: jobs terminal by status, jobs with no terminal webhook when the run ended (lost;
``lost_still_open`` of them still have their delivery open, due or queued, so the sweeper
would still send it: late, not lost), jobs with more than one distinct terminal webhook
id, redeliveries of an id already answered 2xx, stranded records, the sweeper's repairs by
kind, kills, throughput and the time to quiet.

    python -m bench.chaos [--jobs 10000] [--kill-every 6] [--fail-ratio 0.1]
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from datetime import datetime
from typing import Any

import requests

from bench.common import (
    SLEEP_PARAMS,
    Stack,
    base_parser,
    gunicorn_shape,
    leftover_detail,
    leftovers,
    machine,
    print_table,
    stranded_count,
    wait_for,
    write_result,
)
from bench.loadgen import request_bytes, run_load
from bench.recovery import TERMINAL, Fleet, receiver_detail
from config import Settings
from jobgate.store import CLAIM_MARGIN
from tasks.upkeep import sweeper_lease_seconds

WORKER_START = 30.0  # seconds a replacement worker may take to start on a loaded machine


def parse(at: str) -> float:
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


class Chaos(threading.Thread):
    """Every ``every`` s: SIGKILL one ready worker's tree and start a replacement."""

    def __init__(self, fleet: Fleet, every: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.fleet, self.every = fleet, every
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.kills: list[dict[str, Any]] = []
        self.skipped = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.halt.wait(self.every):
                ready = sorted(self.fleet.ready())
                if not ready:  # both still starting: nothing to kill this tick
                    self.skipped += 1
                    continue
                victim = self.rng.choice(ready)
                at = self.fleet.kill(victim)
                self.fleet.add()
                self.kills.append({"at": at, "node": victim})
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc

    def stop(self) -> None:
        self.halt.set()
        self.join(60)


def records(stack: Stack, ids: list[str]) -> list[dict[str, Any]]:
    client = stack.redis()
    try:
        out = []
        for start in range(0, len(ids), 2000):
            pipe = client.pipeline()
            for job_id in ids[start : start + 2000]:
                pipe.hmget(f"jobgate:job:{job_id}", "status", "runs", "finished_at", "error")
            out += [
                dict(zip(("status", "runs", "finished_at", "error"), values, strict=True))
                for values in pipe.execute()
            ]
        return out
    finally:
        client.close()


def repair_bound(settings: Settings) -> float:
    """Seconds after the chaos stops by which the sweeper has queued again every message
    the kills lost, with a margin for a worker's start and the attempt that follows.

    The first pass that repairs such a message waits for the lease of a killed sweeper to
    lapse (``sweeper_lease_seconds``) and for the record to be overdue (a delivery: the
    webhook timeout + ``CLAIM_MARGIN`` after it was queued, possibly just before the stop;
    a job: the visibility timeout + the sweep interval), then for the next sweep tick.
    Defaults: max(60, 45, 45) + 15 + 30 = 105 s.
    """
    lease = sweeper_lease_seconds(settings.sweep_interval)
    grace = settings.webhook_timeout + CLAIM_MARGIN
    stale = settings.visibility_timeout + settings.sweep_interval
    return max(lease, grace, stale) + settings.sweep_interval + WORKER_START


def pending_for(stack: Stack, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per job: its record's webhook state and what of its delivery is still open, due or
    queued (an open one is still the sweeper's to send), with seconds to each deadline."""
    prefix = stack.env.get("JOBGATE_KEY_PREFIX", "jobgate")
    client = stack.redis()
    try:
        now = time.time()
        open_ = client.zrange(f"{prefix}:deliveries:open", 0, -1, withscores=True)
        due = client.zrange(f"{prefix}:due", 0, -1)
        queued = client.lrange("webhooks", 0, -1)
        out = {}
        for job_id in job_ids:
            record = client.hmget(
                f"{prefix}:job:{job_id}", "status", "webhook_state", "webhook_attempts"
            )
            out[job_id] = {
                "status": record[0],
                "webhook_state": record[1],
                "webhook_attempts": record[2],
                "open": {m: round(s - now, 1) for m, s in open_ if job_id in m},
                "due": sum(job_id in row for row in due),
                "queued": sum(job_id in row for row in queued),
            }
        return out
    finally:
        client.close()


def all_done(stack: Stack, ids: list[str]) -> bool:
    """Every job terminal and every job's webhook arrived."""
    hooked = requests.get(stack.url("receiver", "/stats"), timeout=30).json()["jobs"]
    if hooked < len(ids):
        return False
    return all(r["status"] in TERMINAL for r in records(stack, ids))


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=16, help="submitting connections")
    parser.add_argument(
        "--job-seconds", type=float, default=0.0, help="demo.sleep length of each job"
    )
    parser.add_argument("--kill-every", type=float, default=6.0, help="seconds between kills")
    parser.add_argument(
        "--fail-ratio",
        type=float,
        default=0.1,
        help="share of webhook attempts the receiver answers 500",
    )
    parser.add_argument(
        "--retry-delays",
        default="1,2,3,5,5,10,10,10",
        help="JOBGATE_WEBHOOK_RETRY_DELAYS for the run (short)",
    )
    parser.add_argument(
        "--visibility-timeout",
        type=int,
        help="JOBGATE_VISIBILITY_TIMEOUT (default: as shipped, 30)",
    )
    parser.add_argument("--seed", type=int, default=1, help="chaos RNG and refusal hash seed")
    parser.add_argument(
        "--cap",
        type=float,
        default=1200.0,
        help="seconds from the first submission until the chaos stops anyway",
    )
    parser.add_argument(
        "--quiet-cap",
        type=float,
        default=300.0,
        help="seconds after the chaos stops to wait for quiet; at least repair_bound (the "
        "sweeper's worst case for a message a kill lost, 105 s with the defaults)",
    )
    args = parser.parse_args(argv)
    stack = Stack.fresh(args.redis_url)
    stack.env["JOBGATE_WEBHOOK_RETRY_DELAYS"] = args.retry_delays
    if args.visibility_timeout:
        stack.env["JOBGATE_VISIBILITY_TIMEOUT"] = str(args.visibility_timeout)
    settings = Settings.from_env(stack.env)
    bound = repair_bound(settings)
    quiet_cap = args.quiet_cap
    if quiet_cap < bound:
        print(
            f"--quiet-cap {quiet_cap:g} s is shorter than the sweeper's repair bound "
            f"({bound:g} s): a message lost near the end may count as lost",
            flush=True,
        )
    params = {**SLEEP_PARAMS, "seconds": args.job_seconds}
    started = machine()
    fleet = Fleet(stack, args.worker_concurrency)
    chaos: Chaos | None = None
    try:
        stack.start_gateway(args.gunicorn)
        partner = stack.create_partner()
        stack.start_receiver(
            partner["webhook_secret"],
            ["--fail-ratio", str(args.fail_ratio), "--fail-seed", str(args.seed)],
        )
        fleet.add()
        fleet.add()
        fleet.wait_ready(2)
        raw = request_bytes(
            "POST",
            "/v1/jobs",
            body={
                "task": "demo.sleep",
                "params": params,
                "callback_url": stack.url("receiver", "/hook"),
            },
            headers={"Authorization": f"Bearer {partner['api_key']}"},
        )
        chaos = Chaos(fleet, args.kill_every, args.seed)
        t0 = time.time()
        chaos.start()
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
        print(f"submitted {len(ids)} jobs in {submitted_at - t0:.1f} s", flush=True)
        deadline = t0 + args.cap
        while time.time() < deadline and not all_done(stack, ids):
            if chaos.error:
                raise chaos.error
            time.sleep(1.0)
        done_at = time.time()
        chaos.stop()
        stopped_at = time.time()
        print(
            f"all ended: {done_at - t0:.1f} s; {len(chaos.kills)} kills; waiting for quiet",
            flush=True,
        )
        quiet_reached = True
        try:
            wait_for(
                lambda: stranded_count(leftovers(stack)) == 0 and all_done(stack, ids),
                quiet_cap,
                "quiet",
                1.0,
            )
        except RuntimeError as exc:
            quiet_reached = False
            print(exc, flush=True)
        quiet_at = time.time()
        time.sleep(2)  # a last redelivery in flight shows up before counting
        left = leftovers(stack)
        evidence = leftover_detail(stack) if stranded_count(left) else None
        seen = receiver_detail(stack)
        recs = records(stack, ids)
        unheard = pending_for(stack, [j for j in ids if j not in seen["by_job"]])
    finally:
        if chaos is not None:
            chaos.stop()
        stack.close()
    by_job = seen["by_job"]
    lost = [j for j in ids if j not in by_job]
    several = {j: by_job[j]["ids"] for j in ids if j in by_job and len(by_job[j]["ids"]) > 1}
    statuses = Counter(r["status"] or "not terminal" for r in recs)
    not_terminal = [j for j, r in zip(ids, recs, strict=True) if r["status"] not in TERMINAL]
    runs = Counter(int(r["runs"] or 0) for r in recs)
    errors = Counter((r["error"] or "")[:60] for r in recs if r["status"] == "FAILURE")
    finished = [parse(r["finished_at"]) for r in recs if r["finished_at"]]
    arrivals = [n for job in by_job.values() for n in job["arrivals"].values()]
    result = {
        "jobs_submitted": len(ids),
        "submit": load.summary(),
        "jobs_terminal": sum(statuses[s] for s in TERMINAL),
        "statuses": dict(statuses),
        "failure_errors": dict(errors),
        "not_terminal": len(not_terminal),
        "not_terminal_jobs": not_terminal[:20],
        "runs": {str(k): v for k, v in sorted(runs.items())},
        "lost": len(lost),
        "lost_jobs": lost[:20],
        "lost_still_open": sum(1 for p in unheard.values() if p["open"] or p["due"] or p["queued"]),
        "lost_detail": dict(list(unheard.items())[:20]),
        "jobs_with_several_ids": len(several),
        "several_ids": dict(list(several.items())[:20]),
        "redeliveries_same_id": seen["duplicates"],
        "redelivered_ids": {
            wid: {"job_id": job, "again": seen["duplicated_ids"][wid]}
            for job, entry in by_job.items()
            for wid in entry["ids"]
            if wid in seen["duplicated_ids"]
        },
        "attempts_refused_500": seen["refused"],
        "attempts_received": sum(arrivals),
        "bad_signatures": seen["bad_signatures"],
        "bad_signature_samples": seen["bad_signature_samples"],
        "truncated_requests": seen["truncated"],
        "kills": len(chaos.kills) if chaos else 0,
        "kill_ticks_skipped": chaos.skipped if chaos else 0,
        "kill_every_s": args.kill_every,
        "kill_log": [
            {"at": round(k["at"] - t0, 2), "node": k["node"]}
            for k in (chaos.kills if chaos else [])
        ],
        "leftovers": left,
        "stranded": stranded_count(left),
        "stranded_evidence": evidence,
        "repairs": left["repairs"],
        "jobs_per_s_terminal": round(len(finished) / (max(finished) - t0), 1) if finished else None,
        "submit_seconds": round(submitted_at - t0, 2),
        "all_ended_seconds": round(done_at - t0, 2),
        "quiet_after_chaos_stop_s": round(quiet_at - stopped_at, 2),
        "quiet_reached": quiet_reached,
        "quiet_cap_s": quiet_cap,
        "repair_bound_s": bound,
        "time_to_quiet_s": round(quiet_at - t0, 2),
        "worker_logs": [
            str(s.log_path) for s in stack.services.values() if s.name.startswith("worker")
        ],
    }
    print()
    print_table(
        ["metric", "value"],
        [
            ["jobs submitted", len(ids)],
            ["jobs terminal", result["jobs_terminal"]],
            ["statuses", dict(statuses)],
            ["runs per job", result["runs"]],
            ["lost (no terminal webhook)", result["lost"]],
            ["  of which still open (late)", result["lost_still_open"]],
            ["jobs with >1 terminal id", result["jobs_with_several_ids"]],
            ["redeliveries of the same id", result["redeliveries_same_id"]],
            ["attempts answered 500", result["attempts_refused_500"]],
            ["bad signatures", result["bad_signatures"]],
            ["requests cut short (sender killed)", result["truncated_requests"]],
            ["stranded records", result["stranded"]],
            ["sweeper repairs", result["repairs"] or "none"],
            ["worker kills (SIGKILL, tree)", result["kills"]],
            ["jobs/s (terminal)", result["jobs_per_s_terminal"]],
            ["all ended + webhooked, s", result["all_ended_seconds"]],
            ["quiet after chaos stop, s", result["quiet_after_chaos_stop_s"]],
            ["quiet reached (within cap)", f"{quiet_reached} ({quiet_cap:g} s)"],
            ["time to quiet (from first submit), s", result["time_to_quiet_s"]],
        ],
    )
    write_result(
        "chaos",
        {
            "benchmark": "chaos",
            "task": "demo.sleep",
            "params": params,
            "config": {
                "gunicorn": gunicorn_shape(args.gunicorn),
                "workers": f"2 x jobgate worker -c {args.worker_concurrency} (prefork job "
                "pool + gevent delivery pool), one SIGKILLed (whole tree) and "
                f"replaced every {args.kill_every} s",
                "visibility_timeout_s": settings.visibility_timeout,
                "sweep_interval_s": settings.sweep_interval,
                "webhook_retry_delays": args.retry_delays,
                "fail_ratio": args.fail_ratio,
                "seed": args.seed,
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
