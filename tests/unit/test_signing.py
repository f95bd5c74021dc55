"""Unit tests for Standard Webhooks signing, checked by two independent verifier packages."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable

import pytest
from cryptography.exceptions import InvalidSignature
from standardwebhooks.webhooks import Webhook as StandardWebhook

from gateway.client import verify_webhook
from jobgate.signing import (
    MIN_SECRET_BYTES,
    PUBLIC_KEY_PREFIX,
    SECRET_PREFIX,
    SIGNING_KEY_PREFIX,
    generate_secret,
    generate_signing_key,
    new_secret,
    public_key,
    sign,
    signature_header,
    webhook_headers,
)
from tests.helpers import verify_ed25519

BODY = json.dumps({"type": "job.succeeded", "data": {"job_id": "j1", "text": "héllo"}}).encode()
WEBHOOK_ID = "evt_01HZYJ8T3M0W6Q1F2B4C5D6E7F"
UA = "jobgate/0.1.0"


def _verify_standardwebhooks(secret: str, body: bytes, headers: dict[str, str]) -> None:
    """Verify with the reference ``standardwebhooks`` package."""
    StandardWebhook(secret).verify(body, headers, json_parse=False)


def _verify_client(secret: str, body: bytes, headers: dict[str, str]) -> None:
    """Verify with ``gateway.client.verify_webhook``, written from the specification and
    sharing no code with ``jobgate.signing`` (the ``svix`` package's verifier hands the
    work to ``standardwebhooks``, so it was the same check twice)."""
    verify_webhook(secret, headers, body)


VERIFIERS = [
    pytest.param(_verify_standardwebhooks, id="standardwebhooks"),
    pytest.param(_verify_client, id="client"),
]
Verifier = Callable[[str, bytes, dict[str, str]], None]


def test_generate_secret_format() -> None:
    """Secrets are ``whsec_`` + standard base64 of 32 random bytes (≥ 24 as the API promises)."""
    secret = generate_secret()
    assert secret.startswith(SECRET_PREFIX)
    key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    assert len(key) == 32 >= MIN_SECRET_BYTES
    assert len({generate_secret() for _ in range(50)}) == 50


def test_sign_matches_published_svix_vector() -> None:
    """The Svix/Standard Webhooks documentation vector signs to the published value."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_sign_is_hmac_sha256_over_id_timestamp_body() -> None:
    """Signed content is ``{id}.{timestamp}.`` + exact body bytes, keyed by the decoded secret."""
    secret = generate_secret()
    key = base64.b64decode(secret[len(SECRET_PREFIX) :])
    expected = hmac.new(key, f"{WEBHOOK_ID}.1700000000.".encode() + BODY, hashlib.sha256)
    assert sign(secret, WEBHOOK_ID, 1700000000, BODY) == (
        "v1," + base64.b64encode(expected.digest()).decode()
    )


@pytest.mark.parametrize("verify", VERIFIERS)
def test_headers_verify_with_independent_verifier(verify: Verifier) -> None:
    """Both verifier packages accept our headers for the exact body bytes."""
    secret = generate_secret()
    headers = webhook_headers([secret], WEBHOOK_ID, BODY, user_agent=UA)
    verify(secret, BODY, headers)


@pytest.mark.parametrize("verify", VERIFIERS)
def test_rotation_each_secret_alone_verifies(verify: Verifier) -> None:
    """During rotation the header carries two signatures; each secret alone verifies."""
    old, new = generate_secret(), generate_secret()
    headers = webhook_headers([old, new], WEBHOOK_ID, BODY, user_agent=UA)
    assert len(headers["webhook-signature"].split(" ")) == 2
    verify(old, BODY, headers)
    verify(new, BODY, headers)
    with pytest.raises(Exception, match="signature"):
        verify(generate_secret(), BODY, headers)


@pytest.mark.parametrize("verify", VERIFIERS)
def test_tampered_body_is_rejected(verify: Verifier) -> None:
    """One changed byte in the body breaks the signature."""
    secret = generate_secret()
    headers = webhook_headers([secret], WEBHOOK_ID, BODY, user_agent=UA)
    with pytest.raises(Exception, match="signature"):
        verify(secret, BODY.replace(b"j1", b"j2"), headers)


@pytest.mark.parametrize("verify", VERIFIERS)
def test_tampered_id_is_rejected(verify: Verifier) -> None:
    """The webhook-id is part of the signed content."""
    secret = generate_secret()
    headers = webhook_headers([secret], WEBHOOK_ID, BODY, user_agent=UA)
    headers["webhook-id"] = "evt_other"
    with pytest.raises(Exception, match="signature"):
        verify(secret, BODY, headers)


@pytest.mark.parametrize("verify", VERIFIERS)
@pytest.mark.parametrize(("offset", "words"), [(-301, "too old"), (-3600, "too old"), (301, "new")])
def test_stale_or_future_timestamp_is_rejected(verify: Verifier, offset: int, words: str) -> None:
    """Receivers refuse timestamps more than 5 min off, hence re-signing on every attempt."""
    secret = generate_secret()
    headers = webhook_headers(
        [secret], WEBHOOK_ID, BODY, timestamp=int(time.time()) + offset, user_agent=UA
    )
    # standardwebhooks says which side; the client says "outside the tolerance".
    expected = words if verify is _verify_standardwebhooks else "outside the tolerance"
    with pytest.raises(Exception, match=expected):
        verify(secret, BODY, headers)


def test_webhook_headers_shape() -> None:
    """Exactly the Standard Webhooks headers plus Content-Type and User-Agent."""
    secret = generate_secret()
    before = int(time.time())
    headers = webhook_headers([secret], WEBHOOK_ID, BODY, user_agent=UA)
    assert set(headers) == {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "Content-Type",
        "User-Agent",
    }
    assert headers["webhook-id"] == WEBHOOK_ID
    assert before <= int(headers["webhook-timestamp"]) <= int(time.time())
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == UA
    assert headers["webhook-signature"] == sign(
        secret, WEBHOOK_ID, int(headers["webhook-timestamp"]), BODY
    )


def test_webhook_headers_explicit_timestamp() -> None:
    """An explicit timestamp is used verbatim (and signed)."""
    secret = generate_secret()
    headers = webhook_headers([secret], WEBHOOK_ID, BODY, timestamp=1700000000, user_agent=UA)
    assert headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"] == sign(secret, WEBHOOK_ID, 1700000000, BODY)


def test_signature_header_order_and_dedup() -> None:
    """One signature per distinct secret, in the given order, space separated."""
    a, b = generate_secret(), generate_secret()
    header = signature_header([a, b, a], WEBHOOK_ID, 1700000000, BODY)
    assert header.split(" ") == [
        sign(a, WEBHOOK_ID, 1700000000, BODY),
        sign(b, WEBHOOK_ID, 1700000000, BODY),
    ]


def test_signature_header_needs_a_sequence_of_secrets() -> None:
    """No secrets is an error; a bare string (a common slip) is refused, not split into chars."""
    with pytest.raises(ValueError):
        signature_header([], WEBHOOK_ID, 1700000000, BODY)
    with pytest.raises(TypeError):
        signature_header(generate_secret(), WEBHOOK_ID, 1700000000, BODY)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", id="no-prefix"),
        pytest.param("whsec_not*base64!", id="not-base64"),
        pytest.param("whsec_" + base64.b64encode(b"short").decode(), id="too-short"),
        pytest.param("whsec_", id="empty"),
    ],
)
def test_malformed_secret_is_refused_without_echoing_it(secret: str) -> None:
    """Bad secrets raise ValueError whose message never contains the secret material."""
    with pytest.raises(ValueError) as info:
        sign(secret, WEBHOOK_ID, 1700000000, BODY)
    tail = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    if tail:
        assert tail not in str(info.value)


def test_body_must_be_bytes() -> None:
    """Signing a str would invite re-encoding differences; only the exact bytes are signed."""
    with pytest.raises(TypeError):
        sign(generate_secret(), WEBHOOK_ID, 1700000000, BODY.decode())  # type: ignore[arg-type]


# ------------------------------------------------------------------ ed25519 (v1a)
# RFC 8032, section 7.1, TEST 1: the secret key (seed) and its public key.
RFC8032_SEED = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
RFC8032_PUBLIC = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"


def test_signing_key_and_public_key_formats() -> None:
    """``whsk_`` + base64 of a 32-byte seed; its ``whpk_`` is base64 of 32 raw bytes, and
    the pair matches RFC 8032's first test vector."""
    key = generate_signing_key()
    assert key.startswith(SIGNING_KEY_PREFIX)
    assert len(base64.b64decode(key[len(SIGNING_KEY_PREFIX) :], validate=True)) == 32
    public = public_key(key)
    assert public.startswith(PUBLIC_KEY_PREFIX)
    assert len(base64.b64decode(public[len(PUBLIC_KEY_PREFIX) :], validate=True)) == 32
    assert len({generate_signing_key() for _ in range(50)}) == 50
    seed = SIGNING_KEY_PREFIX + base64.b64encode(bytes.fromhex(RFC8032_SEED)).decode()
    assert (
        public_key(seed)
        == PUBLIC_KEY_PREFIX + base64.b64encode(bytes.fromhex(RFC8032_PUBLIC)).decode()
    )


def test_new_secret_per_scheme() -> None:
    """hmac: one ``whsec_`` stored and shown; ed25519: the private key stored, only its
    public key shown; anything else refused."""
    stored, shown = new_secret("hmac")
    assert stored == shown and stored.startswith(SECRET_PREFIX)
    stored, shown = new_secret("ed25519")
    assert stored.startswith(SIGNING_KEY_PREFIX) and shown == public_key(stored)
    with pytest.raises(ValueError):
        new_secret("rsa")


def test_a_signing_key_signs_v1a_ed25519_over_id_timestamp_body() -> None:
    """``v1a,`` + base64 of the 64-byte Ed25519 signature of ``{id}.{timestamp}.{body}``,
    verified with the public key alone; any change to id, timestamp or body breaks it."""
    key = generate_signing_key()
    headers = webhook_headers([key], WEBHOOK_ID, BODY, timestamp=1700000000, user_agent=UA)
    signature = headers["webhook-signature"]
    assert signature.startswith("v1a,") and " " not in signature
    assert len(base64.b64decode(signature[4:], validate=True)) == 64
    assert verify_ed25519(public_key(key), headers, BODY) == 1
    for changed in ({"webhook-id": "msg_other"}, {"webhook-timestamp": "1700000001"}):
        with pytest.raises(InvalidSignature):
            verify_ed25519(public_key(key), {**headers, **changed}, BODY)
    with pytest.raises(InvalidSignature):
        verify_ed25519(public_key(key), headers, BODY.replace(b"j1", b"j2"))
    with pytest.raises(InvalidSignature):  # another key pair's public key
        verify_ed25519(public_key(generate_signing_key()), headers, BODY)


def test_rotation_of_signing_keys_signs_with_each() -> None:
    """Two signing keys (a rotation's grace): two ``v1a`` signatures, each key's public
    key verifies its own; HMAC verifiers see no ``v1`` to accept."""
    old, new = generate_signing_key(), generate_signing_key()
    headers = webhook_headers([new, old], WEBHOOK_ID, BODY, user_agent=UA)
    assert [s[:4] for s in headers["webhook-signature"].split(" ")] == ["v1a,", "v1a,"]
    assert verify_ed25519(public_key(old), headers, BODY) == 1
    assert verify_ed25519(public_key(new), headers, BODY) == 1
    with pytest.raises(Exception, match="signature"):
        _verify_standardwebhooks(generate_secret(), BODY, headers)


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("whsk_not*base64!", id="not-base64"),
        pytest.param("whsk_" + base64.b64encode(b"short").decode(), id="too-short"),
        pytest.param("whsk_" + base64.b64encode(bytes(33)).decode(), id="too-long"),
        pytest.param("whsk_", id="empty"),
    ],
)
def test_malformed_signing_key_is_refused_without_echoing_it(key: str) -> None:
    with pytest.raises(ValueError) as info:
        sign(key, WEBHOOK_ID, 1700000000, BODY)
    tail = key[len(SIGNING_KEY_PREFIX) :]
    if tail:
        assert tail not in str(info.value)
    with pytest.raises(ValueError):
        public_key(key)
