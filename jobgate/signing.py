"""Standard Webhooks signing (https://www.standardwebhooks.com), independent of delivery.

The signed content is ``f"{webhook_id}.{timestamp}."`` followed by the exact body bytes sent;
the HMAC-SHA256 key is the base64-decoded part of the secret after ``whsec_``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Sequence
from secrets import token_bytes

__all__ = [
    "MIN_SECRET_BYTES",
    "SECRET_BYTES",
    "SECRET_PREFIX",
    "generate_secret",
    "sign",
    "signature_header",
    "webhook_headers",
]

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
MIN_SECRET_BYTES = 24


def generate_secret() -> str:
    """Create a new partner webhook secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(token_bytes(SECRET_BYTES)).decode("ascii")


def _key(secret: str) -> bytes:
    """Decode the HMAC key from a ``whsec_`` secret, refusing malformed or short ones."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"webhook secret must start with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        # Never echo the secret itself into an error message or log line.
        raise ValueError("webhook secret is not valid base64 after the prefix") from exc
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"webhook secret must decode to at least {MIN_SECRET_BYTES} bytes")
    return key


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """Return ``v1,<base64 HMAC-SHA256>`` of ``"{id}.{timestamp}.{body}"`` for one secret."""
    if not isinstance(body, bytes | bytearray):
        raise TypeError("body must be the exact bytes that will be sent")
    if not webhook_id:
        raise ValueError("webhook_id must not be empty")
    content = f"{webhook_id}.{int(timestamp)}.".encode() + bytes(body)
    digest = hmac.new(_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(secrets: Sequence[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    """Build ``webhook-signature``: one space-separated signature per secret (rotation grace)."""
    if isinstance(secrets, str):
        raise TypeError("secrets must be a sequence of secrets, not a single string")
    unique = list(dict.fromkeys(secrets))
    if not unique:
        raise ValueError("at least one webhook secret is required")
    return " ".join(sign(secret, webhook_id, timestamp, body) for secret in unique)


def webhook_headers(
    secrets: Sequence[str],
    webhook_id: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    user_agent: str,
) -> dict[str, str]:
    """Build the Standard Webhooks header set for one attempt (``timestamp`` defaults to now)."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature_header(secrets, webhook_id, ts, body),
        "Content-Type": "application/json",
        "User-Agent": user_agent,
    }
