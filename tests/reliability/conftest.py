"""Fixtures for the fault suite: a scriptable webhook receiver and a Redis of our own.

The receiver is a real HTTP server on 127.0.0.1 that verifies every request with the
``standardwebhooks`` package and can be stopped and started again on the same port (a
partner outage). ``OwnRedis`` is a ``redis-server`` this suite starts itself, with AOF on,
so tests can stop and restart it without touching the Redis the rest of the suite uses.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.helpers import EmbeddedRedis, free_port

TERMINAL_EVENTS = ("job.succeeded", "job.failed", "job.revoked")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability: fault and bad-input suite (runs in CI)")


# ------------------------------------------------------------------ webhook receiver
@dataclass
class Delivery:
    """One request the receiver got, with what it answered and whether it verified."""

    webhook_id: str
    headers: dict[str, str]
    body: bytes
    answered: int
    verified: bool
    payload: dict[str, Any] | None


@dataclass
class WebhookReceiver:
    """A partner's webhook endpoint: answers by ``script``, records every request."""

    port: int = field(default_factory=free_port)
    secrets: list[str] = field(default_factory=list)
    script: Callable[[Delivery], int] = lambda delivery: 200
    deliveries: list[Delivery] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> WebhookReceiver:
        """Listen on the (same) port again; a stopped receiver refuses connections."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                receiver._record(self, self.rfile.read(length))

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _verify(self, body: bytes, headers: dict[str, str]) -> dict[str, Any] | None:
        for secret in self.secrets:
            try:
                return Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
        return None

    def _record(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        payload = self._verify(body, headers)
        if payload is None:
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
            verified = False
        else:
            verified = True
        delivery = Delivery(headers.get("webhook-id", ""), headers, body, 0, verified, payload)
        delivery.answered = self.script(delivery) if verified else 400
        with self._lock:
            self.deliveries.append(delivery)
        handler.send_response(delivery.answered)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    # -------------------------------------------------------------- what arrived
    def accepted(self, job_id: str | None = None) -> list[Delivery]:
        """Verified deliveries answered 2xx (optionally only those about ``job_id``)."""
        with self._lock:
            found = [d for d in self.deliveries if d.verified and 200 <= d.answered < 300]
        if job_id is not None:
            found = [d for d in found if (d.payload or {}).get("data", {}).get("job_id") == job_id]
        return found

    def terminal_ids(self, job_id: str) -> dict[str, int]:
        """Each terminal webhook-id accepted for ``job_id`` and how often it came."""
        counts: dict[str, int] = {}
        for delivery in self.accepted(job_id):
            if (delivery.payload or {}).get("type") in TERMINAL_EVENTS:
                counts[delivery.webhook_id] = counts.get(delivery.webhook_id, 0) + 1
        return counts


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver().start()
    yield hook
    hook.stop()


# ------------------------------------------------------------------------ own Redis
class OwnRedis(EmbeddedRedis):
    """The suite's own Redis on a free port, AOF on with fsync always, in a temp dir."""

    def __init__(self) -> None:
        super().__init__(appendonly=True)


@pytest.fixture(scope="session")
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis().start()
    yield server
    server.close()


@pytest.fixture
def fresh_own_redis(own_redis: OwnRedis) -> OwnRedis:
    """The suite's own Redis, running and empty."""
    if own_redis.proc is None:
        own_redis.start()
    client = own_redis.client()
    client.flushall()
    client.close()
    return own_redis
