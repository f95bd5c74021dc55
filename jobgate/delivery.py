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
import heapq
import http.client
import ipaddress
import itertools
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from config import (
    DEFAULT_CALLBACK_DNS_TIMEOUT,
    DEFAULT_CALLBACK_PORTS,
    DEFAULT_WEBHOOK_TIMEOUT,
    PortRanges,
)
from jobgate.signing import webhook_headers
from jobgate.ssrf import CallbackRefused, Network, Resolver, check_callback_url

__all__ = [
    "GONE",
    "Attempt",
    "Outcome",
    "PinnedAdapter",
    "Watchdog",
    "classify",
    "deliver",
    "parse_retry_after",
    "retry_delay",
]

Outcome = Literal["delivered", "retry", "failed"]

GONE = 410  # the receiver says the endpoint is gone for good: stop, and disable it
JITTER = 0.2  # each retry delay is scaled by a uniform factor in [1 - JITTER, 1 + JITTER]
_CHUNK = 8192
_MAX_ERROR_CHARS = 300


@dataclass
class Attempt:
    """What one delivery attempt did; ``retry_after`` is the receiver's (capped) request in s.

    ``error`` goes to the partner-visible deliveries log; ``detail`` is for the worker's log
    only: the SSRF guard's specific reason when it refused the URL (``error`` is then the
    generic refusal). ``gone`` is True when the receiver answered ``410 Gone``: the
    outcome is then ``failed``, and the caller tells the endpoint's owner
    (``jobgate.attempts.endpoint_gone``).
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


Handle = list[Callable[[], None] | None]  # a scheduled call; None once cancelled


class _Schedule:
    """One process's scheduled calls and the thread that makes them."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.wake = threading.Condition()
        self.heap: list[tuple[float, int, Handle]] = []
        self.order = itertools.count()

    def run(self) -> None:
        while True:
            with self.wake:
                due: list[Callable[[], None]] = []
                now = time.monotonic()
                # Cancelled entries at the head go at once; live ones when their time comes.
                while self.heap and (self.heap[0][2][0] is None or self.heap[0][0] <= now):
                    func = heapq.heappop(self.heap)[2][0]
                    if func is not None:
                        due.append(func)
                if not due:
                    self.wake.wait(self.heap[0][0] - now if self.heap else None)
            for func in due:
                with contextlib.suppress(Exception):  # one failing call must not stop the rest
                    func()


class Watchdog:
    """Calls each scheduled function at its deadline, from one daemon thread per process.

    What ``deliver`` bounds an attempt with: a ``threading.Timer`` per attempt started a
    thread (a greenlet in the gevent delivery pool) for every webhook, about 2.5 % of the
    delivery process. Here scheduling is a heap push, and cancelling only marks the entry.
    A forked child starts its own thread on first use (the parent's did not come along);
    two first uses at once each start one, and each thread serves what was pushed to it.
    """

    def __init__(self) -> None:
        self._schedule: _Schedule | None = None

    def schedule(self, delay: float, func: Callable[[], None]) -> Handle:
        """Call ``func`` in ``delay`` s; returns the handle ``cancel`` takes."""
        handle: Handle = [func]
        when = time.monotonic() + delay
        state = self._schedule
        if state is None or state.pid != os.getpid():
            state = self._schedule = _Schedule()
            threading.Thread(target=state.run, name="jobgate-deadlines", daemon=True).start()
        with state.wake:
            heapq.heappush(state.heap, (when, next(state.order), handle))
            if state.heap[0][2] is handle:  # sooner than what the thread waits for
                state.wake.notify()
        return handle

    @staticmethod
    def cancel(handle: Handle) -> None:
        """Forget a scheduled call (harmless once it ran)."""
        handle[0] = None


WATCHDOG = Watchdog()  # the process's: ``deliver`` bounds every attempt with it


class PinnedAdapter(HTTPAdapter):
    """Transport that connects to one pre-checked IP; Host, SNI and cert checks use the URL name.

    The pool is keyed on ``address`` instead of the URL's hostname, so urllib3 never resolves
    the name again; for https, ``server_hostname`` (SNI + OpenSSL hostname check) and
    ``assert_hostname`` are pinned to the URL's hostname, so certificate verification is
    unchanged. ``abort()`` shuts the live sockets down to enforce a wall-clock deadline.
    """

    def __init__(self, address: str, hostname: str) -> None:
        """Pin requests for ``hostname`` to ``address`` (an IP string checked by the SSRF guard)."""
        self.address = address
        self.hostname = hostname.rstrip(".").lower()
        self.aborted = False
        self._connections: list[Any] = []
        self._lock = threading.Lock()
        super().__init__(pool_connections=1, pool_maxsize=1, max_retries=0)

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
        """Return the pinned pool, with its connections tracked so ``abort()`` can reach them."""
        if proxies and any(proxies.values()):
            raise ValueError("proxies are not allowed for pinned webhook delivery")
        pool = super().get_connection_with_tls_context(request, verify, proxies=None, cert=cert)
        if not getattr(pool.ConnectionCls, "_jobgate_tracked", False):
            pool.ConnectionCls = self._tracking(pool.ConnectionCls)
        return pool

    def _tracking(self, base: type) -> type:
        """Subclass urllib3's connection class so every connection registers with this adapter."""
        adapter = self

        class Tracked(base):
            _jobgate_tracked = True

            def connect(self) -> None:
                adapter._register(self)
                super().connect()

            def _new_conn(self) -> socket.socket:
                """urllib3's own, to the pinned address without ``getaddrinfo``: gevent
                sends every lookup, an IP's too, through its resolver's thread pool (5 %
                of the delivery process in a ``bench.e2e`` profile, plus the pool's
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

        return Tracked

    def _register(self, conn: Any) -> None:
        """Remember a connection; one registered after ``abort()`` fails at once."""
        with self._lock:
            self._connections.append(conn)
            if self.aborted:
                raise TimeoutError("webhook delivery deadline exceeded")

    def abort(self) -> None:
        """Shut down every socket this adapter opened, unblocking a reader past the deadline."""
        with self._lock:
            self.aborted = True
            connections = list(self._connections)
        for conn in connections:
            sock = getattr(conn, "sock", None)
            if sock is None:
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


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


def parse_retry_after(
    value: str | None, cap: float, *, now: datetime | None = None
) -> float | None:
    """Parse ``Retry-After`` (delta-seconds or HTTP-date) to seconds in ``[0, cap]``, else None."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    seconds: float
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)  # HTTP-dates are always GMT
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return float(min(max(seconds, 0.0), cap))


def retry_delay(
    attempt: int,
    delays: Sequence[float],
    *,
    retry_after: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float | None:
    """Seconds before retry number ``attempt`` (1-based): schedule ±20 % jitter, ≥ Retry-After.

    The jitter is a uniform factor in ``[0.8, 1.2]`` on that retry's own delay (so
    receivers that failed together are not all retried in the same second); a receiver's
    ``Retry-After`` is then a floor. ``None`` once the schedule is exhausted (the delivery
    is then ``failed``).
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    if attempt > len(delays):
        return None
    base = float(delays[attempt - 1])
    delay = base * (1.0 - JITTER + 2 * JITTER * rng())
    if retry_after is not None:
        delay = max(delay, float(retry_after))
    return delay


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
) -> Attempt:
    """POST one signed webhook to the re-checked, pinned callback address; never raises.

    The DNS lookup gets ``dns_timeout`` seconds, never more than the attempt's ``timeout``,
    which it counts against. ``session`` only contributes its TLS settings (``verify``,
    ``cert``); its adapters, proxies, cookies and netrc are never used, so the SSRF pinning
    cannot be bypassed.
    """
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
        netloc = urlsplit(prepared.url).netloc
        prepared.headers["Host"] = netloc.rpartition("@")[2]
        hostname = urlsplit(prepared.url).hostname or ""
    except (ValueError, TypeError, requests.RequestException) as exc:
        return Attempt("failed", None, _describe(exc), _ms_since(start), None)

    verify: bool | str = session.verify if session is not None else True
    cert = session.cert if session is not None else None

    error: BaseException | None = None
    timed_out = True  # stays True only if the deadline passed before any try
    for index, address in enumerate(target.addresses):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        adapter = PinnedAdapter(address, hostname)
        watchdog = WATCHDOG.schedule(remaining, adapter.abort)
        try:
            response = adapter.send(
                prepared,
                stream=True,
                timeout=(remaining, remaining),
                verify=verify,
                cert=cert,
                proxies={},
            )
            try:
                if adapter.aborted:
                    # The deadline cut the response head short: its status is not trustworthy.
                    raise TimeoutError("webhook delivery deadline exceeded")
                status = response.status_code
                outcome = classify(status, None)
                retry_after = None
                if outcome == "retry":
                    retry_after = parse_retry_after(
                        response.headers.get("Retry-After"), retry_after_cap
                    )
                with contextlib.suppress(Exception):  # the status already decided the outcome
                    _drain(response, max_response_bytes, deadline)
                error_text = _status_error(response)
                return Attempt(outcome, status, error_text, _ms_since(start), retry_after)
            finally:
                response.close()
        except Exception as exc:  # every failure becomes a recorded attempt, never a raise
            error = exc
            timed_out = adapter.aborted
            if not timed_out and _is_connect_failure(exc) and index + 1 < len(target.addresses):
                continue  # nothing was sent: try the next checked address
            break
        finally:
            WATCHDOG.cancel(watchdog)
            adapter.close()

    if timed_out or error is None:
        message = f"timeout: attempt exceeded {timeout:g}s"
        return Attempt("retry", None, message, _ms_since(start), None)
    return Attempt(classify(None, error), None, _describe(error), _ms_since(start), None)
