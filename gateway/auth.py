"""Bearer-key authentication: admin keys from config, partner keys by their hash."""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, TypeVar

from flask import g, request
from redis import RedisError

from gateway.errors import APIError
from gateway.extensions import services
from jobgate.limits import effective

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Principal:
    """Who is calling: an admin, or a partner (with its id)."""

    role: str
    partner_id: str | None = None
    name: str = ""
    # The partner's limits in effect (jobgate.limits), from its mirror; admins have none.
    limits: Mapping[str, int] = field(default_factory=dict)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def authenticate() -> Principal:
    """The caller of this request, from ``Authorization: Bearer <key>``; 401 otherwise."""
    if "principal" in g:
        return g.principal
    key = presented_key()
    if not key:
        raise _unauthorized("Send an API key as 'Authorization: Bearer <key>'.")
    svc = services()
    address = "auth:" + (request.remote_addr or "")
    limit = svc.settings.auth_failures_per_minute
    admin_actor = next(
        (
            actor
            for admin, actor in svc.settings.admin_actors.items()
            if hmac.compare_digest(key.encode(), admin.encode())
        ),
        None,
    )
    wait = None
    # A key this process verified lately (an admin's, a partner's in its cache) skips the
    # count's round trip unless the address failed here; any other key is counted first.
    if _suspected(svc.suspects, address) or not (
        admin_actor is not None or svc.partners.known(key)
    ):
        try:
            wait = svc.store.rate_limit_wait(address, limit)
        except RedisError:
            # The count is Redis's: while Redis is away, keys the cache holds still work
            # (partners.by_key) and an unknown key cannot be checked anyway (503).
            wait = None
    if wait is not None:
        raise APIError(
            429,
            "rate_limited",
            "Too many failed authentications from this address; wait and retry.",
            {"limit": "auth_failures_per_minute", "value": limit},
            headers={"Retry-After": str(wait)},
        )
    if admin_actor is not None:
        g.principal = Principal("admin", name=admin_actor)
        return g.principal
    partner = svc.partners.by_key(key)
    if partner is None:
        _suspect(svc.suspects, address)
        with contextlib.suppress(RedisError):
            svc.store.hit_rate_limit(address, limit)
        raise _unauthorized("This API key is not valid.")
    g.principal = Principal(
        "partner", partner["id"], partner.get("name", ""), effective(svc.settings, partner)
    )
    return g.principal


def _unauthorized(message: str) -> APIError:
    """401 ``unauthorized``, with the challenge naming the scheme to use."""
    return APIError(
        401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="jobgate"'}
    )


SUSPECT_FOR = 60.0  # seconds: the count's window
SUSPECTS_MAX = 10_000  # addresses one process remembers (the oldest go first)


def _suspected(suspects: dict[str, float], address: str) -> bool:
    """Did an authentication from ``address`` fail in this process within the window?
    Then even a key this process knows waits for the count of failures."""
    until = suspects.get(address)
    if until is None:
        return False
    if until < time.monotonic():
        suspects.pop(address, None)
        return False
    return True


def _suspect(suspects: dict[str, float], address: str) -> None:
    suspects.pop(address, None)
    if len(suspects) >= SUSPECTS_MAX:
        suspects.pop(next(iter(suspects)))
    suspects[address] = time.monotonic() + SUSPECT_FOR


def presented_key() -> str:
    """The key of ``Authorization: Bearer <key>`` ("" if none)."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


def _keyed(view: F, admin: bool | None = None, refusal: str = "") -> F:
    """``view`` for any valid key; with ``admin`` True or False only for a caller who is
    (or is not) an admin, any other getting 403 ``forbidden`` with ``refusal``."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        caller = authenticate()
        if admin is not None and caller.is_admin != admin:
            raise APIError(403, "forbidden", refusal)
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def admin_required(view: F) -> F:
    """Only admin keys; a partner key gets 403."""
    return _keyed(view, admin=True, refusal="This route needs an admin key.")


def partner_required(view: F) -> F:
    """Only partner keys (jobs belong to a partner); an admin key gets 403."""
    return _keyed(view, admin=False, refusal="Submit jobs with a partner key; admins own none.")


def login_required(view: F) -> F:
    """Any valid key, admin or partner."""
    return _keyed(view)
