"""An endpoint's turn (``rate_limit``) is spent only by an attempt that is sent: one
deferred for its partner's ``max_inflight_deliveries`` takes no turn, so a partner at its
in-flight limit does not push its throttled endpoint's next turns later and later.

Run on the scripts themselves (``Deliveries.begin``, real Redis): the endpoint's pace is
one turn every 100 s, so a turn spent by a deferral shows as a throttle, whatever the
machine's speed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from jobgate.due import entry
from jobgate.messages import DELIVER_TASK
from jobgate.store import Store
from jobgate.webhooks.ledger import DEFERRED, Begun, Deliveries

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_client: Any) -> Iterator[Store]:
    tag = uuid.uuid4().hex[:8]
    yield Store(redis_client, prefix=f"pace-{tag}", retention=600, open_grace=5)
    for key in redis_client.scan_iter(f"pace-{tag}:*"):
        redis_client.delete(key)


def _message(store: Store, endpoint_id: str) -> str:
    msg_id = "msg_" + uuid.uuid4().hex
    store.redis.hset(
        store.key("webhook", msg_id),
        mapping={"kind": "message", "partner_id": "ptn_a", "endpoint_id": endpoint_id},
    )
    return msg_id


def due_of(msg_id: str) -> str:
    return entry(DELIVER_TASK, f"task-{msg_id}", queue="hooks", args=[msg_id])


def _begin(store: Store, msg_id: str, node: str = "node-1") -> Any:
    return Deliveries(store).begin(
        msg_id,
        "t1",
        lease=5,
        event="job.succeeded",
        record_key=store.key("webhook", msg_id),
        node=node,
        task_id=f"task-{msg_id}",
        owner=("endpoint_id", "endpoint"),
        due_entry=due_of(msg_id),
    )


def test_an_attempt_deferred_for_its_partners_limit_takes_no_turn_of_its_endpoint(
    store: Store,
) -> None:
    store.redis.hset(store.key("partner", "ptn_a"), mapping={"max_inflight_deliveries": "1"})
    store.redis.hset(store.key("endpoint", "ep_fast"), mapping={"url": "http://x/a"})
    store.redis.hset(
        store.key("endpoint", "ep_slow"), mapping={"url": "http://x/b", "rate_limit": "0.01"}
    )
    fast = _message(store, "ep_fast")
    assert isinstance(_begin(store, fast), Begun)  # the partner's one slot, held

    waiting = [_message(store, "ep_slow") for _ in range(3)]
    for msg_id in waiting:
        assert _begin(store, msg_id) == DEFERRED  # no slot: deferred, unspent
    assert store.redis.get(store.key("endpoint", "ep_slow", "next")) is None  # no turn taken

    Deliveries(store).release(fast, "t1", f"task-{fast}", "ptn_a")  # the slot given back
    woken = store.redis.zscore(store.due_key, due_of(waiting[0]))
    assert woken is not None and woken <= time.time() + 1  # the first in line, due now
    first = _begin(store, waiting[0])
    assert isinstance(first, Begun), first  # sent at once: its turn was not spent before


def test_a_throttled_attempt_taken_over_from_a_dead_node_gives_its_slot_to_the_next(
    store: Store,
) -> None:
    """An attempt whose node died holds its partner's slot; taken over and throttled (no
    turn of its endpoint's now), it holds none: the slot goes to the first in line."""
    store.redis.hset(store.key("partner", "ptn_a"), mapping={"max_inflight_deliveries": "1"})
    store.redis.hset(store.key("endpoint", "ep_fast"), mapping={"url": "http://x/a"})
    store.redis.hset(
        store.key("endpoint", "ep_slow"), mapping={"url": "http://x/b", "rate_limit": "0.01"}
    )
    slow = _message(store, "ep_slow")
    assert isinstance(_begin(store, slow), Begun)  # its turn, and the one slot; node-1 dies
    waiting = _message(store, "ep_fast")
    assert _begin(store, waiting) == DEFERRED
    again = _begin(store, slow, node="node-2")  # node-1 is not alive: taken over
    assert not isinstance(again, Begun) and again != DEFERRED  # throttled: 100 s to its turn
    inflight = store.redis.zrange(store.key("inflight", "ptn_a"), 0, -1)
    assert f"task-{slow}" not in inflight
    woken = store.redis.zscore(store.due_key, due_of(waiting))
    assert woken is not None and woken <= time.time() + 1
