"""The HTTP surface of issue 2 against a real Redis and a real worker."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import redis

from config import Settings
from gateway import create_app
from gateway.dev import dev_environment
from tests.helpers import (
    ROOT,
    EmbeddedRedis,
    WorkerProcess,
    settings_env,
    wait_for_status,
    wait_until,
)

pytestmark = pytest.mark.integration


def submit(client, partner, task="demo.sleep", params=None, **extra):
    body = {
        "task": task,
        "params": params if params is not None else {"seconds": 0, "steps": 1},
        **extra,
    }
    response = client.post("/v1/jobs", json=body, headers=partner["headers"])
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def test_unknown_job_is_404_never_pending(client, partner):
    response = client.get(
        "/v1/jobs/00000000-0000-0000-0000-000000000000", headers=partner["headers"]
    )
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_finished_job_outlives_celerys_result(settings, redis_client, admin_headers):
    """With result_expires=1 Celery's meta vanishes; the gateway's record still answers."""
    short = settings.with_overrides(
        result_expires=1,
        queue_jobs="jobs-expiry",
        queue_webhooks="webhooks-expiry",
        key_prefix=f"expiry-{uuid.uuid4().hex[:8]}",
    )
    app = create_app(short)
    client = app.test_client()
    key = client.post("/v1/partners", json={"name": "expiry"}, headers=admin_headers).get_json()[
        "api_key"
    ]
    headers = {"Authorization": f"Bearer {key}"}
    worker = WorkerProcess(short, concurrency=1, name="expiry").start()
    try:
        job = client.post(
            "/v1/jobs",
            json={"task": "texts.embed", "params": {"texts": ["a b"], "dimensions": 8}},
            headers=headers,
        ).get_json()
        assert wait_for_status(client, job["job_id"], headers)["status"] == "SUCCESS"
        # Celery's SUCCESS meta is written just before the worker records the end.
        done = wait_until(
            lambda: (
                (view := client.get(f"/v1/jobs/{job['job_id']}", headers=headers).get_json())[
                    "finished_at"
                ]
                and view
            ),
            timeout=10,
            message="the end recorded",
        )
    finally:
        worker.stop()
    meta_key = f"celery-task-meta-{job['job_id']}"
    wait_until(
        lambda: not redis_client.exists(meta_key), timeout=10, message="Celery's result to expire"
    )
    again = client.get(f"/v1/jobs/{job['job_id']}", headers=headers).get_json()
    assert again["status"] == "SUCCESS"
    assert again["result"] == done["result"]
    assert again["finished_at"] == done["finished_at"]


def test_status_and_asyncresult_agree_through_a_real_worker(
    app, client, partner, worker, admin_headers
):
    """The contract: before a job runs, while it runs and once it ended, ``GET
    /v1/jobs/{id}`` (built from the job's record alone) and ``AsyncResult(task_id)`` say
    the same (the scripts write Celery's meta with the record)."""
    celery = app.extensions["jobgate"].celery

    def both(job_id: str) -> tuple[dict, object]:
        view = client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).get_json()
        return view, celery.AsyncResult(job_id)

    waiting = client.post(
        "/v1/jobs",
        json={"task": "demo.sleep", "params": {"seconds": 0}, "delay_seconds": 600},
        headers=partner["headers"],
    ).get_json()["job_id"]
    view, result = both(waiting)
    assert (view["status"], result.state) == ("PENDING", "PENDING")

    running = submit(client, partner, params={"seconds": 3, "steps": 3})["job_id"]
    view, result = wait_until(
        lambda: (found := both(running))[0]["status"] == "PROCESSING" and found,
        timeout=20,
        message="the job reporting progress",
    )
    assert result.state == "PROCESSING"
    assert result.info["total"] == view["progress"]["total"] == 3
    # Reports are a second apart: the view and Celery's meta hold the same one.
    assert result.info["current"] == view["progress"]["current"]
    done = wait_for_status(client, running, partner["headers"])
    result = celery.AsyncResult(running)
    assert (result.state, result.result) == ("SUCCESS", done["result"])
    assert result.date_done is not None and result.name == "demo.sleep"

    failed = submit(client, partner, task="demo.fail", params={"message": "on purpose"})
    view = wait_for_status(client, failed["job_id"], partner["headers"])
    result = celery.AsyncResult(failed["job_id"])
    assert (view["status"], result.state) == ("FAILURE", "FAILURE")
    assert str(result.result) == view["error"] == "on purpose"
    assert "DemoFailure" in (result.traceback or "")

    revoked = client.post(
        f"/v1/jobs/{waiting}/revoke", json={"reason": "agreement"}, headers=admin_headers
    )
    assert revoked.status_code == 202, revoked.get_json()
    view, result = both(waiting)
    assert (view["status"], result.state) == ("REVOKED", "REVOKED")


def test_a_quick_jobs_last_progress_report_is_recorded_with_its_end(app, client, partner, worker):
    """A job that ends within ``tasks.progress.COALESCE`` writes no report of its own;
    its end records the last one, so the finished job still shows it."""
    job = submit(client, partner, params={"seconds": 0, "steps": 2})
    done = wait_for_status(client, job["job_id"], partner["headers"])
    assert done["status"] == "SUCCESS"
    record = app.extensions["jobgate"].store.job(job["job_id"])
    assert record["progress"] == {"current": 2, "total": 2, "percent": 100, "message": "Done"}


def test_wait_holds_until_the_job_ends(client, partner, worker):
    job = submit(client, partner, params={"seconds": 1, "steps": 2})
    response = client.get(f"/v1/jobs/{job['job_id']}?wait=20", headers=partner["headers"])
    assert response.status_code == 200
    assert response.get_json()["status"] == "SUCCESS"


@pytest.mark.parametrize("value", ["0", "31", "-1", "soon"])
def test_wait_out_of_range_is_422(client, partner, value):
    job_id = submit(client, partner)["job_id"]
    response = client.get(f"/v1/jobs/{job_id}?wait={value}", headers=partner["headers"])
    assert response.status_code == 422
    assert "wait" in response.get_json()["error"]["details"]


def test_wait_returns_the_live_status_when_time_is_up(client, partner, worker):
    job = submit(client, partner, params={"seconds": 5, "steps": 5})
    view = client.get(f"/v1/jobs/{job['job_id']}?wait=0.5", headers=partner["headers"])
    assert view.get_json()["status"] in ("PENDING", "STARTED", "PROCESSING")


def test_list_is_newest_first_filtered_and_paged(client, partner, other_partner, worker, archived):
    ids = [submit(client, partner)["job_id"] for _ in range(5)]
    failed = submit(client, partner, task="demo.fail", params={"message": "no"})["job_id"]
    submit(client, other_partner)
    for job_id in [*ids, failed]:
        wait_for_status(client, job_id, partner["headers"])
    archived(*ids, failed)
    seen, cursor = [], None
    while True:
        url = "/v1/jobs?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=partner["headers"]).get_json()
        assert len(page["jobs"]) <= 2
        seen += [(job["created_at"], job["job_id"]) for job in page["jobs"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    # Newest first by creation time, then by id within the same millisecond (docs/api.md).
    assert seen == sorted(seen, reverse=True), "newest first"
    assert {job_id for _, job_id in seen} == {failed, *ids}, "every job once, only mine"
    assert len(seen) == 6
    only_failed = client.get("/v1/jobs?status=FAILURE", headers=partner["headers"]).get_json()
    assert [job["job_id"] for job in only_failed["jobs"]] == [failed]
    by_task = client.get("/v1/jobs?task=demo.fail", headers=partner["headers"]).get_json()
    assert [job["job_id"] for job in by_task["jobs"]] == [failed]


def test_admin_sees_every_partners_jobs(client, partner, other_partner, admin_headers, archived):
    mine = submit(client, partner)["job_id"]
    theirs = submit(client, other_partner)["job_id"]
    archived(mine, theirs)
    listed = {
        job["job_id"]
        for job in client.get("/v1/jobs?limit=100", headers=admin_headers).get_json()["jobs"]
    }
    assert {mine, theirs} <= listed
    assert client.get(f"/v1/jobs/{theirs}", headers=admin_headers).status_code == 200


def test_admin_cannot_submit(client, admin_headers):
    response = client.post("/v1/jobs", json={"task": "demo.sleep"}, headers=admin_headers)
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "forbidden"


def test_idempotent_replay_returns_the_same_job(client, partner):
    body = {"task": "demo.sleep", "params": {"seconds": 0, "steps": 1}}
    headers = {**partner["headers"], "Idempotency-Key": "order-1"}
    first = client.post("/v1/jobs", json=body, headers=headers)
    again = client.post("/v1/jobs", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.get_json()["job_id"] == first.get_json()["job_id"]
    assert again.headers["Location"] == first.headers["Location"]


def test_an_idempotency_key_redis_lost_is_still_kept_by_the_database(client, partner, app):
    """The key is kept with the job's row: after Redis lost its claim (and the job), a
    retry still answers the job it made, and another body with it is a conflict."""
    body = {"task": "demo.sleep", "params": {"seconds": 0, "steps": 1}}
    headers = {**partner["headers"], "Idempotency-Key": "order-lost"}
    first = client.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == 202
    store = app.extensions["jobgate"].store

    def redis_loses_the_claim() -> None:
        for key in store.redis.scan_iter(f"{store.prefix}:idem:*"):
            store.redis.delete(key)
        store.redis.delete(store.key("job", first.get_json()["job_id"]))

    redis_loses_the_claim()
    again = client.post("/v1/jobs", json=body, headers=headers)
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["job_id"] == first.get_json()["job_id"]
    redis_loses_the_claim()
    other = client.post("/v1/jobs", json={**body, "metadata": {"n": 2}}, headers=headers)
    assert other.status_code == 409
    assert other.get_json()["error"]["code"] == "idempotency_conflict"


def test_catalog_lists_json_schemas(client, partner):
    tasks = {t["name"]: t for t in client.get("/v1/tasks", headers=partner["headers"]).get_json()}
    assert set(tasks) == {
        "demo.sleep",
        "demo.once",
        "demo.fail",
        "documents.process",
        "texts.embed",
    }
    sleep = tasks["demo.sleep"]["params"]
    assert sleep["properties"]["seconds"]["maximum"] == 3600
    assert sleep["properties"]["steps"]["minimum"] == 1
    assert tasks["documents.process"]["params"]["required"] == ["documents"]


def _client_and_headers(settings, admin_headers):
    """A test client of a gateway for ``settings`` and a new partner's headers on it."""
    client = create_app(settings).test_client()
    key = client.post("/v1/partners", json={"name": "demo"}, headers=admin_headers).get_json()[
        "api_key"
    ]
    return client, {"Authorization": f"Bearer {key}"}


def test_demo_tasks_are_off_by_default_and_on_in_jobgate_dev(
    settings, admin_headers, redis_client, worker
):
    environ = {
        "REDIS_URL": settings.redis_url,
        "JOBGATE_DATABASE_URL": settings.database_url,
        "JOBGATE_ADMIN_KEYS": ",".join(settings.admin_keys),
        "JOBGATE_SECRET_KEY": settings.secret_key,  # the session's: its rows stay one key's
    }
    client, headers = _client_and_headers(Settings.from_env(environ), admin_headers)
    names = {t["name"] for t in client.get("/v1/tasks", headers=headers).get_json()}
    assert names == {"documents.process", "texts.embed"}
    refused = client.post("/v1/jobs", json={"task": "demo.sleep"}, headers=headers)
    assert refused.status_code == 422
    assert refused.get_json()["error"]["code"] == "unknown_task"

    dev_env, _ = dev_environment(environ)
    client, headers = _client_and_headers(Settings.from_env(dev_env), admin_headers)
    names = {t["name"] for t in client.get("/v1/tasks", headers=headers).get_json()}
    assert {"demo.sleep", "demo.once", "demo.fail"} <= names
    job = submit(client, {"headers": headers}, params={"seconds": 0, "steps": 1})
    assert wait_for_status(client, job["job_id"], headers)["status"] == "SUCCESS"
    # An explicit JOBGATE_DEMO_TASKS=0 holds in jobgate dev too.
    assert (
        Settings.from_env(dev_environment({**environ, "JOBGATE_DEMO_TASKS": "0"})[0]).demo_tasks
        is False
    )


def test_routing_errors_are_json(client, partner):
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.is_json
    assert missing.get_json()["error"]["code"] == "not_found"
    wrong_method = client.delete("/v1/jobs", headers=partner["headers"])
    assert wrong_method.status_code == 405
    assert wrong_method.get_json()["error"]["code"] == "method_not_allowed"


def test_unexpected_errors_are_json_500_without_traceback(settings, redis_client, caplog):
    app = create_app(settings)

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    response = app.test_client().get("/boom")
    assert response.status_code == 500
    body = response.get_json()
    assert body["error"]["code"] == "internal_error"
    assert "secret internals" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)
    assert body["error"]["details"]["error_id"] in caplog.text


def test_health_and_readiness(client, worker):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"]["workers"] >= 1


def test_readiness_fails_without_workers(settings, redis_client):
    client = create_app(settings.with_overrides(redis_url="redis://127.0.0.1:1/0")).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["redis"] is False


def test_readiness_counts_workers_alive_not_ping_replies(settings, own_database, workers):
    """A worker paused for a moment (busy, starved of CPU) keeps the gateway ready; one
    killed stops counting after ``worker_alive_for`` s. (A broadcast ping with a 1 s
    timeout answered 503 the moment the worker was slow: CI saw it.)"""
    server = EmbeddedRedis().start()
    try:
        mine = settings.with_overrides(
            redis_url=server.url, database_url=own_database, visibility_timeout=2
        )
        client = create_app(mine).test_client()
        alone = client.get("/readyz")
        assert alone.status_code == 503, alone.get_json()
        assert alone.get_json()["checks"]["workers"] == 0
        worker = WorkerProcess(mine, concurrency=1)
        workers.append(worker)
        worker.start()
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.get_json()["checks"]["workers"] == len(worker.nodes)
        worker.child.signal_tree(signal.SIGSTOP)
        try:
            paused = client.get("/readyz")
        finally:
            worker.child.signal_tree(signal.SIGCONT)
        assert paused.status_code == 200, paused.get_json()
        worker.kill()
        wait_until(
            lambda: client.get("/readyz").status_code == 503,
            timeout=mine.worker_alive_for + 5,
            message="/readyz to drop the killed worker",
        )
    finally:
        server.stop()


def test_openapi_document_lists_the_contract(client):
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/partners", "/v1/tasks", "/readyz"):
        assert path in spec["paths"]
    assert "Job" in spec["components"]["schemas"]


def test_batch_with_member_callback_url_matches_the_document(settings, redis_client, admin_headers):
    """The body the document allows is accepted, and the answers match the document."""
    from openapi_schema_validator import OAS30Validator

    queue = f"doc-{uuid.uuid4().hex[:8]}"  # no worker reads it: members stay queued
    app = create_app(
        settings.with_overrides(queue_jobs=queue, queue_webhooks=queue + "-h", key_prefix=queue)
    )
    client = app.test_client()
    spec = client.get("/openapi.json").get_json()

    def errors(name, instance):
        validator = OAS30Validator(
            {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
        )
        return [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(instance)]

    key = client.post("/v1/partners", json={"name": "doc"}, headers=admin_headers).get_json()[
        "api_key"
    ]
    body = {
        "jobs": [
            {
                "task": "demo.sleep",
                "params": {"seconds": 0, "steps": 1},
                "callback_url": "http://127.0.0.1:9009/hooks",
                "metadata": {"row": 1},
            },
            {"task": "demo.sleep"},
        ],
        "callback_url": "http://127.0.0.1:9009/batches",
    }
    assert errors("BatchSubmit", body) == []
    created = client.post("/v1/batches", json=body, headers={"Authorization": f"Bearer {key}"})
    assert created.status_code == 202, created.get_json()
    assert errors("Batch", created.get_json()) == []
    read = client.get(created.headers["Location"], headers=admin_headers)
    assert read.status_code == 200
    assert errors("Batch", read.get_json()) == []
    member = client.get(f"/v1/jobs/{read.get_json()['job_ids'][0]}", headers=admin_headers)
    assert member.get_json()["callback_url"] == "http://127.0.0.1:9009/hooks"


def test_metrics_count_submissions(client, partner):
    before = client.get("/metrics").get_data(as_text=True)
    submit(client, partner)
    after = client.get("/metrics").get_data(as_text=True)

    def submitted(text):
        name = 'jobgate_jobs_total{event="submitted"}'
        line = next(x for x in text.splitlines() if x.startswith(name))
        return float(line.split()[-1])

    assert submitted(after) == submitted(before) + 1


def http_series(text: str) -> set[str]:
    """The request counter's label sets in a /metrics answer."""
    return {
        line.split("}")[0]
        for line in text.splitlines()
        if line.startswith("jobgate_http_requests_total{")
    }


def test_metrics_labels_cannot_grow_from_made_up_methods_or_paths(settings):
    """Found in review: 300 requests with made-up methods grew /metrics by 282 KB for
    good. A method no route serves counts as ``other``, a path no rule matches as
    ``unmatched``: garbage adds a handful of series, however much of it comes."""
    client = create_app(settings).test_client()
    client.get("/metrics")  # a scrape counts itself after answering: count one first
    before = client.get("/metrics").get_data(as_text=True)
    for n in range(300):
        client.open("/healthz", method=f"MADEUP{n}")
        client.open(f"/no/such/path/{n}", method="GET")
        client.open(f"/v1/jobs/{n}", method=f"X{n}")
    after = client.get("/metrics").get_data(as_text=True)
    added = http_series(after) - http_series(before)
    assert added == {
        'jobgate_http_requests_total{method="other",route="unmatched",status="405"',
        'jobgate_http_requests_total{method="GET",route="unmatched",status="404"',
    }
    assert len(after) - len(before) < 8000


def test_cli_partner_create_prints_json_usable_as_a_key(settings, redis_client, client):
    env = {**settings_env(settings), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "partner", "create", "cli-co"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    created = json.loads(out.stdout)
    assert set(created) == {"id", "name", "created_at", "api_key", "webhook_secret"}
    assert created["webhook_secret"].startswith("whsec_")
    headers = {"Authorization": f"Bearer {created['api_key']}"}
    assert client.get("/v1/tasks", headers=headers).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000 + "]" * 100_000,  # nesting past the parser
        '{"task": "demo.sleep", "metadata": {"x": 1e999}}',  # overflows to Infinity
        '{"task": "demo.sleep", "metadata": {"x": NaN}}',
        '{"task": "demo.sleep", "params": {"seconds": -Infinity}}',
    ],
)
def test_json_that_cannot_round_trip_is_400_and_writes_nothing(client, partner, redis_client, body):
    def written():  # what a submit writes: job records and the archive stream
        return (set(redis_client.keys("jobgate:job:*")), redis_client.xlen("jobgate:archive"))

    before = written()
    response = client.post("/v1/jobs", data=body, headers=partner["headers"])
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"
    assert written() == before


@pytest.mark.parametrize(
    "cursor", ["1_0:abc", "1e5:abc", "inf:abc", " 1:abc", "1:", "MjAyNnxhYmM", "!!!"]
)
def test_a_cursor_no_page_returned_is_422(client, partner, cursor):
    submit(client, partner)
    response = client.get(f"/v1/jobs?cursor={cursor}", headers=partner["headers"])
    assert response.status_code == 422
    assert "cursor" in response.get_json()["error"]["details"]


def test_rate_limit_counts_new_jobs_only_and_says_when_to_retry(
    settings, admin_headers, redis_client
):
    client = create_app(settings.with_overrides(rate_limit=2)).test_client()
    key = client.post("/v1/partners", json={"name": "limited"}, headers=admin_headers).get_json()[
        "api_key"
    ]

    def post(idem, seconds=0):
        return client.post(
            "/v1/jobs",
            json={"task": "demo.sleep", "params": {"seconds": seconds, "steps": 1}},
            headers={"Authorization": f"Bearer {key}", "Idempotency-Key": idem},
        )

    # The limit counts per fixed minute: start well inside one.
    wait_until(lambda: time.time() % 60 < 50, timeout=15, message="a fresh rate window")
    assert [post("a").status_code, post("b").status_code] == [202, 202]
    limited = post("c")
    assert limited.status_code == 429
    assert limited.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    # A replay creates nothing: it is answered, not limited.
    assert post("a").status_code == 200
    # The refused request did not keep its key: another body with it is limited, not 409.
    assert post("c", seconds=1).status_code == 429


def test_requests_past_the_redis_pool_wait_for_a_connection_then_503(
    settings, admin_headers, monkeypatch
):
    """A full pool makes a request wait for a free connection (not fail at once, as
    redis-py's default pool does past 100), and answer 503 JSON if none frees in time."""
    monkeypatch.setattr("jobgate.store.POOL_WAIT", 0.3)
    app = create_app(settings.with_overrides(redis_max_connections=1))
    pool = app.extensions["jobgate"].store.redis.connection_pool
    assert isinstance(pool, redis.BlockingConnectionPool) and pool.max_connections == 1
    client = app.test_client()
    held = pool.get_connection()
    started = time.monotonic()
    # A job read goes to Redis first (partners are read from the database).
    job_url = "/v1/jobs/00000000-0000-0000-0000-000000000000"
    response = client.get(job_url, headers=admin_headers)
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "unavailable"
    threading.Timer(0.1, pool.release, args=(held,)).start()
    assert client.get(job_url, headers=admin_headers).status_code == 404


def test_a_tasks_message_cannot_forge_a_worker_log_line(client, partner, worker):
    """demo.fail's message is the partner's text: in the worker's log, its traceback keeps
    the message on one line (the escaped line break), so no line reads as a log entry."""
    forged = "[2026-12-06 03:00:00,000: INFO/MainProcess] forged " + uuid.uuid4().hex
    failed = submit(client, partner, task="demo.fail", params={"message": f"boom\n{forged}"})
    view = wait_for_status(client, failed["job_id"], partner["headers"])
    assert (view["status"], view["error"]) == ("FAILURE", f"boom\n{forged}")
    wait_until(lambda: f"DemoFailure: boom\\n{forged}" in worker.log(), timeout=10)
    assert not [line for line in worker.log().splitlines() if line.startswith(forged)]
