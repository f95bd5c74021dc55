"""The message log: what each attempt sent and what the receiver answered.

Every attempt in ``GET /v1/jobs/{id}/deliveries`` and ``GET /v1/endpoints/{id}/attempts``
shows ``request`` (``headers``: as signed and sent; ``body``: the message's bytes as text)
and ``response`` (the receiver's ``headers`` and the first 64 KiB of its ``body``, bounded
by ``jobgate.webhooks.http.logged_response``); both are None for an attempt that sent
nothing (refused), ``response`` also for one that got no answer (a connection error, a
timeout).

What one partner's receiver can do to the shared stores is bounded: the request body is
never copied per attempt (the ledger keeps a message's body once, ``webhook:<id>:<event>:
body``, and the database once per ``webhook-id``, ``webhook_bodies``); the request headers
ride in the attempt's entry (the endpoint's own headers are bounded at registration); an
answer is cut to its bounds before it is kept, once per attempt (the subject's responses
hash, the ``attempts.response`` column), for as long as the attempt is kept: the same
``MAX_LOG`` attempts per subject and the same retention, in Redis and in the database.

Reads join the pieces from Redis and, for an attempt whose pieces Redis forgot, from the
database (``jobgate.history``), the way the attempts themselves are read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from jobgate.store import Store
from jobgate.webhooks.ledger import Deliveries

log = logging.getLogger(__name__)


def exchange(
    entry: dict[str, Any], body: str | None, response: dict[str, Any] | None
) -> dict[str, Any]:
    """``entry`` (a recorded attempt) with its ``request`` (its headers, and ``body``) and
    ``response`` as the API shows them (None where there is none)."""
    sent = entry.get("request")
    request = None
    if isinstance(sent, dict) and sent.get("headers") is not None:
        request = {"headers": sent["headers"], "body": body}
    return {**entry, "request": request, "response": response}


def _missing(entry: dict[str, Any], body: str | None, response: Any) -> bool:
    """Redis lacks a piece this attempt has: its body (it sent one), or its answer (it got
    one: a status code)."""
    if not isinstance(entry.get("request"), dict):
        return False  # sent nothing, or recorded before the message log: nothing to find
    return body is None or (entry.get("status_code") is not None and response is None)


def joined(
    store: Store,
    attempts: Sequence[tuple[str, dict[str, Any]]],
    db: Any = None,
) -> list[dict[str, Any]]:
    """Each (delivery subject id, recorded attempt) with what it sent and was answered:
    read from Redis in one round trip, and from ``db`` for the attempts whose pieces Redis
    no longer holds (none when ``db`` is None)."""
    if not attempts:
        return []
    books = Deliveries(store)
    body_keys = list(
        dict.fromkeys(
            books.body_key(subject, str(entry.get("event"))) for subject, entry in attempts
        )
    )
    pipe = store.redis.pipeline(transaction=False)
    for subject, entry in attempts:
        pipe.hget(books.responses_key(subject), str(entry.get("attempt")))
    for key in body_keys:
        pipe.get(key)
    replies = pipe.execute()
    responses, bodies = (
        replies[: len(attempts)],
        dict(zip(body_keys, replies[len(attempts) :], strict=True)),
    )
    found: list[tuple[str, dict[str, Any], str | None, dict[str, Any] | None]] = []
    for (subject, entry), raw in zip(attempts, responses, strict=True):
        body = bodies.get(books.body_key(subject, str(entry.get("event"))))
        found.append((subject, entry, body, json.loads(raw) if raw else None))
    lost = [
        (subject, entry) for subject, entry, body, answer in found if _missing(entry, body, answer)
    ]
    if lost and db is not None:
        from jobgate import history

        try:
            kept_bodies, kept_responses = history.exchanges(db, lost)
        except SQLAlchemyError:  # the attempts still read (from Redis), without these
            log.warning("the message log could not read the database", exc_info=True)
            kept_bodies, kept_responses = {}, {}
        found = [
            (
                subject,
                entry,
                body if body is not None else kept_bodies.get(str(entry.get("webhook_id"))),
                answer
                if answer is not None
                else kept_responses.get((subject, int(entry.get("attempt") or 0))),
            )
            for subject, entry, body, answer in found
        ]
    return [exchange(entry, body, answer) for _, entry, body, answer in found]


def subject_of(entry: dict[str, Any]) -> str:
    """The delivery subject of an endpoint's attempt: its message, whose id is its
    ``webhook-id`` (``jobgate.events.webhook_id``)."""
    return str(entry.get("webhook_id") or "")
