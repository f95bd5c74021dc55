"""Worker SIGKILL recovery: kill -> job terminal and kill -> terminal webhook, over N kills.

The fleet as shipped: two ``jobgate worker`` processes (each a supervisor with a prefork
job pool and a gevent delivery pool), default settings (visibility timeout 30 s unless
``--visibility-timeout``). Each round: submit one ``demo.sleep`` job with a callback to
``bench.receiver`` (signatures verified), wait until a worker has started it (its record
names the job pool's node), SIGKILL that ``jobgate worker``'s whole tree (the supervisor
and both pools, every process group under it: a node lost), start a replacement at once,
and time kill -> the record's ``finished_at`` and kill -> the terminal webhook's first
arrival at the receiver. The next round starts once both workers are up again.

A control round then runs a job longer than the visibility timeout (``--control-seconds``,
default 1.5 x the timeout) on a live fleet with no kill, and checks that it ran once: its
record's ``runs`` is 1 and no worker log says it was run again.

    python -m bench.recovery [--kills 20] [--job-seconds 3] [--visibility-timeout 30]
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import requests

from bench.common import (
    Service,
    Stack,
    base_parser,
    gunicorn_shape,
    leftover_detail,
    leftovers,
    machine,
    percentile,
    print_table,
    stranded_count,
    wait_for,
    write_result,
)
from config import Settings

TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")


def parse(at: str) -> float:
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


class Fleet:
    """The ``jobgate worker`` processes, by job pool node name; replacements on demand."""

    def __init__(self, stack: Stack, concurrency: int) -> None:
        self.stack, self.concurrency = stack, concurrency
        self.nodes: dict[str, Service] = {}
        self.next_instance = 0
        self.started: list[str] = []

    def add(self) -> str:
        service, node = self.stack.spawn_worker(self.next_instance, self.concurrency)
        self.next_instance += 1
        self.nodes[node] = service
        self.started.append(node)
        return node

    def ready(self) -> list[str]:
        return [
            node
            for node, service in self.nodes.items()
            if service.running() and self.stack.worker_alive(node)
        ]

    def wait_ready(self, count: int, timeout: float = 90.0) -> None:
        wait_for(lambda: len(self.ready()) >= count, timeout, f"{count} workers", 0.2)

    def kill(self, node: str) -> float:
        """SIGKILL the whole tree of ``node``'s ``jobgate worker``; the time of the kill."""
        service = self.nodes.pop(node)
        at = time.time()
        service.kill()  # every process group under the supervisor, at once
        return at

    def logs(self) -> str:
        return "\n".join(
            service.log_path.read_text(errors="replace")
            for service in self.stack.services.values()
            if service.name.startswith("worker") and service.log_path and service.log_path.exists()
        )


def record(stack: Stack, job_id: str) -> dict[str, str]:
    client = stack.redis()
    try:
        return client.hgetall(f"jobgate:job:{job_id}")
    finally:
        client.close()


def receiver_detail(stack: Stack) -> dict[str, Any]:
    return requests.get(stack.url("receiver", "/stats?detail=1"), timeout=30).json()


def submit(stack: Stack, session: requests.Session, seconds: float) -> str:
    response = session.post(
        stack.url("gateway", "/v1/jobs"),
        json={
            "task": "demo.sleep",
            "params": {"seconds": seconds, "steps": max(1, int(seconds))},
            "callback_url": stack.url("receiver", "/hook"),
        },
        timeout=10,
    )
    response.raise_for_status()
    return response.json()["job_id"]


def wait_started(stack: Stack, job_id: str, timeout: float) -> dict[str, str]:
    return wait_for(
        lambda: (r := record(stack, job_id)).get("started_at") and r.get("worker") and r,
        timeout,
        f"job {job_id} to start",
        0.05,
    )


def wait_terminal(stack: Stack, job_id: str, timeout: float) -> tuple[dict[str, str], float]:
    """The job's record once it is terminal and its webhook arrived; that arrival time."""

    def done() -> Any:
        rec = record(stack, job_id)
        if rec.get("status") not in TERMINAL:
            return None
        hooked = receiver_detail(stack)["by_job"].get(job_id)
        return hooked and (rec, hooked["first_at"])

    return wait_for(done, timeout, f"job {job_id} to end and its webhook to arrive", 0.1)


def kill_round(
    stack: Stack, fleet: Fleet, session: requests.Session, args: Any, cap: float
) -> dict[str, Any]:
    fleet.wait_ready(2)
    job_id = submit(stack, session, args.job_seconds)
    started = wait_started(stack, job_id, 60)
    time.sleep(args.kill_after)
    victim = started["worker"]
    if victim not in fleet.nodes:
        raise RuntimeError(f"job {job_id} runs on {victim}, not a worker of this fleet")
    killed_at = fleet.kill(victim)
    replacement = fleet.add()  # at once; the other worker is up meanwhile
    rec, hooked_at = wait_terminal(stack, job_id, cap)
    return {
        "job_id": job_id,
        "killed": victim,
        "replacement": replacement,
        "status": rec["status"],
        "runs": int(rec.get("runs", 0)),
        "finished_by": rec.get("worker"),
        "kill_to_terminal_s": round(parse(rec["finished_at"]) - killed_at, 3),
        "kill_to_webhook_s": round(hooked_at - killed_at, 3),
    }


def control_round(
    stack: Stack, fleet: Fleet, session: requests.Session, seconds: float, cap: float
) -> dict[str, Any]:
    """A job longer than the visibility timeout on a live fleet: it must run once."""
    fleet.wait_ready(2)
    job_id = submit(stack, session, seconds)
    started = wait_started(stack, job_id, 60)
    rec, hooked_at = wait_terminal(stack, job_id, seconds + cap)
    again = [line for line in fleet.logs().splitlines() if job_id in line]
    return {
        "job_id": job_id,
        "seconds": seconds,
        "status": rec["status"],
        "runs": int(rec.get("runs", 0)),
        "started_by": started["worker"],
        "finished_by": rec.get("worker"),
        "run_seconds": round(parse(rec["finished_at"]) - parse(rec["started_at"]), 3),
        "worker_log_lines_naming_it": again,
        "ran_once": int(rec.get("runs", 0)) == 1 and not again,
    }


def quiet(stack: Stack) -> bool:
    return stranded_count(leftovers(stack)) == 0


def summarize(values: list[float]) -> dict[str, float | None]:
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "max": max(values) if values else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument(
        "--job-seconds", type=float, default=3.0, help="demo.sleep length of each killed job"
    )
    parser.add_argument(
        "--kill-after",
        type=float,
        default=0.5,
        help="seconds after the job started before the kill",
    )
    parser.add_argument(
        "--visibility-timeout",
        type=int,
        help="JOBGATE_VISIBILITY_TIMEOUT (default: as shipped, 30)",
    )
    parser.add_argument(
        "--control-seconds",
        type=float,
        help="control job length (default 1.5 x the visibility timeout; 0: no control round)",
    )
    parser.add_argument("--target", type=float, default=60.0, help="seconds, kill -> terminal")
    args = parser.parse_args(argv)
    stack = Stack.fresh(args.redis_url)
    if args.visibility_timeout:
        stack.env["JOBGATE_VISIBILITY_TIMEOUT"] = str(args.visibility_timeout)
    settings = Settings.from_env(stack.env)
    timeout = settings.visibility_timeout
    control_seconds = 1.5 * timeout if args.control_seconds is None else args.control_seconds
    cap = 4 * timeout + 60  # per round: far past the target, so a slow one is measured
    started = machine()
    rounds: list[dict[str, Any]] = []
    control: dict[str, Any] | None = None
    fleet = Fleet(stack, args.worker_concurrency)
    try:
        stack.start_gateway(args.gunicorn)
        partner = stack.create_partner()
        stack.start_receiver(partner["webhook_secret"])
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {partner['api_key']}"
        fleet.add()
        fleet.add()
        for number in range(args.kills):
            row = kill_round(stack, fleet, session, args, cap)
            rounds.append(row)
            print(
                f"kill {number + 1}/{args.kills}: {row['status']} runs {row['runs']}, "
                f"kill->terminal {row['kill_to_terminal_s']} s, "
                f"kill->webhook {row['kill_to_webhook_s']} s",
                flush=True,
            )
        if control_seconds > 0:
            control = control_round(stack, fleet, session, control_seconds, cap)
            print(
                f"control: {control['seconds']} s job, runs {control['runs']}, "
                f"ran once: {control['ran_once']}",
                flush=True,
            )
        # Quiet: nothing queued, held, due, open or live (bounded), then count.
        try:
            wait_for(lambda: quiet(stack), 2 * timeout + 30, "quiet", 0.5)
        except RuntimeError:
            pass
        seen = receiver_detail(stack)
        left = leftovers(stack)
        evidence = leftover_detail(stack) if stranded_count(left) else None
    finally:
        stack.close()
    ids = [row["job_id"] for row in rounds] + ([control["job_id"]] if control else [])
    by_job = seen["by_job"]
    lost = [j for j in ids if j not in by_job]
    several = {j: by_job[j]["ids"] for j in ids if j in by_job and len(by_job[j]["ids"]) > 1}
    terminal = [row["kill_to_terminal_s"] for row in rounds]
    webhook = [row["kill_to_webhook_s"] for row in rounds]
    result = {
        "kills": len(rounds),
        "visibility_timeout_s": timeout,
        "target_s": args.target,
        "kill_to_terminal_s": summarize(terminal),
        "kill_to_webhook_s": summarize(webhook),
        "within_target": sum(v <= args.target for v in terminal),
        "statuses": {s: sum(r["status"] == s for r in rounds) for s in TERMINAL},
        "runs": {
            str(n): sum(r["runs"] == n for r in rounds) for n in sorted({r["runs"] for r in rounds})
        },
        "lost": len(lost),
        "lost_jobs": lost,
        "jobs_with_several_ids": len(several),
        "several_ids": several,
        "redeliveries_same_id": seen["duplicates"],
        "bad_signatures": seen["bad_signatures"],
        "control": control,
        "leftovers": left,
        "stranded": stranded_count(left),
        "stranded_evidence": evidence,
        "rounds": rounds,
    }
    print()
    print_table(
        ["metric", "p50 s", "p90 s", "max s"],
        [
            [name, *(None if v is None else round(v, 2) for v in result[key].values())]
            for name, key in (
                ("kill -> job terminal", "kill_to_terminal_s"),
                ("kill -> terminal webhook", "kill_to_webhook_s"),
            )
        ],
    )
    print()
    print_table(
        ["check", "value"],
        [
            ["kills", len(rounds)],
            ["visibility timeout s", timeout],
            [f"terminal within {args.target:g} s", f"{result['within_target']}/{len(rounds)}"],
            ["statuses", result["statuses"]],
            ["runs per killed job", result["runs"]],
            ["lost terminal webhooks", result["lost"]],
            ["jobs with >1 terminal id", result["jobs_with_several_ids"]],
            ["redeliveries of the same id", result["redeliveries_same_id"]],
            ["bad signatures", result["bad_signatures"]],
            ["control: runs (job > timeout, no kill)", control and control["runs"]],
            ["control: ran once", control and control["ran_once"]],
            ["stranded records", result["stranded"]],
        ],
    )
    write_result(
        "recovery",
        {
            "benchmark": "recovery",
            "task": "demo.sleep",
            "params": {"seconds": args.job_seconds, "kill_after_start_s": args.kill_after},
            "config": {
                "gunicorn": gunicorn_shape(args.gunicorn),
                "workers": f"2 x jobgate worker -c {args.worker_concurrency} (prefork job "
                "pool + gevent delivery pool); the one running the job is "
                "SIGKILLed (supervisor + both pools) and a replacement started",
                "visibility_timeout_s": timeout,
                "kills": args.kills,
                "control_seconds": control_seconds,
            },
            "machine": started,
            "results": result,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
