"""Secrets at rest: webhook signing secrets (and signing keys) are sealed with
``JOBGATE_SECRET_KEY`` before they reach the database or Redis, and opened only to sign.

A sealed value is ``sealed:`` and a Fernet token (``cryptography``: AES-128-CBC with an
HMAC-SHA256, the library's recipe for this). The setting holds one or more keys, comma
separated, each 32 random bytes in base64: the first seals, every one opens, so a key is
rotated by putting the new one first and running ``jobgate secrets reseal``, then
dropping the old. A value without the prefix is a secret written before sealing: it
opens as it is, and the reseal seals it.
"""

from __future__ import annotations

import base64
import binascii
import secrets as random

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

__all__ = ["PREFIX", "SecretKeyError", "Sealer", "generate_key"]

PREFIX = "sealed:"
KEY_BYTES = 32


class SecretKeyError(ValueError):
    """``JOBGATE_SECRET_KEY`` is missing, malformed, or cannot open what is stored."""


def generate_key() -> str:
    """A new key for ``JOBGATE_SECRET_KEY``: 32 random bytes, base64."""
    return base64.b64encode(random.token_bytes(KEY_BYTES)).decode("ascii")


def _fernet(text: str) -> Fernet:
    try:
        raw = base64.b64decode(text.strip() + "=" * (-len(text.strip()) % 4), altchars=b"-_")
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        # Never echo the key itself.
        raise SecretKeyError(
            "JOBGATE_SECRET_KEY: each key must be 32 random bytes in base64 "
            "(make one with `jobgate secrets new-key`)"
        )
    return Fernet(base64.urlsafe_b64encode(raw))


class Sealer:
    """Seals and opens secrets with the keys of ``JOBGATE_SECRET_KEY``. Without a key
    (``Sealer("")``: tests and in-process tools only; the gateway and the worker refuse
    to start without one) it keeps secrets as they are."""

    def __init__(self, keys: str) -> None:
        parsed = [_fernet(key) for key in keys.split(",") if key.strip()]
        self._fernet = MultiFernet(parsed) if parsed else None

    @property
    def enabled(self) -> bool:
        return self._fernet is not None

    def seal(self, secret: str) -> str:
        """``secret`` sealed with the first key (as it is without a key)."""
        if self._fernet is None or secret.startswith(PREFIX):
            return secret
        return PREFIX + self._fernet.encrypt(secret.encode()).decode("ascii")

    def open(self, value: str) -> str:
        """The secret ``value`` holds; ``SecretKeyError`` if no key opens it."""
        if not value.startswith(PREFIX):
            return value
        if self._fernet is None:
            raise SecretKeyError("a sealed secret, and no JOBGATE_SECRET_KEY to open it")
        try:
            return self._fernet.decrypt(value[len(PREFIX) :].encode()).decode()
        except InvalidToken:
            raise SecretKeyError(
                "JOBGATE_SECRET_KEY does not open the secrets stored (a wrong key?)"
            ) from None

    def reseal(self, value: str) -> str:
        """``value`` sealed with the first key, whichever key sealed it."""
        return self.seal(self.open(value))


def check_key(keys: str, stored: str | None) -> Sealer:
    """The sealer a gateway or worker starts with; ``SecretKeyError`` (one line) when the
    key is missing or malformed, or does not open ``stored`` (a sealed secret read from
    the database, None if it holds none)."""
    if not keys.strip():
        raise SecretKeyError(
            "JOBGATE_SECRET_KEY is not set: webhook secrets are sealed at rest with it "
            "(make one with `jobgate secrets new-key`)"
        )
    sealer = Sealer(keys)
    if stored is not None:
        sealer.open(stored)
    return sealer
