"""jobgate.sealing: secrets sealed with JOBGATE_SECRET_KEY, opened by any of its keys,
refused (without echoing anything secret) by a wrong or malformed key."""

from __future__ import annotations

import pytest

from jobgate.sealing import PREFIX, Sealer, SecretKeyError, check_key, generate_key
from jobgate.signing import generate_secret

pytestmark = pytest.mark.unit


def test_a_sealed_secret_opens_to_itself_and_holds_nothing_of_it() -> None:
    sealer, secret = Sealer(generate_key()), generate_secret()
    sealed = sealer.seal(secret)
    assert sealed.startswith(PREFIX) and secret not in sealed and secret[6:] not in sealed
    assert sealer.open(sealed) == secret
    assert sealer.seal(sealed) == sealed  # sealed once only
    assert sealer.seal(secret) != sealed  # a fresh IV each time


def test_a_rotation_opens_with_either_key_and_reseals_with_the_first() -> None:
    old, new = generate_key(), generate_key()
    secret = generate_secret()
    sealed_old = Sealer(old).seal(secret)
    both = Sealer(f"{new},{old}")
    assert both.open(sealed_old) == secret
    resealed = both.reseal(sealed_old)
    assert Sealer(new).open(resealed) == secret
    with pytest.raises(SecretKeyError):
        Sealer(old).open(resealed)


def test_a_secret_stored_before_sealing_opens_as_it_is_and_reseals() -> None:
    sealer, secret = Sealer(generate_key()), generate_secret()
    assert sealer.open(secret) == secret
    assert sealer.open(sealer.reseal(secret)) == secret


@pytest.mark.parametrize("key", ["short", "!!not base64!!", generate_key()[:-8]])
def test_a_malformed_key_is_refused_without_echoing_it(key: str) -> None:
    with pytest.raises(SecretKeyError) as refused:
        Sealer(key)
    assert key not in str(refused.value)
    assert "32 random bytes" in str(refused.value)


def test_a_wrong_or_missing_key_is_one_line_and_names_the_setting() -> None:
    sealed = Sealer(generate_key()).seal(generate_secret())
    for keys in ("", "  "):
        with pytest.raises(SecretKeyError, match="JOBGATE_SECRET_KEY is not set"):
            check_key(keys, sealed)
    with pytest.raises(SecretKeyError) as wrong:
        check_key(generate_key(), sealed)
    assert "does not open" in str(wrong.value) and "\n" not in str(wrong.value)
    assert check_key(generate_key(), None).enabled  # a database with nothing sealed yet


def test_without_a_key_secrets_stay_as_they_are_and_a_sealed_one_cannot_open() -> None:
    none, secret = Sealer(""), generate_secret()
    assert not none.enabled and none.seal(secret) == secret
    with pytest.raises(SecretKeyError):
        none.open(Sealer(generate_key()).seal(secret))
