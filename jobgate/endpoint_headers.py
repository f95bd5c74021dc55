"""A partner's own headers on an endpoint, sent with every delivery to it: what the API
accepts (``check_headers``) and how an endpoint's mirror keeps them (``headers_of``).

Bounded so that one partner's endpoints (max_endpoints of them) cost little in the
database, in Redis (each mirror, read by every attempt) and on the wire (every request
they are sent on).
"""

from __future__ import annotations

import json
import re
from typing import cast

MAX_HEADERS = 20
MAX_HEADER_NAME = 64  # characters (names are ASCII tokens)
MAX_HEADER_VALUE = 2048  # characters (values are printable ASCII)
MAX_HEADERS_BYTES = 4096  # names and values together, per endpoint
# Set by jobgate, or what frames the request and its connection: a partner may not send
# its own (case does not matter); ``webhook-`` and ``proxy-`` are prefixes.
RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "content-encoding",
        "accept-encoding",  # identity: the message log keeps the answer as text
        "host",
        "user-agent",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "expect",
    }
)
RESERVED_PREFIXES = ("webhook-", "proxy-")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?")  # visible ASCII, trimmed


def check_headers(headers: dict[str, str]) -> dict[str, list[str]]:
    """Why ``headers`` cannot be an endpoint's, by header name (``_headers`` for the set);
    empty when they can."""
    errors: dict[str, list[str]] = {}
    if len(headers) > MAX_HEADERS:
        errors["_headers"] = [f"At most {MAX_HEADERS} headers."]
    size = sum(len(name) + len(str(value)) for name, value in headers.items())
    if size > MAX_HEADERS_BYTES:
        errors.setdefault("_headers", []).append(
            f"At most {MAX_HEADERS_BYTES} characters of names and values together ({size})."
        )
    seen: set[str] = set()
    for name, value in headers.items():
        why = []
        lower = name.lower()
        if not _TOKEN.fullmatch(name) or len(name) > MAX_HEADER_NAME:
            why.append(f"Not a header name (an HTTP token of 1 to {MAX_HEADER_NAME} characters).")
        elif lower in RESERVED_HEADERS or lower.startswith(RESERVED_PREFIXES):
            why.append("Reserved: jobgate sets it, or it frames the request.")
        elif lower in seen:
            why.append("Repeated (header names do not depend on case).")
        seen.add(lower)
        if not isinstance(value, str) or not _VALUE.fullmatch(value):
            why.append(
                "The value must be printable ASCII without leading or trailing space "
                "(no CR, LF, NUL or other control characters), and not empty."
            )
        elif len(value) > MAX_HEADER_VALUE:
            why.append(f"The value must be at most {MAX_HEADER_VALUE} characters.")
        if why:
            errors[name] = why
    return errors


def headers_of(mirror: dict[str, str]) -> dict[str, str]:
    """The partner's own headers of an endpoint (its mirror hash); {} if none."""
    raw = mirror.get("headers")
    return cast("dict[str, str]", json.loads(raw)) if raw else {}
