"""Listing pages from the database on both backends: order, cursors, filters."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import text

from jobgate import history
from jobgate.archive import Archiver
from jobgate.store import Store
from tests.helpers import drain


@pytest.fixture
def filled(redis_client: redis.Redis, db):
    """Twelve archived jobs of one partner, a second apart, every third one FAILURE, and
    two of another partner; (ids oldest first, partner id)."""
    store = Store(redis_client, prefix="hist-" + uuid.uuid4().hex[:8])
    partner = "ptn_" + uuid.uuid4().hex[:8]
    start = datetime.now(UTC) - timedelta(minutes=5)
    ids = []
    for n in range(14):
        job_id = str(uuid.uuid4())
        ended = {"status": "FAILURE", "error": "x"} if n % 3 == 0 else {"status": "SUCCESS"}
        store.create_job(
            {
                "job_id": job_id,
                "task_id": job_id,
                "task": "demo.fail" if n % 3 == 0 else "demo.sleep",
                "partner_id": partner if n < 12 else "ptn_other",
                "created_at": (start + timedelta(seconds=n)).isoformat()[:23] + "Z",
                "finished_at": (start + timedelta(seconds=n + 1)).isoformat()[:23] + "Z",
                **ended,
            }
        )
        ids.append(job_id)
    drain(Archiver(store, db, consumer="t"))
    return ids[:12], partner


def pages(db, **query) -> list[str]:
    seen, cursor = [], None
    while True:
        rows = history.page(db, limit=5, cursor=cursor, **query)
        seen += [row["job_id"] for row in rows]
        if len(rows) < 5:
            return seen
        cursor = history.encode_cursor(rows[-1])


def test_pages_are_newest_first_each_job_once(filled, db) -> None:
    ids, partner = filled
    assert pages(db, partner_id=partner) == ids[::-1]


def test_filters_use_the_columns(filled, db) -> None:
    ids, partner = filled
    failed = [j for n, j in enumerate(ids) if n % 3 == 0]
    assert pages(db, partner_id=partner, status="FAILURE") == failed[::-1]
    assert pages(db, partner_id=partner, task="demo.fail") == failed[::-1]
    assert pages(db, partner_id=partner, status="STARTED") == []  # none live


def test_an_admin_page_holds_every_partner(filled, db) -> None:
    ids, _ = filled
    everyone = pages(db, partner_id=None)
    assert set(ids) < set(everyone)


def test_a_cursor_not_written_here_is_refused() -> None:
    with pytest.raises(history.BadCursor):
        history.decode_cursor("bm90LWEtY3Vyc29y")


def test_a_job_by_id_reads_its_record_or_none(filled, db) -> None:
    ids, partner = filled
    record = history.job(db, ids[0])
    assert record is not None
    assert (record["job_id"], record["partner_id"], record["status"]) == (
        ids[0],
        partner,
        "FAILURE",
    )
    assert history.job(db, str(uuid.uuid4())) is None
    # A parameter, never SQL: a quote in an id is an unknown id.
    assert history.job(db, "x' OR '1'='1") is None


def test_a_job_read_survives_its_pooled_connection_dying(filled, db) -> None:
    """The database restarted (its backends killed) under a gateway: the read on a dead
    pooled connection is made again on a fresh one, and the dead one leaves the pool."""
    if db.is_sqlite:
        pytest.skip("a SQLite file has no server side to lose")
    ids, _ = filled
    assert history.job(db, ids[1]) is not None  # the pool now holds a connection
    [(reader_pid,)] = db.read(text("SELECT pg_backend_pid()"))  # that pooled connection
    with db.engine.connect() as admin:
        killed = (
            admin.exec_driver_sql(
                "SELECT pid FROM pg_stat_activity, pg_terminate_backend(pid) "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            .scalars()
            .all()
        )
    assert reader_pid in killed
    assert history.job(db, ids[1])["job_id"] == ids[1]
    assert history.job(db, ids[2])["job_id"] == ids[2]
