"""Listing pages from the database: newest first, cursors, filters, the scan budget."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from gateway.jobs import MAX_SCAN
from jobgate.times import utcnow

pytestmark = pytest.mark.integration


NEVER = "2099-01-01T00:00:00.000Z"


def jobs_of(store, partner_id: str, count: int, **fields) -> list[str]:
    """``count`` job records of ``partner_id`` written straight to Redis, oldest first, a
    second apart (jobs created in the same millisecond are ordered by id). They have no
    params and must never run: a far ``run_at`` keeps them out of the dispatcher's way."""
    ids = []
    start = datetime.now(UTC) - timedelta(seconds=count)
    for n in range(count):
        job_id = str(uuid.uuid4())
        store.create_job(
            {
                "job_id": job_id,
                "task_id": job_id,
                "task": "demo.sleep",
                "partner_id": partner_id,
                "created_at": (start + timedelta(seconds=n)).isoformat()[:23] + "Z",
                "run_at": NEVER,
                **fields,
            }
        )
        ids.append(job_id)
    return ids


def forget(store, job_ids) -> None:
    """Drop the Redis side (as the cache TTL does), keeping only the database's rows."""
    store.redis.delete(*(store.key("job", job_id) for job_id in job_ids))


def test_every_archived_job_pages_once_newest_first_after_redis_forgot(
    app, client, partner, archived
):
    store = app.extensions["jobgate"].store
    ids = jobs_of(store, partner["id"], 7, status="SUCCESS", finished_at=utcnow(), result={})
    archived(*ids)
    forget(store, ids)
    seen, cursor = [], None
    while True:
        query = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        body = client.get("/v1/jobs", query_string=query, headers=partner["headers"]).get_json()
        seen += [job["job_id"] for job in body["jobs"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    one = client.get(f"/v1/jobs/{ids[0]}", headers=partner["headers"]).get_json()
    assert one["status"] == "SUCCESS" and one["job_id"] == ids[0]


def test_a_live_status_filter_reads_at_most_the_budget_and_hands_back_a_cursor(
    app, client, partner, archived
):
    """1 100 queued jobs and a filter matching none: the first page stops at the budget
    with a cursor, the second reaches the end."""
    store = app.extensions["jobgate"].store
    ids = jobs_of(store, partner["id"], MAX_SCAN + 100)
    archived(*ids)
    pages, cursor = 0, None
    while True:
        query = {"status": "PROCESSING", "limit": 20, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", query_string=query, headers=partner["headers"])
        assert page.status_code == 200, page.get_json()
        assert page.get_json()["jobs"] == []
        pages += 1
        cursor = page.get_json()["next_cursor"]
        if cursor is None:
            break
        assert pages < 5, "the cursor never reached the end"
    assert pages == 2


def test_a_terminal_status_filter_is_answered_by_the_index(app, client, partner, archived):
    store = app.extensions["jobgate"].store
    [wanted] = jobs_of(store, partner["id"], 1, status="FAILURE", finished_at=utcnow(), error="x")
    newer = jobs_of(store, partner["id"], MAX_SCAN, status="SUCCESS", finished_at=utcnow())
    archived(wanted, *newer)
    body = client.get(
        "/v1/jobs", query_string={"status": "FAILURE"}, headers=partner["headers"]
    ).get_json()
    assert [job["job_id"] for job in body["jobs"]] == [wanted]
    assert body["next_cursor"] is None


def test_list_entries_carry_no_result_unless_asked(app, client, partner, archived):
    """Twenty jobs, one with a 1.2 MB result: the page is the jobs, not their results
    (it was 1.28 MB); ``?include=result`` brings them, and a job's own route keeps it."""
    store = app.extensions["jobgate"].store
    big = {"blob": "x" * 1_200_000}
    ids = jobs_of(store, partner["id"], 19, status="SUCCESS", finished_at=utcnow(), result={})
    ids += jobs_of(store, partner["id"], 1, status="SUCCESS", finished_at=utcnow(), result=big)
    archived(*ids)
    page = client.get("/v1/jobs", headers=partner["headers"])
    assert page.status_code == 200
    jobs = page.get_json()["jobs"]
    assert {job["job_id"] for job in jobs} == set(ids)
    assert not any("result" in job for job in jobs)
    assert len(page.data) < 50_000
    full = client.get("/v1/jobs?include=result&limit=1", headers=partner["headers"]).get_json()
    assert full["jobs"][0]["job_id"] == ids[-1] and full["jobs"][0]["result"] == big
    one = client.get(f"/v1/jobs/{ids[-1]}", headers=partner["headers"]).get_json()
    assert one["result"] == big
    bad = client.get("/v1/jobs?include=everything", headers=partner["headers"])
    assert bad.status_code == 422 and "include" in bad.get_json()["error"]["details"]
