"""An attempt's request as the message log keeps it: the endpoint's own headers apart
(once per endpoint and set of values), joined back whole on reads."""

from __future__ import annotations

import json

import pytest

from jobgate.webhooks.messagelog import rebuilt, sent_apart, with_endpoint_headers

pytestmark = pytest.mark.unit

ENDPOINT = {"Authorization": "Bearer t", "traceparent": "00-aa-bb-01"}


def test_a_header_jobgate_sent_in_the_endpoints_place_stays_in_the_entry() -> None:
    """The endpoint's are the headers sent with the endpoint's own value: a traceparent
    jobgate set over the endpoint's (its job's trace) differs per message and stays in
    the entry, so the set kept apart, and its digest, is one per endpoint."""
    sent = {"Authorization": "Bearer t", "traceparent": "00-cc-dd-01", "webhook-id": "msg_1"}
    request, kept = sent_apart(sent, ENDPOINT)
    assert json.loads(kept or "") == {"Authorization": "Bearer t"}
    assert request["headers"] == {"traceparent": "00-cc-dd-01", "webhook-id": "msg_1"}
    other, again = sent_apart({**sent, "traceparent": "00-ee-ff-01"}, ENDPOINT)
    assert again == kept and other["endpoint_headers"] == request["endpoint_headers"]
    entry = {"request": request}
    assert with_endpoint_headers(entry, kept)["request"] == {"headers": sent}


def test_lost_headers_are_rebuilt_only_from_the_same_set_and_otherwise_said_missing() -> None:
    sent = {"X-B": "2", "X-A": "1", "webhook-id": "msg_1"}
    request, _ = sent_apart(sent, {"X-A": "1", "X-B": "2"})
    entry = {"request": request}
    same = rebuilt(entry, {"X-A": "1", "X-B": "2"})  # another order: JSONB keeps none
    assert same is not None
    assert with_endpoint_headers(entry, same)["request"]["headers"] == {**sent}
    assert rebuilt(entry, {"X-A": "1", "X-B": "3"}) is None
    partial = with_endpoint_headers(entry, None)["request"]
    assert partial == {"headers": {"webhook-id": "msg_1"}, "headers_incomplete": True}
