"""The delivery's connections: opened to the address the SSRF guard checked (no second DNS
lookup), TLS verified against the URL's host name, kept alive per target for the next
attempt, and shut down by the attempt's deadline (``Guard``, one timer thread)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from contextvars import ContextVar
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from jobgate.timers import Timers

# The process's: ``deliver`` bounds every attempt with it (a ``threading.Timer`` per
# attempt started a thread, a greenlet in the gevent pool, for every webhook, which showed
# in profiles of the delivery process).
WATCHDOG = Timers("jobgate-deadlines")


_OWNERS = threading.Lock()  # a connection changes hands, and is shut down, under this


class Guard:
    """The connections one try of an attempt uses, so that its deadline can shut them down.

    Connections outlive attempts (kept alive per pinned target, ``Connections``), so a
    deadline must reach only the connection its own try holds: each connection remembers
    the guard that last took it (under one lock, so a later try taking it and an earlier
    deadline cannot cross), and a finished guard shuts nothing down. The guard of the
    running try is found through a context variable (per thread, and per greenlet under
    gevent), as urllib3 gives no other way to the connection it picks.
    """

    def __init__(self) -> None:
        self._connections: list[Any] = []
        self._responses: list[Any] = []
        self._finished = False
        self.aborted = False
        self.reused = False  # the try sent on a connection an earlier attempt opened

    def register(self, conn: Any, *, reused: bool) -> None:
        """Take ``conn`` for this try; after the deadline, fail at once instead."""
        with _OWNERS:
            if self.aborted:
                raise TimeoutError("webhook delivery deadline exceeded")
            conn.jobgate_guard = self
            self._connections.append(conn)
            self.reused = self.reused or reused

    def watch(self, response: Any) -> None:
        """Shut ``response`` (urllib3's) down too at the deadline: one that ends when the
        connection closes (HTTP/1.0, ``Connection: close``) has taken the socket from its
        connection. After the deadline, fail at once instead."""
        with _OWNERS:
            if self.aborted:
                raise TimeoutError("webhook delivery deadline exceeded")
            self._responses.append(response)

    def holds(self, conn: Any) -> bool:
        return getattr(conn, "jobgate_guard", None) is self and not self._finished

    def abort(self) -> None:
        """Shut down this try's sockets, unblocking a reader past the deadline."""
        with _OWNERS:
            if self._finished:
                return
            self.aborted = True
            for conn in self._connections:
                sock = getattr(conn, "sock", None)
                if sock is not None and getattr(conn, "jobgate_guard", None) is self:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            for response in self._responses:
                # Refused once the response was read to its end (its connection is the
                # pool's again), or by a urllib3 before 2.3: nothing to cut then.
                with contextlib.suppress(Exception):
                    response.shutdown()

    def finish(self) -> None:
        """The try is over: its connection is the pool's again (or closed)."""
        with _OWNERS:
            self._finished = True
            self._connections.clear()
            self._responses.clear()


_GUARD: ContextVar[Guard | None] = ContextVar("jobgate_delivery_guard", default=None)


_Conn = TypeVar("_Conn", bound=HTTPConnection)


IDLE_MAX = 4.0  # seconds a kept connection may wait for its next request


def _tracked(base: type[_Conn]) -> type[_Conn]:
    """urllib3's connection class, registering with the running try's ``Guard`` and not
    reusing a connection idle longer than ``IDLE_MAX``.

    Receivers close idle connections after a few seconds (gunicorn 2, Node and Apache 5);
    one closed as a request goes out costs a resend, and a NAT that forgets an idle
    connection silently would cost the whole timeout. urllib3 notices a connection the
    receiver has already closed; one idle too long is closed here and opened again.
    """

    class Tracked(base):  # type: ignore[valid-type,misc]
        jobgate_idle_since: float | None = None

        def connect(self) -> None:
            guard = _GUARD.get()
            if guard is not None:
                guard.register(self, reused=False)
            super().connect()

        def request(self, *args: Any, **kwargs: Any) -> None:
            since = self.jobgate_idle_since
            if self.sock is not None and since is not None and time.monotonic() - since > IDLE_MAX:
                self.close()  # http.client connects a closed connection again as it sends
            guard = _GUARD.get()
            # A kept connection (its socket open, not taken by connect() in this try).
            if guard is not None and self.sock is not None and not guard.holds(self):
                guard.register(self, reused=True)
            super().request(*args, **kwargs)

        def getresponse(self, *args: Any, **kwargs: Any) -> Any:
            response = super().getresponse(*args, **kwargs)
            self.jobgate_idle_since = time.monotonic()
            return response

    Tracked.__name__ = f"Tracked{base.__name__}"
    return Tracked


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _tracked(HTTPConnection)


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _tracked(HTTPSConnection)


def _not_pool_full(record: logging.LogRecord) -> bool:
    """Drops urllib3's warning for a connection it closes because its pool is full: more
    attempts to one target ran at once than ``keep``, and the extra ones are not kept."""
    return not str(record.msg).startswith("Connection pool is full")


logging.getLogger("urllib3.connectionpool").addFilter(_not_pool_full)


class PinnedAdapter(HTTPAdapter):
    """Transport that connects to one pre-checked IP; Host, SNI and cert checks use the URL name.

    The pool is keyed on ``address`` instead of the URL's hostname, so urllib3 never resolves
    the name again; for https, ``server_hostname`` (SNI + OpenSSL hostname check) and
    ``assert_hostname`` are pinned to the URL's hostname, so certificate verification is
    unchanged. It keeps up to ``keep`` idle connections alive for the next attempt.
    """

    def __init__(self, address: str, hostname: str, *, keep: int = 1) -> None:
        """Pin requests for ``hostname`` to ``address`` (an IP string checked by the SSRF guard)."""
        self.address = address
        self.hostname = hostname.rstrip(".").lower()
        super().__init__(pool_connections=1, pool_maxsize=keep, max_retries=0)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Swap the pool's host for the checked address and pin TLS names to the URL's host."""
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        url_host = (host_params.get("host") or "").rstrip(".").lower()
        if url_host != self.hostname:
            # requests turns a ValueError here into InvalidURL: never send elsewhere.
            raise ValueError(f"request host {url_host!r} is not the checked callback host")
        host_params["host"] = self.address
        if host_params.get("scheme") == "https":
            pool_kwargs["server_hostname"] = url_host
            pool_kwargs["assert_hostname"] = url_host
        return host_params, pool_kwargs

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: Any,
        proxies: dict[str, str] | None = None,
        cert: Any = None,
    ) -> HTTPConnectionPool:
        """Return the pinned pool (never through a proxy)."""
        if proxies and any(proxies.values()):
            raise ValueError("proxies are not allowed for pinned webhook delivery")
        return super().get_connection_with_tls_context(request, verify, proxies=None, cert=cert)


Target = tuple[str, str, str, int, Any, Any]  # address, hostname, scheme, port, verify, cert


class Connections:
    """The process's kept-alive connections: one ``PinnedAdapter`` per pinned target.

    A target is the checked address with everything the connection was set up for (the
    URL's name for SNI and the certificate, scheme, port, TLS settings), so a name that
    now resolves elsewhere gets a new connection, checked again. At most ``targets``
    targets are kept (the least recently used is closed) and ``keep`` idle connections
    each. A connection the receiver closed is noticed before reuse (urllib3 polls it);
    a forked child starts with none (the parent's sockets are not its to use).
    """

    def __init__(self, targets: int = 64, keep: int = 8) -> None:
        self.targets = targets
        self.keep = keep
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._adapters: OrderedDict[Target, PinnedAdapter] = OrderedDict()

    def adapter(self, target: Target) -> PinnedAdapter:
        """The adapter for ``target``, made on first use."""
        evicted: list[PinnedAdapter] = []
        with self._lock:
            if self._pid != os.getpid():
                self._pid, self._adapters = os.getpid(), OrderedDict()
            adapter = self._adapters.get(target)
            if adapter is None:
                adapter = PinnedAdapter(target[0], target[1], keep=self.keep)
                self._adapters[target] = adapter
                while len(self._adapters) > self.targets:
                    evicted.append(self._adapters.popitem(last=False)[1])
            else:
                self._adapters.move_to_end(target)
        for old in evicted:
            old.close()
        return adapter

    def discard(self, target: Target, adapter: PinnedAdapter) -> None:
        """Close ``adapter``'s kept connections (one turned out stale); the next attempt
        to ``target`` connects afresh."""
        with self._lock:
            if self._adapters.get(target) is adapter:
                del self._adapters[target]
        adapter.close()

    def close(self) -> None:
        """Close every kept connection."""
        with self._lock:
            adapters, self._adapters = list(self._adapters.values()), OrderedDict()
        for adapter in adapters:
            adapter.close()


CONNECTIONS = Connections()  # the process's: ``deliver`` sends through it
