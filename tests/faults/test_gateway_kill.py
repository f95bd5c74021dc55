"""A gateway SIGKILLed while it creates a batch leaves nothing half-written."""

from __future__ import annotations

import uuid

import pytest
import redis
import requests

from config import Settings
from jobgate import history
from jobgate.db import Database
from tests.helpers import gunicorn


def test_a_batch_is_written_whole_or_not_at_all(
    settings: Settings, redis_client: redis.Redis, fault_database: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    # Keys of its own: no worker archives them, so the archive stream shows what was written.
    own = settings.with_overrides(
        queue_jobs=f"gwkill-{tag}",
        queue_webhooks=f"gwkill-{tag}-h",
        key_prefix=f"gwkill-{tag}",
        database_url=fault_database,
    )
    p = own.key_prefix
    admin = {"Authorization": f"Bearer {settings.admin_keys[0]}"}
    with gunicorn(own, workers=1) as url:
        partner = requests.post(
            f"{url}/v1/partners", json={"name": "acme"}, headers=admin, timeout=10
        ).json()
    headers = {"Authorization": f"Bearer {partner['api_key']}"}
    body = {"jobs": [{"task": "demo.sleep", "params": {"seconds": 0}}] * 200}
    before = set(redis_client.scan_iter(f"{p}:batch:*"))
    with gunicorn(own, workers=1, env={"JOBGATE_FAILPOINTS": "batch.create.before=kill"}) as doomed:
        with pytest.raises(requests.ConnectionError):
            requests.post(f"{doomed}/v1/batches", json=body, headers=headers, timeout=10)
    assert set(redis_client.scan_iter(f"{p}:batch:*")) == before
    assert not set(redis_client.scan_iter(f"{p}:job:*"))
    assert redis_client.xlen(f"{p}:archive") == 0
    assert redis_client.llen(own.queue_jobs) == 0
    assert redis_client.zcard(f"{p}:waiting:{partner['id']}") == 0

    # A gateway that stays up writes the whole batch and queues every member, at once.
    with gunicorn(own, workers=1) as url:
        created = requests.post(f"{url}/v1/batches", json=body, headers=headers, timeout=30)
    assert created.status_code == 202, created.text
    batch_id = created.json()["batch_id"]
    members = redis_client.lrange(f"{p}:batch:{batch_id}:jobs", 0, -1)
    assert len(members) == 200
    assert redis_client.exists(*(f"{p}:job:{job_id}" for job_id in members)) == 200
    # Their rows were committed before the 202 (the record): nothing for the archiver.
    assert redis_client.xlen(f"{p}:archive") == 0
    db = Database(fault_database)
    try:
        assert (history.batch(db, batch_id) or {}).get("member_ids") == members
        assert set(history.jobs(db, members)) == set(members)
    finally:
        db.dispose()
    # No worker: every member waits in its partner's queue for the dispatcher.
    assert redis_client.zcard(f"{p}:waiting:{partner['id']}") == 200
