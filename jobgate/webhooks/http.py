"""One webhook delivery attempt and the retry policy (pure: no Celery, Redis or Flask).

``deliver`` re-runs the SSRF guard, signs fresh Standard Webhooks headers and POSTs the body
to the *checked* address (no second DNS lookup), never following redirects, reading at most
``max_response_bytes`` and bounding the whole attempt by ``timeout``. The caller (the Celery
task) records the returned :class:`Attempt` and schedules the next try with ``retry_delay``.

The policy (docs/webhooks.md): a 2xx is delivered; every other answer (3xx included, never
followed), a connection error or a timeout is retried, except ``410 Gone``, which ends the
delivery at once and marks the attempt ``gone`` so the caller can disable the endpoint.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ClosedPoolError, ConnectTimeoutError, NewConnectionError

from config import (
    DEFAULT_CALLBACK_DNS_TIMEOUT,
    DEFAULT_CALLBACK_PORTS,
    DEFAULT_WEBHOOK_TIMEOUT,
    PortRanges,
)
from jobgate.signing import webhook_headers
from jobgate.ssrf import CallbackRefused, Network, Resolver, check_callback_url
from jobgate.timers import Timers
from jobgate.webhooks.policy import parse_retry_after

__all__ = [
    "GONE",
    "CONNECTIONS",
    "Attempt",
    "Connections",
    "Outcome",
    "PinnedAdapter",
    "classify",
    "deliver",
]

Outcome = Literal["delivered", "retry", "failed"]

GONE = 410  # the receiver says the endpoint is gone for good: stop, and disable it
_CHUNK = 8192
_MAX_ERROR_CHARS = 300


@dataclass
class Attempt:
    """What one delivery attempt did; ``retry_after`` is the receiver's (capped) request in s.

    ``error`` goes to the partner-visible deliveries log; ``detail`` is for the worker's log
    only: the SSRF guard's specific reason when it refused the URL (``error`` is then the
    generic refusal). ``gone`` is True when the receiver answered ``410 Gone``: the
    outcome is then ``failed``, and the caller tells the endpoint's owner
    (``jobgate.webhooks.attempt.endpoint_gone``).
    """

    outcome: Outcome
    status_code: int | None
    error: str | None
    duration_ms: int
    retry_after: float | None
    detail: str | None = None

    @property
    def gone(self) -> bool:
        """The receiver answered ``410 Gone``: no retry, and the endpoint should be disabled."""
        return self.status_code == GONE


def connect_to_address(
    address: str,
    port: int,
    timeout: Any,
    source_address: tuple[str, int] | None = None,
    socket_options: Sequence[tuple[int, int, Any]] | None = None,
) -> socket.socket:
    """A TCP connection to an IP address (``PinnedAdapter``'s checked one): urllib3's
    ``create_connection`` for one address, with no name lookup. ``timeout`` is urllib3's
    (a number or None; its default sentinel leaves the socket's default)."""
    ip = ipaddress.ip_address(address.strip("[]"))
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        for option in socket_options or ():
            sock.setsockopt(*option)
        if timeout is None or isinstance(timeout, int | float):
            sock.settimeout(timeout)
        if source_address:
            sock.bind(source_address)
        sock.connect((str(ip), port))
    except BaseException:
        sock.close()
        raise
    return sock


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


def _tracked(base: type[_Conn]) -> type[_Conn]:
    """urllib3's connection class, registering with the running try's ``Guard`` and
    connecting to the pinned address itself."""

    class Tracked(base):  # type: ignore[valid-type,misc]
        def connect(self) -> None:
            guard = _GUARD.get()
            if guard is not None:
                guard.register(self, reused=False)
            super().connect()

        def request(self, *args: Any, **kwargs: Any) -> None:
            guard = _GUARD.get()
            # A kept connection (its socket open, not taken by connect() in this try).
            if guard is not None and self.sock is not None and not guard.holds(self):
                guard.register(self, reused=True)
            super().request(*args, **kwargs)

        def _new_conn(self) -> socket.socket:
            """urllib3's own, to the pinned address without ``getaddrinfo``: gevent
            sends every lookup, an IP's too, through its resolver's thread pool (a
            cost that showed in profiles of the delivery process, plus the pool's
            wake-ups); the same exceptions."""
            try:
                sock = connect_to_address(
                    self._dns_host,
                    self.port,
                    self.timeout,
                    self.source_address,
                    self.socket_options,
                )
            except TimeoutError as exc:
                raise ConnectTimeoutError(
                    self,
                    f"Connection to {self.host} timed out. (connect timeout={self.timeout})",
                ) from exc
            except OSError as exc:
                raise NewConnectionError(
                    self, f"Failed to establish a new connection: {exc}"
                ) from exc
            sys.audit("http.client.connect", self, self.host, self.port)
            return sock

    Tracked.__name__ = f"Tracked{base.__name__}"
    return Tracked


IDLE_MAX = 4.0  # seconds a kept connection may wait for its next request


class _KeepSome:
    """A pool that keeps a connection idle for at most ``IDLE_MAX`` seconds, and closes
    one it has no room to keep without urllib3's warning (more attempts than ``keep`` ran
    at once: the extra connections are not kept).

    Receivers close idle connections after a few seconds (gunicorn 2, Node and Apache
    5); one closed as a request goes out costs a resend, and a NAT that forgets an idle
    connection silently would cost the whole timeout: a connection idle longer than
    ``IDLE_MAX`` is closed instead of used.
    """

    pool: Any

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        since = getattr(conn, "jobgate_idle_since", None)
        if since is not None and time.monotonic() - since > IDLE_MAX:
            conn.close()  # urllib3 connects a closed connection again on use
        return conn

    def _put_conn(self, conn: Any) -> None:
        if self.pool is not None and self.pool.full():
            if conn is not None:
                conn.close()
            return
        if conn is not None:
            conn.jobgate_idle_since = time.monotonic()
        super()._put_conn(conn)  # type: ignore[misc]


class _HTTPPool(_KeepSome, HTTPConnectionPool):
    ConnectionCls = _tracked(HTTPConnection)


class _HTTPSPool(_KeepSome, HTTPSConnectionPool):
    ConnectionCls = _tracked(HTTPSConnection)


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


def classify(status_code: int | None, exc: BaseException | None) -> Outcome:
    """Map a response status (which wins when present) or a transport error to an outcome.

    Every answer but a 2xx is retried, redirects included (they are never followed: the
    receiver must fix its URL), except ``410 Gone``, which fails at once.
    """
    if status_code is not None:
        if 200 <= status_code < 300:
            return "delivered"
        if status_code == GONE:
            return "failed"
        return "retry"  # 1xx, 3xx (not followed), 4xx, 5xx: the receiver may recover
    if exc is None or isinstance(exc, ValueError):
        return "failed"  # refused by the SSRF guard, invalid URL/header: retrying cannot help
    if isinstance(
        exc, OSError | TimeoutError | http.client.HTTPException | urllib3.exceptions.HTTPError
    ):
        return "retry"  # connection errors and timeouts (requests' exceptions are OSErrors)
    return "failed"


def _ms_since(start: float) -> int:
    """Milliseconds elapsed since ``start`` (a ``time.monotonic()`` value)."""
    return int((time.monotonic() - start) * 1000)


def _chain(exc: BaseException) -> list[BaseException]:
    """Follow requests/urllib3 wrapping (``reason``, ``__cause__``, ``args[0]``) outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        nxt = getattr(current, "reason", None)
        if not isinstance(nxt, BaseException):
            nxt = current.__cause__
        if not isinstance(nxt, BaseException) and current.args:
            nxt = current.args[0] if isinstance(current.args[0], BaseException) else None
        current = nxt
    return chain


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception behind a requests/urllib3 error."""
    return _chain(exc)[-1]


def _describe(exc: BaseException) -> str:
    """A short, single-line description of a transport error for the deliveries log."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        kind = "connect timeout"
    elif isinstance(exc, requests.exceptions.Timeout | TimeoutError):
        kind = "timeout"
    elif isinstance(exc, requests.exceptions.SSLError):
        kind = "TLS error"
    elif isinstance(exc, requests.exceptions.ConnectionError):
        kind = "connection error"
    else:
        kind = type(exc).__name__
    detail = str(_root_cause(exc)).replace("\n", " ").strip()
    text = f"{kind}: {detail}" if detail else kind
    return text[:_MAX_ERROR_CHARS]


def _is_connect_failure(exc: BaseException) -> bool:
    """True when nothing was sent (the TCP connect itself failed): safe to try the next address."""
    if isinstance(exc, requests.exceptions.SSLError):
        return False
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    return any(isinstance(link, NewConnectionError) for link in _chain(exc))


STALE = 1.0  # seconds: a kept connection closed this soon after the request was closed idle


def _links(exc: BaseException) -> list[Any]:
    """The exception chain, with the arguments of each link (urllib3's ProtocolError
    carries its cause as its second argument)."""
    return [part for link in _chain(exc) for part in (link, *link.args)]


def _is_stale(exc: BaseException) -> bool:
    """True when the request met a reset or a close before any answer: on a kept
    connection, soon after sending, what an idle timeout on the other side looks like."""
    stale = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
    return any(isinstance(link, stale) for link in _links(exc))


def _pool_closed(exc: BaseException) -> bool:
    """True when the target's pool was closed before a connection was taken (its
    adapter evicted by another thread): nothing was sent."""
    return any(isinstance(link, ClosedPoolError) for link in _links(exc))


def _drain(response: requests.Response, limit: int, deadline: float) -> None:
    """Read and discard at most ``limit`` raw body bytes, stopping at the deadline."""
    left = max(limit, 0)
    while left > 0 and time.monotonic() < deadline:
        chunk = response.raw.read(min(_CHUNK, left), decode_content=False)
        if not chunk:
            break
        left -= len(chunk)


def _status_error(response: requests.Response) -> str | None:
    """Describe a non-2xx response for the deliveries log (None for success)."""
    code = response.status_code
    if 200 <= code < 300:
        return None
    text = f"HTTP {code}"
    if response.reason:
        text += f" {response.reason}"
    if code == GONE:
        text += " (endpoint gone: not retried)"
    if 300 <= code < 400:
        location = response.headers.get("Location")
        text += " (redirect not followed"
        text += f"; Location: {location}" if location else ""
        text += ")"
    return text[:_MAX_ERROR_CHARS]


def deliver(
    url: str,
    body: bytes,
    webhook_id: str,
    secrets: Sequence[str],
    *,
    timeout: float = DEFAULT_WEBHOOK_TIMEOUT,
    allow_http: bool = False,
    allowlist: Sequence[Network] = (),
    ports: PortRanges = DEFAULT_CALLBACK_PORTS,
    user_agent: str = "jobgate/0",
    max_response_bytes: int = 65536,
    retry_after_cap: float = 3600.0,
    resolve: Resolver | None = None,
    dns_timeout: float = DEFAULT_CALLBACK_DNS_TIMEOUT,
    session: requests.Session | None = None,
    connections: Connections | None = None,
) -> Attempt:
    """POST one signed webhook to the re-checked, pinned callback address; never raises.

    The DNS lookup gets ``dns_timeout`` seconds, never more than the attempt's ``timeout``,
    which it counts against. ``session`` only contributes its TLS settings (``verify``,
    ``cert``); its adapters, proxies, cookies and netrc are never used, so the SSRF pinning
    cannot be bypassed. The connection is kept alive for the next attempt to the same
    checked address (``connections``, the process's ``CONNECTIONS`` by default); a kept
    connection the receiver closed as the request went out is replaced and the request
    sent once more, under the same ``webhook-id``.
    """
    connections = connections if connections is not None else CONNECTIONS
    start = time.monotonic()
    deadline = start + timeout
    try:
        target = check_callback_url(
            url,
            allow_http=allow_http,
            allowlist=allowlist,
            ports=ports,
            resolve=resolve,
            dns_timeout=min(dns_timeout, deadline - time.monotonic()),
        )
    except CallbackRefused as exc:
        # A lookup that timed out may well answer next time: retried, unlike a refusal.
        outcome: Outcome = "retry" if exc.transient else "failed"
        return Attempt(outcome, None, exc.reason, _ms_since(start), None, detail=exc.detail)

    try:
        headers = webhook_headers(secrets, webhook_id, body, user_agent=user_agent)
        prepared = requests.Request("POST", target.url, data=body, headers=headers).prepare()
        if prepared.url is None:  # prepare() always sets it; this narrows its type to str
            raise ValueError("the prepared request has no URL")
        parts = urlsplit(prepared.url)
        prepared.headers["Host"] = parts.netloc.rpartition("@")[2]
        hostname = parts.hostname or ""
    except (ValueError, TypeError, requests.RequestException) as exc:
        return Attempt("failed", None, _describe(exc), _ms_since(start), None)

    verify: bool | str = session.verify if session is not None else True
    cert = session.cert if session is not None else None

    error: BaseException | None = None
    timed_out = True  # stays True only if the deadline passed before any try
    addresses = target.addresses
    index, resent = 0, False
    while index < len(addresses):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        pinned: Target = (addresses[index], hostname, target.scheme, target.port, verify, cert)
        adapter: PinnedAdapter | None = None
        guard = Guard()
        token = _GUARD.set(guard)
        watchdog = WATCHDOG.schedule(remaining, guard.abort)
        sent_at = time.monotonic()
        try:
            adapter = connections.adapter(pinned)
            response = adapter.send(
                prepared,
                stream=True,
                timeout=(remaining, remaining),
                verify=verify,
                cert=cert,
                proxies={},
            )
            try:
                # Past the deadline already, the response head was cut short: its status
                # is not trustworthy (watch raises TimeoutError).
                guard.watch(response.raw)
                status = response.status_code
                outcome = classify(status, None)
                retry_after = None
                if outcome == "retry":
                    retry_after = parse_retry_after(
                        response.headers.get("Retry-After"), retry_after_cap
                    )
                if status >= 200:  # a 1xx as the answer: its connection is not kept
                    with contextlib.suppress(Exception):  # the status decided the outcome
                        _drain(response, max_response_bytes, deadline)
                error_text = _status_error(response)
                return Attempt(outcome, status, error_text, _ms_since(start), retry_after)
            finally:
                guard.finish()
                # Read to its end, the connection went back to the pool; else it closes.
                response.close()
        except Exception as exc:  # every failure becomes a recorded attempt, never a raise
            guard.finish()
            error = exc
            timed_out = guard.aborted
            if not timed_out and not resent and adapter is not None:
                stale = guard.reused and _is_stale(exc) and time.monotonic() - sent_at < STALE
                if stale or _pool_closed(exc):
                    # The receiver closed a kept connection as the request went out (or
                    # the pool was closed under us: nothing sent): once more, afresh.
                    resent = True
                    connections.discard(pinned, adapter)
                    continue
            if not timed_out and _is_connect_failure(exc) and index + 1 < len(addresses):
                index += 1
                continue  # nothing was sent: try the next checked address
            break
        finally:
            WATCHDOG.cancel(watchdog)
            _GUARD.reset(token)

    if timed_out or error is None:
        message = f"timeout: attempt exceeded {timeout:g}s"
        return Attempt("retry", None, message, _ms_since(start), None)
    return Attempt(classify(None, error), None, _describe(error), _ms_since(start), None)
