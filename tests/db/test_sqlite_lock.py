"""SQLite's write lock, waited for without holding a gevent process still.

A gateway process serves every request on one thread under gevent; a write that waits for
SQLite's file lock inside SQLite (its busy handler sleeps in C, in steps of up to 100 ms)
holds every other request of the process until it gets the lock. ``Database.write`` and
``Database.transaction`` (a batch's rows at submit) wait in Python instead, where gevent
runs the others. Here a real gevent process writes while another connection holds the
lock, and a greenlet beside it counts its ticks.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.helpers import migrated_database

PROBE = r"""
import gevent.monkey
gevent.monkey.patch_all()
import json, sys, time
import gevent
from sqlalchemy import text
from jobgate.db import Database
from jobgate.outbox import accept  # imported before the clock starts: an import holds the loop

db = Database(sys.argv[1])
db.read(text("SELECT 1"))  # connected before the lock is taken
print("ready", flush=True)
sys.stdin.readline()  # the lock is held now
ticks = []

def tick():
    while True:
        ticks.append(time.monotonic())
        gevent.sleep(0.005)

ticker = gevent.spawn(tick)
gevent.sleep(0.01)
start, count = time.monotonic(), len(ticks)
if sys.argv[2] == "row":
    changed = db.write(text("UPDATE partners SET name = name WHERE id = 'none'"))
else:  # a batch of two jobs, as the gateway commits one before its 202
    at = "2026-12-06T10:00:00.000Z"
    jobs = [
        {"job_id": f"j{n}", "partner_id": "ptn_a", "task": "demo.sleep", "created_at": at,
         "batch_id": "b1", "status": "PENDING"}
        for n in (1, 2)
    ]
    accept(db, "jobgate", jobs, batch={"batch_id": "b1", "partner_id": "ptn_a", "created_at": at})
    changed = 0
waited = time.monotonic() - start
ticked = len(ticks) - count
ticker.kill()
print(json.dumps({"waited": waited, "ticks": ticked, "changed": changed}), flush=True)
"""


@pytest.mark.parametrize("write", ["row", "batch"])
def test_a_write_waiting_for_the_lock_lets_the_process_serve_others(
    tmp_path: Path, write: str
) -> None:
    with migrated_database("sqlite", tmp_path) as url:
        holder = sqlite3.connect(
            url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False
        )
        probe = subprocess.Popen(
            [sys.executable, "-c", PROBE, url, write],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        try:
            assert probe.stdout is not None and probe.stdin is not None
            assert probe.stdout.readline().strip() == "ready"
            holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock ...
            release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
            probe.stdin.write("go\n")
            probe.stdin.flush()
            release.start()  # ... for half a second
            outcome = json.loads(probe.stdout.readline())
            release.join()
        finally:
            probe.kill()
            probe.wait(10)
            holder.close()
    assert outcome["changed"] == 0 and outcome["waited"] >= 0.4, outcome
    if write == "batch":  # committed once the lock was free: the batch's row and its jobs'
        check = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            jobs = check.execute("SELECT count(*) FROM jobs WHERE batch_id = 'b1'").fetchone()
            batches = check.execute("SELECT count(*) FROM batches WHERE batch_id = 'b1'").fetchone()
        finally:
            check.close()
        assert (jobs[0], batches[0]) == (2, 1)
    # A greenlet ticking every 5 ms kept ticking while the write waited: SQLite's own wait
    # holds it still (no tick at all); here it gets most of its turns, fewer on a busy
    # machine, as the tries in between take the CPU.
    assert outcome["ticks"] >= 0.3 * outcome["waited"] / 0.005, outcome
