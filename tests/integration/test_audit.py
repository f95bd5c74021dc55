"""The audit log: every admin action a row with its actor (a named admin key, or an
unnamed key's fingerprint), read newest first by admins only; failed authentications
throttled per client address, one address's failures leaving every other alone."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest

from config import Settings
from jobgate import audit
from jobgate.db import Database
from tests.conftest import ADMIN_KEY
from tests.helpers import wait_until
from tests.webhooks.conftest import closed_port_url

pytestmark = pytest.mark.integration

ALICE = "alice-" + uuid.uuid4().hex


@pytest.fixture
def named(settings: Settings, own_database: str) -> Any:
    """A gateway whose admin keys are ``alice:<key>`` and the suite's unnamed one, on a
    database of its own (the log is the test's alone)."""
    from gateway import create_app

    app = create_app(
        settings.with_overrides(admin_keys=(f"alice:{ALICE}", ADMIN_KEY), database_url=own_database)
    )
    app.config["TESTING"] = True
    return app


def alice() -> dict[str, str]:
    return {"Authorization": f"Bearer {ALICE}"}


def log_of(app: Any) -> list[dict[str, Any]]:
    response = app.test_client().get(
        "/v1/audit?limit=200", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()["entries"]


def test_every_admin_action_is_recorded_with_its_actor_newest_first(named: Any) -> None:
    client = named.test_client()
    created = client.post("/v1/partners", json={"name": "acme"}, headers=alice())
    assert created.status_code == 201
    partner_id = created.get_json()["id"]
    steps = [
        ("post", f"/v1/partners/{partner_id}/disable", None),
        ("post", f"/v1/partners/{partner_id}/enable", None),
        ("patch", f"/v1/partners/{partner_id}", {"limits": {"max_running_jobs": 3}}),
        ("post", f"/v1/partners/{partner_id}/rotate-key", {"grace": 0}),
        ("post", f"/v1/partners/{partner_id}/rotate-secret", None),
    ]
    for method, path, body in steps:
        answered = getattr(client, method)(path, json=body, headers=alice())
        assert answered.status_code < 300, (path, answered.get_json())
    job = client.post(
        "/v1/jobs",
        json={"task": "demo.sleep", "params": {"seconds": 60}},
        headers={"Authorization": f"Bearer {created.get_json()['api_key']}"},
    )
    # The rotated key's grace is 0: the old key is gone, so the partner's submit is refused
    # and recorded nowhere (a partner's requests are not admin actions).
    assert job.status_code == 401
    refused = client.post(f"/v1/partners/{partner_id}/disable", headers={"Authorization": "x"})
    assert refused.status_code == 401  # refused: nothing done, nothing recorded

    entries = log_of(named)
    assert [(e["actor"], e["action"], e["target"]) for e in entries] == [
        ("alice", "POST /v1/partners/<partner_id>/rotate-secret", partner_id),
        ("alice", "POST /v1/partners/<partner_id>/rotate-key", partner_id),
        ("alice", "PATCH /v1/partners/<partner_id>", partner_id),
        ("alice", "POST /v1/partners/<partner_id>/enable", partner_id),
        ("alice", "POST /v1/partners/<partner_id>/disable", partner_id),
        ("alice", "POST /v1/partners", partner_id),
    ]
    assert entries[0]["id"] > entries[-1]["id"]
    assert entries[2]["details"] == {"limits": {"max_running_jobs": 3}}
    assert entries[-1]["details"] == {"name": "acme"}
    assert all(e["at"].endswith("Z") for e in entries)


def test_an_unnamed_admin_key_is_recorded_by_its_fingerprint(named: Any, own_database: str) -> None:
    client = named.test_client()
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    partner_id = client.post("/v1/partners", json={"name": "x"}, headers=admin).get_json()["id"]
    [entry] = log_of(named)
    fingerprint = "key:" + hashlib.sha256(ADMIN_KEY.encode()).hexdigest()[:12]
    assert (entry["actor"], entry["target"]) == (fingerprint, partner_id)
    assert ADMIN_KEY not in str(entry)


def test_a_revoke_is_recorded_and_secrets_never_are(named: Any, own_database: str) -> None:
    client = named.test_client()
    partner = client.post("/v1/partners", json={"name": "acme"}, headers=alice()).get_json()
    job = client.post(
        "/v1/jobs",
        json={"task": "demo.sleep", "params": {"seconds": 60}},
        headers={"Authorization": f"Bearer {partner['api_key']}"},
    )
    assert job.status_code == 202, job.get_json()
    job_id = job.get_json()["job_id"]
    revoked = client.post(f"/v1/jobs/{job_id}/revoke", json={"reason": "asked to"}, headers=alice())
    assert revoked.status_code == 202, revoked.get_json()
    entries = log_of(named)
    assert (entries[0]["action"], entries[0]["target"]) == ("POST /v1/jobs/<job_id>/revoke", job_id)
    assert entries[0]["details"] == {"reason": "asked to"}
    # A secret sent in a body is left out of the entry (audit.redacted).
    db = Database(own_database)
    try:
        audit.record(db, "alice", "test", "t", {"secret": "whsec_x", "name": "n" * 500})
        [entry], _ = audit.entries(db, limit=1)
    finally:
        db.dispose()
    assert entry["details"] == {"name": "n" * audit.MAX_FIELD}


def test_an_endpoints_headers_are_recorded_by_name_only(
    settings: Settings, client: Any, partner: dict[str, Any]
) -> None:
    """An admin's PATCH of a partner's endpoint headers: the values may be the receiver's
    credentials, and the audit log is kept for good."""
    from gateway import create_app

    token = "Bearer receiver-token-" + uuid.uuid4().hex
    endpoint = client.post(
        "/v1/endpoints", json={"url": closed_port_url()}, headers=partner["headers"]
    ).get_json()
    app = create_app(settings.with_overrides(admin_keys=(f"alice:{ALICE}",)))
    patched = app.test_client().patch(
        f"/v1/endpoints/{endpoint['id']}",
        json={"headers": {"Authorization": token, "X-Tenant": "acme"}},
        headers=alice(),
    )
    assert patched.status_code == 200, patched.get_json()
    entries = app.test_client().get("/v1/audit?limit=5", headers=alice()).get_json()["entries"]
    mine = [e for e in entries if e["target"] == endpoint["id"]]
    assert mine and mine[0]["details"] == {"headers": ["Authorization", "X-Tenant"]}
    assert token not in str(entries)


def test_pages_follow_the_cursor_to_the_end(named: Any) -> None:
    client = named.test_client()
    for n in range(5):
        client.post("/v1/partners", json={"name": f"p{n}"}, headers=alice())
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    seen, cursor = [], None
    while True:
        query = "/v1/audit?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(query, headers=admin).get_json()
        seen += [entry["details"]["name"] for entry in page["entries"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["p4", "p3", "p2", "p1", "p0"]


@pytest.mark.parametrize("path", ["/v1/audit", "/v1/archive/dead-letters"])
@pytest.mark.parametrize("cursor", [2**63, 10**40])
def test_a_cursor_past_sqls_integers_is_a_422(named: Any, path: str, cursor: int) -> None:
    """Found by the OpenAPI fuzzer: a cursor SQLite cannot bind was a 500."""
    response = named.test_client().get(
        f"{path}?cursor={cursor}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "validation_error" and "cursor" in error["details"]
    largest = named.test_client().get(
        f"{path}?cursor={2**63 - 1}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert largest.status_code == 200, largest.get_json()


def test_partners_may_not_read_the_audit_log(client: Any, partner: dict[str, Any]) -> None:
    response = client.get("/v1/audit", headers=partner["headers"])
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "forbidden"


def test_failed_authentications_are_throttled_per_address(
    settings: Settings, partner: dict[str, Any]
) -> None:
    """Past the limit, every request from that address is refused before its key is
    looked at (a guess cannot tell a right key from a wrong one); another address, and
    the same partner from there, go on as before."""
    from gateway import create_app

    app = create_app(settings.with_overrides(auth_failures_per_minute=3))
    client = app.test_client()
    here = {"REMOTE_ADDR": f"10.9.{uuid.uuid4().int % 250}.7"}
    bad = {"Authorization": "Bearer not-a-key"}
    codes = [client.get("/v1/jobs", headers=bad, environ_base=here).status_code for _ in range(3)]
    assert codes == [401, 401, 401]
    blocked = client.get("/v1/jobs", headers=partner["headers"], environ_base=here)
    assert blocked.status_code == 429
    assert blocked.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(blocked.headers["Retry-After"]) <= 60
    elsewhere = {"REMOTE_ADDR": "10.8.0.9"}
    assert (
        client.get("/v1/jobs", headers=partner["headers"], environ_base=elsewhere).status_code
        == 200
    )
    assert client.get("/v1/jobs", headers=bad, environ_base=elsewhere).status_code == 401

    # Another gateway process, which saw none of these failures, counts a key it has not
    # verified itself before looking at it: refused as well.
    other = create_app(settings.with_overrides(auth_failures_per_minute=3)).test_client()
    assert other.get("/v1/jobs", headers=partner["headers"], environ_base=here).status_code == 429
    # Many guesses at once from a fresh address: each is counted before it is looked at
    # (a key is skipped only once this process found it), so no more than the limit pass.
    fresh = {"REMOTE_ADDR": f"10.6.{uuid.uuid4().int % 250}.3"}
    guesses = [
        other.get("/v1/jobs", headers={"Authorization": f"Bearer guess-{n}"}, environ_base=fresh)
        for n in range(6)
    ]
    assert [g.status_code for g in guesses] == [401, 401, 401, 429, 429, 429]


def test_a_key_this_process_verified_skips_the_count_until_its_address_fails(
    settings: Settings, partner: dict[str, Any]
) -> None:
    """The count of failures is read before looking at any key this process has not
    found lately (a guess never was); a key it found skips that round trip, unless its
    address failed here since."""
    from gateway import create_app

    app = create_app(settings.with_overrides(auth_failures_per_minute=3))
    store = app.extensions["jobgate"].store
    reads: list[str] = []
    counted = store.rate_limit_wait
    store.rate_limit_wait = lambda name, *a, **k: reads.append(name) or counted(name, *a, **k)
    client = app.test_client()
    fresh = {"REMOTE_ADDR": f"10.7.{uuid.uuid4().int % 250}.1"}
    address = f"auth:{fresh['REMOTE_ADDR']}"

    def status(headers: dict[str, str]) -> int:
        return client.get("/v1/jobs", headers=headers, environ_base=fresh).status_code

    partners = app.extensions["jobgate"].partners
    key = partner["headers"]["Authorization"].removeprefix("Bearer ")
    assert status(partner["headers"]) == 200
    assert reads == [address]  # counted before the key was found
    # Found, and kept (the process's change feed may drop its cache once as it subscribes).
    wait_until(lambda: status(partner["headers"]) == 200 and partners.known(key), 10)
    reads.clear()
    assert [status(partner["headers"]) for _ in range(3)] == [200, 200, 200]
    assert reads == []
    assert status({"Authorization": "Bearer nope"}) == 401
    assert reads == [address]
    assert status(partner["headers"]) == 200
    assert reads == [address] * 2  # the address failed here: counted again
