"""Each built-in task, submitted over HTTP, run by a real worker, read back by status."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery.result import AsyncResult

from config import Settings
from tasks.app import ResultTooLarge, check_result_size
from tasks.text import EMBEDDING_MODEL, embed
from tests.conftest import ADMIN_KEY
from tests.helpers import WorkerProcess, gateway_for, job_status, wait_for_status, wait_until
from tests.webhooks.conftest import Receiver

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


CAP = 4096  # JOBGATE_MAX_RESULT_BYTES of the capped world below


@pytest.fixture(scope="module")
def capped(settings: Settings, redis_client: Any) -> Iterator[SimpleNamespace]:
    """A gateway client, a partner, its services and a worker whose results are capped at
    CAP bytes, on queues of their own (the session's worker never takes their messages)."""
    tag = "capped-" + uuid.uuid4().hex[:8]
    own = settings.with_overrides(
        queue_jobs=f"{tag}-jobs", queue_webhooks=f"{tag}-hooks", max_result_bytes=CAP
    )
    client, partner, svc = gateway_for(own, ADMIN_KEY)
    worker = WorkerProcess(own, concurrency=1, name="capped").start()
    yield SimpleNamespace(client=client, partner=partner, svc=svc)
    worker.stop()


def test_a_result_over_the_cap_fails_the_job_and_nothing_of_it_is_kept(capped):
    receiver = Receiver()
    try:
        words = " ".join(f"word{i}" for i in range(2000))  # about 18 KB of chunks
        job = submit(
            capped.client,
            capped.partner,
            {
                "task": "documents.process",
                "params": {"documents": [{"name": "big.txt", "text": words}]},
                "callback_url": receiver.url,
            },
        )
        job_id = job["job_id"]
        done = wait_for_status(capped.client, job_id, capped.partner["headers"])
        assert done["status"] == "FAILURE"
        assert done["result"] is None
        assert done["error"].startswith("result_too_large: the result is ")
        assert done["error"].endswith(f" bytes, over JOBGATE_MAX_RESULT_BYTES ({CAP})")
        size = int(done["error"].split(" bytes")[0].rsplit(" ", 1)[1])
        assert size > CAP
        # Nothing of the result in the record, nor in Celery's meta, which says FAILURE.
        store = capped.svc.store
        assert "result" not in store.redis.hgetall(store.key("job", job_id))
        celery = capped.svc.celery
        meta = celery.backend.get_task_meta(job_id)
        assert meta["status"] == "FAILURE"
        assert isinstance(meta["result"], ResultTooLarge)
        assert str(meta["result"]) == done["error"]
        raw = store.redis.get(celery.backend.get_key_for_task(job_id).decode())
        assert "chunk_count" not in raw  # the params are there (result_extended), not the result
        assert AsyncResult(job_id, app=celery).state == "FAILURE"
        # One job.failed webhook, without the result.
        wait_until(
            lambda: (
                job_status(capped.client, job_id, capped.partner["headers"])["webhook"]["state"]
                == "delivered"
            ),
            20,
            message="the job.failed webhook delivered",
        )
        [hook] = receiver.requests
        event = json.loads(hook.body)
        assert event["type"] == "job.failed"
        assert event["data"]["result"] is None
        assert event["data"]["error"] == done["error"]
        assert len(hook.body) < CAP
    finally:
        receiver.stop()


def test_a_result_under_the_cap_is_kept(capped):
    job = submit(
        capped.client,
        capped.partner,
        {"task": "documents.process", "params": {"documents": [{"name": "a", "text": "x y"}]}},
    )
    done = wait_for_status(capped.client, job["job_id"], capped.partner["headers"])
    assert done["status"] == "SUCCESS", done
    assert done["result"]["total_chunks"] == 1


def test_the_cap_counts_json_bytes():
    value = {"text": "é" * 10}  # JSON escapes it: \u00e9, 6 bytes each
    size = len(json.dumps(value))
    check_result_size(value, size)
    with pytest.raises(ResultTooLarge, match=f"the result is {size} bytes"):
        check_result_size(value, size - 1)
    check_result_size(object(), 1)  # not JSON: on_success reports it, not the cap
