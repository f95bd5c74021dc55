"""The dashboard's reads (jobgate.dashboard) on SQLite and PostgreSQL: the last hour by
minute, failing and disabled endpoints without secrets, dead letters set aside by the
archiver's own function, and queue depths over thousands of partners without a read per
partner."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import insert

from jobgate import dashboard
from jobgate.archive import Archiver, job_row, upsert_jobs
from jobgate.db.models import Attempt, Endpoint, Partner
from jobgate.store import Store
from jobgate.times import format_time, utcnow

# A fixed hour of its own: no other test's rows fall in it.
NOW = datetime(2031, 3, 4, 12, 30, 40, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return NOW - timedelta(minutes=minutes)


def job(created: datetime, started: datetime | None, finished: datetime | None) -> dict[str, Any]:
    job_id = str(uuid.uuid4())
    record: dict[str, Any] = {
        "job_id": job_id,
        "task": "demo.sleep",
        "partner_id": "ptn_dash",
        "created_at": format_time(created),
        "status": "SUCCESS" if finished else "queued",
    }
    if started:
        record["started_at"] = format_time(started)
    if finished:
        record["finished_at"] = format_time(finished)
    return record


def attempt(when: datetime, outcome: str) -> dict[str, Any]:
    subject = str(uuid.uuid4())
    return {
        "subject_id": subject,
        "attempt": 1,
        "kind": "job",
        "webhook_id": subject,
        "event": "job.succeeded",
        "outcome": outcome,
        "at": when,
        "entry": {"outcome": outcome},
        "error": None,
    }


def test_the_last_hour_by_minute_from_indexed_time_ranges(db) -> None:
    with db.session() as session:
        upsert_jobs(
            session,
            [
                job_row(record, "dash")
                for record in (
                    job(at(10.2), at(9.8), at(9.3)),  # submitted, started, ended in the hour
                    job(at(10.1), at(9.9), at(9.4)),
                    job(at(75), at(65), at(5)),  # started before the hour: ended only
                    job(at(2), None, None),  # submitted, still waiting
                    job(at(90), at(89), at(61)),  # wholly before the hour
                )
            ],
        )
        session.execute(
            insert(Attempt),
            [
                attempt(at(9.2), "delivered"),
                attempt(at(9.1), "delivered"),
                attempt(at(9.05), "retry"),
                attempt(at(5), "failed"),
                attempt(at(61), "delivered"),  # before the hour
            ],
        )

    answer = dashboard.activity(db, now=NOW)

    minutes = answer["minutes"]
    assert len(minutes) == 60
    assert minutes[-1]["minute"] == "2031-03-04T12:30:00.000Z"  # the current minute last
    assert answer["since"] == "2031-03-04T11:31:00.000Z"
    by_minute = {row["minute"][11:16]: row for row in minutes}
    ten = by_minute["12:20"]  # 10.2 and 10.1 minutes before 12:30:40
    assert ten["submitted"] == 2
    assert ten["started"] == 2 and by_minute["12:21"]["started"] == 0
    assert by_minute["12:21"]["ended"] == 2
    assert by_minute["12:21"] == {
        **by_minute["12:21"],
        "attempts": 3,
        "delivered": 2,
        "success_rate": 0.6667,
    }
    assert by_minute["12:25"]["ended"] == 1 and by_minute["12:25"]["attempts"] == 1
    assert by_minute["12:25"]["success_rate"] == 0.0
    assert by_minute["12:28"]["submitted"] == 1
    assert answer["totals"] == {
        "submitted": 3,
        "started": 2,
        "ended": 3,
        "attempts": 4,
        "delivered": 2,
        "success_rate": 0.5,
    }
    quiet = [
        row for key, row in by_minute.items() if key not in {"12:20", "12:21", "12:25", "12:28"}
    ]
    assert all(row["success_rate"] is None and row["ended"] == 0 for row in quiet)


def test_failing_and_disabled_endpoints_counted_newest_first_without_secrets(db) -> None:
    now = datetime.now(UTC)
    with db.session() as session:
        session.add(Partner(id="ptn_ends", name="ends", created_at=now))
        session.flush()
        rows = []
        for i in range(7):
            rows.append(
                {
                    "id": f"ep_fail_{i}",
                    "failing_since": now - timedelta(minutes=i),
                    "disabled_at": None,
                }
            )
        rows.append(
            {"id": "ep_off", "failing_since": None, "disabled_at": now - timedelta(hours=1)}
        )
        rows.append({"id": "ep_fine", "failing_since": None, "disabled_at": None})
        session.execute(
            insert(Endpoint),
            [
                {
                    **row,
                    "partner_id": "ptn_ends",
                    "url": "https://user:pw@hooks.example:8443/in?token=s3cret#frag",
                    "description": "",
                    "event_types": [],
                    "created_at": now,
                    "updated_at": now,
                    "disabled_reason": "410 Gone" if row["disabled_at"] else None,
                    "headers": {"Authorization": "Bearer hdr-s3cret"},
                }
                for row in rows
            ],
        )

    answer = dashboard.endpoints(db)

    assert answer["failing"]["count"] == 7
    assert [e["id"] for e in answer["failing"]["newest"]] == [f"ep_fail_{i}" for i in range(5)]
    assert answer["disabled"]["count"] == 1
    [off] = answer["disabled"]["newest"]
    assert off["id"] == "ep_off" and off["disabled_reason"] == "410 Gone"
    assert off["enabled"] is False
    assert off["url"] == "https://hooks.example:8443/in"
    assert "s3cret" not in repr(answer) and "pw" not in repr(answer)
    assert "headers" not in off


@pytest.fixture
def store(redis_client: redis.Redis) -> Store:
    # A fixed window of 3: three jobs run, the rest wait in their partners' queues.
    return Store(redis_client, prefix="dash-" + uuid.uuid4().hex[:8], dispatch_window=3)


def test_dead_letters_set_aside_by_the_archiver_are_counted_and_listed(store, db) -> None:
    before = dashboard.dead_letters(db)["count"]
    archiver = Archiver(store, db, consumer="test")
    store.redis.hset(store.key("job", "j-dead"), mapping={"job_id": "j-dead", "secret": "x"})
    archiver.set_aside([(("job", "j-dead"), ValueError("refused " + "e" * 500))])
    archiver.set_aside([(("batch", "b-dead"), ValueError("refused too"))])

    answer = dashboard.dead_letters(db)

    assert answer["count"] == before + 2
    newest, older = answer["newest"][:2]
    assert (newest["kind"], newest["subject_id"]) == ("batch", "b-dead")
    assert (older["kind"], older["subject_id"]) == ("job", "j-dead")
    assert older["error"].startswith("ValueError") or "refused" in older["error"]
    assert len(older["error"]) <= dashboard.ERROR_CHARS
    assert "record" not in older  # what Redis held: the archive's own list shows it


def test_queue_depths_over_thousands_of_partners_in_bounded_round_trips(
    store, db, monkeypatch
) -> None:
    partners = [f"ptn_{i:05d}" for i in range(2500)]
    for i, partner_id in enumerate(partners):
        for n in range(1 + (i % 7 == 0) * (i // 100)):  # a few partners with many jobs
            store.create_job(
                {
                    "job_id": f"{partner_id}-{n}",
                    "task": "demo.sleep",
                    "partner_id": partner_id,
                    "created_at": utcnow(),
                    # every 500th partner's jobs wait for their run_at (in 2031)
                    **({"run_at": format_time(NOW)} if i % 500 == 1 else {}),
                },
                committed=True,
            )
    deepest = min(partners, key=lambda p: (-sum(store.waiting(p).values()), p))
    with db.session() as session:
        session.add(Partner(id=deepest, name="Deepest Co", created_at=datetime.now(UTC)))

    # What the store says of each partner, read the slow way (one read each).
    expected = {p: store.waiting(p) for p in partners}
    pipelines = 0
    real = store.redis.pipeline

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal pipelines
        pipelines += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(store.redis, "pipeline", counting)
    monkeypatch.setattr(store, "waiting", lambda *_: pytest.fail("a read per partner"))

    answer = dashboard.queues(store, db)

    assert pipelines == 2  # counters, then every candidate's queue length: no read each
    totals = {name: sum(w[name] for w in expected.values()) for name in ("queued", "running")}
    assert answer["totals"]["queued"] == totals["queued"]
    assert answer["totals"]["running"] == totals["running"] == 3
    assert answer["totals"]["delayed"] == sum(w["delayed"] for w in expected.values()) == 15
    assert answer["partners_total"] == sum(1 for w in expected.values() if sum(w.values()))
    assert answer["partners_total"] == 2500
    shown = answer["partners"]
    assert len(shown) == dashboard.TOP_PARTNERS
    for row in shown:
        assert {k: row[k] for k in ("queued", "running", "delayed")} == expected[row["partner_id"]]
    depths = [row["total"] for row in shown]
    assert depths == sorted(depths, reverse=True)
    assert shown[0]["partner_id"] == deepest and shown[0]["name"] == "Deepest Co"
    assert shown[0]["total"] == sum(expected[deepest].values()) > 20
    assert all(row["name"] is None for row in shown[1:])  # no row in partners: no name


INDEX_OF_SERIES = {
    "ended": "ix_jobs_finished_at",
    "started": "ix_jobs_finished_at",
    "submitted": "jobs_created",
    "attempts": "ix_attempts_at",
}


def plan(db, statement) -> str:
    """The database's plan of ``statement`` (PostgreSQL told to avoid sequential scans
    where it can, so that a small test table still shows whether an index serves)."""
    compiled = statement.compile(dialect=db.engine.dialect)
    params = {k: str(v) if isinstance(v, datetime) else v for k, v in compiled.params.items()}
    with db.engine.connect() as connection:
        if db.dialect == "postgresql":
            connection.exec_driver_sql("SET enable_seqscan = off")
            rows = connection.exec_driver_sql(f"EXPLAIN {compiled}", params)
        else:
            ordered = tuple(params[name] for name in compiled.positiontup or ())
            rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", ordered)
        return "\n".join(str(row[-1]) for row in rows)


def test_each_series_reads_a_range_of_its_indexed_time_column(db) -> None:
    statements = dashboard.activity_statements(db, at(59), at(-1))
    assert set(statements) == set(INDEX_OF_SERIES)
    for name, statement in statements.items():
        explained = plan(db, statement)
        assert INDEX_OF_SERIES[name] in explained, (name, explained)
        assert "SCAN jobs\n" not in explained + "\n" and "Seq Scan" not in explained
