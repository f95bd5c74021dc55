"""Unit tests for the callback URL SSRF guard (jobgate.ssrf); DNS is always faked."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest

import jobgate.ssrf as ssrf
from config import DEFAULT_CALLBACK_PORTS, parse_ports
from jobgate.ssrf import (
    MAX_URL_LENGTH,
    REFUSED,
    CallbackRefused,
    Target,
    check_callback_url,
    default_resolve,
    parse_allowlist,
    port_allowed,
)
from tests.helpers import ROOT, background_of_other_apps, wait_until

LOOPBACK_ALLOWLIST = parse_allowlist("127.0.0.0/8,::1/128")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Fail the test if anything connects or does a real DNS lookup: refusal is pre-connection."""
    calls: list[object] = []

    real = {
        "socket.connect": socket.socket.connect,
        "socket.connect_ex": socket.socket.connect_ex,
        "socket.create_connection": socket.create_connection,
        "socket.getaddrinfo": socket.getaddrinfo,
    }

    def forbidden(name: str) -> Callable[..., object]:
        def _fail(*args: object, **kwargs: object) -> object:
            if background_of_other_apps():
                return real[name](*args, **kwargs)
            calls.append((name, args))
            raise AssertionError(f"{name} called during an SSRF check: {args!r}")

        return _fail

    monkeypatch.setattr(socket.socket, "connect", forbidden("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", forbidden("socket.connect_ex"))
    monkeypatch.setattr(socket, "create_connection", forbidden("socket.create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", forbidden("socket.getaddrinfo"))
    yield calls
    assert calls == [], f"network used: {calls!r}"


def fake_resolver(*addresses: str) -> Callable[[str, int], list[str]]:
    """A resolver answering every name with ``addresses`` (in this order)."""

    def _resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return _resolve


def must_not_resolve(host: str, port: int) -> list[str]:
    """A resolver for literal-IP URLs: being called at all is a bug."""
    raise AssertionError(f"resolver called for literal host {host!r}")


def assert_refused(
    info: pytest.ExceptionInfo[CallbackRefused],
    caplog: pytest.LogCaptureFixture,
    host: str,
    words: str,
) -> None:
    """The partner gets the one generic message; the detail is kept and logged with the host."""
    assert info.value.reason == REFUSED == str(info.value)
    assert words in info.value.detail
    logged = [r.getMessage() for r in caplog.records if r.name == "jobgate.ssrf"]
    assert any(words in line and repr(host) in line for line in logged), logged


@pytest.fixture(autouse=True)
def ssrf_log(caplog: pytest.LogCaptureFixture) -> None:
    """Capture the guard's log (the refusal details) in every test."""
    caplog.set_level(logging.INFO, logger="jobgate.ssrf")


def test_network_guard_fixture_catches_connections(no_network: list[object]) -> None:
    """The autouse guard really intercepts connection attempts (so the other tests mean it)."""
    with pytest.raises(AssertionError):
        socket.create_connection(("127.0.0.1", 9))
    with pytest.raises(AssertionError):
        socket.socket().connect(("127.0.0.1", 9))
    no_network.clear()


# (url, resolver answer, expected words in the reason). ``None`` answer = literal IP host.
REFUSED_RESOLVED = [
    pytest.param("127.0.0.1", "loopback", id="loopback-v4"),
    pytest.param("127.0.0.53", "loopback", id="loopback-v4-53"),
    pytest.param("10.0.0.1", "private", id="rfc1918-10"),
    pytest.param("172.16.5.4", "private", id="rfc1918-172"),
    pytest.param("172.31.255.254", "private", id="rfc1918-172-top"),
    pytest.param("192.168.1.1", "private", id="rfc1918-192"),
    pytest.param("169.254.169.254", "link-local", id="cloud-metadata"),
    pytest.param("169.254.1.1", "link-local", id="link-local-v4"),
    pytest.param("100.64.0.1", "CGNAT", id="cgnat-low"),
    pytest.param("100.127.255.254", "CGNAT", id="cgnat-high"),
    pytest.param("224.0.0.1", "multicast", id="multicast-v4"),
    pytest.param("239.255.255.250", "multicast", id="multicast-ssdp"),
    pytest.param("240.0.0.1", "reserved", id="reserved-240"),
    pytest.param("255.255.255.255", "broadcast", id="broadcast"),
    pytest.param("0.0.0.0", "unspecified", id="unspecified-v4"),
    pytest.param("0.1.2.3", "this network", id="zero-slash-8"),
    pytest.param("198.18.0.1", "benchmarking", id="benchmarking-low"),
    pytest.param("198.19.255.254", "benchmarking", id="benchmarking-high"),
    pytest.param("192.0.2.10", "documentation", id="test-net-1"),
    pytest.param("198.51.100.7", "documentation", id="test-net-2"),
    pytest.param("203.0.113.5", "documentation", id="test-net-3"),
    pytest.param("192.0.0.8", "IETF", id="ietf-192-0-0"),
    pytest.param("::1", "loopback", id="loopback-v6"),
    pytest.param("::", "unspecified", id="unspecified-v6"),
    pytest.param("fc00::1", "unique local", id="ula-fc"),
    pytest.param("fd12:3456::1", "unique local", id="ula-fd"),
    pytest.param("fe80::1", "link-local", id="link-local-v6"),
    pytest.param("fec0::1", "site-local", id="site-local-v6"),
    pytest.param("ff02::1", "multicast", id="multicast-v6-link"),
    pytest.param("ff0e::1", "multicast", id="multicast-v6-global"),
    pytest.param("2001:db8::1", "documentation", id="documentation-v6"),
    pytest.param("::ffff:127.0.0.1", "loopback", id="v4-mapped-loopback"),
    pytest.param("::ffff:10.0.0.1", "private", id="v4-mapped-private"),
    pytest.param("::ffff:169.254.169.254", "link-local", id="v4-mapped-metadata"),
    pytest.param("2002:a9fe:a9fe::1", "link-local", id="6to4-metadata"),
    pytest.param("2002:7f00:1::", "loopback", id="6to4-loopback"),
    pytest.param("64:ff9b::a00:1", "private", id="nat64-private"),
    pytest.param("64:ff9b:1::1", "NAT64", id="nat64-local-use"),
    pytest.param("::7f00:1", "IPv4-compatible", id="v4-compatible"),
]


@pytest.mark.parametrize(("address", "words"), REFUSED_RESOLVED)
def test_hostname_resolving_to_non_public_address_is_refused(
    address: str, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A name that resolves to any non-public address is refused with the generic message;
    the category is only in the detail and the log (no internal DNS oracle for partners)."""
    with pytest.raises(CallbackRefused) as info:
        check_callback_url("https://hooks.example/cb", resolve=fake_resolver(address))
    assert_refused(info, caplog, "hooks.example", words)
    assert str(ipaddress.ip_address(address)) in info.value.detail


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(["93.184.215.14", "10.0.0.1"], id="public-then-private"),
        pytest.param(["10.0.0.1", "93.184.215.14"], id="private-then-public"),
        pytest.param(["2606:4700::1111", "::1"], id="public-v6-then-loopback-v6"),
        pytest.param(["93.184.215.14", "::ffff:127.0.0.1"], id="public-then-mapped-loopback"),
    ],
)
def test_every_resolved_address_must_be_public(
    answer: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """One bad address among good ones is enough to refuse (the client might pick it)."""
    with pytest.raises(CallbackRefused) as info:
        check_callback_url("https://hooks.example/cb", resolve=fake_resolver(*answer))
    assert_refused(info, caplog, "hooks.example", "non-public")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        pytest.param("https://127.0.0.1/cb", "loopback", id="v4"),
        pytest.param("https://127.0.0.1:8443/cb", "loopback", id="v4-port"),
        pytest.param("https://[::1]/cb", "loopback", id="v6-bracketed"),
        pytest.param("https://[::ffff:127.0.0.1]/cb", "loopback", id="v4-mapped"),
        pytest.param("https://[::ffff:7f00:1]/cb", "loopback", id="v4-mapped-hex"),
        pytest.param("https://169.254.169.254/latest/meta-data/", "link-local", id="metadata"),
        pytest.param("https://10.1.2.3/cb", "private", id="private"),
        pytest.param("https://0.0.0.0/cb", "unspecified", id="zero"),
        pytest.param("https://[::]/cb", "unspecified", id="zero-v6"),
        pytest.param("https://[fe80::1%25eth0]/cb", "link-local", id="v6-zone-id"),
        pytest.param("https://2130706433/cb", "loopback", id="decimal"),
        pytest.param("https://0x7f000001/cb", "loopback", id="hex-int"),
        pytest.param("https://0x7f.1/cb", "loopback", id="hex-short"),
        pytest.param("https://0177.0.0.1/cb", "loopback", id="octal"),
        pytest.param("https://127.1/cb", "loopback", id="two-part"),
        pytest.param("https://127.0.1/cb", "loopback", id="three-part"),
        pytest.param("https://0/cb", "unspecified", id="bare-zero"),
        pytest.param("https://0xa9.0xfe.0xa9.0xfe/cb", "link-local", id="hex-dotted-metadata"),
        pytest.param("https://127.0.0.1./cb", "loopback", id="trailing-dot"),
    ],
)
def test_literal_ip_hosts_are_checked_without_resolving(
    url: str, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    """IP literals, including inet_aton decimal/hex/octal spellings, are parsed and refused
    (generic message: one answer for every address-based refusal)."""
    with pytest.raises(CallbackRefused) as info:
        check_callback_url(url, resolve=must_not_resolve)
    assert info.value.reason == REFUSED
    assert words in info.value.detail
    assert any(words in r.getMessage() for r in caplog.records if r.name == "jobgate.ssrf")


@pytest.mark.parametrize(
    ("url", "allow_http", "words"),
    [
        pytest.param("ftp://hooks.example/cb", True, "scheme 'ftp'", id="ftp"),
        pytest.param("file:///etc/passwd", True, "scheme 'file'", id="file"),
        pytest.param("gopher://hooks.example:70/_x", True, "scheme 'gopher'", id="gopher"),
        pytest.param("javascript:alert(1)", True, "scheme 'javascript'", id="javascript"),
        pytest.param("//hooks.example/cb", True, "scheme '(none)'", id="scheme-relative"),
        pytest.param("hooks.example/cb", True, "scheme '(none)'", id="no-scheme"),
        pytest.param("http://hooks.example/cb", False, "must use https", id="http-not-allowed"),
        pytest.param("https://user:pass@hooks.example/cb", False, "credentials", id="userinfo"),
        pytest.param("https://user@hooks.example/cb", False, "credentials", id="user-only"),
        pytest.param("https://:pass@hooks.example/cb", False, "credentials", id="pass-only"),
        pytest.param("https://@hooks.example/cb", False, "credentials", id="empty-userinfo"),
        pytest.param("https://a\\@hooks.example/cb", False, "credentials", id="backslash-at"),
        pytest.param("https:///cb", False, "no host", id="no-host"),
        pytest.param("https://:443/cb", False, "no host", id="port-only"),
        pytest.param("https://hooks.example:0/cb", False, "invalid port", id="port-zero"),
        pytest.param("https://hooks.example:65536/cb", False, "invalid port", id="port-big"),
        pytest.param("https://hooks.example:abc/cb", False, "invalid port", id="port-text"),
        pytest.param("https://hooks.example/c\nb", False, "control", id="newline"),
        pytest.param("https://hooks .example/cb", False, "whitespace", id="space"),
        pytest.param("", False, "non-empty", id="empty"),
        pytest.param(
            "https://hooks.example/" + "a" * MAX_URL_LENGTH, False, "longer than", id="too-long"
        ),
    ],
)
def test_malformed_or_disallowed_urls_are_refused(url: str, allow_http: bool, words: str) -> None:
    """Scheme, credentials, host, port, length and character rules refuse before any lookup,
    with a specific message: the partner can see the mistake in its own URL."""
    with pytest.raises(CallbackRefused) as info:
        check_callback_url(url, allow_http=allow_http, resolve=must_not_resolve)
    assert words in info.value.reason
    assert info.value.reason != REFUSED and info.value.detail == info.value.reason


@pytest.mark.parametrize(
    "resolver",
    [
        pytest.param(lambda h, p: (_ for _ in ()).throw(socket.gaierror(-2, "nx")), id="gaierror"),
        pytest.param(lambda h, p: [], id="empty-answer"),
        pytest.param(lambda h, p: ["not-an-ip"], id="garbage-answer"),
        pytest.param(lambda h, p: (_ for _ in ()).throw(UnicodeError("idna")), id="bad-idna"),
    ],
)
def test_resolution_failure_is_refused(
    resolver: Callable[[str, int], list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    """A name that does not resolve to usable addresses is refused, not let through, with the
    same message as an internal one (whether a name exists is not the partner's to learn)."""
    with pytest.raises(CallbackRefused) as info:
        check_callback_url("https://nowhere.example/cb", resolve=resolver)
    assert_refused(info, caplog, "nowhere.example", "could not be resolved")


def test_public_address_is_accepted_with_resolver_order_and_dedup() -> None:
    """A public name yields a Target with the checked addresses, deduplicated, in order."""
    seen: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        seen.append((host, port))
        return ["2606:4700::1111", "93.184.215.14", "93.184.215.14"]

    target = check_callback_url("https://Hooks.Example/cb?x=1", resolve=resolver)
    assert target == Target(
        url="https://Hooks.Example/cb?x=1",
        scheme="https",
        host="hooks.example",
        port=443,
        addresses=("2606:4700::1111", "93.184.215.14"),
    )
    assert seen == [("hooks.example", 443)]


@pytest.mark.parametrize(
    ("url", "answer", "allow_http", "port"),
    [
        pytest.param("https://hooks.example:8443/cb", ["8.8.8.8"], False, 8443, id="https-port"),
        pytest.param("http://hooks.example/cb", ["1.1.1.1"], True, 80, id="http-allowed"),
        pytest.param("HTTPS://hooks.example/cb", ["1.1.1.1"], False, 443, id="upper-scheme"),
        pytest.param("https://hooks.example/cb", ["64:ff9b::808:808"], False, 443, id="nat64"),
        pytest.param("https://hooks.example/cb", ["2002:808:808::1"], False, 443, id="6to4"),
    ],
)
def test_public_urls_are_accepted(url: str, answer: list[str], allow_http: bool, port: int) -> None:
    """Public unicast destinations (incl. NAT64/6to4 of public IPv4) pass."""
    target = check_callback_url(url, allow_http=allow_http, resolve=fake_resolver(*answer))
    assert target.port == port
    assert target.addresses == tuple(answer)


def test_public_literal_ip_is_accepted_without_resolving() -> None:
    """A public IP literal needs no resolver and is returned as the only address."""
    target = check_callback_url("https://[2606:4700::1111]:8443/cb", resolve=must_not_resolve)
    assert target.host == "2606:4700::1111"
    assert target.port == 8443
    assert target.addresses == ("2606:4700::1111",)


def test_loopback_is_accepted_when_allowlisted() -> None:
    """Allow-listed networks (tests, ``jobgate dev``) exempt loopback, v4 and v6."""
    target = check_callback_url(
        "http://localhost:8080/cb",
        allow_http=True,
        allowlist=LOOPBACK_ALLOWLIST,
        resolve=fake_resolver("127.0.0.1", "::1"),
    )
    assert target.addresses == ("127.0.0.1", "::1")
    assert target.scheme == "http" and target.port == 8080


def test_allowlist_covers_ipv4_mapped_and_legacy_literals() -> None:
    """An allowlisted IPv4 network also admits its IPv4-mapped and inet_aton spellings."""
    allow = parse_allowlist("127.0.0.0/8")
    assert check_callback_url(
        "https://[::ffff:127.0.0.1]/", allowlist=allow, resolve=must_not_resolve
    ).addresses == ("::ffff:7f00:1",)
    assert check_callback_url(
        "https://2130706433/", allowlist=allow, resolve=must_not_resolve
    ).addresses == ("127.0.0.1",)


def test_allowlist_does_not_exempt_other_networks() -> None:
    """Allow-listing loopback does not open private or metadata addresses."""
    for address in ("10.0.0.1", "169.254.169.254", "::ffff:10.0.0.1"):
        with pytest.raises(CallbackRefused):
            check_callback_url(
                "https://hooks.example/",
                allowlist=LOOPBACK_ALLOWLIST,
                resolve=fake_resolver("127.0.0.1", address),
            )


def test_allowlist_does_not_relax_scheme_or_credentials() -> None:
    """The allowlist only exempts addresses; URL rules still apply."""
    with pytest.raises(CallbackRefused, match="https"):
        check_callback_url("http://127.0.0.1/", allowlist=LOOPBACK_ALLOWLIST)
    with pytest.raises(CallbackRefused, match="credentials"):
        check_callback_url("https://u:p@127.0.0.1/", allowlist=LOOPBACK_ALLOWLIST)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("  ", ()),
        ("127.0.0.0/8", (ipaddress.ip_network("127.0.0.0/8"),)),
        (
            " 127.0.0.0/8 , ::1/128 ,",
            (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        ),
        ("10.0.0.5", (ipaddress.ip_network("10.0.0.5/32"),)),
    ],
)
def test_parse_allowlist(text: str, expected: tuple[object, ...]) -> None:
    """The config value is a comma-separated CIDR list; blanks are ignored."""
    assert parse_allowlist(text) == expected


@pytest.mark.parametrize("bad", ["127.0.0.0/33", "10.0.0.1/8", "localhost", "127.0.0.0/8,nope"])
def test_parse_allowlist_rejects_invalid_cidr(bad: str) -> None:
    """An invalid entry is a configuration error naming the variable and the entry."""
    with pytest.raises(ValueError, match="JOBGATE_CALLBACK_ALLOWLIST") as info:
        parse_allowlist(bad)
    assert not isinstance(info.value, CallbackRefused)


def test_default_resolver_returns_unique_ips_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default resolver wraps getaddrinfo (faked here) and deduplicates its answers."""
    calls: list[tuple[object, ...]] = []

    def fake_getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:
        calls.append((host, port))
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2606:4700::1111", port, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    assert default_resolve("hooks.example", 443) == ["2606:4700::1111", "93.184.215.14"]
    target = check_callback_url("https://hooks.example/cb")
    assert target.addresses == ("2606:4700::1111", "93.184.215.14")
    assert calls == [("hooks.example", 443), ("hooks.example", 443)]


def test_default_resolver_failure_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """getaddrinfo errors become a refusal, not an exception the API would turn into a 500."""

    def failing(*args: object, **kwargs: object) -> list[tuple]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", failing)
    with pytest.raises(CallbackRefused) as info:
        check_callback_url("https://nxdomain.example/cb")
    assert info.value.reason == REFUSED
    assert "could not be resolved" in info.value.detail
    assert "Name or service not known" in info.value.detail


def test_default_resolver_answer_for_dns_rebinding_name_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A public-looking name whose DNS answers loopback (e.g. 127.0.0.1.nip.io) is refused."""

    def rebinding(host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with pytest.raises(CallbackRefused) as info:
        check_callback_url("https://127.0.0.1.nip.io/cb")
    assert info.value.reason == REFUSED and "loopback" in info.value.detail


def test_callback_refused_is_a_value_error_with_reason() -> None:
    """The API layer can catch it as ValueError and show ``reason`` as the 422 message."""
    err = CallbackRefused("nope")
    assert isinstance(err, ValueError)
    assert err.reason == err.detail == "nope"
    assert CallbackRefused(REFUSED, "loopback").detail == "loopback"


@pytest.mark.parametrize(
    ("url", "resolver"),
    [
        pytest.param("https://internal.corp/cb", fake_resolver("10.1.2.3"), id="internal-name"),
        pytest.param("https://metadata.corp/cb", fake_resolver("169.254.169.254"), id="metadata"),
        pytest.param(
            "https://missing.corp/cb",
            lambda h, p: (_ for _ in ()).throw(socket.gaierror(-2, "nx")),
            id="no-such-name",
        ),
        pytest.param("https://10.1.2.3/cb", must_not_resolve, id="literal-private"),
        pytest.param("https://[::1]/cb", must_not_resolve, id="literal-loopback"),
    ],
)
def test_address_based_refusals_all_look_the_same(
    url: str, resolver: Callable[[str, int], list[str]]
) -> None:
    """Existing internal name, missing name, internal literal: one indistinguishable answer."""
    with pytest.raises(CallbackRefused) as info:
        check_callback_url(url, resolve=resolver)
    assert info.value.reason == REFUSED
    assert info.value.args == (REFUSED,)


# --------------------------------------------------------------------------- ports


@pytest.mark.parametrize(
    ("url", "allow_http"),
    [
        pytest.param("https://hooks.example:22/cb", False, id="ssh"),
        pytest.param("https://hooks.example:25/cb", False, id="smtp"),
        pytest.param("https://hooks.example:53/cb", False, id="dns"),
        pytest.param("http://hooks.example:1023/cb", True, id="last-privileged"),
        pytest.param("https://hooks.example:80/cb", False, id="80-without-http"),
        pytest.param("https://8.8.8.8:22/cb", False, id="public-literal"),
        pytest.param("https://127.0.0.1:25/cb", False, id="port-checked-first"),
    ],
)
def test_other_ports_are_refused_before_resolving(
    url: str, allow_http: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Only 443, 80 (with http) and 1024-65535 by default: another port is refused with the
    generic message, before the host is resolved or its address looked at."""
    with pytest.raises(CallbackRefused) as info:
        check_callback_url(url, allow_http=allow_http, resolve=must_not_resolve)
    port = urlsplit(url).port
    assert_refused(info, caplog, urlsplit(url).hostname or "", f"port {port} ")


def test_configured_ports_replace_the_default() -> None:
    """``ports`` (JOBGATE_CALLBACK_PORTS) is the whole list: 6379 refused when not in it."""
    ports = parse_ports("443,8000-8999")
    resolve = fake_resolver("93.184.215.14")
    for url in (
        "https://hooks.example:6379/cb",
        "https://hooks.example:9000/cb",
        "https://hooks.example:7999/cb",
    ):
        with pytest.raises(CallbackRefused) as info:
            check_callback_url(url, ports=ports, resolve=must_not_resolve)
        assert info.value.reason == REFUSED
        assert "is not an allowed callback port" in info.value.detail
    for url, port in (
        ("https://hooks.example/cb", 443),
        ("https://hooks.example:8443/cb", 8443),
        ("https://hooks.example:8999/cb", 8999),
    ):
        assert check_callback_url(url, ports=ports, resolve=resolve).port == port


@pytest.mark.parametrize(
    ("url", "allow_http", "port"),
    [
        pytest.param("https://hooks.example/cb", False, 443, id="443-implicit"),
        pytest.param("https://hooks.example:443/cb", False, 443, id="443-explicit"),
        pytest.param("https://hooks.example:8443/cb", False, 8443, id="8443"),
        pytest.param("https://hooks.example:1024/cb", False, 1024, id="1024"),
        pytest.param("https://hooks.example:65535/cb", False, 65535, id="65535"),
        pytest.param("http://hooks.example/cb", True, 80, id="80-implicit-with-http"),
        pytest.param("http://hooks.example:80/cb", True, 80, id="80-explicit-with-http"),
    ],
)
def test_default_ports_are_accepted(url: str, allow_http: bool, port: int) -> None:
    """443, 80 while http is allowed, and every unprivileged port pass by default."""
    target = check_callback_url(url, allow_http=allow_http, resolve=fake_resolver("1.1.1.1"))
    assert target.port == port


def test_port_80_counts_only_while_http_is_allowed() -> None:
    """80 in the list (or in a range) is ignored without http, so https://host:80 is refused."""
    assert port_allowed(80, DEFAULT_CALLBACK_PORTS, allow_http=True)
    assert not port_allowed(80, DEFAULT_CALLBACK_PORTS, allow_http=False)
    assert not port_allowed(80, parse_ports("1-65535"), allow_http=False)
    assert port_allowed(81, parse_ports("1-65535"), allow_http=False)
    assert not port_allowed(8080, parse_ports("443,80"), allow_http=True)


# --------------------------------------------------------------------------- DNS timeout


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown, so lookups the guard gave up on end (they run on daemon threads)."""
    event = threading.Event()
    yield event
    event.set()


def hanging_resolver(release: threading.Event, calls: list[str]) -> Callable[[str, int], list[str]]:
    """A resolver that answers only once ``release`` is set (a DNS server that went quiet)."""

    def _resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        release.wait(30)
        return ["93.184.215.14"]

    return _resolve


def test_slow_lookup_is_refused_at_the_deadline(
    release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    """A lookup that does not answer within ``dns_timeout`` is refused (generic message,
    transient); the caller waits that long, not as long as the resolver."""
    calls: list[str] = []
    start = time.monotonic()
    with pytest.raises(CallbackRefused) as info:
        check_callback_url(
            "https://slow.example/cb", resolve=hanging_resolver(release, calls), dns_timeout=0.2
        )
    elapsed = time.monotonic() - start
    assert 0.2 <= elapsed < 1.5, elapsed
    assert calls == ["slow.example"]
    assert_refused(info, caplog, "slow.example", "timed out after 0.2s")
    assert info.value.transient is True


def test_lookup_within_the_deadline_passes() -> None:
    """A resolver slower than instant but within ``dns_timeout`` is waited for."""

    def slowish(host: str, port: int) -> list[str]:
        time.sleep(0.05)
        return ["93.184.215.14"]

    target = check_callback_url("https://hooks.example/cb", resolve=slowish, dns_timeout=2)
    assert target.addresses == ("93.184.215.14",)


def test_only_the_deadline_is_transient() -> None:
    """The resolver's own timeout error is a failed lookup like any other, not transient;
    nor is any other refusal."""

    def own_timeout(host: str, port: int) -> list[str]:
        raise TimeoutError("resolver gave up")

    with pytest.raises(CallbackRefused) as info:
        check_callback_url("https://hooks.example/cb", resolve=own_timeout)
    assert "could not be resolved" in info.value.detail and info.value.transient is False
    with pytest.raises(CallbackRefused) as info:
        check_callback_url("https://hooks.example/cb", resolve=fake_resolver("10.0.0.1"))
    assert info.value.transient is False


def test_lookup_runs_on_a_daemon_thread() -> None:
    """One hanging lookup must neither hold the caller nor keep the process from exiting."""
    seen: list[threading.Thread] = []

    def resolver(host: str, port: int) -> list[str]:
        seen.append(threading.current_thread())
        return ["93.184.215.14"]

    check_callback_url("https://hooks.example/cb", resolve=resolver)
    [thread] = seen
    assert thread is not threading.current_thread()
    assert thread.daemon and thread.name.startswith("jobgate-dns")


def test_lookups_run_side_by_side() -> None:
    """Lookups from concurrent callers are not serialised behind one another."""
    barrier = threading.Barrier(2, timeout=5)

    def meets(host: str, port: int) -> list[str]:
        barrier.wait()  # only returns once both lookups are running at the same time
        return ["93.184.215.14"]

    results: list[object] = []

    def call() -> None:
        try:
            results.append(check_callback_url("https://a.example/", resolve=meets, dns_timeout=5))
        except CallbackRefused as exc:
            results.append(exc)

    callers = [threading.Thread(target=call) for _ in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(10)
    assert len(results) == 2 and all(isinstance(r, Target) for r in results), results


def test_waiting_for_a_lookup_slot_counts_against_the_deadline(
    monkeypatch: pytest.MonkeyPatch, release: threading.Event
) -> None:
    """With every slot held by hanging lookups, a new one is refused at its deadline without
    its resolver running; once the hanging lookup ends its slot is free again."""
    monkeypatch.setattr(ssrf, "DNS_LOOKUPS", 1)
    monkeypatch.setattr(ssrf, "_slots", None)
    calls: list[str] = []
    with pytest.raises(CallbackRefused):
        check_callback_url(
            "https://slow.example/", resolve=hanging_resolver(release, calls), dns_timeout=0.1
        )
    fast_calls: list[str] = []

    def fast(host: str, port: int) -> list[str]:
        fast_calls.append(host)
        return ["93.184.215.14"]

    with pytest.raises(CallbackRefused) as info:
        check_callback_url("https://fast.example/", resolve=fast, dns_timeout=0.1)
    assert "no free lookup slot" in info.value.detail and fast_calls == []
    release.set()
    assert check_callback_url("https://fast.example/", resolve=fast, dns_timeout=5).port == 443
    assert calls == ["slow.example"] and fast_calls == ["fast.example"]


def test_lookup_slots_are_made_anew_in_a_forked_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork copies the parent's slot count, held by threads the child does not have."""
    parent, _ = ssrf._lookup_slots()
    assert ssrf._lookup_slots()[0] is parent
    monkeypatch.setattr(ssrf.os, "getpid", lambda: -1)
    assert ssrf._lookup_slots()[0] is not parent


def test_one_partner_holds_at_most_its_share_of_the_lookup_slots(
    monkeypatch: pytest.MonkeyPatch, release: threading.Event
) -> None:
    """Partner a's hanging lookups fill its share (a quarter of the slots); its next one
    is refused at its deadline, while partner b's lookup still gets a slot at once."""
    monkeypatch.setattr(ssrf, "DNS_LOOKUPS", 8)
    monkeypatch.setattr(ssrf, "OWNER_SHARE", 2)
    monkeypatch.setattr(ssrf, "_slots", None)
    calls: list[str] = []
    with ssrf.lookups_for("a"):
        for n in range(2):
            with pytest.raises(CallbackRefused):
                check_callback_url(
                    f"https://slow{n}.example/",
                    resolve=hanging_resolver(release, calls),
                    dns_timeout=0.05,
                )
        with pytest.raises(CallbackRefused) as info:
            check_callback_url("https://a.example/", resolve=fake_resolver("1.1.1.1"))
        assert "this partner's share" in info.value.detail
    with ssrf.lookups_for("b"):
        assert check_callback_url("https://b.example/", resolve=fake_resolver("1.1.1.1"))
    release.set()
    # The hanging lookups end once released, and give their slots back.
    wait_until(lambda: ssrf._lookup_slots()[0]._value == 8, 5, message="the slots back")
    with ssrf.lookups_for("a"):
        assert check_callback_url("https://a.example/", resolve=fake_resolver("1.1.1.1"))
    assert sorted(calls) == ["slow0.example", "slow1.example"]


GEVENT_SCRIPT = r"""
from gevent import monkey
monkey.patch_all()

import socket
import threading
import time

import gevent
import gevent.socket

def no_connect(*args, **kwargs):
    raise AssertionError("connection attempted")

socket.socket.connect = socket.socket.connect_ex = no_connect

from jobgate.ssrf import CallbackRefused, check_callback_url, default_resolve, resolve_within

assert monkey.is_module_patched("threading") and monkey.is_module_patched("socket")
assert socket.getaddrinfo is gevent.socket.getaddrinfo

ticks = []

def ticker():
    while True:
        ticks.append(time.monotonic())
        gevent.sleep(0.02)

gevent.spawn(ticker)

def hanging(host, port):
    time.sleep(60)  # patched: a cooperative wait, as gevent's resolver waits for an answer
    return ["93.184.215.14"]

start = time.monotonic()
try:
    check_callback_url("https://slow.example/cb", resolve=hanging, dns_timeout=0.3)
except CallbackRefused as exc:
    assert exc.transient and "timed out after 0.3s" in exc.detail, exc.detail
else:
    raise AssertionError("not refused")
elapsed = time.monotonic() - start
assert 0.3 <= elapsed < 2, elapsed
# The hub kept running other greenlets while this one waited for the lookup.
assert sum(1 for t in ticks if t > start) >= 5, ticks

fast = check_callback_url("https://fast.example/cb", resolve=lambda h, p: ["1.1.1.1"])
assert fast.addresses == ("1.1.1.1",)
# gevent's getaddrinfo itself, through the same path (a numeric host: no DNS traffic).
assert resolve_within(default_resolve, "127.0.0.1", 443, 2.0) == ["127.0.0.1"]
print("ok", round(elapsed, 2))
"""


def test_dns_deadline_holds_under_gevent() -> None:
    """The gateway and the delivery pool run gevent-patched: the lookup's greenlet hangs,
    the caller is refused at the deadline, and the hub keeps serving other greenlets."""
    proc = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok"), proc.stdout


def test_submit_check_uses_the_settings_and_answers_422_generic(
    monkeypatch: pytest.MonkeyPatch, release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    """gateway.jobs.check_callback passes JOBGATE_CALLBACK_DNS_TIMEOUT and _PORTS to the guard
    and turns a refusal into 422 callback_url_refused with the partner-safe reason only."""
    from config import Settings
    from gateway.errors import APIError
    from gateway.jobs import check_callback

    calls: list[str] = []
    monkeypatch.setattr(ssrf, "default_resolve", hanging_resolver(release, calls))
    svc = SimpleNamespace(
        settings=Settings(callback_dns_timeout=0.1, callback_ports=parse_ports("443,8443")),
        allowlist=(),
    )
    start = time.monotonic()
    with pytest.raises(APIError) as slow:
        check_callback(svc, "https://slow.example/cb")  # type: ignore[arg-type]
    assert time.monotonic() - start < 1.0
    assert calls == ["slow.example"]
    with pytest.raises(APIError) as port:
        check_callback(svc, "https://hooks.example:9443/cb")  # type: ignore[arg-type]
    for error in (slow.value, port.value):
        assert (error.status, error.code, error.message) == (422, "callback_url_refused", REFUSED)
        assert error.details == {"callback_url": [REFUSED]}
    logged = " ".join(r.getMessage() for r in caplog.records if r.name == "jobgate.ssrf")
    assert "timed out after 0.1s" in logged and "port 9443" in logged


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan")])
def test_no_time_left_is_an_immediate_timeout(timeout: float) -> None:
    """A deadline already spent (or NaN) refuses at once instead of waiting or raising."""
    with pytest.raises(ssrf.LookupTimeout):
        ssrf.resolve_within(lambda h, p: time.sleep(0.5) or [], "a.example", 443, timeout)


def test_no_thread_for_the_lookup_is_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process out of threads refuses (transient) instead of raising, and frees its slot."""

    def cannot_start(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(ssrf, "DNS_LOOKUPS", 1)
    monkeypatch.setattr(ssrf, "_slots", None)
    monkeypatch.setattr(threading.Thread, "start", cannot_start)
    for _ in range(2):  # the second would wait for the slot if the first had kept it
        with pytest.raises(CallbackRefused) as info:
            check_callback_url("https://a.example/", resolve=fake_resolver("1.1.1.1"))
        assert info.value.transient and "no lookup thread" in info.value.detail
