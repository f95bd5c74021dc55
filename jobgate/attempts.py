"""One webhook delivery attempt, recorded, and the next one scheduled.

``jobgate.lifecycle`` queues the first attempt of each terminal event (batches, one per
``batch.completed``). Each attempt claims its token (so a duplicate message sends
nothing), sends the stored body with fresh Standard Webhooks headers through
``jobgate.delivery`` (which re-runs the SSRF guard and connects to the checked address),
and records the attempt; when the outcome is ``retry``, the same script schedules the next
attempt on the due set (``jobgate.due``) after a delay from
``settings.webhook_retry_delays`` (jitter added, never sooner than ``Retry-After``). Every
queued or scheduled attempt stays open (``Store.open_key``) until one is recorded, so the
sweeper finds a delivery whose message was lost. An attempt whose partner has its
``max_inflight_deliveries`` in flight waits its turn on the due set instead, unspent
(``jobgate.deliveries``). The worker's ``jobgate.deliver_webhook`` task is a thin wrapper.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol

from config import Settings
from jobgate import __version__, handoff
from jobgate.deliveries import DEFERRED, Begun, Deliveries
from jobgate.delivery import Attempt, deliver, retry_delay
from jobgate.due import entry as due_entry
from jobgate.due import move as move_entries
from jobgate.events import (
    MESSAGE,
    SUBJECTS,
    build_body,
    delivery_call,
    delivery_task_id,
    webhook_id,
)
from jobgate.failpoints import failpoint
from jobgate.messages import AUTO_CHAIN, DELIVER_TASK, Messenger
from jobgate.ssrf import lookups_for, parse_allowlist
from jobgate.store import CLAIM_MARGIN, Store, format_time, secrets_of, utcnow

log = logging.getLogger(__name__)

USER_AGENT = f"jobgate/{__version__}"
RETRY_AFTER_CAP = 3600.0  # a receiver's Retry-After is honoured up to one hour


class EndpointHooks(Protocol):
    """What an attempt needs from the endpoint registry (``jobgate.endpoints.Endpoints``)."""

    def mirrored(self, endpoint_id: str) -> dict[str, str]: ...

    def gone(self, endpoint_id: str) -> None: ...

    def attempted(self, endpoint_id: str, delivered: bool, now: float | None = None) -> None: ...


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
        registry.gone(endpoint_id)
    log.warning(
        "webhook endpoint gone (410) for %s %s: %s (partner %s); not retried",
        kind,
        subject_id,
        callback_url,
        partner_id or "-",
        extra={"job_id": subject_id},
    )


def post(settings: Settings, url: str, body: str, wid: str, secrets: list[str]) -> Attempt:
    """One signed POST of ``body`` under ``settings``' timeout and SSRF rules."""
    return deliver(
        url,
        body.encode(),
        wid,
        secrets,
        timeout=settings.webhook_timeout,
        allow_http=settings.callback_allow_http,
        allowlist=parse_allowlist(settings.callback_allowlist),
        ports=settings.callback_ports,
        dns_timeout=settings.callback_dns_timeout,
        user_agent=USER_AGENT,
        retry_after_cap=RETRY_AFTER_CAP,
    )


def plan(
    outcome: str, retry_number: int, delays: tuple[float, ...], retry_after: float | None = None
) -> tuple[str, float | None]:
    """The delivery state after an attempt, and the delay before retry ``retry_number``."""
    if outcome in ("delivered", "failed"):
        return outcome, None
    delay = retry_delay(retry_number, delays, retry_after=retry_after)
    return ("failed", None) if delay is None else ("retrying", delay)


def iso(timestamp: float) -> str:
    """A Unix time as ISO 8601 UTC with milliseconds and a Z (like ``utcnow``)."""
    return format_time(datetime.fromtimestamp(timestamp, UTC))


def run_attempt(
    settings: Settings,
    store: Store,
    messenger: Messenger,
    kind: str,
    subject_id: str,
    event: str,
    *,
    retry: int = 0,
    chain: str = AUTO_CHAIN,
    node: str = "",
    partner_of: Callable[[str], dict[str, str] | None] | None = None,
    endpoints: EndpointHooks | None = None,
) -> dict[str, Any] | None:
    """Send attempt ``retry`` (0 = first) of ``chain``; returns the recorded attempt.

    ``partner_of`` finds a partner whose Redis mirror is missing (``Partners.get``: a
    Redis that restarted empty), so its secrets still sign; ``endpoints`` does the same
    for an endpoint's message (kind ``msg``), and keeps the endpoint's health.

    Redis round trips: one to claim the attempt and read the subject, the stored body and
    the partner's secrets (``Deliveries.begin``); one to record the attempt, close the
    claim and, the first time, store a job's body (``Deliveries.record``); one more the
    first time for other subjects, whose body is stored before it is sent, and one more
    when the attempt's end brought its partner's next deferred attempts forward (queued
    at once rather than by the next pass over the due set).

    An attempt with no slot free among its partner's deliveries in flight
    (``max_inflight_deliveries``) is deferred by ``Deliveries.begin``, due again once a
    slot frees: it returns None having sent and recorded nothing.
    """
    books = Deliveries(store)
    token = f"{event}:{chain}:{retry}"
    task_id, call_args, call_kwargs = delivery_call(kind, subject_id, event, chain, retry)
    subject = SUBJECTS.get(kind)
    if subject is None:  # unknown kind: nothing to send, but take the attempt as before
        log.warning("unknown webhook subject kind %r for %s", kind, subject_id)
        if books.claim(subject_id, token, lease=settings.webhook_timeout + CLAIM_MARGIN):
            books.complete(subject_id, token, task_id)
        return None
    begun = books.begin(
        subject_id,
        token,
        settings.webhook_timeout + CLAIM_MARGIN,
        event,
        subject.record_key(store, subject_id),
        node=node,
        task_id=task_id,
        owner=("endpoint_id", "endpoint") if kind == MESSAGE else ("partner_id", "partner"),
        due_entry=due_entry(
            DELIVER_TASK,
            task_id,
            queue=messenger.webhooks_queue,
            args=call_args,
            kwargs=call_kwargs,
        ),
    )
    if begun == DEFERRED:
        log.info(
            "webhook %s attempt %s waits: its partner has max_inflight_deliveries in flight",
            subject_id,
            token,
            extra={"job_id": subject_id},
        )
        return None
    if begun is None:
        log.info(
            "webhook %s attempt %s already taken; skipping",
            subject_id,
            token,
            extra={"job_id": subject_id},
        )
        return None
    try:
        if kind == MESSAGE:
            endpoint_id = begun.record.get("endpoint_id")
            if endpoint_id and not begun.partner and endpoints is not None:
                begun = replace(begun, partner=endpoints.mirrored(endpoint_id))
        else:
            partner_id = begun.record.get("partner_id")
            if partner_id and not begun.partner and partner_of is not None:
                begun = replace(begun, partner=partner_of(partner_id) or {})
        return _attempt(
            settings,
            store,
            messenger,
            books,
            begun,
            kind,
            subject_id,
            event,
            retry=retry,
            chain=chain,
            token=token,
            task_id=task_id,
            endpoints=endpoints,
        )
    except Exception:
        # Free the claim (best effort: Redis may be what failed), so that the sweeper's
        # new message for this still-open attempt can run it without waiting for the
        # claim to lapse, and the partner's slot.
        books.release(subject_id, token, task_id, begun.record.get("partner_id", ""))
        raise


def _attempt(
    settings: Settings,
    store: Store,
    messenger: Messenger,
    books: Deliveries,
    begun: Begun,
    kind: str,
    subject_id: str,
    event: str,
    *,
    retry: int,
    chain: str,
    token: str,
    task_id: str,
    endpoints: EndpointHooks | None = None,
) -> dict[str, Any] | None:
    """The attempt once claimed: build or read the body, POST it, record it."""
    failpoint("delivery.begun")
    callback_url, partner_id = begun.record.get("callback_url"), begun.record.get("partner_id")
    endpoint_id = begun.record.get("endpoint_id", "") if kind == MESSAGE else ""
    refusal = None
    if endpoint_id:  # an endpoint's message: its URL and secrets are the endpoint's now
        callback_url = begun.partner.get("url") or "-"
        if not begun.partner:
            refusal = "the endpoint was deleted"
        elif begun.partner.get("disabled"):
            refusal = f"the endpoint is disabled ({begun.partner['disabled']})"
    if not begun.record or not callback_url:
        books.complete(subject_id, token, task_id, partner_id or "")
        return None
    wid = webhook_id(subject_id, event)
    body, built = begun.body, None
    if body is None:
        # Built from the record as the event left it (its time included), not from now.
        body = build_body(store, kind, subject_id, event, begun.record)
        if body is None:  # the subject went between the two reads
            books.complete(subject_id, token, task_id, partner_id or "")
            return None
        if SUBJECTS[kind].from_record:  # any attempt builds these bytes: stored with its record
            built = body
        else:  # stored before it is sent: every later attempt sends the first one's
            body = books.store_body(subject_id, event, body)
    secrets = begun.signing_secrets() if partner_id else []
    at = utcnow()
    if refusal:
        attempt = Attempt("failed", None, refusal, 0, None)
    elif secrets:
        with lookups_for(partner_id or ""):
            attempt = post(settings, callback_url, body, wid, secrets)
    else:
        attempt = Attempt("failed", None, "the partner has no webhook secret", 0, None)
    failpoint("delivery.sent")
    state, delay = plan(
        attempt.outcome, retry + 1, settings.webhook_retry_delays, attempt.retry_after
    )
    entry = {
        "webhook_id": wid,
        "event": event,
        "at": at,
        "status_code": attempt.status_code,
        "error": attempt.error,
        "duration_ms": attempt.duration_ms,
        "next_attempt_at": iso(time.time() + delay) if delay is not None else None,
        # The last retry's answer ends the delivery: "failed", as no attempt follows.
        "outcome": "failed" if state == "failed" else attempt.outcome,
        "redelivery": chain != AUTO_CHAIN,
    }
    if endpoint_id:
        entry["endpoint_id"] = endpoint_id
        entry["subject_kind"] = begun.record.get("kind")
        entry["subject_id"] = begun.record.get("subject_id")
    following = None
    if delay is not None:
        # Scheduled in the script that records this attempt: never one without the other.
        next_id, args, kwargs = delivery_call(kind, subject_id, event, chain, retry + 1)
        following = (
            next_id,
            time.time() + delay,
            due_entry(
                DELIVER_TASK, next_id, queue=messenger.webhooks_queue, args=args, kwargs=kwargs
            ),
        )
    number, woken = books.record(
        subject_id,
        entry,
        state,
        kind,
        token=token,
        task_id=task_id,
        following=following,
        endpoint_id=endpoint_id,
        body=built,
        partner_id=partner_id or "",
    )
    entry = {**entry, "attempt": number}
    # The log, unlike the partner-visible entry, names why the SSRF guard refused the URL.
    log.info(
        "webhook %s %s for %s %s: %s (%s)",
        wid,
        event,
        kind,
        subject_id,
        attempt.outcome,
        attempt.status_code or attempt.detail or attempt.error,
        extra={"job_id": subject_id},
    )
    try:  # recorded already: an error here must not free the done claim (no resend)
        if woken:  # the partner's next in line, due now: queued now (else by the next pass)
            move_entries(store, messenger, woken)
        if endpoint_id and endpoints is not None and not refusal:
            endpoints.attempted(endpoint_id, attempt.outcome == "delivered")
        if attempt.gone:
            endpoint_gone(
                store,
                kind,
                subject_id,
                callback_url,
                partner_id,
                endpoint_id=endpoint_id or None,
                registry=endpoints,
            )
    except Exception:  # noqa: BLE001 - logged; the next attempt (or pass) tries again
        log.exception("bookkeeping after %s failed", wid)
    return entry


def redeliver(store: Store, messenger: Messenger, kind: str, subject_id: str, event: str) -> str:
    """Send the event again (same body, same ``webhook-id``); returns that id.

    While its delivery is open, the retry it scheduled is queued now instead (an attempt
    already queued or running is left to answer): one retry chain however often this is
    called, and none left behind to send a copy after a redelivery that succeeded. Once
    the delivery ended (delivered, or failed), a fresh retry chain starts.
    """
    chain = "r" + uuid.uuid4().hex[:12]
    task_id, args, kwargs = delivery_call(kind, subject_id, event, chain, 0)
    queue = messenger.webhooks_queue
    now = time.time()
    found, entry = Deliveries(store).redeliver(
        subject_id,
        event,
        kind,
        first=delivery_task_id(kind, subject_id, event, AUTO_CHAIN, 0),
        new=(task_id, due_entry(DELIVER_TASK, task_id, queue=queue, args=args, kwargs=kwargs)),
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
    from jobgate.endpoints import ping_body

    wid, body = ping_body(endpoint_id)
    at = utcnow()
    secrets = secrets_of(endpoint)
    if not secrets:
        attempt = Attempt("failed", None, "the endpoint has no signing secret", 0, None)
    else:
        attempt = post(settings, endpoint.get("url", ""), body, wid, secrets)
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
    number, _ = Deliveries(store).record(
        wid, entry, entry["outcome"], MESSAGE, endpoint_id=endpoint_id
    )
    return {**entry, "attempt": number}
