"""Standard Webhooks signing (https://www.standardwebhooks.com), independent of delivery.

The signed content is ``f"{webhook_id}.{timestamp}."`` followed by the exact body bytes sent.
Two schemes, chosen by the stored secret's prefix (``sign``):

- ``whsec_`` (symmetric, ``v1``): HMAC-SHA256 keyed with the base64-decoded part after
  the prefix; the receiver holds the same secret.
- ``whsk_`` (asymmetric, ``v1a``): Ed25519 with the private key whose 32-byte seed is the
  base64-decoded part after the prefix. It never leaves jobgate; the receiver holds the
  public key, ``whpk_`` + base64 of its 32 raw bytes (``public_key``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Sequence
from secrets import token_bytes

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "MIN_SECRET_BYTES",
    "PUBLIC_KEY_PREFIX",
    "SCHEMES",
    "SECRET_BYTES",
    "SECRET_PREFIX",
    "SIGNING_KEY_PREFIX",
    "generate_secret",
    "generate_signing_key",
    "new_secret",
    "public_key",
    "sign",
    "signature_header",
    "webhook_headers",
]

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
MIN_SECRET_BYTES = 24
SIGNING_KEY_PREFIX = "whsk_"  # an Ed25519 private key (its seed): stored, never shown
PUBLIC_KEY_PREFIX = "whpk_"  # its public key: what the receiver verifies with
ED25519_BYTES = 32
SCHEMES = ("hmac", "ed25519")  # an endpoint's signature_scheme


def generate_secret() -> str:
    """Create a new partner webhook secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(token_bytes(SECRET_BYTES)).decode("ascii")


def generate_signing_key() -> str:
    """Create a new Ed25519 private key: ``whsk_`` + base64 of its 32-byte seed."""
    return SIGNING_KEY_PREFIX + base64.b64encode(token_bytes(ED25519_BYTES)).decode("ascii")


def new_secret(scheme: str) -> tuple[str, str]:
    """(what jobgate stores and signs with, what the receiver is shown) for ``scheme``:
    the same ``whsec_`` twice for ``hmac``; a ``whsk_`` and its ``whpk_`` for ``ed25519``."""
    if scheme == "ed25519":
        key = generate_signing_key()
        return key, public_key(key)
    if scheme == "hmac":
        secret = generate_secret()
        return secret, secret
    raise ValueError(f"unknown signature scheme {scheme!r}")


def _private_key(signing_key: str) -> Ed25519PrivateKey:
    """The Ed25519 key of a ``whsk_`` secret, refusing malformed ones (never echoed)."""
    try:
        seed = base64.b64decode(signing_key[len(SIGNING_KEY_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("signing key is not valid base64 after the prefix") from exc
    if len(seed) != ED25519_BYTES:
        raise ValueError(f"signing key must decode to {ED25519_BYTES} bytes")
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key(signing_key: str) -> str:
    """The ``whpk_`` public key (base64 of its 32 raw bytes) of a ``whsk_`` signing key."""
    if not isinstance(signing_key, str) or not signing_key.startswith(SIGNING_KEY_PREFIX):
        raise ValueError(f"signing key must start with {SIGNING_KEY_PREFIX!r}")
    raw = _private_key(signing_key).public_key().public_bytes_raw()
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode("ascii")


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
    """One signature of ``"{id}.{timestamp}.{body}"``: ``v1,<base64 HMAC-SHA256>`` for a
    ``whsec_`` secret, ``v1a,<base64 Ed25519 signature>`` for a ``whsk_`` signing key."""
    if not isinstance(body, bytes | bytearray):
        raise TypeError("body must be the exact bytes that will be sent")
    if not webhook_id:
        raise ValueError("webhook_id must not be empty")
    content = f"{webhook_id}.{int(timestamp)}.".encode() + bytes(body)
    if isinstance(secret, str) and secret.startswith(SIGNING_KEY_PREFIX):
        signature = _private_key(secret).sign(content)
        return "v1a," + base64.b64encode(signature).decode("ascii")
    digest = hmac.new(_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(secrets: Sequence[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    """Build ``webhook-signature``: one space-separated signature per secret (rotation
    grace), each in its secret's scheme (``sign``)."""
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
