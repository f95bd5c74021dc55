"""The process launcher (gateway.launch) and the command lines ``jobgate worker`` runs."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from config import Settings
from gateway.cli import pool_commands
from gateway.launch import Child, LaunchError, descendants, http_status, stop_all
from tests.helpers import free_port, wait_until


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_child_runs_in_its_own_group_with_its_log(tmp_path: Path) -> None:
    child = Child.start(
        "talker", ["sh", "-c", "echo hello; echo oops >&2; sleep 30"], log=tmp_path / "talker.log"
    )
    try:
        assert os.getpgid(child.pid) == child.pid != os.getpgrp()
        assert child.wait_ready(lambda: "oops" in child.tail() and child.tail(), 5) == "hello\noops"
    finally:
        assert child.stop(timeout=5) == -signal.SIGTERM
    assert not child.running()


def test_wait_ready_fails_with_the_log_tail_when_the_child_exits(tmp_path: Path) -> None:
    child = Child.start(
        "doomed", ["sh", "-c", "echo cannot bind; exit 3"], log=tmp_path / "doomed.log"
    )
    with pytest.raises(LaunchError, match=r"doomed exited with 3; log .*\ncannot bind"):
        child.wait_ready(lambda: False, 10)


def test_wait_ready_times_out(tmp_path: Path) -> None:
    child = Child.start("slow", ["sleep", "30"], log=tmp_path / "slow.log")
    try:
        started = time.monotonic()
        with pytest.raises(LaunchError, match="timed out after 0.3s waiting for the thing"):
            child.wait_ready(lambda: False, 0.3, "the thing", interval=0.05)
        assert time.monotonic() - started < 3
    finally:
        child.stop()


def test_stop_escalates_to_sigkill_for_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    child = Child.start(
        "stubborn",
        ["sh", "-c", "trap '' TERM; echo ready; sleep 30"],
        log=tmp_path / "stubborn.log",
    )
    child.wait_ready(lambda: "ready" in child.tail(), 5)
    started = time.monotonic()
    assert child.stop(timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_kill_reaches_groups_started_under_the_child(tmp_path: Path) -> None:
    """A supervisor puts its children in groups of their own; SIGKILL still takes them all."""
    script = (
        "import subprocess, time\n"
        "subprocess.Popen(['sleep', '30'], start_new_session=True)\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    child = Child.start(
        "supervisor", [sys.executable, "-c", script], log=tmp_path / "supervisor.log"
    )
    child.wait_ready(lambda: "ready" in child.tail(), 10)
    [grandchild] = descendants(child.pid)
    assert os.getpgid(grandchild) == grandchild != child.pid
    child.kill()
    assert child.returncode == -signal.SIGKILL
    wait_until(lambda: not alive(grandchild), 5, message="the grandchild to die")


def test_stop_all_stops_children_together(tmp_path: Path) -> None:
    children = [Child.start(f"c{n}", ["sleep", "30"], log=tmp_path / f"c{n}.log") for n in range(3)]
    started = time.monotonic()
    stop_all(children, timeout=5)
    assert all(not c.running() for c in children)
    assert time.monotonic() - started < 3


def test_http_status_is_none_while_nothing_answers() -> None:
    assert http_status(f"http://127.0.0.1:{free_port()}/healthz", timeout=0.5) is None


# ------------------------------------------------------------------ jobgate worker's shape
def test_worker_runs_a_prefork_job_pool_and_a_gevent_delivery_pool() -> None:
    settings = Settings(queue_jobs="j", queue_webhooks="w")
    commands = pool_commands(settings)
    assert list(commands) == ["jobs", "webhooks"]
    celery = [sys.executable, "-m", "celery", "-A", "tasks.worker", "worker"]
    assert commands["jobs"] == celery + [
        "-Q",
        "j",
        "-P",
        "prefork",
        "-c",
        str(os.cpu_count()),
        "-n",
        "jobs@%h",
        "-l",
        "INFO",
    ]
    assert commands["webhooks"] == celery + [
        "-Q",
        "w",
        "-P",
        "gevent",
        "-c",
        "1000",
        "-n",
        "webhooks@%h",
        "-l",
        "INFO",
        "--prefetch-multiplier",
        "2",
    ]


def test_a_threads_delivery_pool_defaults_to_fewer_slots() -> None:
    """An OS thread per slot, all taking turns on the GIL: 100, not gevent's 1000."""
    hooks = pool_commands(Settings(), delivery_pool="threads")["webhooks"]
    assert hooks[hooks.index("-P") + 1 : hooks.index("-c") + 2] == ["threads", "-c", "100"]


def test_worker_options_and_extra_celery_arguments() -> None:
    settings = Settings(queue_jobs="j", queue_webhooks="w")
    commands = pool_commands(
        settings,
        concurrency=3,
        delivery_concurrency=50,
        delivery_pool="threads",
        jobs_name="a@h",
        webhooks_name="b@h",
        loglevel="WARNING",
        extra=("-E", "--hostname=mine@h", "-Ofair"),
        delivery_extra=("--without-mingle",),
    )
    jobs, hooks = commands["jobs"], commands["webhooks"]
    # An option given to Celery directly wins over ours (here the node name).
    assert jobs[6:] == [
        "-Q",
        "j",
        "-P",
        "prefork",
        "-c",
        "3",
        "-l",
        "WARNING",
        "-E",
        "--hostname=mine@h",
        "-Ofair",
    ]
    assert hooks[6:] == [
        "-Q",
        "w",
        "-P",
        "threads",
        "-c",
        "50",
        "-n",
        "b@h",
        "-l",
        "WARNING",
        "--prefetch-multiplier",
        "2",
        "--without-mingle",
    ]
    assert list(pool_commands(settings, pools=("webhooks",))) == ["webhooks"]
    # The operator's own prefetch wins over the delivery pool's.
    mine = pool_commands(settings, delivery_extra=("--prefetch-multiplier=4",))["webhooks"]
    assert mine[-1] == "--prefetch-multiplier=4" and "2" not in mine
