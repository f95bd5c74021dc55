"""Settings read from the environment, each with a documented default.

Every name here is listed in docs/configuration.md; operators and tests configure
jobgate the same way, by environment variables.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import unquote, urlsplit

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
# After the first attempt (sent at once): 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, i.e.
# Svix's schedule, 8 attempts over about 27.6 h (jitter added, see jobgate.webhooks.http).
DEFAULT_RETRY_DELAYS = (5, 300, 1800, 7200, 18000, 36000, 36000)
DEFAULT_WEBHOOK_TIMEOUT = 15.0
DEFAULT_CALLBACK_DNS_TIMEOUT = 2.0
# A SQLite file in the working directory: nothing to install (PostgreSQL in production).
DEFAULT_DATABASE_URL = "sqlite:///jobgate.sqlite3"


class SettingsError(ValueError):
    """A bad setting; its message is one line naming the environment variable."""


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _floats(value: str) -> tuple[float, ...]:
    return tuple(float(part) for part in _csv(value))


PortRanges = tuple[tuple[int, int], ...]


def parse_ports(value: str) -> PortRanges:
    """``JOBGATE_CALLBACK_PORTS``: comma-separated ports and ``low-high`` ranges, 1-65535."""
    ranges: list[tuple[int, int]] = []
    for item in _csv(value):
        low_text, dash, high_text = item.partition("-")
        try:
            low = int(low_text.strip())
            high = int(high_text.strip()) if dash else low
        except ValueError:
            raise ValueError(
                f"{item!r} is not a port or a range of ports (like 8443 or 1024-65535)"
            ) from None
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"{item!r} is not within 1-65535 (low-high, low first)")
        ranges.append((low, high))
    if not ranges:
        raise ValueError("at least one port is needed")
    return tuple(ranges)


def format_ports(ranges: PortRanges) -> str:
    """The ``JOBGATE_CALLBACK_PORTS`` text for ``ranges`` (``parse_ports`` reads it back)."""
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in ranges)


SENTINEL_SCHEME = "sentinel://"


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``sentinel://h:p/db;sentinel://h:p/db`` URL (kombu's and Celery's form)."""

    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None


def is_sentinel(url: str) -> bool:
    """True for the Sentinel form of a Redis URL (``sentinel://…;sentinel://…``)."""
    return url.startswith(SENTINEL_SCHEME)


def parse_sentinel_url(url: str) -> SentinelURL:
    """The sentinels, db and master credentials of ``url``; ``ValueError`` says what is wrong.

    kombu and Celery read the db and the master's password from the first chunk only, so
    they belong there; a later chunk may repeat them but not differ.
    """
    hosts: list[tuple[str, int]] = []
    first: tuple[int, str | None, str | None] | None = None
    for chunk in (part.strip() for part in url.split(";")):
        if not chunk:
            continue
        if not is_sentinel(chunk):
            raise ValueError(f"{chunk!r} does not start with sentinel://")
        parts = urlsplit(chunk)
        try:
            port = parts.port or 26379
        except ValueError:
            raise ValueError(f"{chunk!r} has a bad port") from None
        if not parts.hostname:
            raise ValueError(f"{chunk!r} names no host")
        hosts.append((parts.hostname, port))
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"{chunk!r}: the path must be a db number")
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        these = (int(path) if path else 0, user, password)
        if first is None:
            first = these
        elif (path and these[0] != first[0]) or (password is not None and these != first):
            raise ValueError("db and password go on the first chunk; later ones differ")
    if first is None:
        raise ValueError("no sentinel named")
    return SentinelURL(tuple(hosts), *first)


# 443, 80 (only while http is allowed) and the unprivileged ports; not 22, 25, 53, ...
DEFAULT_CALLBACK_PORTS = parse_ports("443,80,1024-65535")


@dataclass(frozen=True)
class Settings:
    """Everything jobgate reads from its environment; immutable once built."""

    redis_url: str = DEFAULT_REDIS_URL
    broker_url: str = ""
    result_backend: str = ""
    admin_keys: tuple[str, ...] = ()
    # Seals webhook secrets at rest (jobgate.sealing): base64 keys, the first seals.
    secret_key: str = field(default="", repr=False)
    callback_allow_http: bool = False
    callback_allowlist: str = ""
    callback_ports: PortRanges = DEFAULT_CALLBACK_PORTS
    callback_dns_timeout: float = DEFAULT_CALLBACK_DNS_TIMEOUT
    result_expires: int = 3600
    job_retention: int = 90 * 24 * 3600
    job_cache_ttl: int = 3600
    database_url: str = DEFAULT_DATABASE_URL
    archive_batch: int = 500
    max_body: int = 1024 * 1024
    max_result_bytes: int = 1024 * 1024
    webhook_retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS
    webhook_timeout: float = DEFAULT_WEBHOOK_TIMEOUT
    webhook_secret_grace: int = 24 * 3600
    endpoint_disable_after: float = 5 * 86400
    demo_tasks: bool = False  # on in `jobgate dev` and the tests
    rate_limit: int = 600
    # Failed authentications one client address may make per minute; past it, 429 (0: off).
    auth_failures_per_minute: int = 30
    max_wait: int = 30
    sse_heartbeat: float = 15.0
    sse_max_seconds: float = 900.0
    visibility_timeout: int = 30
    sweep_interval: float = 15.0
    queue_jobs: str = "jobs"
    queue_webhooks: str = "webhooks"
    key_prefix: str = "jobgate"
    redis_max_connections: int = 1000
    redis_sentinel_master: str = ""
    # Fair dispatch and the per-partner limits' defaults (jobgate.limits; a partner's own
    # limits override them): 0 means no limit, and for the window "auto".
    dispatch_window: int = 0
    max_running_jobs: int = 0
    max_queued_jobs: int = 10_000
    max_open_streams: int = 50
    max_endpoints: int = 20
    # A tenth of the gevent delivery pool's default 1000 slots: a setting, as the gateway
    # cannot know the size of the pools its workers run (docs/configuration.md).
    max_inflight_deliveries: int = 100

    def __post_init__(self) -> None:
        # Broker and backend follow REDIS_URL unless set on their own.
        if not self.broker_url:
            object.__setattr__(self, "broker_url", self.redis_url)
        if not self.result_backend:
            object.__setattr__(self, "result_backend", self.redis_url)
        for name, (low, what) in _BOUNDS.items():
            value = getattr(self, name)
            values = value if isinstance(value, tuple) else (value,)
            if any(v < low for v in values):
                raise SettingsError(f"{_ENV[name][0]}={value!r} is not valid: {what}")
        if not self.callback_ports or any(
            not 1 <= low <= high <= 65535 for low, high in self.callback_ports
        ):
            raise SettingsError(
                f"JOBGATE_CALLBACK_PORTS={format_ports(self.callback_ports)!r} "
                "is not valid: ports are 1-65535, at least one"
            )
        if not self.database_url.startswith(("sqlite:", "postgresql")):
            raise SettingsError(
                f"JOBGATE_DATABASE_URL={self.database_url!r} is not valid: use sqlite:///FILE "
                "or postgresql+psycopg://USER@HOST/DB"
            )
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://", SENTINEL_SCHEME)):
            raise SettingsError(
                f"REDIS_URL={self.redis_url!r} is not valid: it must start "
                "with redis://, rediss://, unix:// or sentinel://"
            )
        self._check_sentinel()

    def _check_sentinel(self) -> None:
        """Sentinel URLs parse, and come with a master name (and the name with a URL)."""
        urls = {name: getattr(self, name) for name in ("redis_url", "broker_url", "result_backend")}
        sentinel = {name: url for name, url in urls.items() if is_sentinel(url)}
        for name, url in sentinel.items():
            try:
                parse_sentinel_url(url)
            except ValueError as exc:
                raise SettingsError(f"{_ENV[name][0]}={url!r} is not valid: {exc}") from None
        if sentinel and not self.redis_sentinel_master:
            name = next(iter(sentinel))
            raise SettingsError(
                f"{_ENV[name][0]} is a sentinel:// URL: set JOBGATE_REDIS_SENTINEL_MASTER "
                "to the master's name (as in `sentinel monitor <name> ...`)"
            )
        if self.redis_sentinel_master and not sentinel:
            raise SettingsError(
                f"JOBGATE_REDIS_SENTINEL_MASTER={self.redis_sentinel_master!r} is set but "
                "no Redis URL is sentinel://h:p/db;sentinel://h:p/db"
            )

    @property
    def admin_actors(self) -> dict[str, str]:
        """Admin key -> who it is in the audit log: ``JOBGATE_ADMIN_KEYS=name:key,...``
        names a key; an unnamed one is ``key:`` and the first 12 hex digits of its SHA-256."""
        actors = {}
        for entry in self.admin_keys:
            name, colon, key = entry.partition(":")
            if colon and name and key:
                actors[key] = name
            else:
                actors[entry] = "key:" + hashlib.sha256(entry.encode()).hexdigest()[:12]
        return actors

    @property
    def worker_refresh_every(self) -> float:
        """Seconds between a worker's signs of life (and refreshes of the messages it holds)."""
        return max(0.5, self.visibility_timeout / 10)

    @property
    def worker_alive_for(self) -> int:
        """Seconds a worker counts as alive after its last sign of life: five missed
        refreshes, so a busy worker is never taken for a dead one."""
        return int(self.worker_refresh_every * 5) + 1

    def sentinel_master_for(self, url: str) -> str:
        """The master name to use with ``url``: the setting for sentinel URLs, else ""."""
        return self.redis_sentinel_master if is_sentinel(url) else ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables (os.environ by default)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, (var, parse) in _ENV.items():
            raw = env.get(var)
            if raw is not None and raw != "":
                try:
                    values[name] = parse(raw)
                except ValueError as exc:
                    raise SettingsError(f"{var}={raw!r} is not valid: {exc}") from None
        return cls(**values)

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some values changed (broker/backend re-derived from redis_url)."""
        if "redis_url" in changes:
            changes.setdefault("broker_url", "")
            changes.setdefault("result_backend", "")
        return replace(self, **changes)


# A setting's variable is JOBGATE_ and its name in capitals, but for these three (the
# names Celery and redis-py users know); its parser follows its type.
_OWN_NAMES = {
    "redis_url": "REDIS_URL",
    "broker_url": "CELERY_BROKER_URL",
    "result_backend": "CELERY_RESULT_BACKEND",
}
_PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": _bool,
    "tuple[str, ...]": _csv,
    "tuple[float, ...]": _floats,
    "PortRanges": parse_ports,
}
# setting name -> (environment variable, parser)
_ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    f.name: (_OWN_NAMES.get(f.name, "JOBGATE_" + f.name.upper()), _PARSERS[str(f.type)])
    for f in fields(Settings)
}

# setting name -> (lowest value allowed, the rule in words)
_BOUNDS: dict[str, tuple[float, str]] = {
    "callback_dns_timeout": (0.01, "at least 0.01 second"),
    "result_expires": (1, "at least 1 second"),
    "job_retention": (1, "at least 1 second"),
    "job_cache_ttl": (1, "at least 1 second"),
    "archive_batch": (1, "at least 1"),
    "max_body": (1, "at least 1 byte"),
    "max_result_bytes": (1, "at least 1 byte"),
    "webhook_retry_delays": (0, "no negative delay"),
    "webhook_timeout": (0.1, "at least 0.1 second"),
    "webhook_secret_grace": (0, "not negative"),
    "endpoint_disable_after": (0, "not negative"),
    "rate_limit": (0, "not negative (0 switches the limit off)"),
    "max_wait": (0, "not negative"),
    "sse_heartbeat": (0.1, "at least 0.1 second"),
    "sse_max_seconds": (1, "at least 1 second"),
    "visibility_timeout": (2, "at least 2 seconds (10 or more in production)"),
    "sweep_interval": (0.1, "at least 0.1 second"),
    "redis_max_connections": (1, "at least 1"),
    "dispatch_window": (0, "not negative (0: the live workers' job-pool slots)"),
    "max_running_jobs": (0, "not negative (0 switches the limit off)"),
    "max_queued_jobs": (0, "not negative (0 switches the limit off)"),
    "max_open_streams": (0, "not negative (0 switches the limit off)"),
    "max_endpoints": (0, "not negative (0 switches the limit off)"),
    "max_inflight_deliveries": (0, "not negative (0 switches the limit off)"),
}

assert set(_BOUNDS) <= set(_ENV)

__all__ = [
    "Settings",
    "SettingsError",
    "DEFAULT_REDIS_URL",
    "DEFAULT_RETRY_DELAYS",
    "DEFAULT_WEBHOOK_TIMEOUT",
    "DEFAULT_CALLBACK_DNS_TIMEOUT",
    "DEFAULT_DATABASE_URL",
    "DEFAULT_CALLBACK_PORTS",
    "PortRanges",
    "SentinelURL",
    "is_sentinel",
    "parse_sentinel_url",
    "format_ports",
    "parse_ports",
]
