"""Deliveries scheduled for later: a Redis sorted set of task messages by due time.

Webhook retries wait minutes to hours. As Celery ETA tasks they would sit unacknowledged
in a worker's memory all that time, which forces the broker's visibility timeout above
the longest delay, so a killed worker's jobs would wait hours to run again. Instead a
retry is an entry here (Sidekiq's retry set), written in the script that records the
attempt before it, and every worker moves due entries onto their queue once a second
(``move_due``); the move is atomic per entry, so workers doing it at once never queue an
entry twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from jobgate import handoff
from jobgate.failpoints import failpoint
from jobgate.messages import Messenger
from jobgate.store import Store

MOVE_BATCH = 500  # entries moved per call at most
# This process's due moves that want to know of an entry due soon (the worker's upkeep,
# tasks.upkeep): called with its due time by ``wake``.
WAKERS: dict[int, Callable[[float], None]] = {}


def entry(
    task: str,
    task_id: str,
    *,
    queue: str,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
) -> str:
    """A due-set entry: the task to send, as compact JSON (unique by its task id)."""
    return json.dumps(
        {"id": task_id, "task": task, "queue": queue, "args": list(args), "kwargs": kwargs or {}},
        separators=(",", ":"),
        sort_keys=True,
    )


def move_due(
    store: Store, messenger: Messenger, *, now: float | None = None, limit: int = MOVE_BATCH
) -> int:
    """Queue every entry due by ``now``; returns how many this call moved."""
    now = time.time() if now is None else now
    rows = cast(
        "list[str]", store.redis.zrangebyscore(store.due_key, "-inf", now, start=0, num=limit)
    )
    return move(store, messenger, rows, now=now)


def wake(at: float) -> None:
    """An entry was just put on the due set for ``at`` (an endpoint's turn): this
    process's due moves (``WAKERS``) may run then instead of at their next tick."""
    for waker in list(WAKERS.values()):
        try:
            waker(at)
        except Exception:  # noqa: BLE001 - the tick moves it anyway
            pass


def next_due(store: Store) -> float | None:
    """When the earliest entry is due (Unix seconds), None if there is none."""
    first = cast(
        "list[tuple[str, float]]", store.redis.zrange(store.due_key, 0, 0, withscores=True)
    )
    return float(first[0][1]) if first else None


def move(
    store: Store, messenger: Messenger, rows: Sequence[str], *, now: float | None = None
) -> int:
    """Queue these due-set entries now, each by the one caller that takes it off the set
    (a redelivery brings one forward this way); returns how many this call moved."""
    if not rows:
        return 0
    now = time.time() if now is None else now
    specs = [json.loads(row) for row in rows]
    if messenger.inline:
        keys, args = [store.due_key], []
        for row, spec in zip(rows, specs, strict=True):
            keys.append(spec["queue"])
            args += [
                row,
                messenger.envelope(
                    spec["task"],
                    spec["id"],
                    queue=spec["queue"],
                    args=spec["args"],
                    kwargs=spec["kwargs"],
                ),
            ]
        return int(store.scripts["due_move"](keys=keys, args=args))
    moved = 0
    for row, spec in zip(rows, specs, strict=True):
        if not store.redis.zrem(store.due_key, row):  # another worker took it
            continue
        failpoint("delivery.due")
        try:
            messenger.send(
                spec["task"],
                queue=spec["queue"],
                args=spec["args"],
                kwargs=spec["kwargs"],
                task_id=spec["id"],
            )
        except Exception:
            store.redis.zadd(store.due_key, {row: now})  # put it back for the next pass
            raise
        # Until here a crash loses the entry; its delivery stays open (due time plus the
        # open grace) and the sweeper sends it again.
        handoff.handed(store, messenger, spec["id"])
        moved += 1
    return moved
