"""A gateway SIGKILLed while it creates a batch leaves nothing half-written."""

from __future__ import annotations

import uuid

import pytest
import redis
import requests

from config import Settings
from tests.helpers import gunicorn


def test_a_batch_is_written_whole_or_not_at_all(
    settings: Settings, redis_client: redis.Redis
) -> None:
    tag = uuid.uuid4().hex[:8]
    own = settings.with_overrides(queue_jobs=f"gwkill-{tag}", queue_webhooks=f"gwkill-{tag}-h")
    admin = {"Authorization": f"Bearer {settings.admin_keys[0]}"}
    with gunicorn(own, workers=1) as url:
        partner = requests.post(
            f"{url}/v1/partners", json={"name": "acme"}, headers=admin, timeout=10
        ).json()
    headers = {"Authorization": f"Bearer {partner['api_key']}"}
    body = {"jobs": [{"task": "demo.sleep", "params": {"seconds": 0}}] * 200}
    before = set(redis_client.scan_iter("jobgate:batch:*"))
    with gunicorn(own, workers=1, env={"JOBGATE_FAILPOINTS": "batch.create.before=kill"}) as doomed:
        with pytest.raises(requests.ConnectionError):
            requests.post(f"{doomed}/v1/batches", json=body, headers=headers, timeout=10)
    assert set(redis_client.scan_iter("jobgate:batch:*")) == before
    assert redis_client.zcard(f"jobgate:jobs:{partner['id']}") == 0
    assert redis_client.llen(own.queue_jobs) == 0

    # A gateway that stays up writes the whole batch and queues every member, at once.
    with gunicorn(own, workers=1) as url:
        created = requests.post(f"{url}/v1/batches", json=body, headers=headers, timeout=30)
    assert created.status_code == 202, created.text
    batch_id = created.json()["batch_id"]
    assert redis_client.llen(f"jobgate:batch:{batch_id}:jobs") == 200
    assert redis_client.zcard(f"jobgate:jobs:{partner['id']}") == 200
    assert redis_client.llen(own.queue_jobs) == 200
    redis_client.delete(own.queue_jobs)
