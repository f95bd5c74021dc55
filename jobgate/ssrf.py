"""SSRF guard for partner-supplied callback URLs.

A callback URL is accepted only if its scheme is allowed, it carries no credentials, its port
is an allowed one and *every* address its host resolves to is public unicast (or inside a
configured allowlist).
The checked addresses are returned so the caller can connect to exactly those addresses
instead of resolving the name a second time (DNS rebinding).

The lookup is bounded (``dns_timeout``): ``socket.getaddrinfo`` has no timeout, so it runs
on a thread of its own (a greenlet, where gevent has patched ``threading``; its
``getaddrinfo`` is then gevent's cooperative resolver) and the caller waits for it at most
that long. A lookup still running when the caller gives up finishes in the background.

What the partner is told depends on what it could learn. A mistake it can see by reading its
own URL (not a string, too long, whitespace, scheme, credentials, no host, a port that is not
a number from 1 to 65535) keeps its specific message. Every refusal that depends on where the
host points or which port it names (a port outside the allowed ones, a non-public address,
literal or resolved, a name that does not resolve) gets
the one message ``REFUSED``, so that submitting URLs cannot map internal names or addresses;
the specific reason goes to the ``jobgate.ssrf`` log, with the host, and in
``CallbackRefused.detail``.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from urllib.parse import urlsplit

from config import DEFAULT_CALLBACK_DNS_TIMEOUT, DEFAULT_CALLBACK_PORTS, PortRanges

__all__ = [
    "DNS_LOOKUPS",
    "MAX_URL_LENGTH",
    "REFUSED",
    "LookupTimeout",
    "CallbackRefused",
    "IPAddress",
    "Network",
    "Resolver",
    "Target",
    "check_callback_url",
    "default_resolve",
    "parse_allowlist",
    "port_allowed",
    "resolve_within",
    "lookups_for",
]

MAX_URL_LENGTH = 2048
# The partner's answer to every refusal that depends on where the URL points.
REFUSED = "callback_url is not allowed: it must be a public https URL on an allowed port"

# Lookups one process runs at once; past it a lookup waits for a free slot (within its own
# deadline). Slots held by lookups the caller gave up on free when those end.
DNS_LOOKUPS = 64
# Of those, what one owner (a partner, named with ``lookups_for``) may hold at once: one
# partner's slow names leave the other partners most of the slots.
OWNER_SHARE = DNS_LOOKUPS // 4
_owner: ContextVar[str] = ContextVar("jobgate_dns_owner", default="")

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HTTP_PORT = 80

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# Explicit deny lists, on top of ``ipaddress``'s ``is_global``/``is_private``/... properties,
# so the verdict does not depend on which IANA registry snapshot this Python ships with.
# Order matters: the first match names the category in the logged reason.
_DENIED: tuple[tuple[Network, str], ...] = (
    (_V4("0.0.0.0/8"), "unspecified or 'this network'"),
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("169.254.0.0/16"), "link-local (incl. cloud metadata)"),
    (_V4("10.0.0.0/8"), "private"),
    (_V4("172.16.0.0/12"), "private"),
    (_V4("192.168.0.0/16"), "private"),
    (_V4("100.64.0.0/10"), "shared address space (CGNAT)"),
    (_V4("192.0.0.0/24"), "IETF protocol assignments"),
    (_V4("192.0.2.0/24"), "documentation"),
    (_V4("198.51.100.0/24"), "documentation"),
    (_V4("203.0.113.0/24"), "documentation"),
    (_V4("198.18.0.0/15"), "benchmarking"),
    (_V4("192.88.99.0/24"), "6to4 relay anycast"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("255.255.255.255/32"), "broadcast"),
    (_V4("240.0.0.0/4"), "reserved"),
    (_V6("::/128"), "unspecified"),
    (_V6("::1/128"), "loopback"),
    (_V6("fe80::/10"), "link-local"),
    (_V6("fc00::/7"), "private (unique local)"),
    (_V6("fec0::/10"), "site-local"),
    (_V6("ff00::/8"), "multicast"),
    (_V6("64:ff9b:1::/48"), "local-use NAT64"),
    (_V6("100::/64"), "discard-only"),
    (_V6("2001::/23"), "IETF protocol assignments"),
    (_V6("2001:db8::/32"), "documentation"),
    (_V6("3fff::/20"), "documentation"),
    (_V6("::/96"), "IPv4-compatible (deprecated)"),
)

_NAT64 = _V6("64:ff9b::/96")
_HEX = re.compile(r"0[xX][0-9a-fA-F]*")
_OCT = re.compile(r"0[0-7]*")
_DEC = re.compile(r"[1-9][0-9]*")


class CallbackRefused(ValueError):
    """A callback URL the SSRF guard will not deliver to.

    ``reason`` is safe to show the partner (``REFUSED`` for address-based refusals);
    ``detail`` is the specific reason, for logs and operators only (same as ``reason`` for a
    mistake the partner can see in its own URL).
    ``transient`` marks a refusal that may not hold a moment later (the DNS lookup timed
    out): a delivery retries it instead of failing.
    """

    def __init__(self, reason: str, detail: str | None = None, *, transient: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or reason
        self.transient = transient


def _refused(host: str, detail: str, *, transient: bool = False) -> CallbackRefused:
    """Log ``detail`` (never shown to the partner) and return the generic refusal."""
    log.warning("callback_url refused, host %r: %s", host, detail)
    return CallbackRefused(REFUSED, detail, transient=transient)


class LookupTimeout(Exception):
    """``resolve_within`` gave up waiting (deliberately not an ``OSError``)."""


_slots_lock = threading.Lock()
_slots: tuple[int, threading.BoundedSemaphore, dict[str, threading.BoundedSemaphore]] | None
_slots = None


@contextmanager
def lookups_for(owner: str) -> Iterator[None]:
    """The DNS lookups made inside count against ``owner``'s share (``OWNER_SHARE``)."""
    token = _owner.set(owner)
    try:
        yield
    finally:
        _owner.reset(token)


def _lookup_slots() -> tuple[threading.BoundedSemaphore, threading.BoundedSemaphore | None]:
    """This process's lookup slots and the current owner's share of them (None: no owner),
    made on first use: after gevent's patching (so waiting for one yields to other
    greenlets) and anew after a fork (lookups of the parent that held slots do not exist
    in the child). ``_slots_lock`` may be a real lock made before the patching: it is
    never held across anything that could switch greenlets."""
    global _slots
    owner = _owner.get()
    with _slots_lock:
        if _slots is None or _slots[0] != os.getpid():
            _slots = (os.getpid(), threading.BoundedSemaphore(DNS_LOOKUPS), {})
        shares = _slots[2]
        if owner and owner not in shares:
            shares[owner] = threading.BoundedSemaphore(OWNER_SHARE)
        return _slots[1], shares.get(owner) if owner else None


def resolve_within(resolve: Resolver, host: str, port: int, timeout: float) -> list[str]:
    """``resolve(host, port)``, waiting at most ``timeout`` seconds (slot wait included).

    The lookup runs on a daemon thread, so one that hangs past the deadline neither blocks
    the caller nor delays the process's exit; raises ``LookupTimeout`` when time runs out,
    else whatever ``resolve`` returned or raised.
    """
    # ``not timeout > 0`` also catches NaN; a wait longer than TIMEOUT_MAX cannot be asked.
    deadline = time.monotonic() + (min(timeout, threading.TIMEOUT_MAX) if timeout > 0 else 0.0)
    slots, share = _lookup_slots()
    if share is not None and not share.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
        raise LookupTimeout("no free lookup slot in this partner's share")
    if not slots.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
        if share is not None:
            share.release()
        raise LookupTimeout("no free lookup slot")

    def release() -> None:
        slots.release()
        if share is not None:
            share.release()

    done = threading.Event()
    outcome: list[list[str]] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(resolve(host, port))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            failure.append(exc)
        finally:
            release()
            done.set()

    try:
        threading.Thread(target=run, name=f"jobgate-dns {host}", daemon=True).start()
    except RuntimeError as exc:  # "can't start new thread": as good as no answer in time
        release()
        raise LookupTimeout(f"no lookup thread: {exc}") from None
    if not done.wait(max(deadline - time.monotonic(), 0.0)):
        raise LookupTimeout("lookup still running")
    if failure:
        raise failure[0]
    return outcome[0]


@dataclass(frozen=True)
class Target:
    """A checked callback: where to connect (``addresses``) and what name to present (``host``)."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


@functools.lru_cache(maxsize=16)
def parse_allowlist(text: str) -> tuple[Network, ...]:
    """Parse the comma-separated CIDR list of ``JOBGATE_CALLBACK_ALLOWLIST`` (empty → none);
    remembered, as every delivery attempt asks and parsing it each time showed in profiles
    of the delivery process."""
    networks: list[Network] = []
    for raw in (text or "").split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            raise ValueError(
                f"JOBGATE_CALLBACK_ALLOWLIST: {item!r} is not a valid CIDR network ({exc})"
            ) from exc
    return tuple(networks)


def default_resolve(host: str, port: int) -> list[str]:
    """Resolve ``host`` with the system resolver; unique IP strings in resolver order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for _family, _type, _proto, _canon, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Parse inet_aton forms (``2130706433``, ``0x7f.1``, ``0177.0.0.1``) that resolvers accept."""
    parts = host.split(".")
    if host.endswith("."):
        parts = parts[:-1]
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        if _HEX.fullmatch(part):
            values.append(int(part[2:] or "0", 16))
        elif _OCT.fullmatch(part):
            values.append(int(part, 8))
        elif _DEC.fullmatch(part):
            values.append(int(part, 10))
        else:
            return None
    # a.b.c.d / a.b.c(16 bits) / a.b(24 bits) / a(32 bits)
    last_bits = 32 - 8 * (len(values) - 1)
    if any(v > 255 for v in values[:-1]) or values[-1] >= 1 << last_bits:
        return None
    number = values[-1]
    for index, value in enumerate(values[:-1]):
        number |= value << (24 - 8 * index)
    return ipaddress.IPv4Address(number)


def _literal_address(host: str) -> IPAddress | None:
    """Return the address when ``host`` is an IP literal in any form a resolver would accept."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return _legacy_ipv4(host)


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address tunnelled in an IPv4-mapped, 6to4 or NAT64 IPv6 address."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _refusal(ip: IPAddress) -> str | None:
    """Name the category that makes ``ip`` unacceptable, or ``None`` for public unicast."""
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        inner = _refusal(embedded)
        return None if inner is None else f"{inner}, embedded in IPv6"
    for network, label in _DENIED:
        if ip.version == network.version and ip in network:
            return label
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"
    if not ip.is_global:
        return "not globally routable"
    return None


def _allowed(ip: IPAddress, allowlist: Sequence[Network]) -> bool:
    """True when ``ip`` (or the IPv4 address it embeds) lies in an allowlisted network."""
    candidates = [ip]
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        candidates.append(embedded)
    return any(c.version == net.version and c in net for c in candidates for net in allowlist)


def port_allowed(port: int, ports: PortRanges, allow_http: bool) -> bool:
    """True when ``port`` is in one of the ``ports`` ranges; 80 only while http is allowed."""
    if port == _HTTP_PORT and not allow_http:
        return False
    return any(low <= port <= high for low, high in ports)


def check_callback_url(
    url: str,
    *,
    allow_http: bool = False,
    allowlist: Sequence[Network] = (),
    ports: PortRanges = DEFAULT_CALLBACK_PORTS,
    resolve: Resolver | None = None,
    dns_timeout: float = DEFAULT_CALLBACK_DNS_TIMEOUT,
) -> Target:
    """Validate ``url`` and resolve it, refusing anything that could reach a non-public address.

    ``ports`` are the allowed port ranges (``JOBGATE_CALLBACK_PORTS``); a URL naming another
    port is refused before its host is looked at. The lookup (``resolve``, by default the
    system resolver) gets ``dns_timeout`` seconds; past them the URL is refused (transient).
    """
    if not isinstance(url, str) or not url:
        raise CallbackRefused("callback_url must be a non-empty string")
    if len(url) > MAX_URL_LENGTH:
        raise CallbackRefused(f"callback_url is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise CallbackRefused("callback_url must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise CallbackRefused(f"callback_url is not a valid URL ({exc})") from exc

    scheme = parts.scheme.lower()
    allowed_schemes = ("https", "http") if allow_http else ("https",)
    if scheme not in allowed_schemes:
        if scheme == "http":
            raise CallbackRefused("callback_url must use https")
        raise CallbackRefused(f"callback_url scheme {scheme or '(none)'!r} is not allowed")
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        raise CallbackRefused("callback_url must not contain credentials (user:password@)")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise CallbackRefused("callback_url has no host")
    try:
        explicit_port = parts.port
    except ValueError as exc:
        raise CallbackRefused("callback_url has an invalid port") from exc
    if explicit_port == 0:
        raise CallbackRefused("callback_url has an invalid port")
    port = explicit_port if explicit_port is not None else _DEFAULT_PORTS[scheme]
    if not port_allowed(port, ports, allow_http):
        raise _refused(host, f"port {port} is not an allowed callback port")

    literal = _literal_address(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        resolver = resolve or default_resolve
        unresolved = f"host {host!r} could not be resolved"
        try:
            raw = resolve_within(resolver, host, port, dns_timeout)
        except LookupTimeout as exc:
            raise _refused(
                host,
                f"DNS lookup of host {host!r} timed out after {dns_timeout:.3g}s ({exc})",
                transient=True,
            ) from None
        except (OSError, UnicodeError, ValueError) as exc:
            raise _refused(host, f"{unresolved} ({type(exc).__name__}: {exc})") from exc
        if not raw:
            raise _refused(host, f"{unresolved} (no address)")
        addresses = []
        for item in raw:
            try:
                address = ipaddress.ip_address(item)
            except ValueError as exc:
                raise _refused(host, f"{unresolved} (not an IP address: {item!r})") from exc
            if address not in addresses:
                addresses.append(address)

    for address in addresses:
        if _allowed(address, allowlist):
            continue
        category = _refusal(address)
        if category is not None:
            where = "is" if literal is not None else f"host {host!r} resolves to"
            raise _refused(host, f"{where} {address}, a non-public address ({category})")

    return Target(
        url=url,
        scheme=scheme,
        host=host,
        port=port,
        addresses=tuple(str(a) for a in addresses),
    )
