"""Slow receivers: job start latency (submit to STARTED) while webhook receivers hang.

Per worker shape and round, two phases: probe jobs (``demo.sleep`` 0 s, no callback)
submitted at a steady pace with no receiver hanging, then the same after N jobs whose
callbacks go to a receiver that accepts the connection and never answers, so each delivery
holds for the full webhook timeout. The probes span the whole timeout window. Latency is
the job record's ``started_at`` (the worker took it) minus its ``created_at`` (the gateway
queued it), both written on this machine. Shapes: ``jobgate worker`` as shipped (prefork
job pool + I/O delivery pool) and the old single pool (one prefork worker on both queues).
A probe not started ``--cap`` seconds after the last submission counts as not started: its
latency is then only known to be above the time it waited (shown as ``>x``).

    python -m bench.slow_receivers [--hanging 100] [--jobs 60] [--interval 0.2]
                                   [--webhook-timeout 10] [--rounds 3]
"""

from __future__ import annotations

import socket
import threading
import time
from datetime import datetime
from typing import Any

import requests

from bench.common import (
    SLEEP_PARAMS,
    WORKER_SHAPES,
    Stack,
    base_parser,
    default_delivery_concurrency,
    gunicorn_shape,
    machine,
    ms,
    percentile,
    print_table,
    wait_for,
    worker_shape,
    write_result,
)


class HangingReceiver:
    """Webhook receivers that never answer (127.0.0.1, one thread per connection).

    While holding, every request is read and left unanswered until the client gives up
    (the webhook timeout); ``release()`` closes what is held and from then on closes each
    new connection at once, so a backlog of deliveries drains in moments.
    """

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port = self.server.getsockname()[1]
        self.lock = threading.Lock()
        self.arrived = 0
        self.open: set[socket.socket] = set()
        self.peak = 0
        self.releasing = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hang"

    def holding(self) -> int:
        with self.lock:
            return len(self.open)

    def hold(self) -> None:
        with self.lock:
            self.releasing, self.peak = False, len(self.open)

    def release(self) -> None:
        with self.lock:
            self.releasing = True
            held, self.open = list(self.open), set()
        for conn in held:
            _close(conn)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        try:
            if not conn.recv(65536):
                return
            with self.lock:
                self.arrived += 1
                if self.releasing:
                    raise ConnectionAbortedError
                self.open.add(conn)
                self.peak = max(self.peak, len(self.open))
            while conn.recv(65536):  # until the client gives up (EOF) or release()
                pass
        except OSError:
            pass
        finally:
            with self.lock:
                self.open.discard(conn)
            _close(conn)

    def close(self) -> None:
        self.server.close()
        self.release()


def _close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()


def parse(at: str) -> float:
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


def start_latencies(stack: Stack, ids: list[str]) -> list[tuple[float, bool]]:
    """Per job: (started_at - created_at in seconds, True), or while it has not started
    (now - created_at, False), a lower bound."""
    client = stack.redis()
    try:
        pipe = client.pipeline()
        for job_id in ids:
            pipe.hmget(f"jobgate:job:{job_id}", "created_at", "started_at")
        now = time.time()
        return [
            (parse(started) - parse(created), True) if started else (now - parse(created), False)
            for created, started in pipe.execute()
        ]
    finally:
        client.close()


def queues_drained(stack: Stack) -> bool:
    client = stack.redis()
    try:
        return client.llen("jobs") == 0 and client.llen("webhooks") == 0
    finally:
        client.close()


def phase(
    stack: Stack,
    session: requests.Session,
    receiver: HangingReceiver,
    hanging: int,
    capacity: int,
    args: Any,
) -> dict[str, Any]:
    """One phase: ``hanging`` receivers held, then ``args.jobs`` paced probe jobs."""
    submit = stack.url("gateway", "/v1/jobs")
    receiver.hold()
    arrived_before = receiver.arrived
    for _ in range(hanging):
        session.post(
            submit,
            json={"task": "demo.sleep", "params": SLEEP_PARAMS, "callback_url": receiver.url},
            timeout=10,
        ).raise_for_status()
    if hanging:
        # As many as the shape can hold at once: all of them, or one per pool process.
        wait_for(
            lambda: receiver.holding() >= min(hanging, capacity),
            args.webhook_timeout,
            "the receivers to hang",
            interval=0.02,
        )
    hanging_at_start = receiver.holding()
    ids: list[str] = []
    start = time.monotonic()
    for index in range(args.jobs):
        time.sleep(max(0.0, start + index * args.interval - time.monotonic()))
        response = session.post(
            submit, json={"task": "demo.sleep", "params": SLEEP_PARAMS}, timeout=10
        )
        response.raise_for_status()
        ids.append(response.json()["job_id"])
    cap = time.monotonic() + args.cap
    while time.monotonic() < cap and not all(ok for _, ok in start_latencies(stack, ids)):
        time.sleep(0.1)
    latencies = start_latencies(stack, ids)
    peak = receiver.peak
    # Done measuring: let the backlog of deliveries fail fast, so the next phase is clean.
    receiver.release()
    wait_for(
        lambda: receiver.arrived - arrived_before >= hanging and queues_drained(stack),
        max(120.0, hanging * args.webhook_timeout),
        "the deliveries to drain",
        interval=0.1,
    )
    time.sleep(0.5)
    return {
        "latencies": latencies,
        "hanging_at_first_probe": hanging_at_start,
        "peak_hanging": peak,
    }


def censored_percentile(values: list[tuple[float, bool]], q: float) -> tuple[float | None, bool]:
    """The q-th percentile in ms, and whether it is only a lower bound (it falls on a
    probe that had not started)."""
    found = percentile(sorted(values), q)
    if found is None:
        return None, False
    latency, started = found
    return ms(latency), not started


def shown(value: tuple[float | None, bool]) -> str | None:
    number, lower_bound = value
    return None if number is None else f">{number}" if lower_bound else str(number)


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool the rounds' probes: p50/p99/max submit-to-start, not-started ones as bounds."""
    probes = [v for run in runs for v in run["latencies"]]
    points = {"p50": 50, "p99": 99, "max": 100}
    values = {name: censored_percentile(probes, q) for name, q in points.items()}
    return {
        "probes": len(probes),
        "not_started": sum(not ok for _, ok in probes),
        **{f"{name}_ms": value for name, (value, _) in values.items()},
        "lower_bounds": [name for name, (_, bound) in values.items() if bound],
        "p50_ms_per_round": [shown(censored_percentile(run["latencies"], 50)) for run in runs],
        "hanging_at_first_probe": [run["hanging_at_first_probe"] for run in runs],
        "peak_hanging": [run["peak_hanging"] for run in runs],
    }


def cell(row: dict[str, Any], name: str) -> str | None:
    return shown((row[f"{name}_ms"], name in row["lower_bounds"]))


def run_shape(shape: str, args: Any) -> dict[str, Any]:
    stack = Stack.fresh(args.redis_url)
    # One retry, an hour later: every hanging receiver gets exactly one attempt here.
    stack.env.update(
        {
            "JOBGATE_WEBHOOK_TIMEOUT": str(args.webhook_timeout),
            "JOBGATE_WEBHOOK_RETRY_DELAYS": "3600",
        }
    )
    receiver = HangingReceiver()
    runs: dict[int, list[dict[str, Any]]] = {0: [], args.hanging: []}
    try:
        stack.start_gateway(args.gunicorn)
        stack.start_worker(args.worker_concurrency, shape=shape)
        partner = stack.create_partner()
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {partner['api_key']}"
        capacity = (
            args.worker_concurrency if shape == "single" else default_delivery_concurrency(shape)
        )
        for round_no in range(args.rounds):
            for hanging in runs:
                result = phase(stack, session, receiver, hanging, capacity, args)
                runs[hanging].append(result)
                print(
                    f"{WORKER_SHAPES[shape]}, round {round_no + 1}, {hanging} hanging: "
                    f"p50 {shown(censored_percentile(result['latencies'], 50))} ms, "
                    f"{sum(not ok for _, ok in result['latencies'])} not started",
                    flush=True,
                )
    finally:
        receiver.close()
        stack.close()
        # Each hanging receiver's retry, an hour out, is back on the queue: drop it (the db
        # is the bench's), or the next worker on this db would hold it for an hour.
        client = stack.redis()
        client.flushdb()
        client.close()
    return {str(hanging): summary(results) for hanging, results in runs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--hanging", type=int, default=100, help="receivers hanging at once")
    parser.add_argument("--jobs", type=int, default=60, help="probe jobs per phase")
    parser.add_argument(
        "--interval", type=float, default=0.2, help="seconds between probe submissions"
    )
    parser.add_argument(
        "--webhook-timeout",
        type=float,
        default=10.0,
        help="JOBGATE_WEBHOOK_TIMEOUT: how long each receiver hangs",
    )
    parser.add_argument(
        "--cap",
        type=float,
        default=20.0,
        help="seconds after the last probe before the rest count as not started",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--shapes", default="gevent,single", help=f"comma-separated, of {', '.join(WORKER_SHAPES)}"
    )
    args = parser.parse_args(argv)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = set(shapes) - set(WORKER_SHAPES)
    if unknown:
        parser.error(f"unknown shapes: {', '.join(sorted(unknown))}")
    started = machine()
    results = {WORKER_SHAPES[shape]: run_shape(shape, args) for shape in shapes}
    print()
    print_table(
        [
            "worker shape",
            "receivers hanging",
            "probes",
            "not started",
            "p50 ms",
            "p99 ms",
            "max ms",
            "hanging at first probe",
        ],
        [
            [
                shape,
                hanging,
                row["probes"],
                row["not_started"],
                cell(row, "p50"),
                cell(row, "p99"),
                cell(row, "max"),
                "/".join(str(n) for n in row["hanging_at_first_probe"]),
            ]
            for shape, by_hanging in results.items()
            for hanging, row in by_hanging.items()
        ],
    )
    write_result(
        "slow_receivers",
        {
            "benchmark": "slow_receivers",
            "task": "demo.sleep",
            "params": SLEEP_PARAMS,
            "config": {
                "gunicorn": gunicorn_shape(args.gunicorn),
                "workers": {
                    WORKER_SHAPES[shape]: worker_shape(args.worker_concurrency, 1, shape)
                    for shape in shapes
                },
                "hanging": args.hanging,
                "probe_jobs": args.jobs,
                "probe_interval_s": args.interval,
                "webhook_timeout_s": args.webhook_timeout,
                "cap_s": args.cap,
                "rounds": args.rounds,
            },
            "machine": started,
            "results": results,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
