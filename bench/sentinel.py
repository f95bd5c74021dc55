"""A Redis Sentinel group as real processes: a primary, a replica and three sentinels.

``redis-server`` and ``redis-sentinel`` (Debian's packages) on free 127.0.0.1 ports, in a
temporary directory, no persistence. The fleet bench and the Sentinel failover test run
jobgate on it with ``REDIS_URL=<group.url>`` and ``JOBGATE_REDIS_SENTINEL_MASTER=MASTER``.

``proxied=True`` puts a ``bench.proxy.PartitionProxy`` in front of the primary: the
sentinels watch it there, the replica replicates through it, so clients (who find the
primary through the sentinels) reach it through the proxy too, and ``bench.partition``
can cut the primary off from the sentinels and the replica while clients still reach it.
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
from bench.proxy import PartitionProxy
from gateway.launch import Child

MASTER = "jobgate-test"


class SentinelGroup:
    """A primary, one replica and three sentinels watching them, as real processes."""

    def __init__(self, down_after_ms: int = 1000, proxied: bool = False) -> None:
        self.down_after_ms, self.proxied = down_after_ms, proxied
        self.proxy: PartitionProxy | None = None
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

    @property
    def watched_port(self) -> int:
        """Where the sentinels were told the primary is: the proxy's port, if any."""
        return self.proxy.port if self.proxy else self.primary_port

    def start(self, timeout: float = 20.0) -> SentinelGroup:
        if self.proxied:
            self.proxy = PartitionProxy(self.primary_port)
            # Demoted after a failover, it announces the proxy's port, where the
            # sentinels know it, not a second address of its own.
            self.server(
                "primary", self.primary_port, "--replica-announce-port", str(self.proxy.port)
            )
        else:
            self.server("primary", self.primary_port)
        self.server(
            "replica", self.replica_port, "--replicaof", "127.0.0.1", str(self.watched_port)
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
                f"sentinel monitor {MASTER} 127.0.0.1 {self.watched_port} 2\n"
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
        self.wait_promotion(timeout)
        promoted = time.monotonic() - killed
        self.children["old-primary-" + str(old)] = self.children.pop("primary")
        self.children["primary"] = self.children.pop("replica")
        self.primary_port, self.replica_port = self.replica_port, old
        return promoted

    def wait_promotion(self, timeout: float) -> int:
        """Wait until the sentinels name another master than the one they watched; its port."""
        watched = self.watched_port
        deadline = time.monotonic() + timeout
        while (port := self.master_port()) in (None, watched):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no promotion within {timeout} s")
            time.sleep(0.05)
        assert port is not None
        return port

    def rejoin(self) -> None:
        """Start the killed primary's server again, as a replica of the new primary."""
        self.server(
            "replica", self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port)
        )

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for child in reversed(list(self.children.values())):
            child.stop(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def quiet(call: Any) -> Any:
    """``call()``, or None while the server it asks is not answering yet."""
    try:
        return call()
    except (redis.RedisError, OSError, KeyError):
        return None
