"""``?wait=`` answers a finished job as its record has it, never from Celery's meta alone."""

from __future__ import annotations

import threading
import time

import pytest

from gateway import jobs
from gateway.auth import Principal
from gateway.jobs import new_record

pytestmark = pytest.mark.integration


def test_a_success_stored_before_the_end_is_recorded_is_waited_for(app, partner):
    """Celery stores SUCCESS just before the worker records the job's end: in between, a
    wait that stopped on the meta answered SUCCESS with no finished_at (seen in CI)."""
    svc = app.extensions["jobgate"]
    record = new_record(Principal("partner", partner["id"]), {"task": "demo.sleep", "params": {}})
    svc.store.create_job(record)
    svc.celery.backend.store_result(record["task_id"], {"slept": 0}, "SUCCESS")
    ending = threading.Timer(
        0.3, lambda: svc.store.finish_job(record["job_id"], "SUCCESS", result={"slept": 0})
    )
    started = time.monotonic()
    ending.start()
    view = jobs.wait(svc, record, 5)
    ending.join()
    assert view["status"] == "SUCCESS" and view["result"] == {"slept": 0}
    assert view["finished_at"] is not None
    assert 0.25 <= time.monotonic() - started < 4


def test_a_read_between_the_meta_and_the_end_answers_the_record(app, partner):
    """The same gap for a plain GET (the client's first read before ``?wait=``): the view
    is the record's, so it reads as not ended (never SUCCESS with finished_at null, as
    when the view read Celery's meta), then as the recorded end."""
    svc = app.extensions["jobgate"]
    principal = Principal("partner", partner["id"])
    record = new_record(principal, {"task": "demo.sleep", "params": {}})
    svc.store.create_job(record)
    svc.celery.backend.store_result(record["task_id"], {"slept": 0}, "SUCCESS")
    _, view = jobs.show(svc, principal, record["job_id"])
    assert (view["status"], view["result"], view["finished_at"]) == ("PENDING", None, None)
    svc.store.finish_job(record["job_id"], "SUCCESS", result={"slept": 0})
    _, view = jobs.show(svc, principal, record["job_id"])
    assert view["status"] == "SUCCESS" and view["result"] == {"slept": 0}
    assert view["finished_at"] is not None


def test_an_end_celery_stored_but_never_recorded_is_not_announced(app, partner):
    """The worker stored FAILURE, then lost Redis (a failover) or died before recording
    the end: the job runs again, so a read answering FAILURE here was the first of two
    terminal statuses (seen in the Sentinel failover test)."""
    svc = app.extensions["jobgate"]
    principal = Principal("partner", partner["id"])
    record = new_record(principal, {"task": "demo.sleep", "params": {}})
    svc.store.create_job(record)
    svc.celery.backend.mark_as_failure(record["task_id"], ConnectionError("failing over"))
    _, view = jobs.show(svc, principal, record["job_id"])
    assert (view["status"], view["error"], view["finished_at"]) == ("PENDING", None, None)
    assert jobs.wait(svc, record, 0.3)["status"] == "PENDING"


def test_with_a_broker_apart_the_view_is_still_the_record(settings, partner, redis_client):
    """A broker apart from the store (RabbitMQ): the message of a worker that died comes
    back from the broker and the job runs again, so Celery's end is not answered either."""
    from gateway import create_app

    apart = settings.with_overrides(broker_url="memory://")
    app = create_app(apart)
    svc = app.extensions["jobgate"]
    assert not svc.messenger.inline
    principal = Principal("partner", partner["id"])
    record = new_record(principal, {"task": "demo.sleep", "params": {}})
    svc.store.create_job(record)
    try:
        svc.celery.backend.mark_as_failure(record["task_id"], ValueError("lost"))
        _, view = jobs.show(svc, principal, record["job_id"])
        assert (view["status"], view["error"]) == ("PENDING", None)
    finally:
        redis_client.delete(f"celery-task-meta-{record['task_id']}")
