"""Unit tests for the callback URL SSRF guard (jobgate.ssrf); DNS is always faked."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest

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

LOOPBACK_ALLOWLIST = parse_allowlist("127.0.0.0/8,::1/128")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Fail the test if anything connects or does a real DNS lookup: refusal is pre-connection."""
    calls: list[object] = []

    def forbidden(name: str) -> Callable[..., object]:
        def _fail(*args: object, **kwargs: object) -> object:
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
    for url in ("https://hooks.example:6379/cb", "https://hooks.example:9000/cb",
                "https://hooks.example:7999/cb"):
        with pytest.raises(CallbackRefused) as info:
            check_callback_url(url, ports=ports, resolve=must_not_resolve)
        assert info.value.reason == REFUSED
        assert "is not an allowed callback port" in info.value.detail
    for url, port in (("https://hooks.example/cb", 443), ("https://hooks.example:8443/cb", 8443),
                      ("https://hooks.example:8999/cb", 8999)):
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
