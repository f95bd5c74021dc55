"""Operational events: what happens to a partner's deliveries, told to its endpoints.

``endpoint.disabled`` and ``endpoint.enabled`` (``jobgate.endpoints``), and
``message.attempt.failing``, ``…exhausted`` and ``…recovered`` (after an attempt is
recorded: ``after_attempt``) go to the partner's registered endpoints whose
``event_types`` name them (``jobgate.endpoints.matches``), never to the endpoint they are
about when it is being disabled, and never about a message that is itself an operational
event (so no event can cause another without end).

How nothing is lost (the pattern of a job's end, ``jobgate.ends``): the event is first a
row of ``operational_events`` with its body, committed (an endpoint's disabling in the
same transaction as the disabling itself); then Redis gets its record and body, and the
event's fan-out step (``jobgate.webhooks.fanout``, the one every job event without a
callback takes) is marked open and queued. From there it is a subject like a job: one
message per subscribed endpoint (a row each), each sent through its partner's
``max_inflight_deliveries`` like any message, retried, held for a disabled endpoint. The
step's run settles the row; ``relay`` gives Redis back every row not settled whose record
it lost (a restart, a crash between the commit and the queueing).

Nothing is committed for a partner none of whose endpoints subscribes: the check reads
the endpoints' Redis mirrors, and costs a database write only when someone listens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cache
from typing import Any, Protocol, cast

from sqlalchemy import Table, select, update
from sqlalchemy.orm import Session

from jobgate.db import Database, insert_statement
from jobgate.db.models import OperationalEvent
from jobgate.events import (
    ATTEMPT_EXHAUSTED,
    ATTEMPT_FAILING,
    ATTEMPT_RECOVERED,
    FAILING_AFTER,
    OPERATIONAL,
    OPERATIONAL_SUBJECT,
    event_body,
)
from jobgate.lifecycle import enqueue_fan_out
from jobgate.logs import loggable
from jobgate.messages import Messenger
from jobgate.store import Store
from jobgate.times import parse_time, utcnow
from jobgate.webhooks.ledger import Deliveries

log = logging.getLogger(__name__)

PAGE = 1000  # unsettled rows read per query by the relay


class Registry(Protocol):
    """What announcing needs of the endpoint registry (``jobgate.endpoints.Endpoints``)."""

    store: Store
    db: Database

    def for_partner(self, partner_id: str) -> list[dict[str, str]]: ...


def op_id(*parts: str) -> str:
    """An operational event's id, derived from what it is about: announcing the same
    thing twice (a retried bookkeeping step) makes one event."""
    return "op_" + hashlib.sha256(":".join(parts).encode()).hexdigest()[:32]


def subscribers(
    registry: Registry, partner_id: str, event: str, exclude: str = ""
) -> list[dict[str, str]]:
    """The partner's endpoints (mirrors) that subscribe to ``event``, ``exclude`` aside."""
    from jobgate.endpoints import matches

    return [
        endpoint
        for endpoint in registry.for_partner(partner_id)
        if endpoint.get("id") != exclude and matches(endpoint, event)
    ]


@dataclass(frozen=True)
class Announcement:
    """One operational event, its body fixed when it happened."""

    op_id: str
    partner_id: str
    event: str
    body: str
    exclude: str = ""  # the endpoint it must not go to

    def row(self, keyspace: str) -> dict[str, Any]:
        return {
            "op_id": self.op_id,
            "keyspace": keyspace,
            "partner_id": self.partner_id,
            "event": self.event,
            "exclude": self.exclude,
            "body": self.body,
            "created_at": parse_time(json.loads(self.body)["timestamp"]),
            "settled": False,
        }


def prepare(
    registry: Registry,
    partner_id: str,
    event: str,
    data: dict[str, Any],
    key: tuple[str, ...],
    *,
    exclude: str = "",
    at: str | None = None,
) -> Announcement | None:
    """The event, if any endpoint of the partner listens (None otherwise: nothing to do).
    ``key``: what makes it one event (its id is derived from it)."""
    if event not in OPERATIONAL or not partner_id:
        return None
    if not subscribers(registry, partner_id, event, exclude):
        return None
    body = event_body(event, data, at or utcnow())
    return Announcement(op_id(event, *key), partner_id, event, body, exclude)


@cache
def _keep_statement() -> Any:
    table = cast(Table, OperationalEvent.__table__)
    return insert_statement(table, "ON CONFLICT (op_id) DO NOTHING")


def commit(
    db: Database, keyspace: str, event: Announcement, session: Session | None = None
) -> None:
    """Commit the event's row (one kept already stays as it is); in ``session`` when the
    change it announces is being committed there (one transaction for both)."""
    if session is not None:
        session.execute(_keep_statement(), event.row(keyspace))
    else:
        db.write(_keep_statement(), event.row(keyspace))


def publish(store: Store, messenger: Messenger, db: Database, event: Announcement) -> None:
    """Hand a committed event to Redis: its record and body (the row's: the first commit
    wins), and its fan-out step, marked open in the same transaction as the record (the
    sweeper sends a step whose message went missing)."""
    body = body_of(db, event.op_id)
    _to_redis(store, messenger, event if body is None else replace(event, body=body))


def _to_redis(store: Store, messenger: Messenger, event: Announcement) -> None:
    parsed = json.loads(event.body)
    record = {
        "op_id": event.op_id,
        "partner_id": event.partner_id,
        "event": event.event,
        "exclude": event.exclude,
        "occurred_at": parsed["timestamp"],
        "data": json.dumps(parsed["data"], separators=(",", ":"), default=str),
    }
    key = store.key(OPERATIONAL_SUBJECT, event.op_id)
    pipe = store.redis.pipeline()
    pipe.hset(key, mapping=cast(Any, record))
    pipe.expire(key, store.retention)
    body_key = Deliveries(store).body_key(event.op_id, event.event)
    pipe.set(body_key, event.body, ex=store.retention, nx=True)
    pipe.execute()
    enqueue_fan_out(store, messenger, OPERATIONAL_SUBJECT, event.op_id, event.event)


def announce(
    registry: Registry,
    messenger: Messenger,
    partner_id: str,
    event: str,
    data: dict[str, Any],
    key: tuple[str, ...],
    *,
    exclude: str = "",
) -> str | None:
    """Prepare, commit and publish an event; its id, or None when nobody listens."""
    found = prepare(registry, partner_id, event, data, key, exclude=exclude)
    if found is None:
        return None
    commit(registry.db, registry.store.prefix, found)
    publish(registry.store, messenger, registry.db, found)
    log.info("announced %s %s to partner %s", event, found.op_id, partner_id)
    return found.op_id


def settle(db: Database, op: str) -> None:
    """The event's fan-out step ran: its messages are rows of their own."""
    db.write(
        update(OperationalEvent)
        .where(OperationalEvent.op_id == op, OperationalEvent.settled.is_(False))
        .values(settled=True)
    )


def body_of(db: Database, op: str) -> str | None:
    """An event's body as its row keeps it (a held message's, when Redis forgot it)."""
    found = db.read(select(OperationalEvent.body).where(OperationalEvent.op_id == op))
    return str(found[0][0]) if found else None


def relay(store: Store, db: Database, messenger: Messenger, *, older_than: float) -> int:
    """Give Redis back every event of this key prefix not settled, committed more than
    ``older_than`` s ago, whose record Redis does not hold (lost, or never handed over);
    returns how many. A step queued twice creates each message once."""
    cutoff = datetime.fromtimestamp(time.time() - older_than, UTC)
    restored, after = 0, ""
    while True:
        page = db.read(
            select(OperationalEvent)
            .where(
                OperationalEvent.keyspace == store.prefix,
                OperationalEvent.settled.is_(False),
                OperationalEvent.created_at < cutoff,
                OperationalEvent.op_id > after,
            )
            .order_by(OperationalEvent.op_id)
            .limit(PAGE)
        )
        if not page:
            return restored
        pipe = store.redis.pipeline(transaction=False)
        for row in page:
            pipe.exists(store.key(OPERATIONAL_SUBJECT, row.op_id))
        for row, there in zip(page, pipe.execute(), strict=True):
            if not there:
                event = Announcement(row.op_id, row.partner_id, row.event, row.body, row.exclude)
                _to_redis(store, messenger, event)
                restored += 1
                log.warning("operational: gave Redis back %s %s", row.event, row.op_id)
        after = page[-1].op_id


# ------------------------------------------------------------ after an attempt
@dataclass(frozen=True)
class Attempted:
    """What ``after_attempt`` needs of one recorded attempt
    (``jobgate.webhooks.attempt._record``)."""

    kind: str  # the subject's kind: job, batch, msg
    subject_id: str
    event: str
    chain: str
    webhook_id: str
    partner_id: str
    endpoint_id: str  # '' for a callback_url
    url: str
    outcome: str  # the attempt's own: delivered, retry, failed
    state: str  # the delivery's after it: delivered, retrying, failed
    number: int  # the attempt's number among the message's attempts
    entry: dict[str, Any]
    record: dict[str, str]  # the subject's raw record (a message's: its kind, subject_id)
    refused: bool  # not sent: the endpoint is disabled or deleted


def after_attempt(
    registry: Registry, messenger: Messenger, attempt: Attempted, previous: Callable[[], str | None]
) -> str | None:
    """Announce what the attempt changed of its message: ``failing`` (its 4th failed
    attempt), ``exhausted`` (its last failed: no attempt follows), ``recovered`` (it was
    failing and is delivered). ``previous``: the outcome of the attempt before this one
    (asked only for a delivered attempt after ``FAILING_AFTER`` failed ones). Returns the
    id of what was announced, or None."""
    if attempt.event in OPERATIONAL or attempt.refused or not attempt.partner_id:
        return None  # no event about an operational event's own message
    wid, chain = attempt.webhook_id, attempt.chain
    due: list[tuple[str, tuple[str, ...]]] = []
    if attempt.outcome == "delivered":
        if attempt.number > FAILING_AFTER and previous() not in (None, "delivered"):
            due.append((ATTEMPT_RECOVERED, (wid, chain, str(attempt.number))))
    else:
        if attempt.number == FAILING_AFTER:  # once per message: its 4th attempt is one
            due.append((ATTEMPT_FAILING, (wid,)))
        if attempt.state == "failed":  # the 4th may be the last too: failing, then this
            due.append((ATTEMPT_EXHAUSTED, (wid, chain)))
    announced = None
    for event, key in due:
        announced = (
            announce(registry, messenger, attempt.partner_id, event, attempt_data(attempt), key)
            or announced
        )
    return announced


def attempt_data(attempt: Attempted) -> dict[str, Any]:
    """``data`` of a ``message.attempt.*`` event: the endpoint (id and URL, or the
    callback URL as logs show it), the message, the job or batch, the last attempt."""
    if attempt.endpoint_id:
        endpoint: dict[str, Any] = {"id": attempt.endpoint_id, "url": loggable(attempt.url)}
        kind, subject_id = attempt.record.get("kind", ""), attempt.record.get("subject_id", "")
    else:
        endpoint = {"callback_url": loggable(attempt.url)}
        kind, subject_id = attempt.kind, attempt.subject_id
    data: dict[str, Any] = {
        "endpoint": endpoint,
        "message": {"webhook_id": attempt.webhook_id, "event": attempt.event},
    }
    if kind in ("job", "batch"):
        data[f"{kind}_id"] = subject_id
    data["attempts"] = attempt.number
    data["last_attempt"] = {
        "at": attempt.entry.get("at"),
        "status_code": attempt.entry.get("status_code"),
        "error": attempt.entry.get("error"),
    }
    return data


__all__ = [
    "Announcement",
    "Attempted",
    "after_attempt",
    "announce",
    "body_of",
    "commit",
    "prepare",
    "publish",
    "relay",
    "settle",
]
