"""jobgate.connections: pools that never hand out a connection holding a leftover reply or
a connection the server closed, for the store's clients and the broker's, on a real Redis."""

from __future__ import annotations

import select
import socket
from typing import Any

import pytest
import redis
from kombu import Connection

from jobgate.connections import redis_client
from tasks.transport import Transport
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def buffered(connection: Any, size: int) -> bool:
    """Whether ``size`` bytes wait on the connection's socket (peeked, not read)."""
    poller = select.poll()
    poller.register(connection._sock, select.POLLIN)
    if not poller.poll(0):
        return False
    return len(connection._sock.recv(size, socket.MSG_PEEK)) >= size


def test_a_connection_the_server_closed_is_replaced(redis_url: str) -> None:
    client = redis_client(redis_url)
    first = client.client_id()
    killer = redis.Redis.from_url(redis_url)
    assert killer.client_kill_filter(_id=first) == 1
    killer.close()
    assert client.client_id() != first  # the dead connection was dropped, not used
    client.close()


def test_a_pool_never_hands_out_a_connection_with_a_leftover_reply(redis_url: str) -> None:
    """redis-py 8 (RESP3, maintenance notifications "auto") would hand this connection on
    as it is, and ECHO fresh would read "stale"."""
    client = redis_client(redis_url)
    pool = client.connection_pool
    dirty = pool.get_connection()
    dirty.send_command("ECHO", "stale")  # sent, never read: the reply stays on the socket
    wait_until(lambda: buffered(dirty, 1), timeout=5)
    pool.release(dirty)
    assert client.echo("fresh") == "fresh"
    client.close()


def test_broker_pools_keep_the_check_too(redis_url: str) -> None:
    with Connection(redis_url, transport=Transport) as conn:
        channel = conn.default_channel
        assert not channel.pool.maint_notifications_enabled()
        assert not channel.async_pool.maint_notifications_enabled()
