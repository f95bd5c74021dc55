"""When an attempt makes a ``message.attempt.*`` event (jobgate.webhooks.operational):
``failing`` at a message's 4th failed attempt only, ``exhausted`` when its delivery ends
failed, ``recovered`` when a message with 4 failed attempts or more is delivered after a
failure; never about an operational event's own message, nor for an attempt refused
because its endpoint is disabled. The ids are derived, so a repeat announces once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from jobgate.webhooks import operational
from jobgate.webhooks.operational import Attempted, after_attempt, attempt_data, op_id

ENDPOINT_MESSAGE = Attempted(
    kind="msg",
    subject_id="msg_1",
    event="job.succeeded",
    chain="auto",
    webhook_id="msg_1",
    partner_id="ptn_1",
    endpoint_id="ep_1",
    url="https://partner.example/hooks?token=s3cret",
    outcome="retry",
    state="retrying",
    number=1,
    entry={"at": "2026-05-01T12:00:00.000Z", "status_code": 503, "error": "HTTP 503"},
    record={"kind": "job", "subject_id": "j1"},
    refused=False,
)
CALLBACK = replace(
    ENDPOINT_MESSAGE,
    kind="batch",
    subject_id="b1",
    event="batch.completed",
    webhook_id="msg_cb",
    endpoint_id="",
    url="https://user:pw@partner.example/cb?token=s3cret#x",
    record={"partner_id": "ptn_1"},
)


Announced = list[tuple[str, dict[str, Any], tuple[str, ...]]]


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Announced]:
    """``run(attempt, previous="retry")``: what ``after_attempt`` announces for it
    (``previous``: the outcome of the attempt before), each (event, data, key)."""
    calls: Announced = []

    def record(registry, messenger, partner_id, event, data, key, **_: Any) -> str:
        calls.append((event, data, key))
        return op_id(event, *key)

    monkeypatch.setattr(operational, "announce", record)

    def attempt(attempted: Attempted, previous: str | None = "retry") -> Announced:
        calls.clear()
        after_attempt(None, None, attempted, lambda: previous)  # type: ignore[arg-type]
        return list(calls)

    return attempt


def events(run: Callable[..., Announced], attempted: Attempted, **kwargs: Any) -> list[str]:
    return [event for event, _, _ in run(attempted, **kwargs)]


def test_failing_at_the_fourth_failed_attempt_only(run) -> None:
    for number in (1, 2, 3, 5, 6):
        assert events(run, replace(ENDPOINT_MESSAGE, number=number)) == []
    assert events(run, replace(ENDPOINT_MESSAGE, number=4)) == ["message.attempt.failing"]


def test_exhausted_when_the_delivery_ends_failed_and_failing_first_if_it_was_the_fourth(
    run,
) -> None:
    last = replace(ENDPOINT_MESSAGE, number=8, state="failed")
    assert events(run, last) == ["message.attempt.exhausted"]
    gone = replace(ENDPOINT_MESSAGE, number=1, outcome="failed", state="failed")  # a 410
    assert events(run, gone) == ["message.attempt.exhausted"]
    fourth_and_last = replace(ENDPOINT_MESSAGE, number=4, state="failed")
    assert events(run, fourth_and_last) == ["message.attempt.failing", "message.attempt.exhausted"]


def test_recovered_only_after_failing_and_a_failure_just_before(run) -> None:
    delivered = replace(ENDPOINT_MESSAGE, outcome="delivered", state="delivered")
    assert events(run, replace(delivered, number=4)) == []  # 3 failures: never failing
    assert events(run, replace(delivered, number=5)) == ["message.attempt.recovered"]
    # A redelivery of a message delivered before is no recovery.
    assert events(run, replace(delivered, number=6), previous="delivered") == []


def test_no_event_about_an_operational_message_nor_a_refused_attempt(run) -> None:
    about_an_event = replace(ENDPOINT_MESSAGE, event="message.attempt.exhausted", number=4)
    assert events(run, replace(about_an_event, state="failed")) == []
    refused = replace(ENDPOINT_MESSAGE, number=4, state="failed", refused=True)
    assert events(run, refused) == []


def test_the_ids_are_derived_from_the_message_and_chain(run) -> None:
    [(_, _, key)] = run(replace(ENDPOINT_MESSAGE, number=4))
    [(_, _, again)] = run(replace(ENDPOINT_MESSAGE, number=4))
    assert key == again == ("msg_1",)
    first = run(replace(ENDPOINT_MESSAGE, number=8, state="failed"))
    other = run(replace(ENDPOINT_MESSAGE, number=12, state="failed", chain="r1"))
    assert first[0][2] != other[0][2]  # a redelivery chain exhausted is a new event


def test_data_names_the_endpoint_the_message_and_the_subject() -> None:
    data = attempt_data(replace(ENDPOINT_MESSAGE, number=4))
    assert data == {
        # The URL as logs show it: a token in its query reaches no other receiver.
        "endpoint": {"id": "ep_1", "url": "https://partner.example/hooks"},
        "message": {"webhook_id": "msg_1", "event": "job.succeeded"},
        "job_id": "j1",
        "attempts": 4,
        "last_attempt": ENDPOINT_MESSAGE.entry,
    }
    data = attempt_data(replace(CALLBACK, number=6, state="failed"))
    assert data["endpoint"] == {"callback_url": "https://partner.example/cb"}  # redacted
    assert data["batch_id"] == "b1" and "job_id" not in data
    assert data["message"] == {"webhook_id": "msg_cb", "event": "batch.completed"}
