"""Fixtures for the webhook suite: a real, scriptable HTTP receiver on 127.0.0.1.

The receiver records every request (headers, exact body bytes, arrival time) and answers
from a script a test sets (``receiver.answer(500, 200)``, ``(429, {"Retry-After": "1"})``,
``Slow(2.0)`` to answer only after the sender's timeout); once the script runs out it
answers 200. Webhooks are verified in the tests with the
``standardwebhooks`` package (an independent implementation), never with our own signer.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from config import Settings
from tests.helpers import WorkerProcess, gateway_for, wait_until


@dataclass(frozen=True)
class Slow:
    """An answer the receiver sends only after ``seconds`` (past the webhook timeout, the
    sender has given up by then: a timeout)."""

    seconds: float
    status: int = 200


@dataclass(frozen=True)
class Reply:
    """An answer with a body of its own (and headers): what the message log keeps."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b"ok"


Answer = int | tuple[int, dict[str, str]] | Slow | Reply


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
        self.held = 0  # requests arrived and not answered yet
        self.most_at_once = 0  # the most it held at once
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

    def _next_answer(self) -> tuple[int, dict[str, str], float, bytes]:
        with self._lock:
            answer = self._script.popleft() if self._script else 200
        if isinstance(answer, Slow):
            return answer.status, {}, answer.seconds, b"ok"
        if isinstance(answer, Reply):
            return answer.status, dict(answer.headers), 0.0, answer.body
        return (*answer, 0.0, b"ok") if isinstance(answer, tuple) else (answer, {}, 0.0, b"ok")

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Wait until ``count`` requests arrived; returns them all."""
        wait_until(
            lambda: len(self.requests) >= count,
            timeout,
            message=f"{count} webhook request(s) at {self.url}",
        )
        return list(self.requests)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver._lock:
                    receiver.requests.append(Received(self.path, headers, body, time.time()))
                    receiver.held += 1
                    receiver.most_at_once = max(receiver.most_at_once, receiver.held)
                status, extra, delay, answer = receiver._next_answer()
                time.sleep(delay)
                with receiver._lock:
                    receiver.held -= 1
                try:
                    self.send_response(status)
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:  # the sender gave up first (a Slow answer)
                    self.close_connection = True

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


class HangingReceiver:
    """Receivers that never answer, on 127.0.0.1: ``/hang`` reads the request and sends
    nothing; ``/drip`` sends a status line, then one header byte every 100 ms (per-read
    timeouts never fire, only the delivery's own deadline ends it). Each connection holds
    until the client gives up or ``close()``."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port = self.server.getsockname()[1]
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self.arrived: list[tuple[str, float]] = []  # (path, time.time()) per request
        self._connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "/hang") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def holding(self, path: str = "/hang") -> int:
        """Requests to ``path`` that arrived (each is held, never answered)."""
        with self._lock:
            return sum(1 for arrived, _ in self.arrived if arrived == path)

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with self._lock:
                self._connections.append(conn)
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        try:
            head = conn.recv(65536)
            if not head:
                return
            path = head.split(b" ", 2)[1].decode() if head.count(b" ") >= 2 else "?"
            with self._lock:
                self.arrived.append((path, time.time()))
            if path == "/drip":
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                while not self.closing.wait(0.1):
                    conn.sendall(b"X")
            else:
                while not self.closing.is_set() and conn.recv(65536):
                    pass  # hold until the client gives up (EOF) or we close
        except OSError:
            pass

    def close(self) -> None:
        self.closing.set()
        self.server.close()
        with self._lock:
            for conn in self._connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()


@pytest.fixture
def hanging_receiver() -> Iterator[HangingReceiver]:
    server = HangingReceiver()
    yield server
    server.close()


@pytest.fixture(scope="session")
def held_settings(settings: Settings) -> Settings:
    """Settings whose job queue no worker consumes until a test starts one on it. The key
    prefix stays the session's (the session worker delivers the webhooks): a held job
    holds one slot of the session's dispatch window until it ends, so a test using it
    ends (revokes) its held jobs."""
    return settings.with_overrides(queue_jobs="held-" + uuid.uuid4().hex[:8])


@pytest.fixture(scope="session")
def held_app(held_settings: Settings, redis_client: Any):
    """A gateway that queues jobs on the held queue (same Redis, same partners)."""
    from gateway import create_app

    flask_app = create_app(held_settings)
    flask_app.config["TESTING"] = True
    return flask_app


@contextmanager
def own_world(
    settings: Settings, name: str, *, concurrency: int = 2, **overrides: Any
) -> Iterator[SimpleNamespace]:
    """A gateway (``client``, an admin-made ``partner``, ``svc``) and a ``jobgate worker``
    in a key prefix and queues of their own (the session's worker never takes their
    messages), with ``overrides`` on the suite's settings."""
    from tests.conftest import ADMIN_KEY

    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    own = settings.with_overrides(
        key_prefix=tag, queue_jobs=f"{tag}-jobs", queue_webhooks=f"{tag}-hooks", **overrides
    )
    client, partner, svc = gateway_for(own, ADMIN_KEY)
    worker = WorkerProcess(own, concurrency=concurrency, name=name).start()
    try:
        yield SimpleNamespace(
            client=client, partner=partner, svc=svc, settings=own, worker=worker, tag=tag
        )
    finally:
        worker.stop()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    """Every receiver a test makes (``receivers.append(Receiver())``), stopped after it."""
    made: list[Receiver] = []
    yield made
    for receiver in made:
        receiver.stop()
