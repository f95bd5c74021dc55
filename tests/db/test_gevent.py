"""Under gevent (the gateway's gunicorn workers, the delivery pool) a database round trip
yields to the hub: psycopg 3 chooses a cooperative wait once gevent has patched
``select`` (from 3.1.14; before, one slow query stopped every greenlet of the process)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT, postgres_database

pytestmark = pytest.mark.contract

PROGRAM = """
import sys
from gevent import monkey; monkey.patch_all()
import gevent
from sqlalchemy import text
from jobgate.db import Database

db = Database(sys.argv[1])
db.read(text("SELECT 1"))  # connected before the race
ticks = []

def tick():
    while True:
        ticks.append(1)
        gevent.sleep(0.01)

ticker = gevent.spawn(tick)
gevent.sleep(0.05)
before = len(ticks)
db.read(text("SELECT pg_sleep(0.6)"))
during = len(ticks) - before
ticker.kill()
print(during)
"""


def test_a_slow_query_lets_other_greenlets_run() -> None:
    with postgres_database("gevent") as url:
        done = subprocess.run(
            [sys.executable, "-c", PROGRAM, url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    # 0.6 s at one tick per 10 ms: about 60 while the query waits (0 if it blocked the hub).
    assert int(done.stdout.strip()) >= 20, done.stdout
