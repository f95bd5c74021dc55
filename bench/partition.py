"""Partition: the Redis primary cut off from its replica and sentinels, clients still reaching it.

Jepsen's scenario for Sentinel, on one machine. The primary sits behind a TCP proxy
(``bench.proxy``) that tells the sentinels' and the replica's connections from clients' by
what they send first (``bench.sentinel``, ``proxied=True``). A gateway and ``--workers``
``jobgate worker``s (real processes, as ``bench.fleet`` runs them) take a steady submit
load of ``demo.sleep`` jobs with a callback to ``bench.receiver``. Once ``--partition-at``
of the jobs are accepted the proxy black-holes the sentinels and the replica: the sentinels
promote the replica, while connections clients already hold keep writing to the old
primary (it takes writes: nothing tells it it was demoted). ``--hold`` s after the
promotion the partition heals: the sentinels turn the old primary into a replica of the
new one, which throws away everything it took while cut off. The database, where every
accepted job and every end is committed first, and the relay must give those back.

Reported: jobs accepted; lost (accepted, and no row in the database, or not ended there,
or no terminal webhook); jobs with two terminal events (more than one terminal
``webhook-id``, or two different ends announced); what the old primary acknowledged while
cut off (its replication offset's growth, and the jobs accepted then whose record it held
and the new primary did not); the failover (the sentinels' new primary, how long after the
cut) and the rejoin after the heal.

    python -m bench.partition [--jobs 3000] [--rate 30] [--partition-at 0.3] [--hold 10]
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import requests

from bench.common import (
    SLEEP_PARAMS,
    base_parser,
    fresh_database,
    gateway_env,
    gunicorn_shape,
    leftovers,
    machine,
    print_table,
    stranded_count,
    wait_for,
    write_result,
)
from bench.fleet import Faults, Gateways, SentinelStack, Submitted, kept_records, load_under
from bench.recovery import Fleet, receiver_detail
from bench.sentinel import MASTER, SentinelGroup, quiet

TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")


class Partition:
    """The partition fault: cut, wait for the promotion, hold, look at both primaries, heal."""

    def __init__(
        self,
        group: SentinelGroup,
        submitted: Submitted,
        hold: float,
        churn: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        assert group.proxy is not None, "the group needs its proxy (proxied=True)"
        self.group, self.proxy, self.submitted, self.hold = group, group.proxy, submitted, hold
        self.churn = churn  # run halfway through the hold: processes that find the new primary
        self.report: dict[str, Any] = {}

    def __call__(self, kind: str) -> dict[str, Any]:
        if kind != "partition":
            raise ValueError(f"unknown fault {kind!r}")
        group = self.group
        old = group.client(group.primary_port)  # the old primary, reached around the proxy
        new = group.client(group.replica_port)
        try:
            offset_before = int(old.info("replication")["master_repl_offset"])
            cut_at = time.time()
            self.proxy.partition()
            new_port = group.wait_promotion(120)
            promoted_at = time.time()
            # The partition lasting past the promotion.
            churned: dict[str, Any] = {}
            if self.churn is not None:
                time.sleep(self.hold / 2)
                churned = self.churn()
                time.sleep(max(0.0, promoted_at + self.hold - time.time()))
            else:
                time.sleep(self.hold)
            offset_at_heal = int(old.info("replication")["master_repl_offset"])
            old_role = old.info("replication")["role"]
            during = self._accepted_between(cut_at, time.time())
            only_old = self._only_on(old, new, during)
            client_bytes = self.proxy.client_bytes_while_cut
            healed_at = time.time()
            self.proxy.heal()
            wait_for(
                lambda: quiet(
                    lambda: (
                        (r := old.info("replication"))["role"] == "slave"
                        and r["master_link_status"] == "up"
                        and int(r["master_port"]) == new_port
                    )
                ),
                120,
                "the old primary to rejoin as a replica of the new one",
                0.1,
            )
            rejoined_at = time.time()
            key = "jobgate:job:{}".format
            discarded = [j for j in only_old if quiet(lambda j=j: old.exists(key(j))) == 0]
        finally:
            old.close()
            new.close()
        self.report = {
            "watched_address": f"127.0.0.1:{self.proxy.port} (proxy)",
            "old_primary": f"127.0.0.1:{group.primary_port}",
            "new_primary": f"127.0.0.1:{new_port}",
            "promoted_after_s": round(promoted_at - cut_at, 2),
            "partition_s": round(healed_at - cut_at, 2),
            "rejoined_after_heal_s": round(rejoined_at - healed_at, 2),
            "old_primary_role_before_heal": old_role,
            "old_primary_write_bytes_while_cut": offset_at_heal - offset_before,
            "client_bytes_forwarded_while_cut": client_bytes,
            "jobs_accepted_while_cut": len(during),
            "jobs_only_on_old_primary": len(only_old),
            "only_on_old_primary_sample": only_old[:10],
            "of_those_discarded_by_the_old_primary_on_rejoin": len(discarded),
            **({"churn": churned} if churned else {}),
        }
        group.primary_port, group.replica_port = group.replica_port, group.primary_port
        return {"promoted_after_s": self.report["promoted_after_s"]}

    def _accepted_between(self, start: float, end: float) -> list[str]:
        with self.submitted.lock:
            return [j for j, at in self.submitted.accepted_at.items() if start <= at <= end]

    @staticmethod
    def _only_on(old: Any, new: Any, job_ids: list[str]) -> list[str]:
        """The jobs whose record ``old`` holds and ``new`` lacks."""
        key = "jobgate:job:{}".format
        return [
            j
            for j in job_ids
            if quiet(lambda j=j: old.exists(key(j))) and not quiet(lambda j=j: new.exists(key(j)))
        ]


def outcome(ids: list[str], recs: list[dict[str, Any] | None], by_job: dict[str, Any]) -> dict:
    """Lost and two-terminal jobs, from the database's rows and the webhooks received."""
    no_row = [j for j, r in zip(ids, recs, strict=True) if r is None]
    not_ended = [j for j, r in zip(ids, recs, strict=True) if r and r["status"] not in TERMINAL]
    no_webhook = [j for j in ids if j not in by_job]
    lost = sorted(set(no_row) | set(not_ended) | set(no_webhook))
    two = {
        j: {"ids": by_job[j]["ids"], "ends": by_job[j]["ends"]}
        for j in ids
        if j in by_job and (len(by_job[j]["ids"]) > 1 or len(by_job[j]["ends"]) > 1)
    }
    return {
        "lost": len(lost),
        "lost_jobs": lost[:20],
        "accepted_without_row": len(no_row),
        "not_ended_in_database": len(not_ended),
        "without_terminal_webhook": len(no_webhook),
        "two_terminal_events": len(two),
        "two_terminal_sample": dict(list(two.items())[:10]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=30.0, help="submissions per second")
    parser.add_argument("--submitters", type=int, default=8, help="submitting threads")
    parser.add_argument("--gateways", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="jobgate worker processes")
    parser.add_argument("--partition-at", type=float, default=0.3, help="share of jobs accepted")
    parser.add_argument("--hold", type=float, default=10.0, help="s cut off after the promotion")
    parser.add_argument("--down-after", type=int, default=1000, help="sentinel down-after-ms")
    parser.add_argument("--sweep-interval", type=float, default=15.0, help="the relay: twice it")
    parser.add_argument(
        "--churn",
        action="store_true",
        help="halfway through the partition, restart the gateway and replace a worker: the "
        "new processes find the new primary, so both sides take jobs at once",
    )
    parser.add_argument("--job-seconds", type=float, default=0.0, help="each demo.sleep job")
    parser.add_argument("--retry-delays", default="1,2,3,5,5,10,10,10")
    parser.add_argument("--give-up", type=float, default=120.0, help="s a submission retries")
    parser.add_argument("--cap", type=float, default=900.0, help="s to wait for every webhook")
    args = parser.parse_args(argv)
    if not args.gunicorn:
        args.gunicorn = "-w 1"
    params = {**SLEEP_PARAMS, "seconds": args.job_seconds}
    started = machine()
    group = SentinelGroup(down_after_ms=args.down_after, proxied=True).start()
    database_url = fresh_database()
    env = {
        **gateway_env(group.url),
        "JOBGATE_REDIS_SENTINEL_MASTER": MASTER,
        "JOBGATE_DATABASE_URL": database_url,
        "JOBGATE_WEBHOOK_RETRY_DELAYS": args.retry_delays,
        "JOBGATE_SWEEP_INTERVAL": str(args.sweep_interval),
    }
    stack = SentinelStack(group.url, env)
    gateways = Gateways(stack, args.gunicorn)
    fleet = Fleet(stack, args.worker_concurrency)
    submitted = Submitted()

    def churn() -> dict[str, Any]:
        stack.services["gateway0"].kill()
        gateways.start(0)
        node = sorted(fleet.nodes)[0]
        fleet.kill(node)
        fleet.add()
        return {"gateway_restarted": True, "worker_replaced": node}

    partition = Partition(group, submitted, args.hold, churn if args.churn else None)
    faults = Faults([("partition", args.partition_at)], args.jobs, submitted, partition)
    try:
        for index in range(args.gateways):
            gateways.start(index)
        partner = stack.create_partner()
        stack.start_receiver(partner["webhook_secret"])
        for _ in range(args.workers):
            fleet.add()
        fleet.wait_ready(args.workers)
        body = {
            "task": "demo.sleep",
            "params": params,
            "callback_url": stack.url("receiver", "/hook"),
        }
        # The partition may outlast the load: its heal is waited for.
        t0, submitted_at = load_under(
            faults, stack, partner, body, args, submitted, finish_faults=True
        )
        ids = list(submitted.jobs.values())
        print(f"accepted {len(ids)} jobs in {submitted_at - t0:.1f} s", flush=True)

        def ended() -> bool:
            seen = requests.get(stack.url("receiver", "/stats"), timeout=30).json()["jobs"]
            if seen < len(ids):
                return False
            recs = kept_records(database_url, ids)
            return all(r is not None and r["status"] in TERMINAL for r in recs)

        try:
            wait_for(ended, t0 + args.cap - time.time(), "every accepted job to end", 1.0)
        except RuntimeError as exc:
            print(exc, flush=True)
        done_at = time.time()
        left = leftovers(stack)
        seen = receiver_detail(stack)
        recs = kept_records(database_url, ids)
    finally:
        faults.halt.set()
        stack.close()
        group.stop()
    result = {
        "jobs_offered": args.jobs,
        "jobs_accepted": len(ids),
        "submissions_given_up": len(submitted.given_up),
        "submit_answers": dict(submitted.answers),
        **outcome(ids, recs, seen["by_job"]),
        "statuses": dict(Counter(r["status"] or "not ended" for r in recs if r is not None)),
        "runs": dict(Counter(str(r["runs"] or 0) for r in recs if r is not None)),
        "redeliveries_same_id": seen["duplicates"],
        "bad_signatures": seen["bad_signatures"],
        "partition": partition.report,
        "repairs": left["repairs"],
        "stranded": stranded_count(left),
        "submit_seconds": round(submitted_at - t0, 1),
        "all_ended_s": round(done_at - t0, 1),
    }
    report = partition.report
    print()
    print_table(
        ["metric", "value"],
        [
            ["jobs accepted / offered", f"{len(ids)} / {args.jobs}"],
            ["lost (no row, not ended, or no terminal webhook)", result["lost"]],
            ["jobs with two terminal events", result["two_terminal_events"]],
            ["promoted after the cut, s", report.get("promoted_after_s")],
            ["new primary", report.get("new_primary")],
            [
                "old primary: write bytes taken while cut",
                report.get("old_primary_write_bytes_while_cut"),
            ],
            [
                "jobs accepted while cut / only on the old primary",
                f"{report.get('jobs_accepted_while_cut')} / "
                f"{report.get('jobs_only_on_old_primary')}",
            ],
            ["relay repairs", left["repairs"] or "none"],
            ["all ended after, s", result["all_ended_s"]],
        ],
    )
    write_result(
        "partition",
        {
            "benchmark": "partition",
            "task": "demo.sleep",
            "params": params,
            "config": {
                "gateways": f"{args.gateways} x gunicorn {gunicorn_shape(args.gunicorn)}",
                "workers": f"{args.workers} x jobgate worker -c {args.worker_concurrency}",
                "redis": "Sentinel: primary behind bench.proxy, replica, 3 sentinels, "
                f"down-after-milliseconds {args.down_after}",
                "partition": "the proxy black-holes the sentinels' and the replica's "
                "connections to the primary; clients' connections keep flowing",
                "rate": args.rate,
                "submitters": args.submitters,
                "partition_at": args.partition_at,
                "hold_after_promotion_s": args.hold,
                "churn": args.churn,
                "worker_concurrency": args.worker_concurrency,
                "sweep_interval_s": args.sweep_interval,
                "webhook_retry_delays": args.retry_delays,
            },
            "machine": started,
            "results": result,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
