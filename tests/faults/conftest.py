"""The fault suite's fixtures: settings that make recovery quick, a verifying receiver.

Workers here run with a 4 s visibility timeout and a 1 s sweep, so a killed worker's
messages come back within seconds; the receiver verifies every request with the
``standardwebhooks`` package (tests/reliability/conftest.py). A test parametrised on
``broker`` (indirect: "redis", "rabbitmq") runs once with the store's Redis as the broker
and once with RabbitMQ, in a virtual host of the test's own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from config import Settings
from tests.helpers import rabbitmq_vhost
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


@pytest.fixture
def fault_settings(settings: Settings, broker: str) -> Settings:
    """Queues of the test's own, fast recovery, quick retries."""
    tag = "fault-" + uuid.uuid4().hex[:8]
    return settings.with_overrides(
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
