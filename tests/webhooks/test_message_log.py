"""The message log (issue 28): each attempt shows the request as signed and sent and the
receiver's answer, bounded, read from Redis and, once Redis forgot them, from the database.

A real gateway, a real ``jobgate worker`` (which also archives) and real receivers
(``tests.webhooks.conftest.Receiver``, scripted with ``Reply``). The logged request is
checked against what the receiver got, and its signature with the ``standardwebhooks``
package (an independent implementation).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from config import Settings
from jobgate import history
from jobgate.sealing import PREFIX
from jobgate.webhooks.http import (
    MAX_LOGGED_BODY,
    MAX_LOGGED_HEADER_VALUE,
    MAX_LOGGED_HEADERS,
    MAX_LOGGED_HEADERS_BYTES,
    logged_response,
)
from jobgate.webhooks.ledger import MAX_LOG, Deliveries
from tests.conftest import ADMIN_KEY
from tests.helpers import WorkerProcess, gateway_for, wait_until
from tests.unit.test_openapi import errors_against
from tests.webhooks.conftest import Received, Receiver, Reply
from tests.webhooks.test_endpoints import register, settled_attempts
from tests.webhooks.test_events import deliveries, submit, webhook_settles

ENDPOINT_HEADERS = {"Authorization": "Bearer partner-token-28", "X-Tenant": "acme"}


@pytest.fixture(scope="module")
def world(settings: Settings, redis_client: Any) -> Iterator[SimpleNamespace]:
    """A gateway, a partner and a worker in a key prefix and queues of their own."""
    tag = f"msglog-{uuid.uuid4().hex[:8]}"
    own = settings.with_overrides(
        key_prefix=tag,
        queue_jobs=f"{tag}-jobs",
        queue_webhooks=f"{tag}-hooks",
        webhook_retry_delays=(0.2, 0.2, 0.2),
        webhook_timeout=3.0,
    )
    client, partner, svc = gateway_for(own, ADMIN_KEY)
    worker = WorkerProcess(own, concurrency=2, name=tag).start()
    yield SimpleNamespace(client=client, partner=partner, svc=svc, settings=own)
    worker.stop()


def assert_logged_request_is_what_arrived(
    logged: dict[str, Any], received: Received, secret: str
) -> None:
    """The logged request is the one the receiver got, header for header and byte for
    byte, and its signature verifies from the log alone."""
    request = logged["request"]
    assert {name.lower(): value for name, value in request["headers"].items()} == received.headers
    assert request["body"].encode() == received.body
    Webhook(secret).verify(request["body"], request["headers"])


def documented(world: SimpleNamespace, path: str, answer: Any, method: str = "get") -> None:
    """``answer`` is what /openapi.json says the operation answers (200)."""
    spec = world.client.get("/openapi.json").get_json()
    response = spec["paths"][path][method]["responses"]["200"]
    schema = response["content"]["application/json"]["schema"]
    assert errors_against(spec, schema, answer) == []


def forget(world: SimpleNamespace, *ids: str) -> None:
    """Redis forgets every key naming one of ``ids`` (the cache expired)."""
    store = world.svc.store
    for key in store.redis.scan_iter(f"{store.prefix}:*"):
        if any(subject in key for subject in ids):
            store.redis.delete(key)


def archived(world: SimpleNamespace, subject_id: str, count: int) -> list[dict[str, Any]]:
    """Wait until the archiver wrote ``count`` attempts of ``subject_id`` with what they
    sent and were answered."""
    return wait_until(
        lambda: (
            rows
            if len(rows := history.attempts(world.svc.db, subject_id)) >= count
            and all(row["request"] and row["request"]["body"] for row in rows)
            else None
        ),
        30,
        message=f"{count} attempt(s) of {subject_id} archived",
    )


# ------------------------------------------------------------------------------ jobs
def test_a_jobs_attempts_show_what_was_sent_and_answered(world, receiver: Receiver) -> None:
    client, partner, store = world.client, world.partner, world.svc.store
    receiver.answer(
        Reply(503, (("X-Reason", "busy"), ("Retry-After", "0")), b'{"error":"busy"}'),
        Reply(200, (("X-Receipt", "r-28"),), "merci \u00e9t\u00e9".encode()),
    )
    traceparent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    submitted = client.post(
        "/v1/jobs",
        json={"task": "demo.sleep", "params": {"seconds": 0}, "callback_url": receiver.url},
        headers={**partner["headers"], "traceparent": traceparent},
    )
    assert submitted.status_code == 202, submitted.get_json()
    job_id = submitted.get_json()["job_id"]
    webhook_settles(client, job_id, partner["headers"], ("delivered",))
    answer = client.get(f"/v1/jobs/{job_id}/deliveries", headers=partner["headers"]).get_json()
    documented(world, "/v1/jobs/{job_id}/deliveries", answer)
    logged = answer["deliveries"]
    received = receiver.wait_for(2)
    assert [a["status_code"] for a in logged] == [503, 200]
    for attempt, request in zip(logged, received, strict=True):
        assert_logged_request_is_what_arrived(attempt, request, partner["webhook_secret"])
    # The job's trace goes on in the webhook: the header sent is logged with the rest.
    trace_id = traceparent.split("-")[1]
    assert all(a["request"]["headers"]["traceparent"].split("-")[1] == trace_id for a in logged)
    first, second = (attempt["response"] for attempt in logged)
    assert first["headers"]["X-Reason"] == "busy" and first["body"] == '{"error":"busy"}'
    assert second["headers"]["X-Receipt"] == "r-28"
    assert second["body"] == "merci \u00e9t\u00e9"
    assert first["truncated"] is second["truncated"] is False
    assert second["headers"]["Content-Length"] == str(len("merci \u00e9t\u00e9".encode()))
    # Each attempt was signed afresh (its own headers); the body is the message's, stored
    # once: no attempt's entry in Redis copies it.
    body = logged[0]["request"]["body"]
    assert logged[1]["request"]["body"] == body
    books = Deliveries(store)
    raw_log = store.redis.lrange(books.log_key(job_id), 0, -1)
    assert len(raw_log) == 2 and not any(json.dumps(body)[1:-1] in entry for entry in raw_log)
    assert store.redis.hlen(books.responses_key(job_id)) == 2
    assert store.redis.ttl(books.responses_key(job_id)) > 0

    # From the database once Redis forgot the job: the same attempts, the same log.
    assert archived(world, job_id, 2) == logged
    forget(world, job_id)
    assert store.job(job_id) is None
    assert deliveries(client, job_id, partner["headers"]) == logged


def test_a_long_answer_is_cut_to_64_kib_and_many_headers_to_their_bounds(
    world, receiver: Receiver
) -> None:
    client, partner, store = world.client, world.partner, world.svc.store
    many = tuple((f"X-Filler-{n:03d}", "v" * 2000) for n in range(80))
    receiver.answer(Reply(200, many, b"a" * (100 * 1024)))
    job_id = submit(client, partner, receiver.url)["job_id"]
    webhook_settles(client, job_id, partner["headers"], ("delivered",))
    [attempt] = deliveries(client, job_id, partner["headers"])
    response = attempt["response"]
    assert response["truncated"] is True and response["body"] == "a" * MAX_LOGGED_BODY
    assert response["headers_truncated"] is True
    assert 0 < len(response["headers"]) <= MAX_LOGGED_HEADERS
    assert all(len(value) <= MAX_LOGGED_HEADER_VALUE for value in response["headers"].values())
    size = sum(len(name) + len(value) for name, value in response["headers"].items())
    assert size <= MAX_LOGGED_HEADERS_BYTES
    # What Redis keeps of the answer is that bound, once.
    kept = store.redis.hget(Deliveries(store).responses_key(job_id), "1")
    assert len(kept) <= MAX_LOGGED_BODY + MAX_LOGGED_HEADERS_BYTES + 4096
    # And the database keeps the same.
    assert archived(world, job_id, 1)[0]["response"] == response
    forget(world, job_id)
    assert deliveries(client, job_id, partner["headers"])[0]["response"] == response


def test_answers_are_kept_as_long_as_their_attempts(world) -> None:
    """However many attempts a receiver answers 64 KiB to, a subject keeps the answers of
    the MAX_LOG attempts its log keeps, for the retention period, and no more."""
    store = world.svc.store
    books = Deliveries(store)
    subject = "msg_" + uuid.uuid4().hex
    answer = logged_response({"X-Big": "y"}, b"z" * MAX_LOGGED_BODY, True)
    for n in range(MAX_LOG + 5):
        entry = {
            "webhook_id": subject,
            "event": "job.succeeded",
            "at": "2026-12-06T07:00:00Z",
            "status_code": 500,
            "request": {"headers": {"webhook-id": subject}},
        }
        assert books.record(subject, entry, "retrying", "msg", response=answer)[0] == n + 1
    key = books.responses_key(subject)
    kept = store.redis.hkeys(key)
    assert sorted(map(int, kept)) == list(range(6, MAX_LOG + 6))
    assert store.redis.llen(books.log_key(subject)) == MAX_LOG
    assert 0 < store.redis.ttl(key) <= store.retention
    forget(world, subject)


def test_logged_response_bounds() -> None:
    """The bounds alone: a body cut inside a character drops that character, headers past
    the count or the size are dropped and say so."""
    cut = logged_response({}, "\u00e9".encode() * (MAX_LOGGED_BODY // 2) + b"\xc3", True)
    assert cut["body"] == "\u00e9" * (MAX_LOGGED_BODY // 2) and cut["truncated"] is True
    whole = logged_response({"A": "1"}, b"\xff ok", False)
    assert whole == {
        "headers": {"A": "1"},
        "headers_truncated": False,
        "body": "\ufffd ok",
        "truncated": False,
    }
    long = logged_response({"B": "x" * 5000}, b"", False)
    assert long["headers"]["B"] == "x" * MAX_LOGGED_HEADER_VALUE and long["headers_truncated"]


# ------------------------------------------------------------------------- endpoints
def test_endpoint_attempts_show_what_was_sent_and_answered(world, receiver: Receiver) -> None:
    client, store = world.client, world.svc.store
    created = client.post("/v1/partners", json={"name": "ml"}, headers=ADMIN).get_json()
    partner = {**created, "headers": {"Authorization": f"Bearer {created['api_key']}"}}
    endpoint = register(world, partner, receiver.url, headers=ENDPOINT_HEADERS)
    receiver.answer(Reply(200, (("X-Receipt", "ep-28"),), b'{"ok":true}'))
    submit(client, partner, None)
    [attempt] = settled_attempts(world, partner, endpoint["id"], 1)
    [request] = receiver.wait_for(1)
    assert_logged_request_is_what_arrived(attempt, request, endpoint["webhook_secret"])
    for name, value in ENDPOINT_HEADERS.items():  # the partner's own: shown to it already
        assert attempt["request"]["headers"][name] == value
    assert attempt["response"]["headers"]["X-Receipt"] == "ep-28"
    assert attempt["response"]["body"] == '{"ok":true}'
    # Nothing sealed, no secret: only the signature made with it.
    text = json.dumps(attempt)
    assert PREFIX not in text and endpoint["webhook_secret"] not in text
    assert endpoint["webhook_secret"].removeprefix("whsec_") not in text

    # A test ping logs (and answers) the same.
    receiver.answer(Reply(202, (("X-Ping", "pong"),), b"pong"))
    ping = client.post(f"/v1/endpoints/{endpoint['id']}/test", headers=partner["headers"])
    assert ping.status_code == 200, ping.get_json()
    [_, pinged] = receiver.wait_for(2)
    assert_logged_request_is_what_arrived(ping.get_json(), pinged, endpoint["webhook_secret"])
    assert ping.get_json()["response"]["headers"]["X-Ping"] == "pong"
    logged = settled_attempts(world, partner, endpoint["id"], 2)
    assert logged[0]["response"]["body"] == "pong"
    assert_logged_request_is_what_arrived(logged[0], pinged, endpoint["webhook_secret"])

    # Once Redis forgot the messages' bodies and answers, they read from the database.
    for one in logged:
        archived(world, one["webhook_id"], 1)
    forget(world, *(one["webhook_id"] for one in logged))
    assert store.redis.exists(Deliveries(store).responses_key(logged[0]["webhook_id"])) == 0
    path = f"/v1/endpoints/{endpoint['id']}/attempts"
    answer = client.get(path, headers=partner["headers"]).get_json()
    assert answer["attempts"] == logged
    documented(world, "/v1/endpoints/{endpoint_id}/attempts", answer)
    documented(world, "/v1/endpoints/{endpoint_id}/test", ping.get_json(), "post")


def test_an_endpoints_own_headers_are_kept_once_not_in_each_attempt(
    world, receiver: Receiver
) -> None:
    """Up to 4 KiB of an endpoint's own headers go with every delivery to it; Redis keeps
    them once per endpoint and set of values, not in each of the endpoint's latest 10 000
    attempts (and each message's log): one partner's 20 endpoints at the bound would
    otherwise hold ~0.9 GB of the shared Redis in their lists alone. Every attempt still
    shows them, and, once Redis lost them, the database's copy (the archive writes them
    whole)."""
    client, store = world.client, world.svc.store
    created = client.post("/v1/partners", json={"name": "big"}, headers=ADMIN).get_json()
    partner = {**created, "headers": {"Authorization": f"Bearer {created['api_key']}"}}
    big = {f"X-Big-{i:02}": f"{i:02}" * 94 for i in range(20)}  # 20 headers, 4 040 characters
    endpoint = register(world, partner, receiver.url, headers=big)
    for _ in range(3):
        submit(client, partner, None)
    logged = settled_attempts(world, partner, endpoint["id"], 3)
    for attempt in logged:
        sent = attempt["request"]["headers"]
        assert {name: sent[name] for name in big} == big
        assert sent["webhook-id"] == attempt["webhook_id"]
    members = store.redis.zrange(store.key("endpoint", endpoint["id"], "attempts"), 0, -1)
    assert len(members) == len(logged)
    assert all(len(member) < 1024 for member in members), [len(m) for m in members]
    for attempt in logged:  # each message's own log: the same entry
        [entry] = store.redis.lrange(Deliveries(store).log_key(attempt["webhook_id"]), 0, -1)
        assert len(entry) < 1024
    [kept] = store.redis.keys(store.key("endpoint", endpoint["id"], "sent", "*"))

    for attempt in logged:
        archived(world, attempt["webhook_id"], 1)
    store.redis.delete(kept)  # Redis lost them: the archived attempts hold them whole
    answer = attempts_of(world, partner, endpoint["id"])
    assert answer == logged


def attempts_of(world, partner, endpoint_id: str) -> list[dict[str, Any]]:
    path = f"/v1/endpoints/{endpoint_id}/attempts"
    return world.client.get(path, headers=partner["headers"]).get_json()["attempts"]


ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def test_what_an_attempt_that_got_no_answer_or_sent_nothing_logs() -> None:
    """A connection refused: the request as it was to be sent, no response. A URL the
    SSRF guard refuses: nothing sent, nothing logged of a request."""
    from jobgate.ssrf import parse_allowlist
    from jobgate.webhooks.http import deliver
    from jobgate.webhooks.messagelog import exchange
    from tests.webhooks.conftest import closed_port_url

    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    refused = deliver(
        closed_port_url(),
        b"{}",
        "msg_x",
        [secret],
        allow_http=True,
        allowlist=parse_allowlist("127.0.0.0/8"),
    )
    assert refused.outcome == "retry" and refused.response is None
    assert refused.request_headers is not None
    assert refused.request_headers["webhook-id"] == "msg_x"
    blocked = deliver("http://127.0.0.1:9/hook", b"{}", "msg_y", [secret])
    assert blocked.outcome == "failed" and blocked.request_headers is None
    assert exchange({"webhook_id": "msg_y"}, "{}", None) == {
        "webhook_id": "msg_y",
        "request": None,
        "response": None,
    }
