"""The progress script writes Celery's PROCESSING meta with the report, never over SUCCESS."""

from __future__ import annotations

import json
import uuid

from gateway.auth import Principal
from gateway.jobs import new_record
from jobgate.store import Store
from tests.helpers import wait_until


def test_progress_script_writes_celery_meta_but_never_over_a_success(settings, redis_client):
    prefix = "progress-check-" + uuid.uuid4().hex[:8]
    store = Store.from_url(settings.redis_url, prefix=prefix)
    record = new_record(Principal("partner", "p1"), {"task": "demo.sleep", "params": {}})
    job_id = record["job_id"]
    key = f"{prefix}-meta-{job_id}"
    info = {"current": 1, "total": 2, "percent": 50, "message": ""}
    processing = json.dumps({"status": "PROCESSING", "result": info})
    try:
        store.create_job(record)
        pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(key)
        wait_until(
            lambda: pubsub.get_message(timeout=0.1) is None and pubsub.subscribed,
            timeout=5,
            message="the subscription",
        )
        assert store.report_progress(job_id, info, (key, processing, 60)) == 1
        assert redis_client.get(key) == processing
        assert 0 < redis_client.ttl(key) <= 60
        message = wait_until(
            lambda: pubsub.get_message(timeout=0.1),
            timeout=5,
            message="the meta published on its key",
        )
        assert message["data"] == processing, "published like Celery"
        pubsub.close()

        success = json.dumps({"status": "SUCCESS", "result": {"slept": 0}})
        redis_client.set(key, success)
        assert store.report_progress(job_id, info, (key, processing, 60)) == 1
        assert redis_client.get(key) == success, "a late report never hides SUCCESS"

        assert store.report_progress("no-such-job", info, (key + "-x", processing, 60)) == 2
        assert not redis_client.exists(key + "-x")
        store.finish_job(job_id, "REVOKED")
        assert store.report_progress(job_id, info, (key + "-y", processing, 60)) == 0
        assert not redis_client.exists(key + "-y")
    finally:
        redis_client.delete(key, *redis_client.keys(prefix + ":*"))
