"""One webhook POST (no Celery, Redis or Flask).

``deliver`` re-runs the SSRF guard, signs fresh Standard Webhooks headers and POSTs the body
to the *checked* address through ``jobgate.webhooks.pool`` (no second DNS lookup), never
following redirects, reading at most ``max_response_bytes`` and bounding the whole attempt
by ``timeout``. The caller (``jobgate.webhooks.attempt``) records the returned
:class:`Attempt` and schedules the next try (``jobgate.webhooks.policy``).

The policy (docs/webhooks.md): a 2xx is delivered; every other answer (3xx included, never
followed), a connection error or a timeout is retried, except ``410 Gone``, which ends the
delivery at once and marks the attempt ``gone`` so the caller can disable the endpoint.
"""

from __future__ import annotations

import codecs
import contextlib
import http.client
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import UnionType
from typing import Any, Literal
from urllib.parse import urlsplit

import requests
import urllib3
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import ClosedPoolError, NewConnectionError

from config import (
    DEFAULT_CALLBACK_DNS_TIMEOUT,
    DEFAULT_CALLBACK_PORTS,
    DEFAULT_WEBHOOK_TIMEOUT,
    PortRanges,
)
from jobgate.db import UNSTORABLE
from jobgate.signing import webhook_headers
from jobgate.ssrf import CallbackRefused, Network, Resolver, check_callback_url
from jobgate.webhooks.policy import RETRY_AFTER_CAP, parse_retry_after
from jobgate.webhooks.pool import (
    _GUARD,
    CONNECTIONS,
    WATCHDOG,
    Connections,
    Guard,
    PinnedAdapter,
    Target,
)

__all__ = [
    "GONE",
    "MAX_LOGGED_BODY",
    "Attempt",
    "Outcome",
    "classify",
    "deliver",
    "logged_response",
]

Outcome = Literal["delivered", "retry", "failed"]

GONE = 410  # the receiver says the endpoint is gone for good: stop, and disable it
_CHUNK = 8192
_MAX_ERROR_CHARS = 300

# What the message log keeps of a receiver's answer (docs/webhooks.md, "Message log"):
# the first 64 KiB of its body and a bounded set of its headers, so that one partner's
# receiver cannot fill the shared stores however much it answers, however often.
MAX_LOGGED_BODY = 65536  # bytes of a response body kept (the rest is read and dropped)
MAX_LOGGED_HEADERS = 50  # response headers kept (the first ones, in the order received)
MAX_LOGGED_HEADER_NAME = 128  # characters of a response header name kept
MAX_LOGGED_HEADER_VALUE = 1024  # characters of a response header value kept
MAX_LOGGED_HEADERS_BYTES = 8192  # characters of names and values kept, all headers together


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
    # The message log (docs/webhooks.md): the headers sent, as signed (None when nothing
    # was sent: refused, or the request could not be built), and the receiver's answer,
    # bounded (``logged_response``; None without one).
    request_headers: dict[str, str] | None = None
    response: dict[str, Any] | None = None

    @property
    def gone(self) -> bool:
        """The receiver answered ``410 Gone``: no retry, and the endpoint should be disabled."""
        return self.status_code == GONE


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


# How the deliveries log names a transport error: the first kind it is, else its class.
_KINDS: tuple[tuple[type | UnionType, str], ...] = (
    (requests.exceptions.ConnectTimeout, "connect timeout"),
    (requests.exceptions.Timeout | TimeoutError, "timeout"),
    (requests.exceptions.SSLError, "TLS error"),
    (requests.exceptions.ConnectionError, "connection error"),
)


def _describe(exc: BaseException) -> str:
    """A short, single-line description of a transport error for the deliveries log."""
    kind = next((name for kinds, name in _KINDS if isinstance(exc, kinds)), type(exc).__name__)
    detail = str(_chain(exc)[-1]).replace("\n", " ").strip()  # the innermost cause
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


# A reset or a close before any answer: on a kept connection, soon after sending, what an
# idle timeout on the other side looks like.
_STALE_ERRORS = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def _caused_by(exc: BaseException, kinds: type[BaseException] | tuple[type, ...]) -> bool:
    """True when a link of the exception chain, or an argument of one (urllib3's
    ProtocolError carries its cause as its second argument), is one of ``kinds``."""
    return any(isinstance(part, kinds) for link in _chain(exc) for part in (link, *link.args))


def _drain(
    response: requests.Response, limit: int, deadline: float, keep: int
) -> tuple[bytes, bool]:
    """Read at most ``limit`` raw body bytes, stopping at the deadline: (the first ``keep``
    of them, whether the body was longer than those, or did not end)."""
    left, kept, ended, read = max(limit, 0), bytearray(), False, 0
    while left > 0 and time.monotonic() < deadline:
        chunk = response.raw.read(min(_CHUNK, left), decode_content=False)
        if not chunk:
            ended = True
            break
        left -= len(chunk)
        read += len(chunk)
        if len(kept) < keep:
            kept += chunk[: keep - len(kept)]
    return bytes(kept), read > keep or not ended


def _storable(text: str) -> str:
    """``text`` with what no database stores as text (``jobgate.db.UNSTORABLE``: NUL, lone
    surrogates) replaced: a receiver's answer must not keep its attempts out of it."""
    return UNSTORABLE.sub("\ufffd", text)


def logged_response(headers: Mapping[str, str], raw: bytes, truncated: bool) -> dict[str, Any]:
    """What the message log keeps of an answer: at most ``MAX_LOGGED_HEADERS`` headers,
    each name and value cut to its bound and all of them to ``MAX_LOGGED_HEADERS_BYTES``
    (``headers_truncated`` says some were cut), and the first ``keep`` bytes of the body
    as text (UTF-8, undecodable bytes replaced; ``truncated`` says it was longer)."""
    kept: dict[str, str] = {}
    size, cut = 0, False
    for name, value in headers.items():
        short_name, short_value = name[:MAX_LOGGED_HEADER_NAME], value[:MAX_LOGGED_HEADER_VALUE]
        cut = cut or short_name != name or short_value != value
        size += len(short_name) + len(short_value)
        if len(kept) >= MAX_LOGGED_HEADERS or size > MAX_LOGGED_HEADERS_BYTES:
            cut = True
            break
        kept[_storable(short_name)] = _storable(short_value)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    # A body cut inside a character drops that character's first bytes, not a U+FFFD.
    text = _storable(decoder.decode(raw[:MAX_LOGGED_BODY], final=not truncated))
    return {"headers": kept, "headers_truncated": cut, "body": text, "truncated": truncated}


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
        where = f"; Location: {location}" if location else ""
        text += f" (redirect not followed{where})"
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
    max_response_bytes: int = MAX_LOGGED_BODY + 1,
    retry_after_cap: float = RETRY_AFTER_CAP,
    resolve: Resolver | None = None,
    dns_timeout: float = DEFAULT_CALLBACK_DNS_TIMEOUT,
    session: requests.Session | None = None,
    connections: Connections | None = None,
    headers: Mapping[str, str] | None = None,
    traceparent: str | None = None,
) -> Attempt:
    """POST one signed webhook to the re-checked, pinned callback address; never raises.

    The DNS lookup gets ``dns_timeout`` seconds, never more than the attempt's ``timeout``,
    which it counts against. ``session`` only contributes its TLS settings (``verify``,
    ``cert``); its adapters, proxies, cookies and netrc are never used, so the SSRF pinning
    cannot be bypassed. The connection is kept alive for the next attempt to the same
    checked address (``connections``, the process's ``CONNECTIONS`` by default); a kept
    connection the receiver closed as the request went out is replaced and the request
    sent once more, under the same ``webhook-id``. ``headers`` are the endpoint's own,
    sent too; the Standard Webhooks headers, ``Content-Type`` and ``User-Agent`` win.
    ``traceparent`` (W3C Trace Context, ``jobgate.tracing``) is sent as that header when
    given.
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
        sent: CaseInsensitiveDict[str] = CaseInsensitiveDict(headers or {})
        sent.update(webhook_headers(secrets, webhook_id, body, user_agent=user_agent))
        if traceparent:
            sent["traceparent"] = traceparent
        # Said, not left to the transport: the message log shows every header sent, and
        # the answer's body it keeps is the bytes as they came (never compressed).
        sent.setdefault("Accept-Encoding", "identity")
        prepared = requests.Request("POST", target.url, data=body, headers=sent).prepare()
        if prepared.url is None:  # prepare() always sets it; this narrows its type to str
            raise ValueError("the prepared request has no URL")
        parts = urlsplit(prepared.url)
        prepared.headers["Host"] = parts.netloc.rpartition("@")[2]
        hostname = parts.hostname or ""
        request_headers = {
            name: value.decode("latin-1") if isinstance(value, bytes) else value
            for name, value in prepared.headers.items()
        }
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
                asked = response.headers.get("Retry-After") if outcome == "retry" else None
                retry_after = parse_retry_after(asked, retry_after_cap)
                raw, cut = b"", False
                if status >= 200:  # a 1xx as the answer: its connection is not kept
                    with contextlib.suppress(Exception):  # the status decided the outcome
                        raw, cut = _drain(response, max_response_bytes, deadline, MAX_LOGGED_BODY)
                return Attempt(
                    outcome,
                    status,
                    _status_error(response),
                    _ms_since(start),
                    retry_after,
                    request_headers=request_headers,
                    response=logged_response(response.headers, raw, cut),
                )
            finally:
                guard.finish()
                # Read to its end, the connection went back to the pool; else it closes.
                response.close()
        except Exception as exc:  # every failure becomes a recorded attempt, never a raise
            guard.finish()
            error = exc
            timed_out = guard.aborted
            if not timed_out and not resent and adapter is not None:
                stale = guard.reused and time.monotonic() - sent_at < STALE
                if (stale and _caused_by(exc, _STALE_ERRORS)) or _caused_by(exc, ClosedPoolError):
                    # The receiver closed a kept connection as the request went out (or
                    # the target's pool was closed before a connection was taken, its
                    # adapter evicted by another thread: nothing sent): once more, afresh.
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
        outcome, message = "retry", f"timeout: attempt exceeded {timeout:g}s"
    else:
        outcome, message = classify(None, error), _describe(error)
    return Attempt(outcome, None, message, _ms_since(start), None, request_headers=request_headers)
