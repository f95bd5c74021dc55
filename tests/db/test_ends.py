"""A job's end committed to its row (jobgate.ends) on SQLite and PostgreSQL: the first
one wins, a later one gets the committed end back, and a job without a row has none."""

from __future__ import annotations

import uuid

from jobgate.archive import revision
from jobgate.db.models import Job
from jobgate.ends import commit_end, committed_end
from jobgate.outbox import accept
from jobgate.store import as_stored
from jobgate.times import utcnow


def accepted(db) -> str:
    job_id = str(uuid.uuid4())
    record = {
        "job_id": job_id,
        "task_id": job_id,
        "task": "demo.sleep",
        "partner_id": "ptn_a",
        "params": {"seconds": 1},
        "created_at": utcnow(),
    }
    accept(db, "ends-test", [as_stored(record)])
    return job_id


def test_the_first_end_wins_and_a_later_one_gets_it_back(db) -> None:
    job_id = accepted(db)
    assert committed_end(db, job_id) is None
    first = {"status": "SUCCESS", "finished_at": utcnow(), "result": {"n": [1, None]}}
    assert commit_end(db, job_id, first) == (first, True)
    later = {"status": "FAILURE", "finished_at": utcnow(), "error": "worker_lost: ..."}
    assert commit_end(db, job_id, later) == (first, False)
    assert committed_end(db, job_id) == first
    with db.session() as session:
        row = session.get(Job, job_id)
        assert row is not None and row.status == "SUCCESS" and row.finished_at is not None
        assert row.record["result"] == {"n": [1, None]} and row.record["task"] == "demo.sleep"
        assert row.rev == revision("SUCCESS", "pending", 0) and not row.settled


def test_a_job_without_a_row_has_no_committed_end(db) -> None:
    end = {"status": "REVOKED", "finished_at": utcnow(), "revoked_by": "admin"}
    assert commit_end(db, str(uuid.uuid4()), end) == (None, False)


def test_text_the_database_cannot_store_is_committed_escaped(db) -> None:
    job_id = accepted(db)
    end = {"status": "SUCCESS", "finished_at": utcnow(), "result": {"k\x00": ["a\x00b", "\ud800"]}}
    committed, now = commit_end(db, job_id, end)
    assert now and committed is not None
    escaped = {"k\\u0000": ["a\\u0000b", "\\ud800"]}
    # SQLite keeps such text as it is; PostgreSQL refuses it, so it is committed escaped.
    stored = end["result"] if db.is_sqlite else escaped
    assert committed_end(db, job_id)["result"] == stored == committed["result"]
