"""Unit tests for one webhook POST, its pinned connections and the retry policy
(jobgate.webhooks.http, .pool, .policy).

``responses`` mocks ``HTTPAdapter.send``, so it exercises everything around the transport;
the pinned transport itself is tested against real servers on 127.0.0.1 (http and https).
DNS is always faked and only loopback connections are allowed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import http.server
import io
import ipaddress
import itertools
import json
import logging
import socket
import socketserver
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import format_datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import responses
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from standardwebhooks.webhooks import Webhook as StandardWebhook

import jobgate.signing as signing
import jobgate.webhooks.pool as pool
from config import DEFAULT_RETRY_DELAYS
from jobgate.signing import generate_secret, sign
from jobgate.ssrf import REFUSED, parse_allowlist
from jobgate.webhooks.http import Attempt, classify, deliver
from jobgate.webhooks.policy import parse_retry_after, retry_delay
from jobgate.webhooks.pool import Connections, Guard, PinnedAdapter
from tests.helpers import background_of_other_apps

URL = "https://hooks.example/cb"
PUBLIC = ["93.184.215.14"]
BODY = json.dumps({"type": "job.succeeded", "data": {"job_id": "j1"}}).encode()
WEBHOOK_ID = "evt_test_1"
LOOPBACK = parse_allowlist("127.0.0.0/8")
DEFAULT_DELAYS = list(DEFAULT_RETRY_DELAYS)


def resolver(*addresses: str) -> Callable[[str, int], list[str]]:
    """A fake resolver answering every name with ``addresses``."""
    return lambda host, port: list(addresses)


# --------------------------------------------------------------------------- network guards


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail on any real DNS lookup or any connection to a non-loopback address."""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def _loopback(host: object) -> bool:
        try:
            return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
        except ValueError:
            return False

    def connect(self: socket.socket, address: Any) -> None:
        if not _loopback(address[0]):
            raise AssertionError(f"connection to non-loopback {address!r}")
        real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _loopback(host):
            raise AssertionError(f"real DNS lookup of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def no_connect(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Fail on any connection at all (for refusals, which must happen before connecting)."""
    calls: list[object] = []
    real = {"connect": socket.socket.connect, "create_connection": socket.create_connection}

    def failing(name: str) -> Any:
        def fail(*args: object, **kwargs: object) -> object:
            if background_of_other_apps():
                return real[name](*args, **kwargs)  # type: ignore[operator]
            calls.append(args)
            raise AssertionError(f"connection attempted: {args!r}")

        return fail

    monkeypatch.setattr(socket.socket, "connect", failing("connect"))
    monkeypatch.setattr(socket, "create_connection", failing("create_connection"))
    return calls


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    """``responses`` mock (patches ``HTTPAdapter.send``, which PinnedAdapter inherits)."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def secret() -> str:
    """A fresh partner secret."""
    return generate_secret()


def _deliver(secret: str, url: str = URL, **kwargs: Any) -> Attempt:
    """``deliver`` with the test defaults (public fake DNS)."""
    kwargs.setdefault("resolve", resolver(*PUBLIC))
    return deliver(url, BODY, WEBHOOK_ID, [secret], **kwargs)


# --------------------------------------------------------------------------- classify


@pytest.mark.parametrize(
    ("status", "exc", "expected"),
    [
        (200, None, "delivered"),
        (201, None, "delivered"),
        (202, None, "delivered"),
        (204, None, "delivered"),
        (299, None, "delivered"),
        (100, None, "retry"),
        (301, None, "retry"),
        (302, None, "retry"),
        (307, None, "retry"),
        (308, None, "retry"),
        (400, None, "retry"),
        (401, None, "retry"),
        (403, None, "retry"),
        (404, None, "retry"),
        (410, None, "failed"),
        (413, None, "retry"),
        (422, None, "retry"),
        (408, None, "retry"),
        (429, None, "retry"),
        (500, None, "retry"),
        (502, None, "retry"),
        (503, None, "retry"),
        (504, None, "retry"),
        (599, None, "retry"),
        (None, requests.ConnectionError("refused"), "retry"),
        (None, requests.ConnectTimeout("slow"), "retry"),
        (None, requests.ReadTimeout("slow"), "retry"),
        (None, requests.exceptions.SSLError("bad cert"), "retry"),
        (None, requests.exceptions.ChunkedEncodingError("cut"), "retry"),
        (None, ConnectionResetError(104, "reset"), "retry"),
        (None, TimeoutError("deadline"), "retry"),
        (None, requests.exceptions.InvalidURL("bad"), "failed"),
        (None, ValueError("refused"), "failed"),
        (None, None, "failed"),
    ],
)
def test_classify(status: int | None, exc: Exception | None, expected: str) -> None:
    """2xx delivered; 410 failed; every other status and transport errors retried."""
    assert classify(status, exc) == expected


def test_classify_status_wins_over_exception() -> None:
    """A received status decides, even if reading the rest of the body then failed."""
    assert classify(200, requests.ReadTimeout("body")) == "delivered"


# --------------------------------------------------------------------------- Retry-After

NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("soon", None),
        ("nan", None),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-5", 0.0),
        ("99999", 3600.0),
        ("inf", 3600.0),
        (format_datetime(NOW + dt.timedelta(seconds=90), usegmt=True), 90.0),
        (format_datetime(NOW - dt.timedelta(seconds=90), usegmt=True), 0.0),
        (format_datetime(NOW + dt.timedelta(days=3), usegmt=True), 3600.0),
        ("Wed, 01 May 2024 12:02:00 GMT", 120.0),
        ("Wednesday, 01-May-24 12:02:00 GMT", 120.0),  # obsolete forms, RFC 9110 §5.6.7
        ("Wed May  1 12:02:00 2024", 120.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Delta-seconds or HTTP-date, clamped to [0, cap]; unparseable → None."""
    assert parse_retry_after(value, 3600.0, now=NOW) == expected


def test_parse_retry_after_date_defaults_to_current_time() -> None:
    """Without ``now`` an HTTP-date is measured against the real clock."""
    future = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=300)
    value = parse_retry_after(format_datetime(future, usegmt=True), 3600.0)
    assert value is not None and 295 <= value <= 300


# --------------------------------------------------------------------------- retry_delay


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (1, 0.0, 4.0),
        (1, 0.5, 5.0),
        (1, 1.0, 6.0),
        (2, 0.0, 240.0),
        (3, 0.5, 1800.0),
        (7, 1.0, 36000 * 1.2),
    ],
)
def test_retry_delay_jitter_is_plus_minus_20_percent(
    attempt: int, rand: float, expected: float
) -> None:
    """Delay = schedule[attempt-1] × (0.8 + 0.4·rng()), i.e. ±20 % around the schedule."""
    assert retry_delay(attempt, DEFAULT_DELAYS, rng=lambda: rand) == pytest.approx(expected)


def test_retry_delay_default_rng_stays_in_band() -> None:
    """With the real RNG every delay stays within ±20 % and is not constant."""
    values = [retry_delay(2, DEFAULT_DELAYS) for _ in range(200)]
    assert all(v is not None and 240.0 <= v <= 360.0 for v in values)
    assert len(set(values)) > 1


def test_retry_delay_exhausted_schedule_is_none() -> None:
    """After the last scheduled retry the delivery is failed: ``None``."""
    assert retry_delay(len(DEFAULT_DELAYS) + 1, DEFAULT_DELAYS) is None
    assert retry_delay(1, []) is None


def test_retry_delay_attempt_is_one_based() -> None:
    """Attempt numbers start at 1."""
    with pytest.raises(ValueError):
        retry_delay(0, DEFAULT_DELAYS)


def test_retry_delay_honours_retry_after_as_minimum() -> None:
    """A receiver's Retry-After raises the delay, never lowers it."""
    assert retry_delay(1, DEFAULT_DELAYS, retry_after=120.0, rng=lambda: 0.5) == 120.0
    assert retry_delay(3, DEFAULT_DELAYS, retry_after=10.0, rng=lambda: 0.5) == 1800.0
    assert retry_delay(8, DEFAULT_DELAYS, retry_after=10.0) is None


# --------------------------------------------------------------------------- deliver (responses)


def test_delivered_request_is_signed_and_pinned(rsps: responses.RequestsMock, secret: str) -> None:
    """A 2xx is delivered; the request carries verifiable Standard Webhooks headers."""
    rsps.add(responses.POST, URL, status=204)
    attempt = _deliver(secret, user_agent="jobgate/1.2.3")
    assert attempt.outcome == "delivered"
    assert (attempt.status_code, attempt.error, attempt.retry_after) == (204, None, None)
    assert attempt.duration_ms >= 0
    request = rsps.calls[0].request
    assert request.body == BODY
    assert request.headers["Host"] == "hooks.example"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == "jobgate/1.2.3"
    assert request.headers["webhook-id"] == WEBHOOK_ID
    StandardWebhook(secret).verify(BODY, dict(request.headers), json_parse=False)


def test_rotation_sends_one_signature_per_secret(rsps: responses.RequestsMock) -> None:
    """With two secrets, both signatures are sent and each secret verifies."""
    rsps.add(responses.POST, URL, status=200)
    old, new = generate_secret(), generate_secret()
    deliver(URL, BODY, WEBHOOK_ID, [old, new], resolve=resolver(*PUBLIC))
    headers = dict(rsps.calls[0].request.headers)
    assert len(headers["webhook-signature"].split(" ")) == 2
    StandardWebhook(old).verify(BODY, headers, json_parse=False)
    StandardWebhook(new).verify(BODY, headers, json_parse=False)


def test_an_endpoints_headers_are_sent_and_jobgates_own_win(
    rsps: responses.RequestsMock, secret: str
) -> None:
    """An endpoint's headers go with the request; one that slipped past the API's check
    (any case) never replaces a Standard Webhooks header, Content-Type or User-Agent."""
    rsps.add(responses.POST, URL, status=200)
    extra = {
        "Authorization": "Bearer t",
        "content-type": "text/plain",
        "WEBHOOK-SIGNATURE": "v1,forged",
        "user-agent": "not-jobgate",
    }
    assert _deliver(secret, headers=extra, user_agent="jobgate/1").outcome == "delivered"
    request = rsps.calls[0].request
    assert request.headers["Authorization"] == "Bearer t"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == "jobgate/1"
    assert "forged" not in request.headers["webhook-signature"]
    StandardWebhook(secret).verify(BODY, dict(request.headers), json_parse=False)


def test_every_attempt_is_signed_with_a_fresh_timestamp(
    rsps: responses.RequestsMock, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retries keep webhook-id and body but carry a new timestamp and signature."""
    clock = iter([1_700_000_000.0, 1_700_000_400.0])
    monkeypatch.setattr(signing, "time", SimpleNamespace(time=lambda: next(clock)))
    rsps.add(responses.POST, URL, status=503)
    _deliver(secret)
    _deliver(secret)
    first, second = (call.request for call in rsps.calls)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == WEBHOOK_ID
    assert first.body == second.body == BODY
    assert (first.headers["webhook-timestamp"], second.headers["webhook-timestamp"]) == (
        "1700000000",
        "1700000400",
    )
    assert second.headers["webhook-signature"] == sign(secret, WEBHOOK_ID, 1_700_000_400, BODY)
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "delivered"),
        (202, "delivered"),
        (400, "retry"),
        (404, "retry"),
        (410, "failed"),
        (408, "retry"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
    ],
)
def test_status_classification(
    rsps: responses.RequestsMock, secret: str, status: int, outcome: str
) -> None:
    """The attempt's outcome follows the receiver's status; non-2xx is described."""
    rsps.add(responses.POST, URL, status=status)
    attempt = _deliver(secret)
    assert (attempt.outcome, attempt.status_code) == (outcome, status)
    assert attempt.gone == (status == 410)
    if outcome == "delivered":
        assert attempt.error is None
    else:
        assert attempt.error is not None and attempt.error.startswith(f"HTTP {status}")


def test_gone_is_failed_with_a_reason(rsps: responses.RequestsMock, secret: str) -> None:
    """410 Gone ends the delivery (no retry, Retry-After ignored) and says why in the log."""
    rsps.add(responses.POST, URL, status=410, headers={"Retry-After": "5"})
    attempt = _deliver(secret)
    assert (attempt.outcome, attempt.gone, attempt.retry_after) == ("failed", True, None)
    assert attempt.error == "HTTP 410 Gone (endpoint gone: not retried)"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_not_followed(rsps: responses.RequestsMock, secret: str, status: int) -> None:
    """A 3xx is retried, never followed; the Location is reported but never requested."""
    rsps.add(
        responses.POST, URL, status=status, headers={"Location": "https://elsewhere.example/x"}
    )
    elsewhere = rsps.add(responses.POST, "https://elsewhere.example/x", status=200)
    rsps.add(responses.GET, "https://elsewhere.example/x", status=200)
    attempt = _deliver(secret)
    assert attempt.outcome == "retry"
    assert attempt.status_code == status
    assert attempt.error is not None and "redirect not followed" in attempt.error
    assert "https://elsewhere.example/x" in attempt.error
    assert elsewhere.call_count == 0
    assert len(rsps.calls) == 1


@pytest.mark.parametrize(
    ("status", "header", "expected"),
    [
        (429, "120", 120.0),
        (503, "30", 30.0),
        (429, "999999", 600.0),
        (429, "-3", 0.0),
        (429, "garbage", None),
        (500, None, None),
        (404, "120", 120.0),
        (307, "7", 7.0),
        (200, "120", None),  # only meaningful when we will retry
        (410, "120", None),
    ],
)
def test_retry_after_is_parsed_and_capped(
    rsps: responses.RequestsMock,
    secret: str,
    status: int,
    header: str | None,
    expected: float | None,
) -> None:
    """Retry-After of a retried response is reported, capped at ``retry_after_cap``."""
    headers = {"Retry-After": header} if header is not None else {}
    rsps.add(responses.POST, URL, status=status, headers=headers)
    attempt = _deliver(secret, retry_after_cap=600.0)
    assert attempt.retry_after == expected


def test_retry_after_http_date(rsps: responses.RequestsMock, secret: str) -> None:
    """An HTTP-date Retry-After becomes seconds from now."""
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
    rsps.add(responses.POST, URL, status=503, headers={"Retry-After": format_datetime(when, True)})
    attempt = _deliver(secret)
    assert attempt.retry_after is not None and 110 <= attempt.retry_after <= 120


class CountingReader(io.BufferedReader):
    """A response body that records how many bytes the client consumed."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))  # type: ignore[arg-type]
        self.consumed = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.consumed += len(chunk)
        return chunk

    def read1(self, size: int = -1) -> bytes:
        chunk = super().read1(size)
        self.consumed += len(chunk)
        return chunk

    def readinto(self, buffer: Any) -> int:
        count = super().readinto(buffer)
        self.consumed += count
        return count


@pytest.mark.parametrize("limit", [0, 1000, 65536])
def test_response_body_read_is_capped(
    rsps: responses.RequestsMock, secret: str, limit: int
) -> None:
    """At most ``max_response_bytes`` of the receiver's body are read."""
    body = CountingReader(b"x" * 5_000_000)
    rsps.add(responses.POST, URL, status=200, body=body)
    attempt = _deliver(secret, max_response_bytes=limit)
    assert attempt.outcome == "delivered"
    assert body.consumed <= limit


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (requests.ConnectionError("Connection refused"), "connection error"),
        (requests.ConnectTimeout("too slow"), "connect timeout"),
        (requests.ReadTimeout("too slow"), "timeout"),
        (requests.exceptions.SSLError("certificate verify failed"), "TLS error"),
    ],
)
def test_transport_errors_are_retried(
    rsps: responses.RequestsMock, secret: str, exc: Exception, words: str
) -> None:
    """Connection errors and timeouts are ``retry`` with a short description."""
    rsps.add(responses.POST, URL, body=exc)
    attempt = _deliver(secret)
    assert attempt.outcome == "retry"
    assert attempt.status_code is None
    assert attempt.error is not None and attempt.error.startswith(words)
    assert "\n" not in attempt.error and len(attempt.error) <= 300


def test_refused_url_fails_without_any_connection(
    rsps: responses.RequestsMock,
    secret: str,
    no_connect: list[object],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """DNS now answers a private address: failed, nothing sent. The partner-visible error is
    the generic refusal; the reason is in ``detail`` and the guard's log, never in ``error``."""
    caplog.set_level(logging.INFO, logger="jobgate.ssrf")
    rsps.add(responses.POST, URL, status=200)
    attempt = _deliver(secret, resolve=resolver("10.0.0.1"))
    assert attempt.outcome == "failed"
    assert attempt.status_code is None and attempt.retry_after is None
    assert attempt.error == REFUSED
    assert attempt.detail is not None and "private" in attempt.detail
    logged = [r.getMessage() for r in caplog.records if r.name == "jobgate.ssrf"]
    assert any("'hooks.example'" in line and "private" in line for line in logged), logged
    assert len(rsps.calls) == 0
    assert no_connect == []


@pytest.mark.parametrize(
    ("url", "kwargs", "error", "detail"),
    [
        ("http://hooks.example/cb", {}, "must use https", "must use https"),
        ("https://u:p@hooks.example/cb", {}, "credentials", "credentials"),
        (URL, {"resolve": resolver("93.184.215.14", "169.254.169.254")}, REFUSED, "link-local"),
        ("https://127.0.0.1/cb", {}, REFUSED, "loopback"),
    ],
)
def test_other_refusals_fail_without_connection(
    secret: str,
    no_connect: list[object],
    url: str,
    kwargs: dict[str, Any],
    error: str,
    detail: str,
) -> None:
    """Every SSRF refusal at delivery time ends the delivery as ``failed``; mistakes in the
    URL itself keep their specific message, address-based refusals are generic."""
    attempt = _deliver(secret, url=url, **kwargs)
    assert attempt.outcome == "failed"
    assert attempt.error is not None and error in attempt.error
    assert attempt.detail is not None and detail in attempt.detail
    assert no_connect == []


@pytest.mark.parametrize("url", ["https://hooks.example:22/cb", "https://hooks.example:25/cb"])
def test_disallowed_port_fails_without_resolving_or_connecting(
    secret: str, no_connect: list[object], url: str
) -> None:
    """A port outside ``ports`` is refused at delivery too, before DNS (generic error)."""

    def must_not_resolve(host: str, port: int) -> list[str]:
        raise AssertionError("resolved a URL with a refused port")

    attempt = _deliver(secret, url=url, resolve=must_not_resolve)
    assert attempt.outcome == "failed" and attempt.error == REFUSED
    assert attempt.detail is not None and "not an allowed callback port" in attempt.detail
    assert no_connect == []


def test_configured_ports_apply_at_delivery(secret: str, no_connect: list[object]) -> None:
    """``ports`` narrows the default: 6379 (inside 1024-65535) refused when not listed."""
    attempt = _deliver(secret, url="https://hooks.example:6379/cb", ports=((443, 443),))
    assert attempt.outcome == "failed" and attempt.error == REFUSED
    assert no_connect == []


@pytest.fixture
def hanging_dns() -> Iterator[Callable[[str, int], list[str]]]:
    """A resolver that does not answer until teardown (its daemon thread then ends)."""
    release = threading.Event()

    def _resolve(host: str, port: int) -> list[str]:
        release.wait(30)
        return list(PUBLIC)

    yield _resolve
    release.set()


@pytest.mark.parametrize(
    ("timeout", "dns_timeout", "waited"),
    [
        pytest.param(10.0, 0.2, "0.2s", id="dns-timeout"),
        pytest.param(0.3, 5.0, "0.3s", id="capped-by-attempt-timeout"),
    ],
)
def test_slow_dns_is_cut_at_its_deadline_and_retried(
    secret: str,
    no_connect: list[object],
    hanging_dns: Callable[[str, int], list[str]],
    timeout: float,
    dns_timeout: float,
    waited: str,
) -> None:
    """The lookup gets ``dns_timeout``, never more than the attempt's ``timeout``; a timed-out
    lookup is a ``retry`` (it may answer next time) with the generic error, nothing sent."""
    start = time.monotonic()
    attempt = _deliver(secret, resolve=hanging_dns, timeout=timeout, dns_timeout=dns_timeout)
    elapsed = time.monotonic() - start
    assert elapsed < min(timeout, dns_timeout) + 1.0, elapsed
    assert attempt.outcome == "retry" and attempt.status_code is None
    assert attempt.error == REFUSED
    assert attempt.detail is not None and f"timed out after {waited}" in attempt.detail
    assert no_connect == []


def test_dns_time_counts_against_the_attempt(rsps: responses.RequestsMock, secret: str) -> None:
    """The attempt's deadline starts before the lookup: the request gets what is left."""
    rsps.add(responses.POST, URL, status=200)

    def slow(host: str, port: int) -> list[str]:
        time.sleep(0.3)
        return list(PUBLIC)

    attempt = _deliver(secret, resolve=slow, timeout=5.0)
    assert attempt.outcome == "delivered"
    assert attempt.duration_ms >= 300
    [call] = rsps.calls
    assert isinstance(call.request.req_kwargs["timeout"], tuple)
    assert all(t <= 4.75 for t in call.request.req_kwargs["timeout"])


def test_bad_secret_fails_without_connection(secret: str, no_connect: list[object]) -> None:
    """A malformed secret is a configuration error: failed, nothing sent."""
    attempt = deliver(URL, BODY, WEBHOOK_ID, ["not-a-secret"], resolve=resolver(*PUBLIC))
    assert attempt.outcome == "failed"
    assert attempt.error is not None and "whsec_" in attempt.error


def test_exhausted_deadline_is_a_retry(secret: str, no_connect: list[object]) -> None:
    """No time left before connecting: a timeout, retried later."""
    attempt = _deliver(secret, timeout=0)
    assert attempt.outcome == "retry"
    assert attempt.error is not None and "timeout" in attempt.error


# --------------------------------------------------------------------------- PinnedAdapter


def _prepared(url: str) -> requests.PreparedRequest:
    """A prepared POST for ``url``."""
    return requests.Request("POST", url, data=b"{}").prepare()


def test_pinned_adapter_https_pool_targets_ip_but_verifies_hostname(no_connect: list) -> None:
    """The pool connects to the checked IP; SNI and certificate checks use the hostname."""
    adapter = PinnedAdapter("93.184.215.14", "hooks.example")
    pool = adapter.get_connection_with_tls_context(_prepared("https://hooks.example:8443/cb"), True)
    assert (pool.host, pool.port) == ("93.184.215.14", 8443)
    assert pool.conn_kw["server_hostname"] == "hooks.example"
    assert pool.assert_hostname == "hooks.example"
    assert pool.cert_reqs == "CERT_REQUIRED"
    adapter.close()


def test_pinned_adapter_ipv6_and_http(no_connect: list) -> None:
    """IPv6 addresses pin too; plain http gets no TLS keywords."""
    adapter = PinnedAdapter("2606:4700::1111", "hooks.example")
    pool = adapter.get_connection_with_tls_context(_prepared("http://hooks.example/cb"), True)
    assert (pool.host, pool.port) == ("2606:4700::1111", 80)
    assert "server_hostname" not in pool.conn_kw
    adapter.close()


def test_pinned_adapter_refuses_other_hosts(no_connect: list) -> None:
    """A request for a different host than the checked one is never sent."""
    adapter = PinnedAdapter("93.184.215.14", "hooks.example")
    with pytest.raises(requests.exceptions.InvalidURL):
        adapter.get_connection_with_tls_context(_prepared("https://evil.example/cb"), True)
    with pytest.raises(ValueError):
        adapter.get_connection_with_tls_context(
            _prepared("https://hooks.example/cb"), True, proxies={"https": "http://proxy:3128"}
        )


# --------------------------------------------------------------------------- real loopback servers


class _Server(http.server.ThreadingHTTPServer):
    """A loopback test server that skips the reverse-DNS lookup of ``HTTPServer.server_bind``."""

    daemon_threads = True

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]


class Receiver:
    """Records the requests a loopback test server received (path, headers, body)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []


def _ok(handler: http.server.BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "2")
    handler.end_headers()
    handler.wfile.write(b"ok")


def _drip_head(handler: http.server.BaseHTTPRequestHandler) -> None:
    """A status line, then one header byte every 100 ms (per-read timeouts never fire),
    then the connection closed."""
    try:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(100):
            handler.wfile.write(b"X")
            handler.wfile.flush()
            time.sleep(0.1)
    except OSError:
        pass
    handler.close_connection = True


def _handler(receiver: Receiver) -> type[http.server.BaseHTTPRequestHandler]:
    """Build the request handler class bound to ``receiver``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server naming
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            receiver.requests.append((self.path, dict(self.headers), body))
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/drip":
                _drip_head(self)
            elif self.path == "/big":
                self.send_response(200)
                self.send_header("Content-Length", str(50_000_000))
                self.end_headers()
                try:
                    for _ in range(50_000_000 // 65536):
                        self.wfile.write(b"y" * 65536)
                except OSError:
                    pass
            else:
                _ok(self)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def http_receiver() -> Iterator[tuple[Receiver, int]]:
    """A plain-http receiver on 127.0.0.1 (an ephemeral port)."""
    receiver = Receiver()
    server = _Server(("127.0.0.1", 0), _handler(receiver))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver, server.server_address[1]
    server.shutdown()
    server.server_close()


def _local(secret: str, url: str, **kwargs: Any) -> Attempt:
    """Deliver to a loopback receiver through a fake name (proves no second DNS lookup)."""
    kwargs.setdefault("resolve", resolver("127.0.0.1"))
    kwargs.setdefault("allowlist", LOOPBACK)
    return deliver(url, BODY, WEBHOOK_ID, [secret], **kwargs)


def test_real_server_receives_verifiable_webhook(
    http_receiver: tuple[Receiver, int], secret: str
) -> None:
    """The request reaches the pinned IP for a fake name, with Host and a valid signature."""
    receiver, port = http_receiver
    attempt = _local(secret, f"http://hooks.test:{port}/hook", allow_http=True)
    assert attempt.outcome == "delivered" and attempt.status_code == 200
    [(path, headers, body)] = receiver.requests
    assert path == "/hook" and body == BODY
    assert headers["Host"] == f"hooks.test:{port}"
    StandardWebhook(secret).verify(body, headers, json_parse=False)


def test_real_server_pinned_connection_looks_up_no_name(
    http_receiver: tuple[Receiver, int], secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection goes to the checked address: the only ``getaddrinfo`` is urllib3's
    of that IP literal, which asks no resolver; the URL's name is never looked up again."""
    receiver, port = http_receiver
    lookup = socket.getaddrinfo
    asked: list[Any] = []

    def only_ips(host: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(host)
        ipaddress.ip_address(host)  # a name raises ValueError: the test fails
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", only_ips)
    attempt = _local(secret, f"http://hooks.test:{port}/hook", allow_http=True)
    assert attempt.outcome == "delivered", attempt.error
    assert len(receiver.requests) == 1
    assert "hooks.test" not in asked


def test_real_server_redirect_is_not_followed(
    http_receiver: tuple[Receiver, int], secret: str
) -> None:
    """A real 302 is retried, not followed; the Location is never requested."""
    receiver, port = http_receiver
    attempt = _local(secret, f"http://hooks.test:{port}/redirect", allow_http=True)
    assert (attempt.outcome, attempt.status_code) == ("retry", 302)
    assert [path for path, _, _ in receiver.requests] == ["/redirect"]


def test_real_server_whole_attempt_is_bounded_by_timeout(
    http_receiver: tuple[Receiver, int], secret: str
) -> None:
    """A receiver dripping its response head is cut off at the overall timeout."""
    _, port = http_receiver
    started = time.monotonic()
    attempt = _local(secret, f"http://hooks.test:{port}/drip", allow_http=True, timeout=0.8)
    elapsed = time.monotonic() - started
    assert attempt.outcome == "retry"
    assert attempt.error is not None and "timeout" in attempt.error
    assert elapsed < 3.0


def test_real_server_large_body_is_not_read_to_the_end(
    http_receiver: tuple[Receiver, int], secret: str
) -> None:
    """A 50 MB response body is abandoned after the cap, quickly."""
    _, port = http_receiver
    started = time.monotonic()
    attempt = _local(
        secret, f"http://hooks.test:{port}/big", allow_http=True, max_response_bytes=1024
    )
    assert attempt.outcome == "delivered"
    assert time.monotonic() - started < 5.0


def test_real_server_next_address_after_connect_failure(
    http_receiver: tuple[Receiver, int], secret: str
) -> None:
    """If the first checked address refuses the connection, the next checked one is tried."""
    receiver, port = http_receiver
    attempt = _local(
        secret,
        f"http://hooks.test:{port}/hook",
        allow_http=True,
        resolve=resolver("127.0.0.2", "127.0.0.1"),
    )
    assert attempt.outcome == "delivered"
    assert len(receiver.requests) == 1


def test_real_server_next_address_after_unreachable_network(
    http_receiver: tuple[Receiver, int], secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreachable first address (e.g. IPv6 without a route) falls back to the next one."""
    receiver, port = http_receiver
    guarded_connect = socket.socket.connect
    tried: list[str] = []

    def connect(self: socket.socket, address: Any) -> None:
        tried.append(address[0])
        if address[0] == "127.0.0.3":
            raise OSError(errno.ENETUNREACH, "Network is unreachable")
        guarded_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    attempt = _local(
        secret,
        f"http://hooks.test:{port}/hook",
        allow_http=True,
        resolve=resolver("127.0.0.3", "127.0.0.1"),
    )
    assert attempt.outcome == "delivered"
    assert tried == ["127.0.0.3", "127.0.0.1"]
    assert len(receiver.requests) == 1


def test_real_connection_refused_is_retry(secret: str) -> None:
    """Nothing listening: a retryable connection error."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    attempt = _local(secret, f"http://hooks.test:{port}/hook", allow_http=True)
    assert attempt.outcome == "retry"
    assert attempt.error is not None and attempt.error.startswith("connection error")


# --------------------------------------------------------------------------- real TLS


def _tls_material(directory: Path) -> tuple[Path, Path, Path]:
    """Create a throwaway CA and a leaf certificate for ``hooks.test``; return the files."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jobgate test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.test")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.test")]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = (directory / n for n in ("ca.pem", "leaf.pem", "leaf.key"))
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_file, cert_file, key_file


@pytest.fixture
def https_receiver(tmp_path: Path) -> Iterator[tuple[Receiver, int, Path, list[str | None]]]:
    """An https receiver on 127.0.0.1 whose certificate is only valid for ``hooks.test``."""
    ca_file, cert_file, key_file = _tls_material(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    sni: list[str | None] = []
    context.sni_callback = lambda sslobj, name, ctx: sni.append(name)  # type: ignore[assignment]
    receiver = Receiver()
    server = _Server(("127.0.0.1", 0), _handler(receiver))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver, server.server_address[1], ca_file, sni
    server.shutdown()
    server.server_close()


def test_tls_connects_to_ip_but_verifies_the_hostname(
    https_receiver: tuple[Receiver, int, Path, list[str | None]], secret: str
) -> None:
    """https to the pinned 127.0.0.1 sends SNI ``hooks.test`` and verifies its certificate."""
    receiver, port, ca_file, sni = https_receiver
    session = requests.Session()
    session.verify = str(ca_file)
    attempt = _local(secret, f"https://hooks.test:{port}/hook", session=session)
    assert attempt.outcome == "delivered", attempt.error
    assert sni == ["hooks.test"]
    [(_, headers, body)] = receiver.requests
    assert headers["Host"] == f"hooks.test:{port}"
    StandardWebhook(secret).verify(body, headers, json_parse=False)


def test_tls_certificate_for_another_name_is_rejected(
    https_receiver: tuple[Receiver, int, Path, list[str | None]], secret: str
) -> None:
    """Same IP, different URL host: the certificate does not match, nothing is delivered."""
    receiver, port, ca_file, _ = https_receiver
    session = requests.Session()
    session.verify = str(ca_file)
    attempt = _local(secret, f"https://other.test:{port}/hook", session=session)
    assert attempt.outcome == "retry"
    assert attempt.error is not None and attempt.error.startswith("TLS error")
    assert receiver.requests == []


def test_tls_default_trust_store_rejects_private_ca(
    https_receiver: tuple[Receiver, int, Path, list[str | None]], secret: str
) -> None:
    """Without the session's CA bundle, verification stays on (no silent verify=False)."""
    receiver, port, _, _ = https_receiver
    attempt = _local(secret, f"https://hooks.test:{port}/hook")
    assert attempt.outcome == "retry"
    assert attempt.error is not None and attempt.error.startswith("TLS error")
    assert receiver.requests == []


# --------------------------------------------------------------------------- kept-alive connections


class KeepAliveReceiver:
    """An HTTP/1.1 loopback receiver that keeps connections open; it records which
    connection (client port) each request came on, and can drop requests unanswered."""

    def __init__(self, drop: Callable[[int], bool] = lambda nth_on_connection: False) -> None:
        self.requests: list[tuple[int, str, str]] = []  # (client port, path, webhook-id)
        self.dropped = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            served = 0

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.served += 1
                if drop(self.served):  # read, then close without an answer
                    receiver.dropped += 1
                    self.close_connection = True
                    return
                port = self.client_address[1]
                receiver.requests.append((port, self.path, self.headers["webhook-id"]))
                if self.path == "/drip":
                    _drip_head(self)
                else:
                    _ok(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def connections() -> Iterator[Connections]:
    kept = Connections()
    yield kept
    kept.close()


def _kept(secret: str, port: int, connections: Connections, path: str = "/hook", **kwargs: Any):
    kwargs.setdefault("webhook_id", WEBHOOK_ID)
    webhook_id = kwargs.pop("webhook_id")
    return deliver(
        f"http://hooks.test:{port}{path}",
        BODY,
        webhook_id,
        [secret],
        allow_http=True,
        allowlist=LOOPBACK,
        resolve=resolver("127.0.0.1"),
        connections=connections,
        **kwargs,
    )


def test_attempts_to_one_receiver_share_a_kept_connection(
    secret: str, connections: Connections
) -> None:
    receiver = KeepAliveReceiver()
    try:
        for n in range(3):
            attempt = _kept(secret, receiver.port, connections, webhook_id=f"msg_{n}")
            assert attempt.outcome == "delivered", attempt.error
        ports = {port for port, _, _ in receiver.requests}
        assert len(receiver.requests) == 3 and len(ports) == 1, receiver.requests
    finally:
        receiver.close()


def test_a_kept_connection_the_receiver_closed_is_replaced_and_the_request_sent_again(
    secret: str, connections: Connections
) -> None:
    """The receiver reads the second request on a connection and closes it unanswered
    (an idle timeout racing the request): sent once more on a fresh connection, same id."""
    receiver = KeepAliveReceiver(drop=lambda nth: nth == 2)
    try:
        assert _kept(secret, receiver.port, connections, webhook_id="msg_a").outcome == (
            "delivered"
        )
        attempt = _kept(secret, receiver.port, connections, webhook_id="msg_b")
        assert attempt.outcome == "delivered", attempt.error
        assert receiver.dropped == 1
        assert [wid for _, _, wid in receiver.requests] == ["msg_a", "msg_b"]
        assert receiver.requests[0][0] != receiver.requests[1][0]  # a new connection
    finally:
        receiver.close()


def test_a_fresh_connection_closed_unanswered_is_not_sent_again(
    secret: str, connections: Connections
) -> None:
    """Only a kept connection is resent at once; on a fresh one the close is the answer,
    and the attempt is retried later on the schedule."""
    receiver = KeepAliveReceiver(drop=lambda nth: nth == 1)
    try:
        attempt = _kept(secret, receiver.port, connections)
        assert attempt.outcome == "retry" and attempt.error is not None
        assert receiver.dropped == 1 and receiver.requests == []
    finally:
        receiver.close()


def test_the_deadline_reaches_a_kept_connection(secret: str, connections: Connections) -> None:
    receiver = KeepAliveReceiver()
    try:
        assert _kept(secret, receiver.port, connections).outcome == "delivered"
        started = time.monotonic()
        attempt = _kept(secret, receiver.port, connections, path="/drip", timeout=0.8)
        assert attempt.outcome == "retry" and "timeout" in (attempt.error or "")
        assert time.monotonic() - started < 3.0
        assert len({port for port, _, _ in receiver.requests}) == 1  # /drip reused it
        assert _kept(secret, receiver.port, connections).outcome == "delivered"
    finally:
        receiver.close()


def test_a_finished_try_cannot_shut_down_the_connection_a_later_one_holds() -> None:
    left, right = socket.socketpair()
    try:
        conn = SimpleNamespace(sock=left)
        earlier, later = Guard(), Guard()
        earlier.register(conn, reused=False)
        earlier.finish()
        later.register(conn, reused=True)
        earlier.abort()
        left.sendall(b"still open")
        assert right.recv(16) == b"still open"
        later.abort()
        assert left.recv(16) == b""  # shut down: reads see the end at once
    finally:
        left.close()
        right.close()


def test_connections_keep_the_most_recent_targets_and_forget_after_fork() -> None:
    kept = Connections(targets=2)
    first = ("127.0.0.1", "a.test", "http", 80, True, None)
    second = ("127.0.0.2", "a.test", "http", 80, True, None)
    third = ("127.0.0.3", "a.test", "http", 80, True, None)
    a = kept.adapter(first)
    assert kept.adapter(first) is a
    kept.adapter(second)
    kept.adapter(third)  # evicts first, the least recently used
    assert kept.adapter(first) is not a
    kept._pid = -1  # as in a forked child
    assert kept.adapter(first) is not kept.adapter(second) and len(kept._adapters) == 2
    kept.close()


class RawReceiver:
    """A loopback server that hands each request (its webhook-id, its number on its
    connection) to ``answer(sock, webhook_id, nth)``, which writes whatever bytes it likes;
    it returns False to close the connection."""

    def __init__(self, answer: Callable[[socket.socket, str, int], bool | None]) -> None:
        self.seen: list[tuple[int, int, str]] = []  # (connection, nth on it, webhook-id)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._answer = answer
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        number = 0
        while True:
            try:
                sock, _ = self.server.accept()
            except OSError:
                return
            number += 1
            threading.Thread(target=self._serve, args=(sock, number), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        reader = sock.makefile("rb")
        with sock, reader:
            for nth in itertools.count(1):
                try:
                    if not reader.readline():
                        return
                    headers = {}
                    while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
                        name, _, value = line.decode().partition(":")
                        headers[name.strip().lower()] = value.strip()
                    reader.read(int(headers.get("content-length", 0)))
                    self.seen.append((number, nth, headers.get("webhook-id", "")))
                    if self._answer(sock, headers.get("webhook-id", ""), nth) is False:
                        return
                except OSError:
                    return

    def close(self) -> None:
        self.server.close()


def _reset(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as a crashed server's kernel would."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_a_1xx_answer_does_not_leave_its_connection_to_the_next_attempt(
    secret: str, connections: Connections
) -> None:
    """A 103 taken as the answer: the real one still comes on that connection, and must
    not be read as the next webhook's."""

    def answer(sock: socket.socket, webhook_id: str, nth: int) -> None:
        if webhook_id == "msg_1":
            sock.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n")
            time.sleep(0.3)
            sock.sendall(OK)
        else:
            sock.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")

    receiver = RawReceiver(answer)
    try:
        first = _kept(secret, receiver.port, connections, webhook_id="msg_1")
        assert (first.outcome, first.status_code) == ("retry", 103)
        second = _kept(secret, receiver.port, connections, webhook_id="msg_2")
        assert (second.outcome, second.status_code) == ("retry", 500)
        assert receiver.seen[0][0] != receiver.seen[1][0]
    finally:
        receiver.close()


def test_a_kept_connection_reset_long_after_the_request_is_not_sent_again(
    secret: str, connections: Connections
) -> None:
    """A reset a while after the request is a receiver that failed on it, not an idle
    close: the attempt is retried on the schedule, the request not sent twice at once."""

    def answer(sock: socket.socket, webhook_id: str, nth: int) -> bool:
        if nth == 1:
            sock.sendall(OK)
            return True
        time.sleep(1.5)
        _reset(sock)
        return False

    receiver = RawReceiver(answer)
    try:
        assert _kept(secret, receiver.port, connections, webhook_id="msg_1").outcome == (
            "delivered"
        )
        attempt = _kept(secret, receiver.port, connections, webhook_id="msg_2", timeout=5)
        assert attempt.outcome == "retry" and attempt.status_code is None
        assert [wid for _, _, wid in receiver.seen] == ["msg_1", "msg_2"]
    finally:
        receiver.close()


@pytest.mark.parametrize(
    "head", [b"HTTP/1.0 200 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"]
)
def test_the_deadline_cuts_a_body_that_ends_with_the_connection(
    secret: str, connections: Connections, head: bytes
) -> None:
    """Such a response takes the socket from its connection: the deadline reaches it
    through the response."""

    def answer(sock: socket.socket, webhook_id: str, nth: int) -> bool:
        sock.sendall(head)
        with contextlib.suppress(OSError):
            for _ in range(100):
                sock.sendall(b"x")
                time.sleep(0.1)
        return False

    receiver = RawReceiver(answer)
    try:
        started = time.monotonic()
        attempt = _kept(secret, receiver.port, connections, timeout=0.8)
        assert attempt.status_code == 200
        assert time.monotonic() - started < 3.0
    finally:
        receiver.close()


def test_a_connection_idle_too_long_is_not_used(
    secret: str, connections: Connections, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "IDLE_MAX", 0.0)
    receiver = KeepAliveReceiver()
    try:
        for n in range(2):
            assert _kept(secret, receiver.port, connections, webhook_id=f"m{n}").outcome == (
                "delivered"
            )
        assert receiver.requests[0][0] != receiver.requests[1][0]
    finally:
        receiver.close()


def test_urllib3s_pool_full_warning_is_dropped_and_its_others_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """More attempts to one target than ``keep`` close their extra connections: not a
    warning per attempt in the delivery log. urllib3's other warnings still show."""
    log = logging.getLogger("urllib3.connectionpool")
    with caplog.at_level(logging.WARNING, logger="urllib3.connectionpool"):
        log.warning("Connection pool is full, discarding connection: %s", "127.0.0.1")
        log.warning("Retrying after connection broken by %r", "reset")
    assert [r.getMessage() for r in caplog.records] == [
        "Retrying after connection broken by 'reset'"
    ]
