"""A small closed-loop HTTP/1.1 load generator: N keep-alive connections, raw asyncio.

Each connection sends one request, reads the whole answer, then sends the next, so the
concurrency is exactly the number of requests in flight. Bounded by a request count and
a time limit. Raw sockets keep the generator's own CPU cost low on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.common import ms, percentile


@dataclass
class Load:
    """What one run measured."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    bodies: list[bytes] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)  # time.time() each kept body was sent
    indices: list[int] = field(default_factory=list)  # the i of make(i) of each kept body
    errors: int = 0
    elapsed: float = 0.0

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.statuses.items() if 200 <= code < 300)

    def summary(self) -> dict[str, Any]:
        """Requests/s (2xx answers over wall time), latency percentiles in ms, failures."""
        done = len(self.latencies)
        return {
            "requests": done,
            "ok": self.ok,
            "errors": self.errors,
            "failed": done - self.ok + self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "seconds": round(self.elapsed, 3),
            "rps": round(self.ok / self.elapsed, 1) if self.elapsed else None,
            "p50_ms": ms(percentile(self.latencies, 50)),
            "p90_ms": ms(percentile(self.latencies, 90)),
            "p99_ms": ms(percentile(self.latencies, 99)),
            "max_ms": ms(max(self.latencies) if self.latencies else None),
        }

    def json_bodies(self) -> list[Any]:
        return [json.loads(body) for body in self.bodies]


def request_bytes(
    method: str, path: str, *, body: Any = None, headers: dict[str, str] | None = None
) -> bytes:
    """An HTTP/1.1 keep-alive request as bytes (JSON body when given)."""
    payload = b"" if body is None else json.dumps(body).encode()
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Connection: keep-alive",
        f"Content-Length: {len(payload)}",
    ]
    if body is not None:
        lines.append("Content-Type: application/json")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, close = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            close = True
        elif name == "transfer-encoding":
            raise RuntimeError("chunked answers are not supported by the load generator")
    body = await reader.readexactly(length) if length else b""
    return status, body, close


async def _connection(
    port: int,
    make: Callable[[int], bytes],
    counter: list[int],
    total: int,
    deadline: float,
    load: Load,
    keep: bool,
) -> None:
    reader = writer = None
    try:
        while counter[0] < total and time.monotonic() < deadline:
            index = counter[0]
            counter[0] += 1
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            start, sent_at = time.perf_counter(), time.time()
            try:
                writer.write(make(index))
                status, body, close = await _read_answer(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                load.errors += 1
                writer.close()
                reader = writer = None
                continue
            load.latencies.append(time.perf_counter() - start)
            load.statuses[status] = load.statuses.get(status, 0) + 1
            if keep:
                load.bodies.append(body)
                load.starts.append(sent_at)
                load.indices.append(index)
            if close:
                writer.close()
                reader = writer = None
    finally:
        if writer is not None:
            writer.close()


async def _run(
    port: int,
    make: Callable[[int], bytes],
    concurrency: int,
    total: int,
    seconds: float,
    keep: bool,
) -> Load:
    load = Load()
    counter = [0]
    start = time.perf_counter()
    deadline = time.monotonic() + seconds
    await asyncio.gather(
        *(_connection(port, make, counter, total, deadline, load, keep) for _ in range(concurrency))
    )
    load.elapsed = time.perf_counter() - start
    return load


def run_load(
    port: int,
    make: Callable[[int], bytes],
    *,
    concurrency: int,
    total: int,
    seconds: float = 60.0,
    keep_bodies: bool = False,
) -> Load:
    """Send up to ``total`` requests (``make(i)`` builds the i-th) on ``concurrency``
    keep-alive connections to 127.0.0.1:``port``, stopping after ``seconds`` at most."""
    return asyncio.run(_run(port, make, concurrency, total, seconds, keep_bodies))
