"""Redis clients from a URL: a plain ``redis://`` server or a Sentinel-watched master.

Every jobgate process that builds its own client (the job store, the worker's upkeep,
``jobgate dev``'s probe) comes here, so a ``sentinel://`` URL means the same thing
everywhere: ask the sentinels for the master named ``JOBGATE_REDIS_SENTINEL_MASTER``,
and ask again after a failover (redis-py's ``SentinelConnectionPool``).
"""

from __future__ import annotations

from typing import Any

import redis
from redis import maint_notifications
from redis.sentinel import Sentinel, SentinelConnectionPool

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
            return redis.Redis(connection_pool=pool)
        if max_connections is not None:
            options["max_connections"] = max_connections
        return redis.Redis.from_url(url, **options)
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
    return client


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
