"""tasks.transport: kombu's Redis transport without MULTI/EXEC around its ack bookkeeping,
on a Redis of the test's own (its command counts are the test's alone)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from kombu import Connection

from config import Settings
from gateway.cli import DEFAULT_DELIVERY_CONCURRENCY
from tasks.app import BROKER_POOL_SPARE, _size_for_every_slot, make_celery
from tasks.transport import (
    QoS,
    SentinelTransport,
    SharedClient,
    Transport,
    broker_transport_for,
)
from tests.helpers import EmbeddedRedis, settings_env

pytestmark = [pytest.mark.integration, pytest.mark.contract]


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis().start()
    yield server
    server.close()


def calls(server: EmbeddedRedis, command: str) -> int:
    stats = server.client().info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_broker_transport_follows_the_url_scheme() -> None:
    assert broker_transport_for("redis://127.0.0.1:6379/0") == "tasks.transport:Transport"
    assert broker_transport_for("rediss://h:6380/0") is None  # kombu's: TLS by its name
    sentinels = "sentinel://127.0.0.1:26379/0;sentinel://127.0.0.1:26380/0"
    assert broker_transport_for(sentinels) == "tasks.transport:SentinelTransport"
    assert broker_transport_for("amqp://guest@127.0.0.1//") is None


def test_the_celery_app_consumes_through_this_qos(server: EmbeddedRedis) -> None:
    app = make_celery(Settings.from_env({"REDIS_URL": server.url}))
    with app.connection_for_read() as conn:
        assert isinstance(conn.default_channel.qos, QoS)


def test_a_rediss_broker_keeps_tls() -> None:
    app = make_celery(Settings.from_env({"REDIS_URL": "rediss://127.0.0.1:6380/0"}))
    with app.connection_for_read() as conn:
        assert conn.ssl, "a rediss:// broker must connect with TLS"


@pytest.mark.parametrize("cls", [Transport, SentinelTransport])
def test_both_transports_use_this_qos(cls: type) -> None:
    assert cls.Channel.QoS is QoS


def test_a_delivery_pool_acking_from_every_slot_at_once_finds_a_connection(
    server: EmbeddedRedis,
) -> None:
    """Every slot of the delivery pool (gevent, 1000 by default) acks through one channel's
    pool; with kombu's default of 10 the 11th ack in flight failed ("Couldn't ack"), the
    consumer dropped, and the message waited for the visibility timeout."""
    settings = Settings.from_env({"REDIS_URL": server.url})
    app = make_celery(settings)
    _size_for_every_slot(SimpleNamespace(app=app, concurrency=DEFAULT_DELIVERY_CONCURRENCY))
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue("t-room")
        queue.put({"n": 3})
        message = queue.get(timeout=5)
        pool = queue.channel.pool
        for _ in range(DEFAULT_DELIVERY_CONCURRENCY):  # every slot holds one (no sockets)
            pool.make_connection()
        message.ack()
        assert server.client().hlen("unacked") == 0
        queue.close()


@pytest.mark.parametrize(("slots", "pool"), [(1500, 1500 + BROKER_POOL_SPARE), (4, 1000)])
def test_a_worker_gets_a_broker_connection_for_every_slot(slots: int, pool: int) -> None:
    app = make_celery(Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"}))
    _size_for_every_slot(SimpleNamespace(app=app, concurrency=slots))
    assert app.conf.broker_transport_options["max_connections"] == pool
    assert app.conf.broker_transport_options["visibility_timeout"]  # the rest kept


def test_take_and_ack_send_no_transaction_and_leave_no_bookkeeping(
    server: EmbeddedRedis,
) -> None:
    with Connection(server.url, transport=Transport) as conn:
        queue = conn.SimpleQueue("t-ack")
        queue.put({"n": 1})
        before = calls(server, "multi")
        message = queue.get(timeout=5)
        client = server.client()
        assert client.hlen("unacked") == 1 and client.zcard("unacked_index") == 1
        message.ack()
        assert calls(server, "multi") == before, "append and ack ran in MULTI/EXEC"
        assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
        queue.close()


def test_a_message_taken_and_not_acked_is_restored(server: EmbeddedRedis) -> None:
    """What a dead worker's messages rely on: kombu's restore (its own transaction)
    still finds what the plain pipeline recorded."""
    with Connection(server.url, transport=Transport) as conn:
        queue = conn.SimpleQueue("t-restore")
        queue.put({"n": 2})
        message = queue.get(timeout=5)
        channel = queue.channel
        channel.qos.restore_by_tag(message.delivery_tag)
        assert server.client().hlen("unacked") == 0
        again = queue.get(timeout=5)
        assert again.payload == {"n": 2}
        again.ack()
        queue.close()


@pytest.mark.parametrize("cls", [Transport, SentinelTransport])
def test_both_channels_share_their_client(cls: type) -> None:
    assert issubclass(cls.Channel, SharedClient)


def test_takes_and_acks_share_one_client_until_the_pool_is_replaced(
    server: EmbeddedRedis,
) -> None:
    """kombu built a new redis client (and its callback table) for every take and ack."""
    with Connection(server.url, transport=Transport) as conn:
        channel = conn.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.connection_pool is channel.pool
        queue = conn.SimpleQueue("t-shared")
        queue.put({"n": 4})
        queue.get(timeout=5).ack()
        with channel.conn_or_acquire() as after_ack:
            assert after_ack is first
        channel._disconnect_pools()  # what kombu does when the connection is lost
        with channel.conn_or_acquire() as rebuilt:
            assert rebuilt is not first
            assert rebuilt.connection_pool is channel.pool
            assert rebuilt.ping()
        queue.close()


GREEN_CONSUMER = """
import os, resource, sys
from gevent import monkey; monkey.patch_all()
from kombu import Connection
from tasks.transport import Transport
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
held = [os.pipe() for _ in range(600)]  # the sockets of a busy delivery pool
with Connection(sys.argv[1], transport=Transport) as conn:
    queue = conn.SimpleQueue("t-green")
    queue.put({"n": 1})
    message = queue.get(timeout=10)  # polls a broker socket numbered past 1024
    assert message.payload == {"n": 1}, message.payload
    message.ack()
    assert conn.default_channel.client.connection_pool.connection_kwargs
"""


def test_a_gevent_consumer_polls_a_broker_socket_past_1024(server: EmbeddedRedis) -> None:
    """kombu polls with select() under gevent, which refuses descriptors of 1024 or more."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 1500:
        pytest.skip("needs a hard RLIMIT_NOFILE of 1500 or more")
    done = subprocess.run(
        [sys.executable, "-c", GREEN_CONSUMER, server.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]


FILES_CHECK = """
import resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
from tasks.worker import app
app.WorkController(concurrency=1000, pool_cls="solo", without_mingle=True, without_gossip=True)
options = app.conf.broker_transport_options
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], options["max_connections"])
"""


def test_a_worker_of_1000_slots_raises_its_open_files_limit(settings: Settings) -> None:
    """1000 slots may hold 3 files each; a soft limit of 1024 (systemd's) would run out."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 3256:
        pytest.skip("needs a hard RLIMIT_NOFILE of 3256 or more")
    done = subprocess.run(
        [sys.executable, "-c", FILES_CHECK],
        capture_output=True,
        text=True,
        timeout=60,
        # The suite's settings: a worker starts only on a migrated database and its key.
        env={**os.environ, **settings_env(settings)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    files, pool = map(int, done.stdout.split()[-2:])
    assert files == 3 * 1000 + 256 and pool == 1000 + BROKER_POOL_SPARE
