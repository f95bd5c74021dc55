"""The Python client against the real gateway (gunicorn + worker), and verify_webhook."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from gateway.client import (
    Client,
    JobgateError,
    WaitTimeout,
    WebhookVerificationError,
    verify_webhook,
)
from jobgate.signing import generate_secret, generate_signing_key, public_key, webhook_headers
from tests.conftest import ADMIN_KEY
from tests.helpers import wait_until


@pytest.fixture
def jg(gateway_url, partner) -> Client:
    return Client(gateway_url, partner["api_key"], timeout=10)


@pytest.mark.integration
def test_submit_then_wait_returns_the_result(jg, worker):
    job = jg.submit(
        "texts.embed",
        {"texts": ["hello"], "dimensions": 8},
        metadata={"ref": "r1"},
        idempotency_key="client-test-1",
    )
    assert job["status"] == "PENDING"
    done = jg.wait(job["job_id"], timeout=30)
    assert done["status"] == "SUCCESS"
    assert len(done["result"]["embeddings"][0]) == 8
    assert done["metadata"] == {"ref": "r1"}
    replay = jg.submit(
        "texts.embed",
        {"texts": ["hello"], "dimensions": 8},
        metadata={"ref": "r1"},
        idempotency_key="client-test-1",
    )
    assert replay["job_id"] == job["job_id"]
    assert jg.get(job["job_id"]) == done


@pytest.mark.integration
def test_wait_times_out_then_admin_revoke_ends_it(jg, gateway_url, worker):
    job = jg.submit("demo.sleep", {"seconds": 30, "steps": 30})
    with pytest.raises(WaitTimeout) as timed_out:
        jg.wait(job["job_id"], timeout=0.5)
    assert timed_out.value.job["status"] in ("PENDING", "STARTED", "PROCESSING")
    with pytest.raises(JobgateError) as refused:
        jg.revoke(job["job_id"])
    assert refused.value.status == 403 and refused.value.code == "forbidden"
    admin = Client(gateway_url, ADMIN_KEY)
    assert admin.revoke(job["job_id"], reason="too slow")["status"] == "REVOKED"
    assert jg.wait(job["job_id"], timeout=10)["revocation"]["reason"] == "too slow"


@pytest.mark.integration
def test_events_iterates_until_the_terminal_event(jg, worker):
    job = jg.submit("demo.sleep", {"seconds": 0.6, "steps": 3})
    events = list(jg.events(job["job_id"]))
    assert events[-1].data["status"] == "SUCCESS"
    assert all(e.data["job_id"] == job["job_id"] for e in events)
    assert {e.event for e in events} <= {"status", "progress"}


@pytest.mark.integration
def test_errors_are_raised_with_code_and_details(jg):
    with pytest.raises(JobgateError) as missing:
        jg.get("no-such-job")
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    with pytest.raises(JobgateError) as invalid:
        jg.submit("demo.sleep", {"seconds": -5})
    assert invalid.value.status == 422 and "params" in invalid.value.details
    with pytest.raises(JobgateError) as bad_key:
        Client(jg.url, "wrong").get("x")
    assert bad_key.value.code == "unauthorized"
    assert "wrong" not in repr(Client(jg.url, "wrong"))


@pytest.mark.integration
def test_list_batches_and_iter_jobs(jg, worker):
    batch = jg.submit_batch([{"task": "demo.sleep", "params": {"seconds": 0, "steps": 1}}] * 3)
    done = wait_until(
        lambda: (b := jg.get_batch(batch["batch_id"]))["status"] == "COMPLETED" and b,
        message="the batch to complete",
    )
    assert done["succeeded"] == 3
    # Listings page from the database: the members show once archived (the archive lag).
    wait_until(
        lambda: set(batch["job_ids"]) <= {j["job_id"] for j in jg.list(limit=100)["jobs"]},
        message="the batch's jobs listed",
    )
    page = jg.list(limit=2)
    assert len(page["jobs"]) == 2 and page["next_cursor"]
    ids = [job["job_id"] for job in jg.iter_jobs(page_size=2)]
    assert set(batch["job_ids"]) <= set(ids) and len(ids) == len(set(ids))
    # A job's end reaches the database a moment after its creation did (the archive lag
    # again): the status filter reads the archived status.
    wait_until(
        lambda: (
            set(batch["job_ids"])
            <= {j["job_id"] for j in jg.list(status="SUCCESS", limit=100)["jobs"]}
        ),
        message="the batch's jobs listed as SUCCESS",
    )
    # Entries leave results out unless asked for (a page of large results was megabytes).
    assert not any("result" in j for j in jg.list(limit=5)["jobs"])
    listed = jg.list(status="SUCCESS", limit=100, include_result=True)["jobs"]
    results = {j["job_id"]: j["result"] for j in listed}
    assert all(results[i] == {"slept": 0.0, "steps": 1} for i in batch["job_ids"])
    assert all("result" in j for j in jg.iter_jobs(page_size=2, include_result=True))


# ----------------------------------------------------------------- verify_webhook
SECRET = generate_secret()
BODY = json.dumps({"type": "job.succeeded", "data": {"job_id": "j1"}}).encode()


def signed(secrets=(SECRET,), body=BODY, timestamp=None):
    return webhook_headers(
        list(secrets), "msg_1", body, timestamp=timestamp, user_agent="jobgate/test"
    )


def test_verify_webhook_accepts_gateway_and_standardwebhooks_signatures():
    assert verify_webhook(SECRET, signed(), BODY)["data"] == {"job_id": "j1"}
    lower = {k.lower(): v for k, v in signed().items()}
    assert verify_webhook(SECRET, lower, BODY.decode())["type"] == "job.succeeded"
    now = datetime.now(UTC)
    theirs = {
        "webhook-id": "msg_2",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SECRET).sign("msg_2", now, BODY.decode()),
    }
    assert verify_webhook(SECRET, theirs, BODY)["type"] == "job.succeeded"


def test_verify_webhook_accepts_either_secret_during_rotation():
    old, new = generate_secret(), generate_secret()
    headers = signed(secrets=(new, old))
    assert verify_webhook(old, headers, BODY) and verify_webhook(new, headers, BODY)


@pytest.mark.parametrize("tamper", ["body", "secret", "old", "future", "missing", "version"])
def test_verify_webhook_refuses_forgeries_and_replays(tamper):
    headers, body, secret = signed(), BODY, SECRET
    if tamper == "body":
        body = BODY.replace(b"j1", b"j2")
    elif tamper == "secret":
        secret = generate_secret()
    elif tamper == "old":
        headers = signed(timestamp=int(time.time()) - 301)
    elif tamper == "future":
        headers = signed(timestamp=int(time.time()) + 301)
    elif tamper == "missing":
        del headers["webhook-signature"]
    elif tamper == "version":
        headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v2,")
    with pytest.raises(WebhookVerificationError):
        verify_webhook(secret, headers, body)


def test_verify_webhook_checks_ed25519_v1a_with_the_public_key():
    """An ed25519 endpoint's ``whpk_`` key verifies its ``v1a`` signatures (either key
    during a rotation); another key pair, a changed body or a stale timestamp is refused,
    and an HMAC ``v1`` signature is no ``v1a`` one."""
    old, new = generate_signing_key(), generate_signing_key()
    headers = signed(secrets=(new, old))
    assert verify_webhook(public_key(old), headers, BODY)["type"] == "job.succeeded"
    assert verify_webhook(public_key(new), headers, BODY)["type"] == "job.succeeded"
    refusals = [
        (public_key(generate_signing_key()), headers, BODY),
        (public_key(new), headers, BODY.replace(b"j1", b"j2")),
        (public_key(new), signed(secrets=(new,), timestamp=int(time.time()) - 301), BODY),
        (public_key(new), signed(), BODY),  # v1 (whsec_) only
        ("whpk_" + "A" * 10, headers, BODY),  # not a 32-byte key
    ]
    for key, sent, body in refusals:
        with pytest.raises(WebhookVerificationError):
            verify_webhook(key, sent, body)


@pytest.mark.integration
def test_endpoint_calls(jg, worker):
    from tests.webhooks.conftest import Receiver

    receiver = Receiver()
    try:
        hook = jg.create_endpoint(receiver.url, description="c", event_types=["job.succeeded"])
        assert hook["webhook_secret"].startswith("whsec_")
        keyed = jg.create_endpoint(receiver.url, headers={"X-T": "1"}, signature_scheme="ed25519")
        assert keyed["public_key"].startswith("whpk_") and keyed["headers"] == {"X-T": "1"}
        assert jg.update_endpoint(keyed["id"], headers={})["headers"] == {}
        jg.delete_endpoint(keyed["id"])
        assert [e["id"] for e in jg.endpoints()] == [hook["id"]]
        assert jg.get_endpoint(hook["id"])["description"] == "c"
        ping = jg.test_endpoint(hook["id"])
        assert ping["outcome"] == "delivered"
        Webhook(hook["webhook_secret"]).verify(
            receiver.requests[0].body, receiver.requests[0].headers
        )
        job = jg.submit("demo.sleep", {"seconds": 0, "steps": 1})
        jg.wait(job["job_id"], timeout=30)
        receiver.wait_for(2)
        attempts = wait_until(
            lambda: (page := jg.endpoint_attempts(hook["id"]))["attempts"][1:] and page, 10
        )
        assert attempts["attempts"][0]["subject_id"] == job["job_id"]
        assert jg.endpoint_attempts(hook["id"], status="failed")["attempts"] == []
        assert jg.recover_endpoint(hook["id"], "2026-01-01T00:00:00Z")["recovered"] == 0
        rotated = jg.rotate_endpoint_secret(hook["id"])
        assert rotated["webhook_secret"] != hook["webhook_secret"]
        assert jg.update_endpoint(hook["id"], enabled=False)["enabled"] is False
        assert jg.endpoints(state="disabled")[0]["id"] == hook["id"]
        jg.delete_endpoint(hook["id"])
        with pytest.raises(JobgateError) as gone:
            jg.get_endpoint(hook["id"])
        assert gone.value.status == 404
    finally:
        receiver.stop()
