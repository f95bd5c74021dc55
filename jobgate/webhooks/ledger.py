"""Webhook bookkeeping in Redis: the stored event body, attempt claims, the attempts log.

Every key lives for the retention period. The body of an event is built once, from the
record as the event left it (``jobgate.events.build_body``: its time is the event's, not
the first attempt's), and stored, so every retry and redelivery sends the same bytes under
the same ``webhook-id``; each attempt is appended to the subject's deliveries log and
summarised (state, attempts) both in a small summary hash and, for jobs, in the job record
that ``webhook_summary`` reads.

One attempt costs two Redis round trips: ``begin`` claims the attempt, takes a slot among
its partner's deliveries in flight (or defers the attempt) and reads the subject, its
stored body and its partner's secrets in one script; ``record`` records the attempt,
marks the claim done, gives the slot back and, the first time, stores the job's body it
sent (``SET NX``), in one script. Other subjects' bodies (``Subject.from_record``) are
stored before they are sent, by ``store_body``: one more round trip the first time.

A partner's deliveries in flight (its limit ``max_inflight_deliveries``,
``jobgate.limits``) are counted in Redis, across every worker: each attempt holds a slot,
leased for its claim's time so that a worker that dies stops counting, from ``begin`` to
``record`` (``complete`` or ``release`` when it records nothing). An attempt with no slot
free is deferred: it joins its partner's line and waits on the due set, and each slot
given back brings the first in line forward (``jobgate/scripts/inflight.lua``).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

from jobgate.store import Store

MAX_LOG = 200  # attempts kept per subject (oldest dropped first)
DEFERRED: Final = "deferred"  # what ``begin`` answers for an attempt that waits its turn


@dataclass(frozen=True)
class Begun:
    """What ``Deliveries.begin`` read once it held the claim."""

    record: dict[str, str]  # the subject's raw hash; empty if the record is gone
    body: str | None  # the stored event body, None until the first attempt stores it
    partner: dict[str, str]  # the partner's raw hash; empty if none


@dataclass(frozen=True)
class Throttled:
    """What ``Deliveries.begin`` answers for an endpoint's attempt not yet due: it waits
    on the due set until ``turn`` (Unix seconds), its endpoint's next turn for it."""

    turn: float


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class Deliveries:
    """The delivery records of one Redis job store (jobs and batches alike)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.redis = store.redis

    def _key(self, subject_id: str, *parts: str) -> str:
        return self.store.key("webhook", subject_id, *parts)

    def log_key(self, subject_id: str) -> str:
        return self.store.key("deliveries", subject_id)

    def body_key(self, subject_id: str, event: str) -> str:
        return self._key(subject_id, event, "body")

    def responses_key(self, subject_id: str) -> str:
        """The subject's answers as the message log keeps them, by attempt number."""
        return self._key(subject_id, "responses")

    def claim_key(self, subject_id: str, token: str) -> str:
        return self._key(subject_id, "claim", token)

    def _slot_keys(self, partner_id: str) -> list[str]:
        """The partner's in-flight set, its line of deferred attempts and its mirror ('' for
        each without a partner: no slot)."""
        kinds = ("inflight", "deferred", "partner")
        return [self.store.key(kind, partner_id) if partner_id else "" for kind in kinds]

    # ------------------------------------------------------------------ body
    def store_body(self, subject_id: str, event: str, built: str) -> str:
        """Store ``built`` unless a body is stored already; returns the stored one (one
        script: the first writer wins, and every later attempt sends its bytes). For the
        fan-out step and batches; an attempt stores a job's body with its record."""
        stored = self.store.scripts["body_store"](
            keys=[self.body_key(subject_id, event)], args=[built, self.store.retention]
        )
        return cast("str", stored) if stored is not None else built

    # ----------------------------------------------------------------- attempt
    def begin(
        self,
        subject_id: str,
        token: str,
        lease: float,
        event: str,
        record_key: str,
        node: str = "",
        task_id: str = "",
        owner: tuple[str, str] = ("partner_id", "partner"),
        due_entry: str = "",
    ) -> Begun | Literal["deferred"] | Throttled | None:
        """Claim attempt ``token`` for worker ``node`` and read what the attempt needs.

        None if the attempt ran, or runs on a node still alive; a claim whose node died
        is taken over. Otherwise the record at ``record_key``, the stored body of ``event``
        and the record's owner (``owner``: the record's field naming it, and the key
        kind of its hash: the partner, or an endpoint's message's endpoint), all in one
        round trip. Given the attempt's ``due_entry`` (``jobgate.due.entry``), the attempt
        also takes a slot among its partner's deliveries in flight, or, with none free for
        it, is deferred (``DEFERRED``): its claim dropped, ``due_entry`` waiting in the
        partner's line and on the due set, its delivery still open, no attempt spent.
        An endpoint's message (``owner`` ``endpoint_id``) first waits for the endpoint's
        turn (``jobgate.webhooks.throttle``): ``Throttled`` when it is later, the attempt
        waiting on the due set until then, unspent, holding no slot.
        """
        found = self.store.scripts["delivery_begin"](
            keys=[
                self.claim_key(subject_id, token),
                self.body_key(subject_id, event),
                record_key,
                self.store.open_key,
                self.store.due_key,
            ],
            args=[
                max(1, int(lease) + 1),
                self.store.key(owner[1], ""),
                node,
                self.store.alive_key(""),
                task_id,
                owner[0],
                self.store.prefix,
                self.store.max_inflight_deliveries,
                time.time(),
                due_entry,
            ],
        )
        if not found:
            return None
        if found == DEFERRED:
            return DEFERRED
        if found[0] == "throttled":
            return Throttled(float(found[1]))
        record, body, partner = found
        return Begun(_pairs(record), body, _pairs(partner))

    # ---------------------------------------------------------------- claims
    def claim(self, subject_id: str, token: str, lease: float) -> bool:
        """Take attempt ``token`` for ``lease`` s; False if it runs or ran elsewhere.

        A duplicate message (acks_late redelivery, a sweeper re-queue) finds the claim and
        sends nothing; a worker that died mid-attempt lets
        the lease lapse, so the broker's redelivery can try again.
        """
        key = self.claim_key(subject_id, token)
        return bool(self.redis.set(key, "running", nx=True, ex=max(1, int(lease) + 1)))

    def complete(
        self, subject_id: str, token: str, task_id: str = "", partner_id: str = ""
    ) -> None:
        """Mark attempt ``token`` done for ``done_ttl`` (and its delivery no
        longer open) when it had nothing to send; its slot (``partner_id``'s) is free."""
        self._end(subject_id, token, "done", task_id, partner_id)

    def release(self, subject_id: str, token: str, task_id: str = "", partner_id: str = "") -> None:
        """Drop an attempt's claim and free its slot after it failed before being
        recorded (best effort)."""
        with contextlib.suppress(Exception):  # the caller re-raises the original error
            self._end(subject_id, token, "", task_id, partner_id)

    def _end(self, subject_id: str, token: str, claim: str, task_id: str, partner_id: str) -> None:
        self.store.scripts["delivery_release"](
            keys=[
                self.claim_key(subject_id, token),
                self.store.open_key,
                self.store.due_key,
                *self._slot_keys(partner_id),
            ],
            args=[
                claim,
                self.store.done_ttl,
                task_id,
                self.store.max_inflight_deliveries,
                time.time(),
                self.store.open_grace,
            ],
        )

    # --------------------------------------------------------------- attempts
    def record(
        self,
        subject_id: str,
        entry: dict[str, Any],
        state: str,
        kind: str = "job",
        token: str | None = None,
        task_id: str = "",
        following: tuple[str, float, str] | None = None,
        endpoint_id: str = "",
        body: str | None = None,
        partner_id: str = "",
        response: dict[str, Any] | None = None,
        endpoint_headers: tuple[str, str] = ("", ""),
    ) -> tuple[int, list[str]]:
        """Append one attempt, update the summary (and job record); returns attempts so
        far, and the due entries of the partner's deferred attempts brought forward.

        The entry is stored with ``"attempt"`` (its number) added last. With ``token``,
        that attempt's claim is marked done in the same call, and its delivery (``task_id``)
        closed; ``following`` (task id, due time, due-set entry) schedules the next
        attempt in the same script; with ``endpoint_id``, the attempt is also appended to
        that endpoint's attempts; ``body``, the one this attempt built, is stored for the
        later ones unless a body is stored already; with ``partner_id``, the attempt's
        slot among the partner's deliveries in flight is given back, and the first in its
        line are brought forward (due now, for the caller to queue); ``response``, the
        receiver's answer as the message log keeps it (``jobgate.webhooks.http
        .logged_response``), is kept once for the attempt, beside the log;
        ``endpoint_headers`` (key, JSON: ``jobgate.webhooks.messagelog.sent_apart``), the
        endpoint's own headers it sent, once per endpoint and set of values. One round trip.
        """
        head = json.dumps(entry, separators=(",", ":"))
        head = (head[:-1] + ',"attempt":') if entry else '{"attempt":'
        keys = [
            self._key(subject_id),
            self.log_key(subject_id),
            self.claim_key(subject_id, token) if token is not None else "",
            self.store.key("job", subject_id),
            self.store.open_key,
            self.store.due_key,
            self.store.archive_key,
            self.store.key("endpoint", endpoint_id, "attempts") if endpoint_id else "",
            self.store.key("endpoint", endpoint_id, "seq") if endpoint_id else "",
            self.body_key(subject_id, entry["event"]) if body is not None else "",
            *self._slot_keys(partner_id),
            self.responses_key(subject_id),
            endpoint_headers[0],
        ]
        next_id, due_at, due_entry = following or ("", 0.0, "")
        args = [
            state,
            entry["webhook_id"],
            entry["event"],
            entry["at"],
            self.store.retention,
            MAX_LOG,
            head,
            "1" if kind == "job" else "0",
            task_id,
            next_id,
            due_at + self.store.open_grace,
            due_at,
            due_entry,
            f"{kind}:{subject_id}",
            self.store.done_ttl,
            body or "",
            self.store.max_inflight_deliveries,
            time.time(),
            self.store.open_grace,
            json.dumps(response, separators=(",", ":")) if response is not None else "",
            endpoint_headers[1],
        ]
        number, woken = self.store.scripts["delivery_record"](keys=keys, args=args)
        return int(number), list(woken)

    def redeliver(
        self,
        subject_id: str,
        event: str,
        kind: str,
        *,
        first: str,
        new: tuple[str, str],
        now: float,
    ) -> tuple[str, str]:
        """Where a redelivery of ``event`` stands, decided and recorded in one script:
        ``("due", entry)`` when its delivery has a retry waiting on the due set, now due
        (the caller queues ``entry``); ``("open", "")`` when an attempt is queued or
        running (``first``: the automatic chain's first task id); ``("new", "")`` when the
        delivery had ended: ``new`` (task id, due entry), a new chain's first attempt, is
        marked open and pending, for the caller to send."""
        found = self.store.scripts["delivery_redeliver"](
            keys=[
                self._key(subject_id),
                self.store.due_key,
                self.store.open_key,
                self.store.key("job", subject_id),
            ],
            args=[
                event,
                now,
                now + self.store.open_grace,
                first,
                new[0],
                new[1],
                self.store.retention,
                "1" if kind == "job" else "0",
            ],
        )
        return str(found[0]), str(found[1])

    def attempts(self, subject_id: str) -> list[dict[str, Any]]:
        """Every recorded attempt, oldest first (as recorded: ``jobgate.webhooks.messagelog``
        adds what each sent and what it was answered)."""
        return [json.loads(raw) for raw in self.redis.lrange(self.log_key(subject_id), 0, -1)]

    def summary(self, subject_id: str, has_callback: bool = True) -> dict[str, Any]:
        """``{"state", "attempts"}`` as the job view shows it (also for batches)."""
        if not has_callback:
            return {"state": "none", "attempts": 0}
        raw = self.redis.hgetall(self._key(subject_id))
        return {"state": raw.get("state") or "pending", "attempts": int(raw.get("attempts") or 0)}
