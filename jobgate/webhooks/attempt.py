"""One webhook delivery attempt, recorded, and the next one scheduled.

``jobgate.lifecycle`` queues the first attempt of each terminal event (batches, one per
``batch.completed``). Each attempt claims its token (so a duplicate message sends
nothing), sends the stored body with fresh Standard Webhooks headers through
``jobgate.webhooks.http`` (which re-runs the SSRF guard and connects to the checked address),
and records the attempt; when the outcome is ``retry``, the same script schedules the next
attempt on the due set (``jobgate.due``) after a delay from
``settings.webhook_retry_delays`` (jitter added, never sooner than ``Retry-After``). Every
queued or scheduled attempt stays open (``Store.open_key``) until one is recorded, so the
sweeper finds a delivery whose message was lost. An attempt whose partner has its
``max_inflight_deliveries`` in flight waits its turn on the due set instead, unspent
(``jobgate.webhooks.ledger``). The worker's ``jobgate.deliver_webhook`` task is a thin wrapper.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from config import Settings
from jobgate import __version__, handoff, tracing
from jobgate.due import entry as due_entry
from jobgate.due import move as move_entries
from jobgate.due import wake
from jobgate.endpoint_headers import headers_of
from jobgate.endpoints import ping_body
from jobgate.events import (
    MESSAGE,
    SUBJECTS,
    build_body,
    delivery_call,
    delivery_task_id,
    webhook_id,
)
from jobgate.failpoints import failpoint
from jobgate.logs import loggable
from jobgate.messages import AUTO_CHAIN, DELIVER_TASK, Messenger
from jobgate.ssrf import lookups_for, parse_allowlist
from jobgate.store import CLAIM_MARGIN, Store, secrets_of
from jobgate.times import from_timestamp, utcnow
from jobgate.webhooks.http import Attempt, deliver
from jobgate.webhooks.ledger import DEFERRED, Begun, Deliveries, Throttled
from jobgate.webhooks.messagelog import exchange, keep_request
from jobgate.webhooks.operational import Attempted
from jobgate.webhooks.policy import plan
from jobgate.webhooks.throttle import pause, pauses

log = logging.getLogger(__name__)

USER_AGENT = f"jobgate/{__version__}"


class EndpointHooks(Protocol):
    """What an attempt needs from the endpoint registry (``jobgate.endpoints.Endpoints``)."""

    def mirrored(self, endpoint_id: str) -> dict[str, str]: ...

    def disable(self, endpoint_id: str, reason: str) -> bool: ...

    def attempted(self, endpoint_id: str, delivered: bool) -> None: ...


def endpoint_gone(
    store: Store,
    kind: str,
    subject_id: str,
    callback_url: str,
    partner_id: str | None,
    *,
    endpoint_id: str | None = None,
    registry: EndpointHooks | None = None,
) -> None:
    """The receiver answered ``410 Gone``: the one hook the endpoint registry plugs into.

    Called once per gone answer, after the attempt is recorded (delivery ``failed``, its
    ``error`` naming the reason, no retry scheduled). A registered endpoint
    (``endpoint_id``) is disabled; a job's own ``callback_url`` has no record to disable,
    so for it this only logs.
    """
    if endpoint_id and registry is not None:
        registry.disable(endpoint_id, "the endpoint answered 410 Gone")
    log.warning(
        "webhook endpoint gone (410) for %s %s: %s (partner %s); not retried",
        kind,
        subject_id,
        loggable(callback_url),
        partner_id or "-",
        extra={"job_id": subject_id},
    )


def post(settings: Settings, target: Target) -> Attempt:
    """One signed POST of the target's body under ``settings``' timeout and SSRF rules,
    with its endpoint's own headers and, in the subject's trace, a ``traceparent``."""
    return deliver(
        target.url,
        target.body.encode(),
        target.webhook_id,
        target.secrets,
        timeout=settings.webhook_timeout,
        allow_http=settings.callback_allow_http,
        allowlist=parse_allowlist(settings.callback_allowlist),
        ports=settings.callback_ports,
        dns_timeout=settings.callback_dns_timeout,
        user_agent=USER_AGENT,
        headers=target.headers,
        traceparent=tracing.outgoing(target.traceparent),
    )


@dataclass(frozen=True)
class Sender:
    """What every attempt of a worker reaches: its settings, stores and broker, and the
    registries that find a partner or an endpoint Redis has no mirror of (a Redis that
    restarted empty), so their secrets still sign; ``endpoints`` also keeps an endpoint's
    health."""

    settings: Settings
    store: Store
    messenger: Messenger
    partner_of: Callable[[str], dict[str, str] | None] | None = None
    endpoints: EndpointHooks | None = None
    node: str = ""  # the worker that claims the attempts
    # Told of every recorded attempt (``jobgate.webhooks.operational.after_attempt``: the
    # ``message.attempt.*`` events); None: nothing is announced.
    operational: Callable[[Attempted, Callable[[], str | None]], object] | None = None


@dataclass(frozen=True)
class Call:
    """Which attempt: attempt ``retry`` (0 = first) of ``chain`` for ``event`` about a
    subject (a job, a batch, an endpoint's message)."""

    kind: str
    subject_id: str
    event: str
    retry: int = 0
    chain: str = AUTO_CHAIN

    @property
    def token(self) -> str:
        return f"{self.event}:{self.chain}:{self.retry}"

    def task(self, retry: int | None = None) -> tuple[str, list[Any], dict[str, Any]]:
        """(task id, args, kwargs) of this attempt's message, or of attempt ``retry``."""
        return delivery_call(
            self.kind,
            self.subject_id,
            self.event,
            self.chain,
            self.retry if retry is None else retry,
        )


@dataclass(frozen=True)
class Target:
    """A claimed attempt, prepared: where it goes, what it sends, who signs it, or why it
    is refused without a send."""

    url: str
    webhook_id: str
    body: str
    secrets: list[str]
    headers: dict[str, str]  # the endpoint's own (none for a callback_url)
    endpoint_id: str = ""
    partner_id: str = ""
    built: str | None = None  # a body built now, stored with the attempt (from_record subjects)
    refusal: str | None = None  # the endpoint's: deleted or disabled
    traceparent: str | None = None  # kept with the subject at submit (jobgate.tracing)


def run_attempt(sender: Sender, call: Call) -> dict[str, Any] | None:
    """Send one attempt and record it; returns the recorded entry, or None when nothing
    was sent (taken already, deferred, or its subject gone).

    Read top to bottom: claim it (``Deliveries.begin``: one round trip claims the token and
    reads the subject, the stored body and the partner's secrets), prepare it (URL, body,
    secrets), send it (``post``), record it with the next attempt scheduled in the same
    script (``Deliveries.record``), then the bookkeeping that may fail without a resend.

    An attempt with no slot free among its partner's deliveries in flight
    (``max_inflight_deliveries``) is deferred by ``Deliveries.begin``, due again once a
    slot frees.
    """
    books = Deliveries(sender.store)
    task = call.task()
    task_id = task[0]
    begun = _claim(sender, call, books, task)
    if begun is None:
        return None
    try:
        begun = _with_owner(sender, call, begun)
        failpoint("delivery.begun")
        target = _prepare(sender, call, books, begun)
        if target is None:
            books.complete(call.subject_id, call.token, task_id, begun.record.get("partner_id", ""))
            return None
        at = utcnow()
        attempt = _send(sender, target)
        failpoint("delivery.sent")
        return _record(sender, call, books, begun, target, attempt, at, task_id)
    except Exception:
        # Free the claim (best effort: Redis may be what failed), so that the sweeper's
        # new message for this still-open attempt can run it without waiting for the
        # claim to lapse, and the partner's slot.
        books.release(call.subject_id, call.token, task_id, begun.record.get("partner_id", ""))
        raise


def _claim(
    sender: Sender, call: Call, books: Deliveries, task: tuple[str, list[Any], dict[str, Any]]
) -> Begun | None:
    """The attempt claimed with what it reads; None when there is nothing to send now
    (unknown kind, deferred, taken)."""
    task_id = task[0]
    lease = sender.settings.webhook_timeout + CLAIM_MARGIN
    subject = SUBJECTS.get(call.kind)
    if subject is None:  # unknown kind: nothing to send, but take the attempt as before
        log.warning("unknown webhook subject kind %r for %s", call.kind, call.subject_id)
        if books.claim(call.subject_id, call.token, lease=lease):
            books.complete(call.subject_id, call.token, task_id)
        return None
    begun = books.begin(
        call.subject_id,
        call.token,
        lease,
        call.event,
        subject.record_key(sender.store, call.subject_id),
        node=sender.node,
        task_id=task_id,
        owner=("endpoint_id", "endpoint") if call.kind == MESSAGE else ("partner_id", "partner"),
        due_entry=_due_entry(sender.messenger, task),
    )
    if isinstance(begun, Begun):
        return begun
    if isinstance(begun, Throttled):
        wake(begun.turn)  # this worker's due move runs at the turn, not a tick later
        why = "waits for its endpoint's turn (rate_limit, or paused)"
    elif begun == DEFERRED:
        why = "its partner has max_inflight_deliveries in flight"
    else:
        why = "already taken"
    log.info(
        "webhook %s attempt %s: %s",
        call.subject_id,
        call.token,
        why,
        extra={"job_id": call.subject_id},
    )
    return None


def _with_owner(sender: Sender, call: Call, begun: Begun) -> Begun:
    """The claimed attempt with its owner's mirror (an endpoint's, a partner's), read from
    the database when Redis lacks it (inside the claim's release: it may fail)."""
    if call.kind == MESSAGE:
        endpoint_id = begun.record.get("endpoint_id")
        if endpoint_id and not begun.partner and sender.endpoints is not None:
            return replace(begun, partner=sender.endpoints.mirrored(endpoint_id))
    else:
        partner_id = begun.record.get("partner_id")
        if partner_id and not begun.partner and sender.partner_of is not None:
            return replace(begun, partner=sender.partner_of(partner_id) or {})
    return begun


def _prepare(sender: Sender, call: Call, books: Deliveries, begun: Begun) -> Target | None:
    """Where the attempt goes and what it sends; None when its subject is gone."""
    url, partner_id = begun.record.get("callback_url"), begun.record.get("partner_id") or ""
    endpoint_id = begun.record.get("endpoint_id", "") if call.kind == MESSAGE else ""
    refusal = None
    headers: dict[str, str] = {}
    if endpoint_id:  # an endpoint's message: its URL, secrets, headers are the endpoint's now
        url = begun.partner.get("url") or "-"
        headers = headers_of(begun.partner)
        if not begun.partner:
            refusal = "the endpoint was deleted"
        elif begun.partner.get("disabled"):
            refusal = f"the endpoint is disabled ({begun.partner['disabled']})"
    if not begun.record or not url:
        return None
    body, built = begun.body, None
    if body is None:
        # Built from the record as the event left it (its time included), not from now.
        body = build_body(sender.store, call.kind, call.subject_id, call.event, begun.record)
        if body is None:  # the subject went between the two reads
            return None
        if SUBJECTS[call.kind].from_record:  # any attempt builds these bytes: kept with it
            built = body
        else:  # stored before it is sent: every later attempt sends the first one's
            body = books.store_body(call.subject_id, call.event, body)
    # The partner's (or endpoint's) secrets: current, previous during their grace.
    secrets = secrets_of(begun.partner, sealer=sender.store.sealer) if partner_id else []
    wid = webhook_id(call.subject_id, call.event)
    traceparent = begun.record.get("traceparent") or None
    return Target(
        url, wid, body, secrets, headers, endpoint_id, partner_id, built, refusal, traceparent
    )


def _send(sender: Sender, target: Target) -> Attempt:
    """The POST, under the partner's SSRF allowlist (none for a refused attempt)."""
    if target.refusal:
        return Attempt("failed", None, target.refusal, 0, None)
    if not target.secrets:
        return Attempt("failed", None, "the partner has no webhook secret", 0, None)
    with lookups_for(target.partner_id), tracing.client_span("webhook POST", target.traceparent):
        return post(sender.settings, target)


def _record(
    sender: Sender,
    call: Call,
    books: Deliveries,
    begun: Begun,
    target: Target,
    attempt: Attempt,
    at: str,
    task_id: str,
) -> dict[str, Any]:
    """Record the attempt, the next one scheduled in the same script, then the
    bookkeeping (an error there must not free the done claim: no resend)."""
    settings, messenger, wid = sender.settings, sender.messenger, target.webhook_id
    state, delay = plan(
        attempt.outcome, call.retry + 1, settings.webhook_retry_delays, attempt.retry_after
    )
    entry: dict[str, Any] = {
        "webhook_id": wid,
        "event": call.event,
        "at": at,
        "status_code": attempt.status_code,
        "error": attempt.error,
        "duration_ms": attempt.duration_ms,
        "next_attempt_at": from_timestamp(time.time() + delay) if delay is not None else None,
        # The last retry's answer ends the delivery: "failed", as no attempt follows.
        "outcome": "failed" if state == "failed" else attempt.outcome,
        "redelivery": call.chain != AUTO_CHAIN,
    }
    if target.endpoint_id:
        entry["endpoint_id"] = target.endpoint_id
        entry["subject_kind"] = begun.record.get("kind")
        entry["subject_id"] = begun.record.get("subject_id")
    # The message log: the headers as signed and sent (the endpoint's own kept apart,
    # once); the body is the message's, stored once, the answer beside the log
    # (jobgate.webhooks.messagelog joins them).
    apart = keep_request(sender.store, entry, attempt.request_headers, target.headers)
    following = None
    if delay is not None:
        # Scheduled in the script that records this attempt: never one without the other.
        next_task = call.task(call.retry + 1)
        following = (next_task[0], time.time() + delay, _due_entry(messenger, next_task))
    number, woken = books.record(
        call.subject_id,
        entry,
        state,
        call.kind,
        token=call.token,
        task_id=task_id,
        following=following,
        endpoint_id=target.endpoint_id,
        body=target.built,
        partner_id=target.partner_id,
        response=attempt.response,
        endpoint_headers=apart,
    )
    entry = {**entry, "attempt": number}
    # The log, unlike the partner-visible entry, names why the SSRF guard refused the URL.
    log.info(
        "webhook %s %s for %s %s: %s (%s)",
        wid,
        call.event,
        call.kind,
        call.subject_id,
        attempt.outcome,
        attempt.status_code or attempt.detail or attempt.error,
        extra={"job_id": call.subject_id},
    )
    try:
        if target.endpoint_id and pauses(attempt.status_code, attempt.retry_after):
            # The receiver asked for a pause: the endpoint's other messages wait too.
            pause(sender.store, target.endpoint_id, attempt.retry_after or 0.0)
        if woken:  # the partner's next in line, due now: queued now (else by the next pass)
            move_entries(sender.store, messenger, woken)
        endpoints = sender.endpoints
        if target.endpoint_id and endpoints is not None and not target.refusal:
            endpoints.attempted(target.endpoint_id, attempt.outcome == "delivered")
        if attempt.gone:
            endpoint_gone(
                sender.store,
                call.kind,
                call.subject_id,
                target.url,
                target.partner_id or None,
                endpoint_id=target.endpoint_id or None,
                registry=endpoints,
            )
    except Exception:  # noqa: BLE001 - logged; the next attempt (or pass) tries again
        log.exception("bookkeeping after %s failed", wid)
    if sender.operational is not None:
        try:
            sender.operational(
                Attempted(
                    call.kind,
                    call.subject_id,
                    call.event,
                    call.chain,
                    wid,
                    target.partner_id,
                    target.endpoint_id,
                    target.url,
                    attempt.outcome,
                    state,
                    number,
                    entry,
                    begun.record,
                    bool(target.refusal),
                ),
                lambda: _outcome_before(books, call.subject_id),
            )
        except Exception:  # noqa: BLE001 - logged; what it commits, the relay hands over
            log.exception("announcing what %s's attempt changed failed", wid)
    return entry


def _due_entry(messenger: Messenger, task: tuple[str, list[Any], dict[str, Any]]) -> str:
    """The due-set entry (``jobgate.due.entry``) that queues ``task`` (task id, args,
    kwargs: ``Call.task``) on the webhooks queue."""
    task_id, args, kwargs = task
    return due_entry(
        DELIVER_TASK, task_id, queue=messenger.webhooks_queue, args=args, kwargs=kwargs
    )


def _outcome_before(books: Deliveries, subject_id: str) -> str | None:
    """The outcome of the attempt before the last one recorded (None if none)."""
    raw = books.redis.lindex(books.log_key(subject_id), -2)
    return json.loads(raw).get("outcome") if raw else None


def redeliver(store: Store, messenger: Messenger, kind: str, subject_id: str, event: str) -> str:
    """Send the event again (same body, same ``webhook-id``); returns that id.

    While its delivery is open, the retry it scheduled is queued now instead (an attempt
    already queued or running is left to answer): one retry chain however often this is
    called, and none left behind to send a copy after a redelivery that succeeded. Once
    the delivery ended (delivered, or failed), a fresh retry chain starts.
    """
    chain = "r" + uuid.uuid4().hex[:12]
    task = delivery_call(kind, subject_id, event, chain, 0)
    task_id, args, kwargs = task
    now = time.time()
    found, entry = Deliveries(store).redeliver(
        subject_id,
        event,
        kind,
        first=delivery_task_id(kind, subject_id, event, AUTO_CHAIN, 0),
        new=(task_id, _due_entry(messenger, task)),
        now=now,
    )
    if found == "due":
        # Due now: a worker's pass (once a second) may queue it first; once either way.
        move_entries(store, messenger, [entry], now=now)
        log.info("brought the next attempt of %s for %s %s forward", event, kind, subject_id)
    elif found == "new":
        handoff.send_delivery(store, messenger, DELIVER_TASK, task_id, args=args, kwargs=kwargs)
        log.info("queued %s for %s %s again", event, kind, subject_id)
    return webhook_id(subject_id, event)


def send_ping(
    settings: Settings, store: Store, endpoint: dict[str, str], endpoint_id: str
) -> dict[str, Any]:
    """Send a signed ``ping`` event to an endpoint now (no retry) and log it among the
    endpoint's attempts; returns the attempt. ``endpoint`` is its mirror hash."""
    wid, body = ping_body(endpoint_id)
    at = utcnow()
    secrets, headers = secrets_of(endpoint, sealer=store.sealer), headers_of(endpoint)
    if not secrets:
        attempt = Attempt("failed", None, "the endpoint has no signing secret", 0, None)
    else:
        attempt = post(settings, Target(endpoint.get("url", ""), wid, body, secrets, headers))
    entry: dict[str, Any] = {
        "webhook_id": wid,
        "event": "ping",
        "at": at,
        "status_code": attempt.status_code,
        "error": attempt.error,
        "duration_ms": attempt.duration_ms,
        "next_attempt_at": None,
        "outcome": "delivered" if attempt.outcome == "delivered" else "failed",
        "redelivery": False,
        "endpoint_id": endpoint_id,
        "subject_kind": None,
        "subject_id": None,
    }
    apart = keep_request(store, entry, attempt.request_headers, headers)
    number, _ = Deliveries(store).record(
        wid,
        entry,
        entry["outcome"],
        MESSAGE,
        endpoint_id=endpoint_id,
        body=body,  # kept for the message log, like any message's
        response=attempt.response,
        endpoint_headers=apart,
    )
    sent = {"headers": attempt.request_headers} if attempt.request_headers is not None else None
    return exchange({**entry, "attempt": number, "request": sent}, body, attempt.response)
