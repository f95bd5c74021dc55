"""The gateway's own task message is byte-for-byte what kombu's Redis transport pushes."""

from __future__ import annotations

import json
import uuid

import pytest

from tasks.app import make_celery
from tasks.publish import same_redis, task_message


def _without_tag(raw: str) -> dict:
    message = json.loads(raw)
    assert uuid.UUID(message["properties"].pop("delivery_tag"))
    return message


@pytest.mark.parametrize("kwargs", [{"seconds": 0, "steps": 1},
                                    {"texts": ["é", "ünïcode"], "dimensions": 8}])
def test_message_matches_what_send_task_pushes(settings, redis_client, kwargs):
    app = make_celery(settings)
    queue = "publish-check-" + uuid.uuid4().hex[:8]
    task_id = str(uuid.uuid4())
    try:
        app.send_task("demo.sleep", kwargs=kwargs, task_id=task_id, queue=queue)
        theirs = redis_client.rpop(queue)
        ours = task_message(app, "demo.sleep", task_id, kwargs, queue)
    finally:
        redis_client.delete(queue, f"_kombu.binding.{queue}")
        app.close()
    assert _without_tag(ours) == _without_tag(theirs)


def test_message_with_positional_args_matches_send_task(settings, redis_client):
    """The webhook delivery message (positional args, no kwargs) the finish script pushes."""
    app = make_celery(settings)
    queue = "publish-check-" + uuid.uuid4().hex[:8]
    task_id = str(uuid.uuid4())
    args = ["job", str(uuid.uuid4()), "job.succeeded"]
    try:
        app.send_task("jobgate.deliver_webhook", args=args, task_id=task_id, queue=queue)
        theirs = redis_client.rpop(queue)
        ours = task_message(app, "jobgate.deliver_webhook", task_id, {}, queue, args=args)
    finally:
        redis_client.delete(queue, f"_kombu.binding.{queue}")
        app.close()
    assert _without_tag(ours) == _without_tag(theirs)


def test_only_a_redis_broker_shared_with_the_store_qualifies():
    assert same_redis("redis://h:6379/0", "redis://h:6379/0")
    assert not same_redis("redis://h:6379/1", "redis://h:6379/0")
    assert not same_redis("amqp://guest@h//", "amqp://guest@h//")
