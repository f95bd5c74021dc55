"""The fault suite's fixtures: settings that make recovery quick, a verifying receiver.

Workers here run with a 4 s visibility timeout and a 1 s sweep, so a killed worker's
messages come back within seconds; the receiver verifies every request with the
``standardwebhooks`` package (tests/reliability/conftest.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from config import Settings
from tests.reliability.conftest import WebhookReceiver


@pytest.fixture
def fault_settings(settings: Settings) -> Settings:
    """Queues of the test's own, fast recovery, quick retries."""
    tag = "fault-" + uuid.uuid4().hex[:8]
    return settings.with_overrides(
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
