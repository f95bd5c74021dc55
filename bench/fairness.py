"""Fair dispatch: partner B's submit-to-start latency while partner A floods the queue.

A real stack (gateway, ``jobgate worker``, Redis, SQLite or ``BENCH_DATABASE_URL``) and
two partners. Per round two phases, in alternating order so drift over the run falls on
both:

- **idle**: A submits nothing; B submits ``--probes`` jobs (``demo.sleep`` 0 s), one every
  ``--interval`` s;
- **busy**: A first builds a backlog of ``--backlog`` waiting jobs of a short task
  (``demo.sleep`` ``--a-seconds``, default 10 ms) in batches of up to ``--build-batch``
  (1000, the batch maximum), then a thread tops it up with batches of ``--topup`` jobs
  whenever fewer than ``--backlog`` + ``--topup`` of A's jobs are not ended (waiting in
  A's queue, or dispatched: in Celery's queue or running), while the worker consumes A's
  jobs and B submits the same probes as in the idle phase. The top-up stops after B's
  last probe; A's backlog drains (the worker runs it) before the next phase. The length
  of Celery's queue is sampled with A's backlog: the dispatch window bounds it.

B's latency is the job record's ``started_at`` (written by the worker as it takes the
job) minus the client's clock just before it sent the ``POST /v1/jobs``: the submit
request, the wait in B's queue and Celery's, and the worker's pick-up. The report gives
p50/p99 per phase and round, the ratio p99(busy) / p99(idle) per round and the medians;
the target is at most 2x. Timestamps in job records have millisecond resolution. A
probe not started ``--cap`` s after B's last one counts with the time it waited, a lower
bound (shown ``>x``). B's probes that one of A's batch requests overlapped are told
apart (a gateway process busy validating a batch delays the submit, not the dispatch).

A's partner limit ``max_queued_jobs`` is switched off (``PATCH /v1/partners``), or its
default of 10 000 would refuse a backlog kept at or above 10 000. Dispatch is not
preemptive: when A's jobs fill every slot, B's job waits for the next of A's to end, so
its busy latency is the idle one plus up to one of A's jobs. ``--a-max-running`` sets A's
``max_running_jobs`` below the slots, the headroom an operator keeps for other partners.

    python -m bench.fairness [--backlog 10000] [--a-seconds 0.01] [--a-max-running 0]
                             [--probes 30] [--interval 1] [--rounds 3]
                             [--own-redis [--redis-server /usr/bin/redis-server]]
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from bench.common import (
    ADMIN_KEY,
    ROOT,
    SLEEP_PARAMS,
    Stack,
    base_parser,
    gunicorn_shape,
    machine,
    ms,
    percentile,
    print_table,
    wait_for,
    worker_shape,
    write_result,
)
from bench.slow_receivers import censored_percentile, shown
from jobgate.batches import MAX_BATCH
from jobgate.store import Store

PHASES = ("idle", "busy")
JOBS = "jobs"  # Celery's queue of jobs (kombu's list)


def parse(at: str) -> float:
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


class Partner:
    """One partner's HTTP session against the gateway."""

    def __init__(self, stack: Stack, name: str) -> None:
        self.stack = stack
        self.info = stack.create_partner(name)
        self.id: str = self.info["id"]
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {self.info['api_key']}"

    def submit(self, job: dict[str, Any]) -> str:
        response = self.session.post(self.stack.url("gateway", "/v1/jobs"), json=job, timeout=30)
        response.raise_for_status()
        return str(response.json()["job_id"])

    def submit_batch(self, job: dict[str, Any], count: int) -> None:
        response = self.session.post(
            self.stack.url("gateway", "/v1/batches"), json={"jobs": [job] * count}, timeout=120
        )
        response.raise_for_status()

    def close(self) -> None:
        self.session.close()


def set_limits(stack: Stack, partner: Partner, max_running_jobs: int) -> None:
    """Switch the partner's ``max_queued_jobs`` off (0) and set ``max_running_jobs`` (0:
    none), as an admin."""
    response = requests.patch(
        stack.url("gateway", f"/v1/partners/{partner.id}"),
        json={"limits": {"max_queued_jobs": 0, "max_running_jobs": max_running_jobs}},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    response.raise_for_status()


class Flood:
    """Partner A's backlog: built in large batches, then kept topped up by a thread.

    Records every batch request's (sent, answered) times, so a probe can be told apart by
    whether one of A's submits was in flight while it waited, and samples A's waiting
    count (its queue in Redis) every time it looks."""

    def __init__(self, partner: Partner, store: Store, job: dict[str, Any], args: Any) -> None:
        self.partner, self.store, self.job = partner, store, job
        self.target, self.topup = args.backlog, args.topup
        self.build_batch = args.build_batch
        self.submitted = 0
        self.requests: list[tuple[float, float, int]] = []  # (sent, answered, jobs)
        # (time, A's jobs not ended, of them dispatched, messages in Celery's queue)
        self.samples: list[tuple[float, int, int, int]] = []
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def queued(self) -> int:
        """A's jobs not ended: waiting in its queue, or dispatched (in Celery's queue or
        running); sampled with the length of Celery's queue."""
        waiting = self.store.waiting(self.partner.id)
        count = waiting["queued"] + waiting["running"]
        self.samples.append((time.time(), count, waiting["running"], self.store.redis.llen(JOBS)))
        return count

    def _send(self, count: int) -> None:
        sent = time.time()
        self.partner.submit_batch(self.job, count)
        self.requests.append((sent, time.time(), count))
        self.submitted += count

    def build(self) -> float:
        """Submit until ``target`` jobs wait; seconds it took."""
        start = time.monotonic()
        while (missing := self.target - self.queued()) > 0:
            self._send(min(self.build_batch, missing))
        return time.monotonic() - start

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="flood", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                if self.queued() < self.target + self.topup:
                    self._send(self.topup)
                else:
                    self.stopping.wait(0.05)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def stop(self) -> None:
        self.stopping.set()
        if self.thread:
            self.thread.join(timeout=150)
        if self.error:
            raise RuntimeError(f"partner A's top-up failed: {self.error!r}") from self.error

    def in_flight(self, start: float, end: float) -> bool:
        """Whether one of A's batch requests was in flight at some point in [start, end]."""
        return any(sent <= end and answered >= start for sent, answered, _ in self.requests)

    def between(self, start: float, end: float) -> list[tuple[float, int, int, int]]:
        return [sample for sample in self.samples if start <= sample[0] <= end]


def probe(partner: Partner, store: Store, args: Any) -> list[dict[str, Any]]:
    """B's paced jobs; each one's times once started (or ``--cap`` s after the last)."""
    sent: list[tuple[str, float, float]] = []  # (job id, client time before, after POST)
    start = time.monotonic()
    for index in range(args.probes):
        time.sleep(max(0.0, start + index * args.interval - time.monotonic()))
        before = time.time()
        job_id = partner.submit({"task": "demo.sleep", "params": SLEEP_PARAMS})
        sent.append((job_id, before, time.time()))
    ids = [job_id for job_id, _, _ in sent]
    cap = time.monotonic() + args.cap
    while time.monotonic() < cap:
        if all(job and job.get("started_at") for job in store.jobs(ids)):
            break
        time.sleep(0.1)
    now = time.time()
    probes = []
    for (job_id, before, after), job in zip(sent, store.jobs(ids), strict=True):
        started = parse(job["started_at"]) if job and job.get("started_at") else None
        created = parse(job["created_at"]) if job and job.get("created_at") else None
        probes.append(
            {
                "job_id": job_id,
                "sent": before,
                "answered": after,
                "created": created,
                "started": started,
                # Not started: how long it had waited, a lower bound of its latency.
                "latency": (started if started is not None else now) - before,
            }
        )
    return probes


def summarize(probes: list[dict[str, Any]]) -> dict[str, Any]:
    """Percentiles (ms) of submit-to-start and of its parts. A probe not started counts
    with the time it had waited: a percentile falling on one is only a lower bound
    (named in ``lower_bounds``)."""
    latencies = [(p["latency"], p["started"] is not None) for p in probes]
    points = {"p50": 50, "p99": 99, "max": 100}
    values = {name: censored_percentile(latencies, q) for name, q in points.items()}
    submit = [p["answered"] - p["sent"] for p in probes]
    queued = [p["started"] - p["created"] for p in probes if p["started"] and p["created"]]
    return {
        "probes": len(probes),
        "started": sum(ok for _, ok in latencies),
        "not_started": sum(not ok for _, ok in latencies),
        **{f"{name}_ms": value for name, (value, _) in values.items()},
        "lower_bounds": [name for name, (_, bound) in values.items() if bound],
        "submit_request_p50_ms": ms(percentile(submit, 50)),
        "submit_request_p99_ms": ms(percentile(submit, 99)),
        "created_to_started_p50_ms": ms(percentile(queued, 50)),
        "created_to_started_p99_ms": ms(percentile(queued, 99)),
    }


def cell(row: dict[str, Any], name: str) -> str | None:
    """A percentile as shown: ``>x`` when only a lower bound."""
    return shown((row[f"{name}_ms"], name in row["lower_bounds"]))


def drain(store: Store, partner: Partner, cap: float) -> float:
    """Wait until none of the partner's jobs waits or runs; seconds it took."""
    start = time.monotonic()

    def drained() -> bool:
        waiting = store.waiting(partner.id)
        return waiting["queued"] == 0 and waiting["running"] == 0

    wait_for(drained, cap, "partner A's backlog to drain", interval=0.5)
    return time.monotonic() - start


def busy_phase(
    partner_a: Partner, partner_b: Partner, store: Store, args: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    job = {"task": "demo.sleep", "params": {"seconds": args.a_seconds, "steps": 1}}
    flood = Flood(partner_a, store, job, args)
    build_seconds = flood.build()
    built = flood.submitted
    flood.start()
    try:
        t0, backlog_at_start = time.time(), flood.queued()
        submitted_before = flood.submitted
        last_probe = t0 + (args.probes - 1) * args.interval
        # The top-up runs while B submits, then stops: B's last jobs may still wait.
        stopper = threading.Timer(max(0.0, last_probe + 0.5 - time.time()), flood.stopping.set)
        stopper.start()
        probes = probe(partner_b, store, args)
        stopper.cancel()
        t1 = min(time.time(), last_probe + 0.5)
        submitted = flood.submitted - submitted_before
        samples = flood.between(t0, t1)
        backlog_at_end = samples[-1][1] if samples else flood.queued()
    finally:
        flood.stop()
    drain_seconds = drain(store, partner_a, args.drain_cap)
    ended = submitted + backlog_at_start - backlog_at_end
    clear = [p for p in probes if p["started"] and not flood.in_flight(p["sent"], p["started"])]
    flood_info = {
        "build_jobs": built,
        "build_seconds": round(build_seconds, 2),
        "build_jobs_per_s": round(built / build_seconds, 1) if build_seconds else None,
        "topup_jobs": flood.submitted - built,
        "backlog_min": min((s[1] for s in samples), default=None),
        "backlog_max": max((s[1] for s in samples), default=None),
        "dispatched_max": max((s[2] for s in samples), default=None),
        "celery_queue_max": max((s[3] for s in samples), default=None),
        "a_jobs_ended_per_s": round(ended / (t1 - t0), 1) if t1 > t0 else None,
        "drain_seconds": round(drain_seconds, 2),
        "probes_with_an_a_submit_in_flight": len(probes) - len(clear),
        "without_an_a_submit_in_flight": summarize(clear),
    }
    return probes, flood_info


def ratio(top: float | None, bottom: float | None) -> float | None:
    return round(top / bottom, 2) if top is not None and bottom else None


def median(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=10000, help="A's jobs kept waiting")
    parser.add_argument(
        "--build-batch",
        type=int,
        default=MAX_BATCH,
        help="jobs per batch while A's backlog is built",
    )
    parser.add_argument(
        "--topup", type=int, default=200, help="jobs per batch A tops its backlog up with"
    )
    parser.add_argument(
        "--a-seconds", type=float, default=0.01, help="demo.sleep seconds of A's jobs"
    )
    parser.add_argument(
        "--a-max-running",
        type=int,
        default=0,
        help="A's max_running_jobs limit (default 0: none, A may fill every slot)",
    )
    parser.add_argument("--probes", type=int, default=30, help="B's jobs per phase")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between B's jobs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--cap",
        type=float,
        default=180.0,
        help="seconds after B's last job before the rest count as not started",
    )
    parser.add_argument(
        "--drain-cap", type=float, default=600.0, help="seconds A's backlog may take to drain"
    )
    parser.add_argument(
        "--dispatch-window",
        type=int,
        default=0,
        help="JOBGATE_DISPATCH_WINDOW (default 0: the live workers' job-pool slots)",
    )
    parser.add_argument(
        "--root",
        type=Path,
        help="the source tree the gateway and worker run from (default: this checkout)",
    )
    parser.add_argument("--own-redis", action="store_true", help="a private redis-server")
    parser.add_argument(
        "--redis-server", help="the redis-server binary --own-redis runs (default: PATH's)"
    )
    args = parser.parse_args(argv)
    if not 0 < args.build_batch <= MAX_BATCH or not 0 < args.topup <= MAX_BATCH:
        parser.error(f"--build-batch and --topup take 1 to {MAX_BATCH}")
    started = machine()
    own = None
    if args.own_redis:
        from bench.peer import OwnRedis

        own = OwnRedis(args.redis_server)
    redis_url = own.url if own else args.redis_url
    rounds: list[dict[str, Any]] = []
    try:
        stack = Stack.fresh(redis_url, root=(args.root or ROOT).resolve())
        try:
            stack.env["JOBGATE_DISPATCH_WINDOW"] = str(args.dispatch_window)
            stack.start_gateway(args.gunicorn)
            stack.start_worker(args.worker_concurrency, instances=args.worker_instances)
            partner_a, partner_b = Partner(stack, "flooding A"), Partner(stack, "steady B")
            set_limits(stack, partner_a, args.a_max_running)
            store = Store.from_url(redis_url)
            # Warm up: imports, connections and the first job of each task.
            partner_b.submit({"task": "demo.sleep", "params": SLEEP_PARAMS})
            partner_a.submit_batch(
                {"task": "demo.sleep", "params": {"seconds": args.a_seconds, "steps": 1}}, 10
            )
            drain(store, partner_a, 60)
            for round_no in range(args.rounds):
                order = PHASES if round_no % 2 == 0 else PHASES[::-1]
                found: dict[str, Any] = {"order": list(order)}
                for name in order:
                    if name == "idle":
                        probes, flood_info = probe(partner_b, store, args), None
                    else:
                        probes, flood_info = busy_phase(partner_a, partner_b, store, args)
                    found[name] = summarize(probes)
                    found[name]["latencies_ms"] = [ms(p["latency"]) for p in probes]
                    if flood_info:
                        found[name]["flood"] = flood_info
                    print(
                        f"round {round_no + 1}, {name}: B p50 {cell(found[name], 'p50')} ms, "
                        f"p99 {cell(found[name], 'p99')} ms, "
                        f"{found[name]['not_started']} not started"
                        + (
                            f"; A built {flood_info['build_jobs']} in "
                            f"{flood_info['build_seconds']} s, backlog "
                            f"{flood_info['backlog_min']}-{flood_info['backlog_max']}, "
                            f"Celery's queue up to {flood_info['celery_queue_max']}, "
                            f"{flood_info['a_jobs_ended_per_s']} A jobs/s"
                            if flood_info
                            else ""
                        ),
                        flush=True,
                    )
                for q in ("p50", "p99"):
                    found[f"ratio_{q}"] = ratio(found["busy"][f"{q}_ms"], found["idle"][f"{q}_ms"])
                    # A busy figure that is a lower bound makes the ratio one too.
                    found[f"ratio_{q}_lower_bound"] = q in found["busy"]["lower_bounds"]
                rounds.append(found)
            store.redis.close()
            partner_a.close()
            partner_b.close()
        finally:
            stack.close()
    finally:
        if own:
            own.close()
    medians: dict[str, Any] = {
        f"{phase}_{q}_ms": median([r[phase][f"{q}_ms"] for r in rounds])
        for phase in PHASES
        for q in ("p50", "p99")
    }
    for q in ("p50", "p99"):
        medians[f"ratio_{q}"] = median([r[f"ratio_{q}"] for r in rounds])
        # The median of lower bounds (some or all) is a lower bound of the median.
        medians[f"busy_{q}_lower_bound"] = any(q in r["busy"]["lower_bounds"] for r in rounds)
    bound = ">" if medians["busy_p99_lower_bound"] else ""
    print()
    print_table(
        [
            "round",
            "order",
            "idle p50 ms",
            "idle p99 ms",
            "busy p50 ms",
            "busy p99 ms",
            "p99 busy/idle",
            "A backlog min",
            "Celery queue max",
            "A jobs/s",
        ],
        [
            [
                n + 1,
                "/".join(r["order"]),
                cell(r["idle"], "p50"),
                cell(r["idle"], "p99"),
                cell(r["busy"], "p50"),
                cell(r["busy"], "p99"),
                (">" if r["ratio_p99_lower_bound"] else "") + str(r["ratio_p99"]),
                r["busy"]["flood"]["backlog_min"],
                r["busy"]["flood"]["celery_queue_max"],
                r["busy"]["flood"]["a_jobs_ended_per_s"],
            ]
            for n, r in enumerate(rounds)
        ]
        + [
            [
                "median",
                "",
                medians["idle_p50_ms"],
                medians["idle_p99_ms"],
                (">" if medians["busy_p50_lower_bound"] else "") + str(medians["busy_p50_ms"]),
                bound + str(medians["busy_p99_ms"]),
                bound + str(medians["ratio_p99"]),
                "",
                "",
                "",
            ]
        ],
    )
    write_result(
        "fairness",
        {
            "benchmark": "fairness",
            "task": {
                "a": {"task": "demo.sleep", "params": {"seconds": args.a_seconds, "steps": 1}},
                "b": {"task": "demo.sleep", "params": SLEEP_PARAMS},
            },
            "config": {
                "gunicorn": gunicorn_shape(args.gunicorn),
                "worker": worker_shape(args.worker_concurrency, args.worker_instances),
                "dispatch_window": args.dispatch_window
                or "auto (the live workers' job-pool slots)",
                "backlog": args.backlog,
                "a_max_running_jobs": args.a_max_running or None,
                "build_batch": args.build_batch,
                "topup": args.topup,
                "probes": args.probes,
                "interval_s": args.interval,
                "rounds": args.rounds,
                "redis": f"own redis-server {own.version} ({own.binary})"
                if own
                else "shared server, its own db (FLUSHED)",
                "database": os.environ.get("BENCH_DATABASE_URL") or "SQLite (a new file)",
                "root": str(args.root or ROOT),
            },
            "machine": started,
            "results": {
                "rounds": rounds,
                "median": medians,
                "target": {
                    "ratio_p99_at_most": 2.0,
                    "met": medians["ratio_p99"] is not None
                    and not medians["busy_p99_lower_bound"]
                    and medians["ratio_p99"] <= 2.0,
                },
            },
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
