"""Listing pages through the whole index even when entries have expired on the way."""

from __future__ import annotations

import uuid

import pytest

from gateway.jobs import MAX_SCAN
from jobgate.store import utcnow

pytestmark = pytest.mark.integration


def finished_jobs(store, partner_id: str, count: int) -> list[str]:
    """``count`` SUCCESS job records of ``partner_id``, oldest first."""
    ids = []
    for _ in range(count):
        job_id = str(uuid.uuid4())
        store.create_job(
            {
                "job_id": job_id,
                "task_id": job_id,
                "task": "demo.sleep",
                "partner_id": partner_id,
                "created_at": utcnow(),
                "status": "SUCCESS",
                "finished_at": utcnow(),
                "result": {},
            }
        )
        ids.append(job_id)
    return ids


def test_expired_entries_count_against_the_budget_and_the_cursor_continues(app, client, partner):
    """1 100 entries, 50 of the newest expired, a filter matching none: the first page
    must hand back a cursor (it answered null, ending the list early)."""
    store = app.extensions["jobgate"].store
    ids = finished_jobs(store, partner["id"], MAX_SCAN + 100)
    for job_id in ids[-50:]:  # the newest 50 expire: the first page scans them first
        store.redis.delete(store.key("job", job_id))

    pages, cursor = 0, None
    while True:
        query = {"status": "FAILURE", "limit": 20, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", query_string=query, headers=partner["headers"])
        assert page.status_code == 200, page.get_json()
        body = page.get_json()
        assert body["jobs"] == []
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert pages < 5, "the cursor never reached the end"
    assert pages == 2  # 1 000 entries scanned on the first page, the rest on the second


def test_a_matching_job_past_expired_entries_is_found(app, client, partner):
    store = app.extensions["jobgate"].store
    [wanted] = finished_jobs(store, partner["id"], 1)
    store.redis.hset(store.key("job", wanted), "status", "FAILURE")
    newer = finished_jobs(store, partner["id"], MAX_SCAN)
    for job_id in newer:
        store.redis.delete(store.key("job", job_id))
    found, cursor = [], None
    for _ in range(3):
        query = {"status": "FAILURE", **({"cursor": cursor} if cursor else {})}
        body = client.get("/v1/jobs", query_string=query, headers=partner["headers"]).get_json()
        found += [job["job_id"] for job in body["jobs"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert found == [wanted]
