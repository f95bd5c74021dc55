"""Redis clients from a URL: a plain ``redis://`` server or a Sentinel-watched master.

Every jobgate process that builds its own client (the job store, the worker's upkeep,
``jobgate dev``'s probe) comes here, so a ``sentinel://`` URL means the same thing
everywhere: ask the sentinels for the master named ``JOBGATE_REDIS_SENTINEL_MASTER``,
and ask again after a failover (redis-py's ``SentinelConnectionPool``).
"""

from __future__ import annotations

import select
import sys
from collections.abc import Callable
from typing import Any

import redis
from redis import maint_notifications
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from config import is_sentinel, parse_sentinel_url


def checked_pool_options() -> dict[str, Any]:
    """Pool options that keep redis-py's check of the connections a pool hands out.

    redis-py 8 speaks RESP3 by default and then turns on Redis Enterprise's maintenance
    notifications ("auto"), and with them on its pool stops refusing a connection that
    still holds an unread reply: the next command would read that reply as its own (a
    status read answered with another job's record). Open-source Redis sends no such
    notifications, so jobgate turns them off and keeps the check.
    """
    return {
        "maint_notifications_config": maint_notifications.MaintNotificationsConfig(enabled=False)
    }


def _os_poll() -> Callable[[], Any]:
    """The OS's ``select.poll``, also where gevent has patched it in."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey.get_original("select", "poll") if monkey else select.poll


class QuickCheck:
    """redis-py checks every connection its pool hands out for unread bytes (``can_read``,
    a zero-timeout ``select.poll``). Under gevent that poll is gevent's cooperative one,
    a hub switch per Redis command, which showed in profiles of the delivery process
    (docs/performance.md); the OS's poll with a zero
    timeout cannot block, so it answers first. A socket with nothing to read is clean
    when the parser holds no reply either: redis-py 8's hiredis parser keeps replies only
    in its reader (``has_data``). Anything else (a readable socket, the pure-Python
    parser, an older redis-py whose parser caches a reply of its own) is redis-py's
    own check."""

    _sock: Any
    _parser: Any

    def can_read(self, timeout: float = 0) -> bool:
        parser, sock = self._parser, self._sock
        reader: Any = getattr(parser, "_reader", None)
        if (
            timeout == 0
            and sock is not None
            and hasattr(reader, "has_data")
            and not hasattr(parser, "_next_response")
        ):
            if not reader.has_data():
                poller = _POLL()
                poller.register(sock, select.POLLIN)
                if not poller.poll(0):
                    return False
        return super().can_read(timeout)  # type: ignore[misc, no-any-return]


class QuickConnection(QuickCheck, redis.Connection):
    """``redis.Connection`` with the quick unread-bytes check."""


class QuickSentinelConnection(QuickCheck, SentinelManagedConnection):
    """``SentinelManagedConnection`` with the quick unread-bytes check."""


_POLL = _os_poll()
# Plain TCP only: a TLS socket can hold decrypted bytes the OS poll does not see.
QUICK = {redis.Connection: QuickConnection, SentinelManagedConnection: QuickSentinelConnection}


def quick_checks(client: redis.Redis) -> redis.Redis:
    """``client``, its pool's plain TCP connections given the quick check (before any is made)."""
    pool = client.connection_pool
    pool.connection_class = QUICK.get(pool.connection_class, pool.connection_class)
    return client


class SentinelBlockingConnectionPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """A Sentinel pool that, like ``BlockingConnectionPool``, waits for a free connection
    past ``max_connections`` (up to ``timeout`` s) instead of failing at once."""


def redis_client(
    url: str,
    *,
    sentinel_master: str = "",
    decode_responses: bool = True,
    socket_timeout: float | None = 5,
    socket_connect_timeout: float | None = 2,
    health_check_interval: int = 30,
    max_connections: int | None = None,
    pool_wait: float | None = None,
) -> redis.Redis:
    """A client of ``url``. ``max_connections`` with ``pool_wait`` bounds its pool: past the
    bound a caller waits up to ``pool_wait`` s for a connection, then ``ConnectionError``."""
    options: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
        "health_check_interval": health_check_interval,
        **checked_pool_options(),
    }
    bounded = max_connections is not None and pool_wait is not None
    if not is_sentinel(url):
        if bounded:
            pool = redis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=pool_wait, **options
            )
            return quick_checks(redis.Redis(connection_pool=pool))
        if max_connections is not None:
            options["max_connections"] = max_connections
        return quick_checks(redis.Redis.from_url(url, **options))
    if not sentinel_master:
        raise ValueError(f"{url!r} is a sentinel:// URL: a master name is needed")
    parsed = parse_sentinel_url(url)
    # redis.sentinel is annotated from redis-py 8 on, untyped before: the ignores hold for both.
    sentinels = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
        list(parsed.sentinels),
        # Sentinels are asked with short timeouts of their own: a dead one is skipped.
        sentinel_kwargs={
            "socket_timeout": socket_connect_timeout or 2,
            "socket_connect_timeout": socket_connect_timeout or 2,
        },
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        **options,
    )
    extra: dict[str, Any] = {}
    if bounded:
        extra = {
            "connection_pool_class": SentinelBlockingConnectionPool,
            "max_connections": max_connections,
            "timeout": pool_wait,
        }
    elif max_connections is not None:
        extra = {"max_connections": max_connections}
    client: redis.Redis = sentinels.master_for(  # type: ignore[no-untyped-call,unused-ignore]
        sentinel_master, redis_class=redis.Redis, **extra
    )
    return quick_checks(client)


def answers(url: str, *, sentinel_master: str = "", timeout: float = 1.0) -> bool:
    """True when the Redis ``url`` names (through its sentinels, if any) answers a PING."""
    try:
        client = redis_client(
            url,
            sentinel_master=sentinel_master,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False
