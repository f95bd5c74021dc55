"""Unit tests need no service: asking for Redis or a worker here is an error, not a skip."""

from __future__ import annotations

import pytest


def _no_service(request: pytest.FixtureRequest) -> None:
    pytest.fail(
        f"{request.node.nodeid} asks for '{request.fixturename}': unit tests use no "
        "Redis and no worker; put it in tests/integration/",
        pytrace=False,
    )


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> None:
    _no_service(request)


@pytest.fixture
def redis_client(request: pytest.FixtureRequest) -> None:
    _no_service(request)


@pytest.fixture
def worker(request: pytest.FixtureRequest) -> None:
    _no_service(request)
