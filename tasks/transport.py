"""kombu's Redis transports: plain ack pipelines, one shared client and, under gevent, a
poller without select()'s limit of 1024 descriptors.

kombu's Redis QoS records each message a worker takes (``ZADD unacked_index`` +
``HSET unacked``) and forgets it on ack (``ZREM`` + ``HDEL``), each pair in a
MULTI/EXEC: 8 of a job's Redis commands (its task and its delivery's). Neither pair
needs a transaction. Both go in one round trip in order, and kombu's restore
(``restore_by_tag``, a MULTI/EXEC of its own, kept) reads the hash before it trusts the
index: an index entry whose hash entry is not written yet is fresh, so no restore looks
at it; one whose hash entry is gone restores nothing. ``broker_transport_for`` names
these classes for a ``redis://`` or ``sentinel://`` broker.

Left to kombu's own classes: ``rediss://`` (kombu turns TLS on only for a transport
named ``rediss``), and a broker URL list after its first failover (kombu's ``switch``
takes the next URL's scheme): both cost the 8 commands, nothing else.

kombu also builds a new ``redis.Redis`` client for every take and every ack (its
``conn_or_acquire``); building one copies redis-py's table of response callbacks, a cost that
showed in profiles of a worker's consumer process. These channels keep one client
per connection pool instead: a client holds no connection of its own (each command
borrows one from the pool), so every greenlet and thread may share it.

``RedisQueues`` is what the rest of jobgate knows of this transport's keys: the sweeper
looks for a job's message on the queues' lists and in the ``unacked`` hash, and the
worker's upkeep refreshes the ``unacked_index`` scores of the messages it holds.
"""

from __future__ import annotations

import json
import select
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from kombu.transport import redis as kombu_redis
from kombu.utils import eventio
from kombu.utils.compat import detect_environment

from jobgate.connections import checked_pool_options
from tasks.publish import task_id_of


class QoS(kombu_redis.QoS):
    """kombu's QoS, its append and ack pipelines without MULTI/EXEC."""

    @contextmanager
    def pipe_or_acquire(self, pipe: Any = None, client: Any = None) -> Iterator[Any]:
        if pipe:
            yield pipe
        else:
            with self.channel.conn_or_acquire(client) as conn:
                yield conn.pipeline(transaction=False)


class SharedClient:
    """A channel's ``conn_or_acquire`` that reuses one client per connection pool, and
    pools that keep redis-py's check of the connections they hand out."""

    _shared: tuple[Any, Any] | None = None  # (pool, client built on it)

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        return {**super()._connparams(asynchronous), **checked_pool_options()}  # type: ignore[misc]

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool  # type: ignore[attr-defined]
        shared = self._shared
        if shared is None or shared[0] is not pool:  # kombu replaces the pool on reconnect
            shared = (pool, self._create_client())  # type: ignore[attr-defined]
            self._shared = shared
        yield shared[1]


class GreenPoll(eventio._poll):
    """kombu's (private) ``poll`` poller on ``select.poll`` as it is when built: gevent's
    cooperative one in a gevent worker. In a greenlet environment kombu polls with
    ``select.select``, which raises ``ValueError`` for a descriptor of 1024 or more: a
    delivery pool of 1000 slots holds that many sockets, and a broker connection made
    after them gets one."""

    def __init__(self) -> None:
        self._poller = select.poll()
        self._quick_poll = self._poller.poll
        self._quick_register = self._poller.register
        self._quick_unregister = self._poller.unregister


def green_poller(transport: Any) -> None:
    """Give ``transport``'s poller ``GreenPoll`` under gevent (eventlet's ``select`` has no
    ``poll``: there kombu's choice stays)."""
    if detect_environment() == "gevent" and hasattr(select, "poll"):
        transport.cycle.poller = GreenPoll()


class Channel(SharedClient, kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        green_poller(self)


class SentinelChannel(SharedClient, kombu_redis.SentinelChannel):
    QoS = QoS


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        green_poller(self)


TRANSPORTS = {
    "redis": f"{__name__}:Transport",
    "sentinel": f"{__name__}:SentinelTransport",
}


def broker_transport_for(url: str) -> str | None:
    """The transport class path for a broker URL (None: kombu's choice by its scheme)."""
    return TRANSPORTS.get(urlsplit(url.split(";", 1)[0]).scheme)


class RedisQueues:
    """Where kombu's Redis transport keeps messages, under its ``global_keyprefix``: each
    queue a list (``LPUSH`` to publish, ``BRPOP`` to take), and every message a worker
    took and has not acked in the ``unacked`` hash (delivery tag -> ``[message, exchange,
    routing key]``), scored in ``unacked_index`` by when it was taken. The sweeper's
    ``jobgate.sweeper.Broker``."""

    def __init__(
        self,
        prefix: str = "",
        unacked: str = kombu_redis.Channel.unacked_key,
        unacked_index: str = kombu_redis.Channel.unacked_index_key,
    ) -> None:
        self.prefix = prefix
        self.unacked = prefix + unacked
        self.unacked_index = prefix + unacked_index

    @classmethod
    def of(cls, channel: Any) -> RedisQueues:
        """The keys of a worker's consumer channel (its transport options may rename
        them)."""
        return cls(
            getattr(channel, "global_keyprefix", "") or "",
            channel.unacked_key,
            channel.unacked_index_key,
        )

    def read(self, pipe: Any, queues: Sequence[str]) -> None:
        """Add to ``pipe`` the reads of every message queued on ``queues`` or held
        unacknowledged; ``task_ids`` takes their replies."""
        for queue in queues:
            pipe.lrange(self.prefix + queue, 0, -1)
        pipe.hvals(self.unacked)

    def task_ids(self, replies: Sequence[Any]) -> set[str]:
        """The task ids in the replies of ``read``'s commands, in their order."""
        *lists, held = replies
        found = {task_id_of(raw) for listed in lists for raw in listed}
        for raw in held:
            try:
                found.add(task_id_of(json.loads(raw)[0]))
            except (ValueError, IndexError, TypeError):
                continue
        found.discard("")
        return found

    def push_next(self, redis: Any, queue: str, message: str) -> None:
        """Queue ``message`` on ``queue`` at the end workers take from: it runs next."""
        redis.rpush(self.prefix + queue, message)
