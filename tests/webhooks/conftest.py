"""Fixtures for the webhook suite: a real, scriptable HTTP receiver on 127.0.0.1.

The receiver records every request (headers, exact body bytes, arrival time) and answers
from a script a test sets (``receiver.answer(500, 200)``, ``(429, {"Retry-After": "1"})``);
once the script runs out it answers 200. Webhooks are verified in the tests with the
``standardwebhooks`` package (an independent implementation), never with our own signer.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from config import Settings
from tests.helpers import wait_until

Answer = int | tuple[int, dict[str, str]]


@dataclass(frozen=True)
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() on arrival

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def verify(self, secret: str) -> dict[str, Any]:
        """The payload, if ``secret`` verifies the signature (standardwebhooks raises if not)."""
        return Webhook(secret).verify(self.body, self.headers)


class Receiver:
    """A ThreadingHTTPServer on 127.0.0.1 that answers from a script and records requests."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._script: deque[Answer] = deque()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.path = "/hooks/" + uuid.uuid4().hex[:8]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def answer(self, *answers: Answer) -> None:
        """Answer the next requests with these statuses (then 200)."""
        with self._lock:
            self._script.extend(answers)

    def _next_answer(self) -> tuple[int, dict[str, str]]:
        with self._lock:
            answer = self._script.popleft() if self._script else 200
        return answer if isinstance(answer, tuple) else (answer, {})

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Wait until ``count`` requests arrived; returns them all."""
        wait_until(lambda: len(self.requests) >= count, timeout,
                   message=f"{count} webhook request(s) at {self.url}")
        return list(self.requests)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver._lock:
                    receiver.requests.append(Received(self.path, headers, body, time.time()))
                status, extra = receiver._next_answer()
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        return Handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port_url() -> str:
    """A loopback URL where nothing listens (the receiver is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/down"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def held_settings(settings: Settings) -> Settings:
    """Settings whose job queue no worker consumes until a test starts one on it."""
    return settings.with_overrides(queue_jobs="held-" + uuid.uuid4().hex[:8])


@pytest.fixture(scope="session")
def held_app(held_settings: Settings, redis_client: Any):
    """A gateway that queues jobs on the held queue (same Redis, same partners)."""
    from gateway import create_app

    flask_app = create_app(held_settings)
    flask_app.config["TESTING"] = True
    return flask_app
