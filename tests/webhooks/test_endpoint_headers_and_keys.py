"""An endpoint's own headers and its asymmetric (ed25519, Standard Webhooks ``v1a``)
signatures, against real receivers and a real ``jobgate worker`` (issue 27).

HMAC deliveries are verified with the ``standardwebhooks`` package (and jobgate's client);
ed25519 ones with the ``cryptography`` package alone, using only the ``whpk_`` public key
the API returned (``tests.helpers.verify_ed25519``), and with ``examples/receiver.py``.
"""

from __future__ import annotations

import importlib.util
import json
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from sqlalchemy import select
from standardwebhooks.webhooks import WebhookVerificationError

from config import Settings
from jobgate.db.models import Endpoint, SigningSecret
from jobgate.endpoint_headers import MAX_HEADER_VALUE, MAX_HEADERS, MAX_HEADERS_BYTES
from jobgate.sealing import PREFIX
from jobgate.store import secrets_of
from tests.conftest import ADMIN_KEY
from tests.helpers import ROOT, WorkerProcess, gateway_for, verify_ed25519, wait_until
from tests.webhooks.conftest import Received, Receiver
from tests.webhooks.test_endpoints import new_partner, register, settled_attempts, verified
from tests.webhooks.test_events import submit

GRACE = 4  # seconds a rotated secret or key still signs


@pytest.fixture(scope="module")
def world(settings: Settings, redis_client: Any) -> Iterator[SimpleNamespace]:
    """A gateway and a worker in a key prefix and queues of their own, with a short
    rotation grace."""
    tag = f"epkeys-{uuid.uuid4().hex[:8]}"
    own = settings.with_overrides(
        key_prefix=tag,
        queue_jobs=f"{tag}-jobs",
        queue_webhooks=f"{tag}-hooks",
        webhook_retry_delays=(0.2, 0.2),
        webhook_timeout=2.0,
        webhook_secret_grace=GRACE,
    )
    client, partner, svc = gateway_for(own, ADMIN_KEY)
    worker = WorkerProcess(own, concurrency=2, name="epkeys").start()
    yield SimpleNamespace(client=client, partner=partner, svc=svc, settings=own, worker=worker)
    worker.stop()


def example_receiver() -> Any:
    """examples/receiver.py as a module (its ``verify`` is what the docs tell receivers)."""
    spec = importlib.util.spec_from_file_location("receiver", ROOT / "examples" / "receiver.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def endpoints_of(world: SimpleNamespace, partner: dict[str, Any]) -> list[dict[str, Any]]:
    return world.client.get("/v1/endpoints", headers=partner["headers"]).get_json()["endpoints"]


def stored_secrets(world: SimpleNamespace, endpoint_id: str) -> list[str]:
    """The endpoint's stored secrets or keys, opened (each row holds it sealed)."""
    with world.svc.db.session() as session:
        query = select(SigningSecret.secret).where(SigningSecret.endpoint_id == endpoint_id)
        rows = list(session.scalars(query))
    assert all(row.startswith(PREFIX) for row in rows)  # sealed at rest (jobgate.sealing)
    return [world.svc.store.sealer.open(row) for row in rows]


# ------------------------------------------------------------------------------ headers
HEADERS = {"Authorization": "Bearer partner-token-1", "X-Tenant": "acme"}


def test_headers_are_stored_shown_and_sent_with_every_delivery(world, receiver) -> None:
    partner = new_partner(world)
    endpoint = register(world, partner, receiver.url, headers=HEADERS)
    assert endpoint["headers"] == HEADERS and endpoint["signature_scheme"] == "hmac"
    path = f"/v1/endpoints/{endpoint['id']}"
    assert world.client.get(path, headers=partner["headers"]).get_json()["headers"] == HEADERS
    assert endpoints_of(world, partner)[0]["headers"] == HEADERS
    # A job's event (the worker's fan-out and attempt) and a ping (the gateway) both carry them.
    submit(world.client, partner, None)
    [event] = receiver.wait_for(1)
    ping = world.client.post(f"{path}/test", headers=partner["headers"])
    assert ping.get_json()["outcome"] == "delivered", ping.get_json()
    for request in receiver.wait_for(2):
        assert request.headers["authorization"] == "Bearer partner-token-1"
        assert request.headers["x-tenant"] == "acme"
        # jobgate's own headers are untouched, and the signature still verifies.
        assert request.headers["content-type"] == "application/json"
        assert request.headers["user-agent"].startswith("jobgate/")
        verified(request, endpoint["webhook_secret"])
    # The worker logs each attempt, never the partner's header values (a receiver's token).
    wait_until(lambda: "succeeded in" in world.worker.log(), 10, 0.1, "the attempt logged")
    assert "partner-token-1" not in world.worker.log()
    assert verified(event, endpoint["webhook_secret"])["type"] == "job.succeeded"

    # PATCH replaces the whole set (the mirror the worker reads follows); {} removes them.
    changed = world.client.patch(
        path, json={"headers": {"X-Tenant": "globex"}}, headers=partner["headers"]
    )
    assert changed.status_code == 200 and changed.get_json()["headers"] == {"X-Tenant": "globex"}
    submit(world.client, partner, None)
    third = receiver.wait_for(3)[2]
    assert third.headers["x-tenant"] == "globex" and "authorization" not in third.headers
    cleared = world.client.patch(path, json={"headers": {}}, headers=partner["headers"])
    assert cleared.get_json()["headers"] == {}
    submit(world.client, partner, None)
    fourth = receiver.wait_for(4)[3]
    assert "x-tenant" not in fourth.headers
    verified(fourth, endpoint["webhook_secret"])


def test_an_endpoints_headers_never_go_to_a_jobs_callback_url(world, receiver) -> None:
    partner = new_partner(world)
    endpoint_receiver = Receiver()
    try:
        register(world, partner, endpoint_receiver.url, headers=HEADERS)
        submit(world.client, partner, receiver.url)
        [request] = receiver.wait_for(1)
        assert "authorization" not in request.headers and "x-tenant" not in request.headers
        verified(request, partner["webhook_secret"])
    finally:
        endpoint_receiver.stop()


REFUSED = [
    pytest.param({"webhook-id": "msg_x"}, "webhook-id", "Reserved", id="webhook-id"),
    pytest.param({"Webhook-Signature": "v1,x"}, "Webhook-Signature", "Reserved", id="signature"),
    pytest.param({"WEBHOOK-TIMESTAMP": "1"}, "WEBHOOK-TIMESTAMP", "Reserved", id="timestamp"),
    pytest.param({"Content-Type": "text/plain"}, "Content-Type", "Reserved", id="content-type"),
    pytest.param({"content-length": "1"}, "content-length", "Reserved", id="content-length"),
    pytest.param({"HOST": "evil.example"}, "HOST", "Reserved", id="host"),
    pytest.param({"User-Agent": "x"}, "User-Agent", "Reserved", id="user-agent"),
    pytest.param({"Connection": "close"}, "Connection", "Reserved", id="connection"),
    pytest.param({"Transfer-Encoding": "chunked"}, "Transfer-Encoding", "Reserved", id="te"),
    pytest.param({"X Bad": "1"}, "X Bad", "Not a header name", id="space-in-name"),
    pytest.param({"X-Bad:": "1"}, "X-Bad:", "Not a header name", id="colon-in-name"),
    pytest.param({"": "1"}, "", "Not a header name", id="empty-name"),
    pytest.param({"X-Näme": "1"}, "X-Näme", "Not a header name", id="non-ascii-name"),
    pytest.param({"X-" + "a" * 63: "1"}, "X-" + "a" * 63, "Not a header name", id="long-name"),
    pytest.param({"X-A": "a\r\nX-Injected: 1"}, "X-A", "printable ASCII", id="crlf"),
    pytest.param({"X-A": "a\nb"}, "X-A", "printable ASCII", id="lf"),
    pytest.param({"X-A": "a\x00b"}, "X-A", "NUL", id="nul"),  # refused before the schema
    pytest.param({"X-A": " padded"}, "X-A", "printable ASCII", id="leading-space"),
    pytest.param({"X-A": "é"}, "X-A", "printable ASCII", id="non-ascii-value"),
    pytest.param({"X-A": ""}, "X-A", "printable ASCII", id="empty-value"),
    pytest.param(
        {"X-A": "a" * (MAX_HEADER_VALUE + 1)}, "X-A", f"{MAX_HEADER_VALUE}", id="long-value"
    ),
    pytest.param({"X-A": "1", "x-a": "2"}, "x-a", "Repeated", id="same-name-twice"),
    pytest.param(
        {f"X-H{i}": "v" for i in range(MAX_HEADERS + 1)}, "_headers", "At most 20", id="21"
    ),
]


@pytest.mark.parametrize(("headers", "name", "words"), REFUSED)
def test_refused_headers_are_a_422_naming_the_header_and_nothing_is_made(
    world, headers: dict[str, str], name: str, words: str
) -> None:
    partner = new_partner(world)
    response = world.client.post(
        "/v1/endpoints",
        json={"url": "http://127.0.0.1:9999/hook", "headers": headers},
        headers=partner["headers"],
    )
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    assert any(words in why for why in error["details"]["headers"][name]), error
    assert endpoints_of(world, partner) == []  # nothing created
    # The same set on a PATCH leaves the endpoint's headers as they were.
    endpoint = register(world, partner, "http://127.0.0.1:9999/hook", headers=HEADERS)
    path = f"/v1/endpoints/{endpoint['id']}"
    refused = world.client.patch(path, json={"headers": headers}, headers=partner["headers"])
    assert refused.status_code == 422
    assert world.client.get(path, headers=partner["headers"]).get_json()["headers"] == HEADERS


def test_one_partners_headers_are_bounded_per_endpoint_and_kept_out_of_the_fan_out(
    world, receiver
) -> None:
    """The most one endpoint may hold (20 headers, 4096 characters of names and values) is
    accepted and sent whole; one character more is refused. What it costs others: each
    endpoint's mirror stays within that bound (with a partner's max_endpoints of them),
    and the fan-out, which reads every endpoint of the partner for every event, reads
    none of their headers."""
    partner = new_partner(world)
    names = [f"X-Custom-{i:02d}" for i in range(MAX_HEADERS)]
    each = (MAX_HEADERS_BYTES - sum(map(len, names))) // MAX_HEADERS
    fullest = {name: "v" * each for name in names}
    spare = MAX_HEADERS_BYTES - sum(len(n) + len(v) for n, v in fullest.items())
    fullest[names[0]] += "v" * spare
    assert sum(len(n) + len(v) for n, v in fullest.items()) == MAX_HEADERS_BYTES
    over = {**fullest, names[0]: fullest[names[0]] + "v"}
    refused = world.client.post(
        "/v1/endpoints", json={"url": receiver.url, "headers": over}, headers=partner["headers"]
    )
    assert refused.status_code == 422
    assert "4096" in " ".join(refused.get_json()["error"]["details"]["headers"]["_headers"])
    assert endpoints_of(world, partner) == []
    endpoints = [register(world, partner, receiver.url, headers=fullest) for _ in range(3)]
    submit(world.client, partner, None)
    for request in receiver.wait_for(3):
        assert {n: request.headers[n.lower()] for n in names} == fullest
        assert request.headers["webhook-id"] != ""
    store = world.svc.store
    for endpoint in endpoints:
        mirror = store.key("endpoint", endpoint["id"])
        # Counted whole (SAMPLES 0): Redis's default estimate samples 5 fields of a hash
        # and extrapolates, so it read ~2x or ~0.5x by where the headers field fell in a
        # server's hash order. The headers' JSON (~4.2 KB) sits in jemalloc's 5 KiB class.
        assert store.redis.memory_usage(mirror, samples=0) < MAX_HEADERS_BYTES + 3072
    listed = world.svc.registry.for_partner(partner["id"])
    assert len(listed) == 3 and all("headers" not in e for e in listed)
    assert sum(len(json.dumps(e)) for e in listed) < 3 * 1024


# ------------------------------------------------------------------- ed25519 signatures
def test_an_ed25519_endpoint_signs_v1a_with_a_key_only_jobgate_holds(world, receiver) -> None:
    partner = new_partner(world)
    created = register(world, partner, receiver.url, signature_scheme="ed25519")
    assert created["signature_scheme"] == "ed25519" and "webhook_secret" not in created
    public = created["public_key"]
    assert public.startswith("whpk_")
    path = f"/v1/endpoints/{created['id']}"
    shown = world.client.get(path, headers=partner["headers"]).get_json()
    # GET shows the current public key (no rotation needed to read it again), never the
    # private one; a list shows neither.
    assert shown["signature_scheme"] == "ed25519" and shown["public_key"] == public
    # The private key is stored (sealed, as secrets are) and never shown.
    [stored] = stored_secrets(world, created["id"])
    assert stored.startswith("whsk_")
    assert stored[5:] not in json.dumps([created, shown, endpoints_of(world, partner)])

    submit(world.client, partner, None)
    [request] = receiver.wait_for(1)
    signature = request.headers["webhook-signature"]
    assert signature.startswith("v1a,") and " " not in signature
    assert verify_ed25519(public, request.headers, request.body) == 1
    event = example_receiver().verify(public, request.body, request.headers)
    assert event["type"] == "job.succeeded"
    # No HMAC signature: a whsec_ verifier finds nothing to accept; a changed body fails.
    with pytest.raises(WebhookVerificationError):
        Received(request.path, request.headers, request.body, request.at).verify(
            partner["webhook_secret"]
        )
    with pytest.raises(InvalidSignature):
        verify_ed25519(public, request.headers, request.body + b" ")
    with pytest.raises(WebhookVerificationError):
        example_receiver().verify(public, request.body + b" ", request.headers)

    # A ping (the gateway) and a recovered message (the worker's retry chain anew) sign
    # the same way.
    ping = world.client.post(f"{path}/test", headers=partner["headers"]).get_json()
    assert ping["outcome"] == "delivered", ping
    pinged = receiver.wait_for(2)[1]
    assert verify_ed25519(public, pinged.headers, pinged.body) == 1
    receiver.answer(503, 503, 503)  # the whole schedule of the next job's message fails
    submit(world.client, partner, None)
    logged = settled_attempts(world, partner, created["id"], 5)  # newest first
    assert [a["outcome"] for a in logged[:3]] == ["failed", "retry", "retry"]
    recover = world.client.post(
        f"{path}/recover", json={"since": logged[2]["at"]}, headers=partner["headers"]
    )
    assert recover.get_json()["recovered"] == 1, recover.get_json()
    resent = receiver.wait_for(6)[5]
    assert resent.webhook_id == receiver.requests[2].webhook_id
    assert verify_ed25519(public, resent.headers, resent.body) == 1


def test_the_example_receiver_verifies_hmac_too(world, receiver) -> None:
    partner = new_partner(world)
    created = register(world, partner, receiver.url)
    submit(world.client, partner, None)
    [request] = receiver.wait_for(1)
    module = example_receiver()
    assert module.verify(created["webhook_secret"], request.body, request.headers)["type"] == (
        "job.succeeded"
    )
    with pytest.raises(WebhookVerificationError):
        module.verify(created["webhook_secret"], request.body + b" ", request.headers)


@pytest.mark.parametrize("scheme", ["hmac", "ed25519"])
def test_rotation_signs_with_both_during_the_grace_then_with_the_new_alone(
    world, receiver, scheme: str
) -> None:
    partner = new_partner(world)
    shown = "public_key" if scheme == "ed25519" else "webhook_secret"
    created = register(world, partner, receiver.url, signature_scheme=scheme)
    rotated = world.client.post(
        f"/v1/endpoints/{created['id']}/rotate-secret", headers=partner["headers"]
    )
    assert rotated.status_code == 200, rotated.get_json()
    body = rotated.get_json()
    assert set(body) == {shown, "previous_secret_valid_for"}
    assert body["previous_secret_valid_for"] == GRACE
    old, new = created[shown], body[shown]
    assert old != new and new.startswith("whpk_" if scheme == "ed25519" else "whsec_")
    if scheme == "ed25519":  # a new key pair: a second private key stored
        assert [s[:5] for s in stored_secrets(world, created["id"])] == ["whsk_", "whsk_"]

    def check(request: Received, key: str) -> int:
        if scheme == "ed25519":
            return verify_ed25519(key, request.headers, request.body)
        verified(request, key)
        return 1

    submit(world.client, partner, None)
    [during] = receiver.wait_for(1)
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert check(during, old) == 1 and check(during, new) == 1

    # Once the grace has passed (as the worker's mirror says), only the new one signs.
    registry = world.svc.registry
    wait_until(
        lambda: len(secrets_of(registry.mirrored(created["id"]))) == 1,
        GRACE + 10,
        message="the previous secret's grace to end",
    )
    submit(world.client, partner, None)
    after = receiver.wait_for(2)[1]
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    assert check(after, new) == 1
    with pytest.raises(Exception, match="signature"):  # either verifier's refusal
        check(after, old)


def test_signature_scheme_is_checked_and_kept(world) -> None:
    partner = new_partner(world)
    refused = world.client.post(
        "/v1/endpoints",
        json={"url": "http://127.0.0.1:9999/hook", "signature_scheme": "rsa"},
        headers=partner["headers"],
    )
    assert refused.status_code == 422
    assert "signature_scheme" in refused.get_json()["error"]["details"]
    assert endpoints_of(world, partner) == []
    created = register(world, partner, "http://127.0.0.1:9999/hook", signature_scheme="ed25519")
    # The scheme is chosen once: a PATCH cannot change it.
    patched = world.client.patch(
        f"/v1/endpoints/{created['id']}",
        json={"signature_scheme": "hmac"},
        headers=partner["headers"],
    )
    assert patched.status_code == 422
    with world.svc.db.session() as session:
        assert session.get(Endpoint, created["id"]).signature_scheme == "ed25519"
