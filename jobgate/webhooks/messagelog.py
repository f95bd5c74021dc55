"""The message log: what each attempt sent and what the receiver answered.

Every attempt in ``GET /v1/jobs/{id}/deliveries`` and ``GET /v1/endpoints/{id}/attempts``
shows ``request`` (``headers``: as signed and sent; ``body``: the message's bytes as text)
and ``response`` (the receiver's ``headers`` and the first 64 KiB of its ``body``, bounded
by ``jobgate.webhooks.http.logged_response``); both are None for an attempt that sent
nothing (refused), ``response`` also for one that got no answer (a connection error, a
timeout).

What one partner's receiver can do to the shared stores is bounded: the request body is
never copied per attempt (the ledger keeps a message's body once, ``webhook:<id>:<event>:
body``, and the database once per ``webhook-id``, ``webhook_bodies``); the headers
jobgate sets ride in the attempt's entry, and an endpoint's own headers (up to 4 KiB) are
kept in Redis once per endpoint and set of values (``sent_apart``; the entry names them
by digest), not in each of the endpoint's 10 000 latest attempts; the archive writes
each attempt's headers whole into the database (``with_endpoint_headers``; if Redis lost
them first, the endpoint's row's while it holds the same set: ``rebuilt``); an
answer is cut to its bounds before it is kept, once per attempt (the subject's responses
hash, the ``attempts.response`` column), for as long as the attempt is kept: the same
``MAX_LOG`` attempts per subject and the same retention, in Redis and in the database.

Reads join the pieces from Redis and, for an attempt whose pieces Redis forgot, from the
database (``jobgate.history``), the way the attempts themselves are read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from jobgate.store import Store
from jobgate.webhooks.ledger import Deliveries

log = logging.getLogger(__name__)


def sent_apart(
    sent: Mapping[str, str], endpoint_headers: Mapping[str, str]
) -> tuple[dict[str, Any], str | None]:
    """An attempt's ``request`` as its entry keeps it, and the endpoint's own headers
    among ``sent`` as JSON (None without any), kept apart under ``headers_key``: the
    entry then holds the headers jobgate set and the digest of the endpoint's."""
    # The endpoint's: a header sent with the endpoint's own value (one jobgate set in its
    # place, a traceparent, stays in the entry).
    values = {name.lower(): value for name, value in endpoint_headers.items()}
    theirs = {name: value for name, value in sent.items() if values.get(name.lower()) == value}
    if not theirs:
        return {"headers": dict(sent)}, None
    own = {name: value for name, value in sent.items() if name not in theirs}
    return {"headers": own, "endpoint_headers": _digest(theirs)}, json.dumps(
        theirs, separators=(",", ":")
    )


def keep_request(
    store: Store,
    entry: dict[str, Any],
    sent: Mapping[str, str] | None,
    endpoint_headers: Mapping[str, str],
) -> tuple[str, str]:
    """Put the request an attempt sent (``sent``: its headers; None: it sent nothing)
    into its ``entry``, which names its endpoint if it has one; returns where and what
    of the endpoint's headers to keep apart, for ``Deliveries.record`` ("": nothing)."""
    if sent is None:
        return "", ""
    entry["request"], kept = sent_apart(sent, endpoint_headers)
    return headers_key(store, entry) or "", kept or ""


def _digest(headers: Mapping[str, str]) -> str:
    """Names a set of headers and values, whatever their order (PostgreSQL's JSONB keeps
    none: ``rebuilt`` compares with the endpoint's row)."""
    text = json.dumps(headers, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rebuilt(entry: Mapping[str, Any], endpoint_headers: Mapping[str, str] | None) -> str | None:
    """The endpoint's headers an attempt sent, when Redis lost them: the endpoint's
    headers now (its row), as JSON, if they are the set the attempt named; else None."""
    sent = entry.get("request")
    if not endpoint_headers or not isinstance(sent, dict):
        return None
    if _digest(endpoint_headers) != sent.get("endpoint_headers"):
        return None
    return json.dumps(dict(endpoint_headers), separators=(",", ":"))


def headers_key(store: Store, entry: Mapping[str, Any]) -> str | None:
    """Where the endpoint's headers an attempt sent are kept (None: it kept them all)."""
    sent = entry.get("request")
    if not isinstance(sent, dict) or not sent.get("endpoint_headers"):
        return None
    return store.key("endpoint", str(entry.get("endpoint_id")), "sent", sent["endpoint_headers"])


def with_endpoint_headers(entry: dict[str, Any], kept: str | None) -> dict[str, Any]:
    """``entry`` with its request's headers whole again, given the endpoint's headers
    kept apart (``kept``: their JSON; None when Redis lost them: jobgate's own only)."""
    sent = entry.get("request")
    if not isinstance(sent, dict) or "endpoint_headers" not in sent:
        return entry
    whole: dict[str, Any] = {"headers": {**(json.loads(kept) if kept else {}), **sent["headers"]}}
    if not kept:
        whole["headers_incomplete"] = True  # the endpoint's own were lost with Redis
    return {**entry, "request": whole}


def exchange(
    entry: dict[str, Any], body: str | None, response: dict[str, Any] | None
) -> dict[str, Any]:
    """``entry`` (a recorded attempt, its headers whole) with its ``request`` (its
    headers, and ``body``) and ``response`` as the API shows them (None where none)."""
    sent = entry.get("request")
    request = None
    if isinstance(sent, dict) and sent.get("headers") is not None:
        request = {"headers": sent["headers"], "body": body}
        if sent.get("headers_incomplete"):
            request["headers_incomplete"] = True
    return {**entry, "request": request, "response": response}


def _missing(entry: dict[str, Any], body: str | None, response: Any) -> bool:
    """Redis lacks a piece this attempt has: its body (it sent one), its answer (it got
    one: a status code), or the endpoint's headers it sent (kept apart)."""
    sent = entry.get("request")
    if not isinstance(sent, dict):
        return False  # sent nothing, or recorded before the message log: nothing to find
    if sent.get("endpoint_headers"):
        return True
    return body is None or (entry.get("status_code") is not None and response is None)


def joined(
    store: Store, attempts: Sequence[tuple[str, dict[str, Any]]], db: Any = None
) -> list[dict[str, Any]]:
    """Each (delivery subject id, recorded attempt) with what it sent and was answered:
    read from Redis in one round trip, and from ``db`` for the attempts whose pieces Redis
    no longer holds (none when ``db`` is None)."""
    if not attempts:
        return []
    books = Deliveries(store)
    # Each message's body, and each set of an endpoint's headers kept apart, read once.
    keys = list(
        dict.fromkeys(
            [books.body_key(subject, str(entry.get("event"))) for subject, entry in attempts]
            + [key for _, entry in attempts if (key := headers_key(store, entry))]
        )
    )
    pipe = store.redis.pipeline(transaction=False)
    for subject, entry in attempts:
        pipe.hget(books.responses_key(subject), str(entry.get("attempt")))
    for key in keys:
        pipe.get(key)
    replies = pipe.execute()
    responses = replies[: len(attempts)]
    bodies = dict(zip(keys, replies[len(attempts) :], strict=True))
    found: list[tuple[str, dict[str, Any], str | None, dict[str, Any] | None]] = []
    for (subject, entry), raw in zip(attempts, responses, strict=True):
        body = bodies.get(books.body_key(subject, str(entry.get("event"))))
        kept = bodies.get(key) if (key := headers_key(store, entry)) else None
        whole = with_endpoint_headers(entry, kept) if kept else entry  # else: below
        found.append((subject, whole, body, json.loads(raw) if raw else None))
    lost = [
        (subject, entry) for subject, entry, body, answer in found if _missing(entry, body, answer)
    ]
    kept_bodies: dict[str, str] = {}
    kept_responses: dict[tuple[str, int], dict[str, Any]] = {}
    kept_requests: dict[tuple[str, int], dict[str, Any]] = {}
    if lost and db is not None:
        from jobgate import history

        try:
            kept_bodies, kept_responses, kept_requests = history.exchanges(db, lost)
        except SQLAlchemyError:  # the attempts still read (from Redis), without these
            log.warning("the message log could not read the database", exc_info=True)
    shown = []
    for subject, entry, body, answer in found:
        number = int(entry.get("attempt") or 0)
        archived = kept_requests.get((subject, number))
        if "endpoint_headers" in (entry.get("request") or {}) and archived is not None:
            entry = {**entry, "request": archived}
        if body is None:
            body = kept_bodies.get(str(entry.get("webhook_id")))
        if answer is None:
            answer = kept_responses.get((subject, number))
        # Headers kept apart that neither Redis nor the database holds: jobgate's own only.
        shown.append(exchange(with_endpoint_headers(entry, None), body, answer))
    return shown


def subject_of(entry: dict[str, Any]) -> str:
    """The delivery subject of an endpoint's attempt: its message, whose id is its
    ``webhook-id`` (``jobgate.events.webhook_id``)."""
    return str(entry.get("webhook_id") or "")
