"""The fault suite's fixtures: settings that make recovery quick, a verifying receiver.

Workers here run with a 4 s visibility timeout and a 1 s sweep, so a killed worker's
messages come back within seconds; the receiver verifies every request with the
``standardwebhooks`` package (tests/reliability/conftest.py). A test parametrised on
``broker`` (indirect: "redis", "rabbitmq") runs once with the store's Redis as the broker
and once with RabbitMQ, in a virtual host of the test's own.

The record is PostgreSQL here, production's database (``fault_database``, the suite's
own): without a PostgreSQL on this machine it is SQLite, except under CI (``CI`` set),
where that fails; ``JOBGATE_TEST_FAULT_DATABASE=sqlite`` asks for SQLite. A test that
needs a database of its own (``own_database``: Redis lost) runs on both.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import Settings
from tests.helpers import (
    WorkerProcess,
    migrated_database,
    postgres_answers,
    rabbitmq_vhost,
    wait_until,
)
from tests.reliability.conftest import WebhookReceiver

BROKERS = ["redis", "rabbitmq"]


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> Iterator[str]:
    """The workers' broker URL: "" (the store's Redis) unless parametrised "rabbitmq"."""
    if getattr(request, "param", "redis") == "redis":
        yield ""
        return
    with rabbitmq_vhost("fault") as url:
        yield url


def fault_database_kind() -> str:
    """ "postgresql" where one answers (or under CI, which must run it), else "sqlite"."""
    kind = os.environ.get("JOBGATE_TEST_FAULT_DATABASE", "")
    if kind:
        return kind
    return "postgresql" if os.environ.get("CI") or postgres_answers() else "sqlite"


@pytest.fixture(scope="session")
def fault_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The fault suite's database, migrated (PostgreSQL where one answers)."""
    with migrated_database(fault_database_kind(), tmp_path_factory.mktemp("faults")) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def own_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database of this test's own: each such test runs on both (the
    PostgreSQL case skipped without one, failing under CI)."""
    with migrated_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def fault_settings(settings: Settings, broker: str, fault_database: str) -> Settings:
    """Queues of the test's own, the fault suite's database, fast recovery, quick retries."""
    tag = "fault-" + uuid.uuid4().hex[:8]
    return settings.with_overrides(
        database_url=fault_database,
        broker_url=broker or settings.redis_url,
        queue_jobs=tag,
        queue_webhooks=tag + "-hooks",
        key_prefix=tag,
        visibility_timeout=4,
        sweep_interval=1.0,
        webhook_timeout=2.0,
        webhook_retry_delays=(0.3, 0.6, 1.2, 2.4),
    )


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver().start()
    yield hook
    hook.stop()


def doomed_worker(
    settings: Settings,
    workers: list[WorkerProcess],
    point: str,
    *,
    action: str = "kill",
    concurrency: int = 1,
    ready: bool = True,
) -> WorkerProcess:
    """A worker whose failpoint ``point`` does ``action`` (``kill``: its process group),
    started and handed to ``workers`` (stopped at the test's end if still running)."""
    doomed = WorkerProcess(
        settings,
        concurrency=concurrency,
        name="doomed",
        env={"JOBGATE_FAILPOINTS": f"{point}={action}"},
    ).start(ready=ready)
    workers.append(doomed)
    return doomed


def heir_after(
    doomed: WorkerProcess, settings: Settings, workers: list[WorkerProcess], concurrency: int = 1
) -> WorkerProcess:
    """Once ``doomed`` is dead, the worker that takes over (as in production)."""
    wait_until(lambda: doomed.proc.poll() is not None, 30, 0.02, "the doomed worker's kill")
    heir = WorkerProcess(settings, concurrency=concurrency, name="heir").start()
    workers.append(heir)
    return heir
