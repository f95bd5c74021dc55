"""Each built-in task, submitted over HTTP, run by a real worker, read back by status."""

from __future__ import annotations

import pytest

from tasks.text import EMBEDDING_MODEL, embed
from tests.helpers import job_status, wait_for_status, wait_until

pytestmark = pytest.mark.integration


def submit(client, partner, body):
    response = client.post("/v1/jobs", json=body, headers=partner["headers"])
    assert response.status_code == 202, response.get_json()
    assert response.headers["Location"] == f"/v1/jobs/{response.get_json()['job_id']}"
    assert int(response.headers["Retry-After"]) >= 1
    return response.get_json()


def test_demo_sleep_reports_rising_progress_then_succeeds(client, partner, worker):
    job = submit(
        client,
        partner,
        {"task": "demo.sleep", "params": {"seconds": 2, "steps": 10}, "metadata": {"order": 7}},
    )
    assert job["status"] == "PENDING"
    assert job["progress"] == {"message": "Task is queued"}
    seen = []

    def progressed():
        view = job_status(client, job["job_id"], partner["headers"])
        if view["status"] == "PROCESSING":
            seen.append(view["progress"]["percent"])
        return len(set(seen)) >= 3 or view["status"] == "SUCCESS"

    wait_until(progressed, timeout=20, interval=0.05, message="progress reports")
    assert len(set(seen)) >= 3, seen
    assert seen == sorted(seen), f"progress went backwards: {seen}"
    done = wait_for_status(client, job["job_id"], partner["headers"])
    assert done["status"] == "SUCCESS"
    assert done["result"] == {"slept": 2.0, "steps": 10}
    assert done["progress"]["percent"] == 100
    assert done["metadata"] == {"order": 7}
    assert done["started_at"] and done["finished_at"]
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]


def test_demo_fail_ends_failure_with_message_and_no_traceback(client, partner, worker):
    job = submit(client, partner, {"task": "demo.fail", "params": {"message": "disk on fire"}})
    done = wait_for_status(client, job["job_id"], partner["headers"])
    assert done["status"] == "FAILURE"
    assert done["error"] == "disk on fire"
    assert done["result"] is None
    assert "Traceback" not in str(done)


def test_documents_process_chunks_each_document(client, partner, worker):
    docs = [
        {"name": "a.txt", "text": " ".join(f"w{i}" for i in range(25))},
        {"name": "b.txt", "text": "short text"},
    ]
    job = submit(
        client,
        partner,
        {"task": "documents.process", "params": {"documents": docs, "chunk_words": 10}},
    )
    done = wait_for_status(client, job["job_id"], partner["headers"])
    assert done["status"] == "SUCCESS", done
    result = done["result"]
    assert [d["chunk_count"] for d in result["documents"]] == [3, 1]
    assert result["documents"][0]["chunks"][2] == " ".join(f"w{i}" for i in range(20, 25))
    assert result["total_chunks"] == 4


def test_texts_embed_matches_the_local_embedding(client, partner, worker):
    texts = ["the cat sat", "quarterly revenue grew"]
    job = submit(
        client, partner, {"task": "texts.embed", "params": {"texts": texts, "dimensions": 32}}
    )
    done = wait_for_status(client, job["job_id"], partner["headers"])
    assert done["status"] == "SUCCESS", done
    assert done["result"]["model"] == EMBEDDING_MODEL
    assert done["result"]["embeddings"] == [embed(t, 32) for t in texts]
