"""The gateway's own task message is byte-for-byte what kombu's Redis transport pushes."""

from __future__ import annotations

import json
import uuid

import pytest
from celery.utils.saferepr import saferepr

from tasks.app import make_celery
from tasks.publish import REPR_MAX, revoked_meta, same_redis, short_repr, state_meta, task_message

pytestmark = pytest.mark.contract


def _without_tag(raw: str) -> dict:
    message = json.loads(raw)
    assert uuid.UUID(message["properties"].pop("delivery_tag"))
    return message


@pytest.mark.parametrize(
    "kwargs", [{"seconds": 0, "steps": 1}, {"texts": ["é", "ünïcode"], "dimensions": 8}]
)
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


def test_short_repr_is_saferepr_for_small_values_and_stays_bounded():
    """The message's argsrepr/kwargsrepr without Celery's item-by-item saferepr."""
    for value in ({"seconds": 0, "steps": 1}, ["job", "j-1", "job.succeeded"], (), {"t": "é"}):
        assert short_repr(value) == saferepr(value, REPR_MAX)
    long = short_repr({"text": "x" * 5000})
    assert len(long) == REPR_MAX and long.endswith("...")
    deep: list = []
    for _ in range(100_000):  # deeper than repr can go: saferepr's answer instead
        deep = [deep]
    assert len(short_repr(deep)) <= REPR_MAX


def test_only_a_redis_broker_shared_with_the_store_qualifies():
    assert same_redis("redis://h:6379/0", "redis://h:6379/0")
    assert not same_redis("redis://h:6379/1", "redis://h:6379/0")
    assert not same_redis("amqp://guest@h//", "amqp://guest@h//")


@pytest.mark.parametrize(
    "state, meta",
    [
        ("PROCESSING", {"current": 1, "total": 2, "percent": 50, "message": "step 1"}),
        ("STARTED", {"pid": 4321, "hostname": "w@h"}),
        ("SUCCESS", {"slept": 1, "texts": ["é"]}),
        ("FAILURE", ValueError("bad input")),
    ],
)
def test_state_meta_is_what_celery_writes(settings, redis_client, state, meta):
    """What the scripts write for a job task's states is byte for byte Celery's own write
    (``update_state`` for PROCESSING, the tracer's ``store_result`` for the others), save
    the time an end is stamped with, and ``AsyncResult`` reads it back."""
    app = make_celery(settings)
    task = app.tasks["demo.sleep"]
    task_id = str(uuid.uuid4())
    task.push_request(
        id=task_id,
        task="demo.sleep",
        args=[],
        kwargs={"seconds": 1},
        hostname="w@h",
        retries=0,
        delivery_info={"routing_key": "jobs"},
    )
    try:
        task.backend.store_result(task_id, meta, state, request=task.request)
        key, value, expires = state_meta(task, state, meta)
        theirs = redis_client.get(key)
        ttl = redis_client.ttl(key)
        redis_client.set(key, value)
        result = app.AsyncResult(task_id)
        assert result.state == state
        if state == "FAILURE":
            assert (type(result.info), result.info.args) == (ValueError, ("bad input",))
            assert result.traceback is None
        else:
            assert result.info == meta
    finally:
        task.pop_request()
        redis_client.delete(key)
        app.close()
    assert key == f"celery-task-meta-{task_id}"
    ours, theirs = json.loads(value), json.loads(theirs)
    assert (ours.pop("date_done") is None) == (theirs.pop("date_done") is None)
    assert ours == theirs
    assert expires == settings.result_expires and 0 < ttl <= expires


def test_revoked_meta_is_what_mark_as_revoked_writes(settings, redis_client):
    """The admin revoke's REVOKED (written by its end script, the request rebuilt from the
    job record) is what a worker's ``mark_as_revoked`` writes for the job's own request,
    save the time, and ``AsyncResult`` reads it back, extended fields included."""
    app = make_celery(settings)
    task = app.tasks["demo.sleep"]
    task_id = str(uuid.uuid4())
    params = {"seconds": 1, "steps": 2}
    record = {"task_id": task_id, "task": "demo.sleep", "params": params, "worker": "w@h"}
    task.push_request(
        id=task_id,
        task="demo.sleep",
        args=[],
        kwargs=params,
        hostname="w@h",
        retries=0,
        delivery_info={"routing_key": "jobs"},
    )
    try:
        app.backend.mark_as_revoked(task_id, "customer asked", request=task.request)
        key, value, expires = revoked_meta(app, record, "customer asked", "jobs")
        theirs = redis_client.get(key)
        redis_client.set(key, value)
        result = app.AsyncResult(task_id)
        assert (result.state, str(result.result)) == ("REVOKED", "customer asked")
        assert (result.name, result.kwargs, result.queue) == ("demo.sleep", params, "jobs")
    finally:
        task.pop_request()
        redis_client.delete(f"celery-task-meta-{task_id}")
        app.close()
    ours, theirs = json.loads(value), json.loads(theirs)
    assert (ours.pop("date_done") is None) == (theirs.pop("date_done") is None)
    assert ours == theirs
    assert expires == settings.result_expires


@pytest.fixture
def running(settings, redis_client):
    """(app, task, job id): a stored ``demo.sleep`` job whose task runs in this thread,
    as the worker's tracer pushes its request; its Celery meta removed after."""
    from gateway.auth import Principal
    from gateway.jobs import new_record

    app = make_celery(settings)
    task = app.tasks["demo.sleep"]
    record = new_record(Principal("partner", "p1"), {"task": "demo.sleep", "params": {}})
    app.store.create_job(record)
    task.push_request(id=record["job_id"], task="demo.sleep", args=[], kwargs={}, hostname="w@h")
    yield app, task, record["job_id"]
    task.pop_request()
    redis_client.delete(f"celery-task-meta-{record['job_id']}")
    app.close()


def test_a_result_celery_cannot_encode_ends_the_job_failure(running):
    """Celery used to fail such a task when storing its result; with the SUCCESS meta
    written by the end script, the worker must fail it the same way, not leave it
    unended (the sweeper would run it again, up to worker_lost)."""
    app, task, job_id = running
    task.on_success(object(), job_id, [], {})
    ended = app.store.job(job_id)
    assert ended["status"] == "FAILURE"
    assert ended["error"].startswith("the task's result could not be encoded as JSON")
    assert app.AsyncResult(job_id).state == "FAILURE"


def test_a_revoked_job_that_then_raises_keeps_revoked_in_asyncresult(running):
    """Revoked with terminate=false while it ran, the job raised before its next report:
    Celery stores FAILURE before ``on_failure``, whose end is refused (REVOKED holds), so
    the task writes REVOKED back over it."""
    from jobgate.lifecycle import finish_job

    app, task, job_id = running
    assert finish_job(app.messenger, app.store, job_id, "REVOKED", revoke_reason="stop")
    error = ValueError("raised after the revoke")
    task.backend.mark_as_failure(job_id, error, request=task.request)  # Celery's tracer
    task.on_failure(error, job_id, [], {}, None)
    result = app.AsyncResult(job_id)
    assert (result.state, str(result.result)) == ("REVOKED", "stop")
    assert app.store.job(job_id)["status"] == "REVOKED"
