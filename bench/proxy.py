"""A TCP proxy in front of a Redis server that can cut it off from its sentinels and replica.

Every connection is classified by what it sends first: a sentinel names itself first
(``CLIENT SETNAME sentinel-…``), a replica's link sends ``REPLCONF``/``PSYNC``/``SYNC``
right after its ``PING``; anything else is a client. ``partition()`` black-holes the
sentinel and replica connections, open and new: their bytes are held, not forwarded, and
their sockets stay open, as a network partition would leave them, while client connections
keep flowing. ``heal()`` forwards what was held and resumes. A connection closed by either
end is closed on the other, partitioned or not (the proxy keeps reading both sides).
"""

from __future__ import annotations

import re
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field

from bench.common import free_port

CLIENT, SENTINEL, REPLICA = "client", "sentinel", "replica"
CUT = frozenset({SENTINEL, REPLICA})  # the kinds a partition cuts off
SNIFF = 4096  # bytes of a connection's first sends read to classify it
# A command's name is the first bulk string of its array (or an inline command's first word).
_COMMAND = rb"(?:(?:^|\r\n)\*\d+\r\n\$\d+\r\n|^)"
_SENTINEL = re.compile(
    _COMMAND + rb"CLIENT(?:\r\n\$\d+\r\n| +)SETNAME(?:\r\n\$\d+\r\n| +)sentinel-", re.I
)
_REPLICA = re.compile(_COMMAND + rb"(?:REPLCONF|PSYNC|SYNC)(?:\r\n| )", re.I)


def classify(head: bytes) -> str:
    """The kind of connection whose first bytes are ``head``."""
    if _SENTINEL.search(head):
        return SENTINEL
    if _REPLICA.search(head):
        return REPLICA
    return CLIENT


@dataclass
class Link:
    """One proxied connection: its two sockets, its kind, and the bytes held while cut."""

    near: socket.socket  # the connecting side
    far: socket.socket  # the server
    kind: str = CLIENT
    head: bytes = b""
    lock: threading.Lock = field(default_factory=threading.Lock)
    held: dict[str, list[bytes]] = field(default_factory=lambda: {"up": [], "down": []})
    closed: bool = False

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.held = {"up": [], "down": []}
        for sock in (self.near, self.far):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class PartitionProxy:
    """``127.0.0.1:port`` forwarding to ``127.0.0.1:target``, cuttable by connection kind."""

    def __init__(self, target: int, port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self.partitioned = threading.Event()
        self.links: list[Link] = []
        self.lock = threading.Lock()
        # Bytes clients sent on to the server while partitioned (the writes the cut-off
        # server took), and connections by kind, for the report.
        self.client_bytes_while_cut = 0
        self.kinds: Counter[str] = Counter()
        self._listener = socket.create_server(("127.0.0.1", self.port), backlog=256)
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                near, _ = self._listener.accept()
            except OSError:
                return
            try:
                far = socket.create_connection(("127.0.0.1", self.target), timeout=2)
                far.settimeout(None)
            except OSError:
                near.close()  # the server is down: refused, as it would be directly
                continue
            for sock in (near, far):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = Link(near, far)
            with self.lock:
                self.links = [x for x in self.links if not x.closed] + [link]
            threading.Thread(target=self._pump, args=(link, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(link, "down"), daemon=True).start()

    def _pump(self, link: Link, way: str) -> None:
        """Move bytes one way (``up``: to the server) until either side closes."""
        src, dst = (link.near, link.far) if way == "up" else (link.far, link.near)
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with link.lock:
                    if link.closed:
                        break
                    if way == "up" and len(link.head) < SNIFF:
                        link.head += data
                        kind = classify(link.head)
                        if kind != link.kind:
                            link.kind = kind
                            with self.lock:
                                self.kinds[kind] += 1
                    if self.partitioned.is_set() and link.kind in CUT:
                        link.held[way].append(data)
                        continue
                    if self.partitioned.is_set() and way == "up":
                        with self.lock:
                            self.client_bytes_while_cut += len(data)
                    self._flush(link, way)  # what was held goes first
                    dst.sendall(data)
        except OSError:
            pass
        link.close()

    def partition(self) -> None:
        """Cut the server off from its sentinels and replica; clients still reach it."""
        self.client_bytes_while_cut = 0
        self.partitioned.set()

    def heal(self) -> None:
        """Forward what was held, then everything again."""
        self.partitioned.clear()
        with self.lock:
            links = list(self.links)
        for link in links:
            with link.lock:
                try:
                    self._flush(link, "up")
                    self._flush(link, "down")
                except OSError:
                    pass

    @staticmethod
    def _flush(link: Link, way: str) -> None:
        """Send what ``link`` held one way (the caller holds ``link.lock``)."""
        dst = link.far if way == "up" else link.near
        while link.held[way]:
            dst.sendall(link.held[way].pop(0))

    def open_links(self) -> Counter[str]:
        with self.lock:
            return Counter(link.kind for link in self.links if not link.closed)

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()
        with self.lock:
            links, self.links = self.links, []
        for link in links:
            link.close()
