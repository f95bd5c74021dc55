"""Fixtures for batches, SSE and the client: a real gunicorn gateway and a webhook receiver.

``gateway_url`` is ``gunicorn wsgi:app`` (gevent, gunicorn.conf.py) on 127.0.0.1,
configured like the test worker (same Redis db), with 0.5 s SSE heartbeats; ``receiver``
records every webhook POSTed to it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from config import Settings
from tests.helpers import free_port, gunicorn

HEARTBEAT = 0.5


@pytest.fixture(scope="session")
def gateway_url(settings: Settings, redis_client: Any) -> Iterator[str]:
    """The gateway behind gunicorn as shipped: gevent, so open streams cost greenlets."""
    with gunicorn(
        settings,
        workers=1,
        extra=("--graceful-timeout", "2"),
        env={"JOBGATE_SSE_HEARTBEAT": str(HEARTBEAT)},
    ) as url:
        yield url


@dataclass
class Receiver:
    """A partner's webhook endpoint on 127.0.0.1: answers 200, records every request."""

    port: int
    received: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def of_type(self, event: str) -> list[dict[str, Any]]:
        return [r for r in list(self.received) if r["payload"].get("type") == event]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    port = free_port()
    found = Receiver(port)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            found.received.append(
                {
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "body": body,
                    "payload": json.loads(body or b"{}"),
                }
            )
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield found
    server.shutdown()
    server.server_close()
