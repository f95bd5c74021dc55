"""A Redis Sentinel group as real processes: a primary, a replica and three sentinels.

``redis-server`` and ``redis-sentinel`` (Debian's packages) on free 127.0.0.1 ports, in a
temporary directory, no persistence. The fleet bench and the Sentinel failover test run
jobgate on it with ``REDIS_URL=<group.url>`` and ``JOBGATE_REDIS_SENTINEL_MASTER=MASTER``.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.common import free_port
from gateway.launch import Child

MASTER = "jobgate-test"


class SentinelGroup:
    """A primary, one replica and three sentinels watching them, as real processes."""

    def __init__(self, down_after_ms: int = 1000) -> None:
        self.down_after_ms = down_after_ms
        self.dir = Path(tempfile.mkdtemp(prefix="jobgate-sentinel-"))
        self.primary_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.children: dict[str, Child] = {}

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{port}/0" for port in self.sentinel_ports)

    def _start(self, name: str, args: list[str]) -> Child:
        child = Child.start(name, args, log=self.dir / f"{name}.log")
        self.children[name] = child
        return child

    def server(self, name: str, port: int, *extra: str) -> None:
        """Start a ``redis-server`` called ``name`` on ``port``; ``extra``: its options
        (``--replicaof host port`` for a replica)."""
        self._start(
            name,
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--dbfilename",
                f"{name}.rdb",
                *extra,
            ],
        )

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(
            port=port, decode_responses=True, socket_connect_timeout=1, socket_timeout=2
        )

    def start(self, timeout: float = 20.0) -> SentinelGroup:
        self.server("primary", self.primary_port)
        self.server(
            "replica", self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port)
        )
        replica = self.client(self.replica_port)
        self.children["replica"].wait_ready(
            lambda: quiet(lambda: replica.info("replication")["master_link_status"] == "up"),
            timeout,
            "the replica to sync",
        )
        for index, port in enumerate(self.sentinel_ports):
            conf = self.dir / f"sentinel-{index}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER} 10000\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            self._start(f"sentinel-{index}", [shutil.which("redis-sentinel") or "", str(conf)])
        for index, port in enumerate(self.sentinel_ports):
            sentinel = self.client(port)
            self.children[f"sentinel-{index}"].wait_ready(
                lambda s=sentinel: quiet(
                    lambda: (
                        len(s.sentinel_sentinels(MASTER)) == 2
                        and len(s.sentinel_slaves(MASTER)) == 1
                    )
                ),
                timeout,
                f"sentinel {index} to see the replica and the other sentinels",
            )
        return self

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers says."""
        for port in self.sentinel_ports:
            found = quiet(lambda p=port: self.client(p).sentinel_get_master_addr_by_name(MASTER))
            if found:
                return int(found[1])
        return None

    def kill_primary(self, timeout: float = 120.0) -> float:
        """SIGKILL the primary and wait for the sentinels to promote the replica; the
        seconds that took. The promoted server is ``primary`` from then on."""
        killed = time.monotonic()
        old = self.primary_port
        self.children["primary"].kill(signal.SIGKILL)
        deadline = killed + timeout
        while self.master_port() in (None, old):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no promotion within {timeout} s")
            time.sleep(0.1)
        promoted = time.monotonic() - killed
        self.children["old-primary-" + str(old)] = self.children.pop("primary")
        self.children["primary"] = self.children.pop("replica")
        self.primary_port, self.replica_port = self.replica_port, old
        return promoted

    def rejoin(self) -> None:
        """Start the killed primary's server again, as a replica of the new primary."""
        self.server(
            "replica", self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port)
        )

    def stop(self) -> None:
        for child in reversed(list(self.children.values())):
            child.stop(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def quiet(call: Any) -> Any:
    """``call()``, or None while the server it asks is not answering yet."""
    try:
        return call()
    except (redis.RedisError, OSError, KeyError):
        return None
