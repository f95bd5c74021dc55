"""Every webhook event jobgate sends, in one place: its type, its subject, its body.

A subject is what an event is about (a job, a batch); each kind names the Redis hash that
holds its record and builds the ``data`` of the event from it. Adding an event type is one
``EventType`` here (and, for a new subject kind, one ``Subject``).

An event's body is fixed when the event happens, not when it is first sent:
``build_body`` is a pure function of what the script recording the event wrote (the
record as it was at that moment, and its ``finished_at`` as the event's ``timestamp``),
so a first attempt made late (a backlog, a stopped delivery pool, a message the sweeper
re-queued) sends the same bytes as one made at once. ``jobgate.webhooks.ledger`` then stores
the first body built, so every retry and redelivery sends those bytes even across an
upgrade of this code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from jobgate import batches
from jobgate.messages import AUTO_CHAIN
from jobgate.status import job_view
from jobgate.store import Store, decode_job
from jobgate.times import utcnow

OPERATIONAL_SUBJECT = "op"  # the subject kind of an operational event (jobgate.operational)


@dataclass(frozen=True)
class EventType:
    name: str
    subject: str  # a key of SUBJECTS
    description: str
    # Operational: about the delivery itself (an endpoint, a message), sent only to the
    # endpoints whose ``event_types`` name it (never to those that take every event).
    operational: bool = False
    sample: dict[str, Any] | None = None  # a sample ``data`` (operational events)


EVENT_TYPES: dict[str, EventType] = {
    e.name: e
    for e in (
        EventType("job.succeeded", "job", "A job ended with SUCCESS; data is the job."),
        EventType("job.failed", "job", "A job ended with FAILURE; data is the job."),
        EventType("job.revoked", "job", "A job was revoked; data is the job."),
        EventType("batch.completed", "batch", "Every job of a batch ended; data is the batch."),
        *(
            EventType(name, OPERATIONAL_SUBJECT, description, True, sample)
            for name, description, sample in (
                (
                    "endpoint.disabled",
                    "An endpoint was disabled: by jobgate (410 Gone, failing too long) or "
                    "through the API (by the partner or an admin); sent to the partner's "
                    "other endpoints that subscribe.",
                    {
                        "endpoint": {"id": "ep_3f1c…", "url": "https://partner.example/hooks"},
                        "disabled_by": "jobgate",
                        "reason": "every attempt failed for 432000 s (limit 432000 s)",
                        "disabled_at": "2024-05-01T12:00:03.512Z",
                    },
                ),
                (
                    "endpoint.enabled",
                    "A disabled endpoint was enabled again through the API.",
                    {
                        "endpoint": {"id": "ep_3f1c…", "url": "https://partner.example/hooks"},
                        "enabled_by": "partner",
                        "enabled_at": "2024-05-01T12:00:03.512Z",
                    },
                ),
                (
                    "message.attempt.failing",
                    "A message's 4th attempt failed (once per message).",
                    {
                        "endpoint": {"id": "ep_3f1c…", "url": "https://partner.example/hooks"},
                        "message": {"webhook_id": "msg_9a…", "event": "job.succeeded"},
                        "job_id": "5b0e…",
                        "attempts": 4,
                        "last_attempt": {
                            "at": "2024-05-01T12:35:03.512Z",
                            "status_code": 503,
                            "error": "HTTP 503",
                        },
                    },
                ),
                (
                    "message.attempt.exhausted",
                    "A message's last attempt failed: no attempt follows (a callback_url's "
                    "too, whose endpoint is its redacted URL).",
                    {
                        "endpoint": {"callback_url": "https://partner.example/cb"},
                        "message": {"webhook_id": "msg_9a…", "event": "job.failed"},
                        "job_id": "5b0e…",
                        "attempts": 8,
                        "last_attempt": {
                            "at": "2024-05-02T16:00:03.512Z",
                            "status_code": None,
                            "error": "connection refused",
                        },
                    },
                ),
                (
                    "message.attempt.recovered",
                    "A message that was failing (4 failed attempts or more) was delivered.",
                    {
                        "endpoint": {"id": "ep_3f1c…", "url": "https://partner.example/hooks"},
                        "message": {"webhook_id": "msg_9a…", "event": "batch.completed"},
                        "batch_id": "b_71d2…",
                        "attempts": 5,
                        "last_attempt": {
                            "at": "2024-05-01T14:35:03.512Z",
                            "status_code": 200,
                            "error": None,
                        },
                    },
                ),
            )
        ),
    )
}
OPERATIONAL = frozenset(name for name, e in EVENT_TYPES.items() if e.operational)
ENDPOINT_DISABLED, ENDPOINT_ENABLED = "endpoint.disabled", "endpoint.enabled"
ATTEMPT_FAILING, ATTEMPT_EXHAUSTED = "message.attempt.failing", "message.attempt.exhausted"
ATTEMPT_RECOVERED = "message.attempt.recovered"
FAILING_AFTER = 4  # failed attempts of a message that make it ``failing``
JOB_EVENTS = {"SUCCESS": "job.succeeded", "FAILURE": "job.failed", "REVOKED": "job.revoked"}
BATCH_COMPLETED = "batch.completed"


@dataclass(frozen=True)
class Subject:
    """A kind of thing events are about: where its record lives and how data is built.

    ``data`` builds the event's ``data`` as the subject was when the event happened, from
    its raw record; ``occurred_at`` reads when that was from the same record.
    ``from_record``: ``data`` reads nothing but that record (a job), so every build gives
    the same bytes; a batch's reads its members, an endpoint message's its subject, as
    they are now.
    """

    kind: str
    record_key: Callable[[Store, str], str]
    data: Callable[[Store, str, dict[str, str]], dict[str, Any] | None]
    occurred_at: Callable[[dict[str, str]], str | None]
    from_record: bool = False


# Written on the job record by each delivery attempt; not part of the job as it ended.
_DELIVERY_FIELDS = ("webhook_state", "webhook_attempts")


def _job_data(store: Store, job_id: str, raw: dict[str, str]) -> dict[str, Any] | None:
    """The job as ``GET /v1/jobs/{id}`` returned it when it ended (webhook still pending)."""
    record = decode_job({k: v for k, v in raw.items() if k not in _DELIVERY_FIELDS})
    return job_view(record) if record else None


def job_body(event: str, record: dict[str, Any]) -> str:
    """The body of ``event`` about an ended job from its record as its database row keeps
    it: what ``build_body`` makes from the Redis record, for when Redis has forgotten it."""
    data = job_view({k: v for k, v in record.items() if k not in _DELIVERY_FIELDS})
    return event_body(event, data, record.get("finished_at") or utcnow())


def _finished_at(raw: dict[str, str]) -> str | None:
    """When a job or batch ended: its ``finished_at``, written by the script that ended it."""
    return raw.get("finished_at") or None


def _batch_data(store: Store, batch_id: str, raw: dict[str, str]) -> dict[str, Any] | None:
    record = batches.batch_record(store, batch_id)
    return batches.batch_view(store, batch_id, record=record) if record else None


def _message_data(store: Store, msg_id: str, raw: dict[str, str]) -> dict[str, Any] | None:
    """An endpoint's message carries its event's data: that of the subject it is about
    (only needed if the body stored at fan-out time is gone)."""
    subject = SUBJECTS.get(raw.get("kind", ""))
    if subject is None:
        return None
    about = raw.get("subject_id", "")
    record = cast("dict[str, str]", store.redis.hgetall(subject.record_key(store, about)))
    return subject.data(store, about, record) if record else None


def _op_data(store: Store, op_id: str, raw: dict[str, str]) -> dict[str, Any] | None:
    """An operational event's data, as its record (and its row) keep it."""
    return cast("dict[str, Any]", json.loads(raw["data"])) if raw.get("data") else None


MESSAGE = "msg"  # the subject kind of one event's message to one registered endpoint

SUBJECTS: dict[str, Subject] = {
    s.kind: s
    for s in (
        Subject(
            "job",
            lambda store, job_id: store.key("job", job_id),
            _job_data,
            _finished_at,
            from_record=True,
        ),
        Subject("batch", batches.batch_key, _batch_data, _finished_at),
        Subject(
            MESSAGE,
            lambda store, msg_id: store.key("msg", msg_id),
            _message_data,
            lambda raw: raw.get("occurred_at") or None,
        ),
        Subject(
            OPERATIONAL_SUBJECT,
            lambda store, op_id: store.key("op", op_id),
            _op_data,
            lambda raw: raw.get("occurred_at") or None,
            from_record=True,
        ),
    )
}


def job_event(status: str) -> str:
    """The event a job's terminal status fires."""
    return JOB_EVENTS[status]


def webhook_id(subject_id: str, event: str) -> str:
    """One id per (subject, event): the same on every retry and redelivery. An endpoint's
    message is its own subject, and its id is its ``webhook-id``."""
    if subject_id.startswith("msg_"):
        return subject_id
    return "msg_" + hashlib.sha256(f"{subject_id}:{event}".encode()).hexdigest()[:32]


def endpoint_message_id(subject_id: str, event: str, endpoint_id: str) -> str:
    """The ``webhook-id`` of ``event`` about ``subject_id`` sent to one endpoint: derived,
    so a repeated fan-out finds the same message."""
    raw = f"{subject_id}:{event}:{endpoint_id}".encode()
    return "msg_" + hashlib.sha256(raw).hexdigest()[:32]


def fan_out_task_id(kind: str, subject_id: str, event: str) -> str:
    """The Celery task id of an event's fan-out step to its partner's endpoints."""
    return f"fan:{kind}:{subject_id}:{event}"


def parse_fan_out_task_id(task_id: str) -> tuple[str, str, str] | None:
    """(kind, subject id, event) of a ``fan_out_task_id``; None otherwise."""
    parts = task_id.split(":")
    if len(parts) != 4 or parts[0] != "fan":
        return None
    return parts[1], parts[2], parts[3]


def delivery_task_id(kind: str, subject_id: str, event: str, chain: str, retry: int) -> str:
    """The Celery task id of one delivery attempt: known in advance, so the sweeper can
    tell whether an open delivery's message is still queued anywhere."""
    return f"whk:{kind}:{subject_id}:{event}:{chain}:{retry}"


def delivery_call(
    kind: str, subject_id: str, event: str, chain: str, retry: int
) -> tuple[str, list[str], dict[str, Any]]:
    """(task id, args, kwargs) of one ``jobgate.deliver_webhook`` attempt: the task's call
    in one place, for every path that queues or schedules one."""
    kwargs: dict[str, Any] = {}
    if (chain, retry) != (AUTO_CHAIN, 0):
        kwargs = {"retry": retry, "chain": chain}
    return (
        delivery_task_id(kind, subject_id, event, chain, retry),
        [kind, subject_id, event],
        kwargs,
    )


def parse_delivery_task_id(task_id: str) -> tuple[str, str, str, str, int] | None:
    """(kind, subject id, event, chain, retry) of a ``delivery_task_id``; None otherwise."""
    parts = task_id.split(":")
    if len(parts) != 6 or parts[0] != "whk" or not parts[5].isdigit():
        return None
    return parts[1], parts[2], parts[3], parts[4], int(parts[5])


def event_body(event: str, data: dict[str, Any], timestamp: str) -> str:
    """The JSON body of one event: ``{"type", "timestamp", "data"}``, compact."""
    return json.dumps(
        {"type": event, "timestamp": timestamp, "data": data}, separators=(",", ":"), default=str
    )


def build_body(
    store: Store, kind: str, subject_id: str, event: str, raw: dict[str, str]
) -> str | None:
    """The body of ``event`` about the subject whose raw record is ``raw``, as it was when
    the event happened (for a job, the same bytes whenever it is built; see
    ``Subject.from_record``); None if the subject is gone.

    A record without ``finished_at`` (none in practice: every end writes it) falls back
    to now.
    """
    subject = SUBJECTS[kind]
    data = subject.data(store, subject_id, raw)
    if data is None:
        return None
    return event_body(event, data, subject.occurred_at(raw) or utcnow())
