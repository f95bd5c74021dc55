"""jobgate.connections: the quick unread-bytes check answers as redis-py's own does (a reply
on the socket, a reply the parser holds, a closed connection), on a real Redis."""

from __future__ import annotations

import select
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection

from jobgate.connections import QuickConnection, quick_checks, redis_client
from tasks.transport import Channel, SentinelChannel, Transport
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def conn(redis_url: str) -> Iterator[QuickConnection]:
    client = redis_client(redis_url)
    connection = client.connection_pool.get_connection()
    yield connection
    connection.disconnect()
    client.close()


def buffered(connection: QuickConnection, size: int) -> bool:
    """Whether ``size`` bytes wait on the connection's socket (peeked, not read)."""
    poller = select.poll()
    poller.register(connection._sock, select.POLLIN)
    if not poller.poll(0):
        return False
    return len(connection._sock.recv(size, socket.MSG_PEEK)) >= size


def test_store_clients_and_broker_channels_use_the_quick_check(redis_url: str) -> None:
    client = redis_client(redis_url)
    assert client.connection_pool.connection_class is QuickConnection
    bounded = redis_client(redis_url, max_connections=4, pool_wait=1)
    assert bounded.connection_pool.connection_class is QuickConnection
    assert Channel.connection_class is QuickConnection
    assert SentinelChannel.connection_class.__name__ == "QuickSentinelConnection"


def test_tls_connections_keep_redis_pys_check() -> None:
    client = quick_checks(redis.Redis.from_url("rediss://127.0.0.1:6380/0"))
    assert client.connection_pool.connection_class is redis.SSLConnection


def test_a_clean_connection_has_nothing_to_read(conn: QuickConnection) -> None:
    conn.send_command("PING")
    assert conn.read_response() in ("PONG", b"PONG")
    assert conn.can_read() is False


def test_an_unread_reply_on_the_socket_is_seen(conn: QuickConnection) -> None:
    conn.send_command("PING")
    wait_until(lambda: buffered(conn, len(b"+PONG\r\n")), timeout=5)
    assert conn.can_read() is True


def test_a_reply_held_by_the_parser_is_seen(conn: QuickConnection) -> None:
    conn.send_command("PING")
    conn.send_command("PING")
    wait_until(lambda: buffered(conn, 2 * len(b"+PONG\r\n")), timeout=5)
    conn.read_response()  # hiredis reads both replies off the socket and keeps the second
    assert not buffered(conn, 1)
    assert conn.can_read() is True


def test_a_connection_the_server_closed_is_replaced(redis_url: str) -> None:
    client = redis_client(redis_url)
    first = client.client_id()
    killer = redis.Redis.from_url(redis_url)
    assert killer.client_kill_filter(_id=first) == 1
    killer.close()
    assert client.client_id() != first  # the dead connection was dropped, not used
    client.close()


def test_under_gevent_a_clean_connection_never_reaches_gevents_poll(redis_url: str) -> None:
    code = (
        "import sys\n"
        "from gevent import monkey; monkey.patch_all()\n"
        "import select\n"
        "from jobgate.connections import redis_client\n"
        "assert select.poll.__module__.startswith('gevent'), select.poll.__module__\n"
        "client = redis_client(sys.argv[1])\n"
        "client.ping()\n"
        "def refuse(): raise AssertionError('gevent poll used')\n"
        "select.poll = refuse\n"
        "assert client.ping()  # the pool checks the connection it hands out again\n"
    )
    subprocess.run([sys.executable, "-c", code, redis_url], check=True, timeout=60)


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
