"""Bad input gets the documented status and error code, and writes nothing.

Each refusal is checked three ways: the HTTP status, the error ``code`` of the JSON error
model, and that the gateway's Redis keys and the partner's job list are unchanged.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis

from config import Settings
from gateway import create_app
from gateway.views.common import UNSTORABLE_KEY, UNSTORABLE_VALUE
from jobgate.ssrf import REFUSED
from tests.helpers import wait_until
from tests.reliability.conftest import OwnRedis

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

SLEEP = {"task": "demo.sleep", "params": {"seconds": 0, "steps": 1}}


def gateway_keys(redis_client: redis.Redis, prefix: str = "jobgate") -> dict[str, Any]:
    """What a submit would change: the job records and idempotency keys (its archive
    entry is written in the same MULTI as its record; the workers' own upkeep keys,
    liveness, leases and the stream archivers drain, come and go)."""
    keys = sorted(
        k
        for k in redis_client.scan_iter(f"{prefix}:*")
        if not k.startswith(
            (
                f"{prefix}:events:",
                f"{prefix}:rate:",
                f"{prefix}:worker:",
                f"{prefix}:sweeper",
                f"{prefix}:pruner",
                f"{prefix}:restorer",
                f"{prefix}:archive",
                f"{prefix}:live",
                f"{prefix}:deliveries:open",
            )
        )
    )
    return {"keys": keys}


def job_list(client, partner) -> list[str]:
    response = client.get("/v1/jobs", headers=partner["headers"])
    assert response.status_code == 200, response.get_json()
    return [job["job_id"] for job in response.get_json()["jobs"]]


def assert_error(response, status: int, code: str) -> dict[str, Any]:
    """The response is the JSON error model with ``status`` and ``code``."""
    assert response.status_code == status, (response.status_code, response.data[:300])
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    assert "Traceback" not in response.get_data(as_text=True)
    return body["error"]


@pytest.fixture
def unchanged(client, partner, redis_client):
    """Snapshot before the test; after it, assert nothing was written."""
    before = gateway_keys(redis_client), job_list(client, partner)
    yield
    assert (gateway_keys(redis_client), job_list(client, partner)) == before


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (b"[1, 2, 3]", "application/json"),
        (b'["task", "demo.sleep"]', "application/json"),
        (b'"demo.sleep"', "application/json"),
        (b"null", "application/json"),
        (b"task=demo.sleep", "application/x-www-form-urlencoded"),
        ('{"task": "d\u00e9mo"'.encode("latin-1"), "application/json"),
    ],
    ids=["broken", "empty", "array", "array-of-strings", "string", "null", "form", "latin1"],
)
def test_malformed_body_is_400_invalid_json(client, partner, unchanged, body, content_type):
    response = client.post(
        "/v1/jobs", data=body, content_type=content_type, headers=partner["headers"]
    )
    assert_error(response, 400, "invalid_json")


def test_body_over_the_limit_is_413(client, partner, unchanged):
    big = json.dumps({**SLEEP, "metadata": {"blob": "x" * (2 * 1024 * 1024)}})
    response = client.post(
        "/v1/jobs", data=big, content_type="application/json", headers=partner["headers"]
    )
    error = assert_error(response, 413, "payload_too_large")
    assert "1048576" in error["message"]


def test_unknown_task_is_422_unknown_task(client, partner, unchanged):
    response = client.post("/v1/jobs", json={"task": "no.such.task"}, headers=partner["headers"])
    error = assert_error(response, 422, "unknown_task")
    assert "task" in error["details"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"seconds": "soon"}, "seconds"),
        ({"seconds": -1}, "seconds"),
        ({"steps": 0}, "steps"),
        ({"steps": "many"}, "steps"),
        ({"seconds": None}, "seconds"),
        ({"seconds": 1, "extra": True}, "extra"),
    ],
)
def test_wrong_param_types_are_422_with_details(client, partner, unchanged, params, field):
    response = client.post(
        "/v1/jobs", json={"task": "demo.sleep", "params": params}, headers=partner["headers"]
    )
    error = assert_error(response, 422, "validation_error")
    assert field in error["details"]["params"], error["details"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"task": 42},
        {"task": ""},
        {"task": "demo.sleep", "params": [1]},
        {"task": "demo.sleep", "metadata": "not an object"},
        {"task": "demo.sleep", "callback_url": 7},
        {"task": "demo.sleep", "metadata": {"big": "y" * 20000}},
    ],
    ids=[
        "no-task",
        "task-int",
        "task-empty",
        "params-list",
        "metadata-str",
        "callback-int",
        "metadata-too-big",
    ],
)
def test_invalid_job_fields_are_422_validation_error(client, partner, unchanged, body):
    response = client.post("/v1/jobs", json=body, headers=partner["headers"])
    error = assert_error(response, 422, "validation_error")
    assert error["details"]


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer wrong-key",
        "Bearer jgp_" + "A" * 43,
        "bearer  test-admin-keyX",
    ],
    ids=["none", "empty", "scheme-only", "blank-key", "basic", "wrong", "forged", "near-admin"],
)
def test_missing_or_wrong_key_is_401(client, partner, unchanged, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in (
        ("post", "/v1/jobs"),
        ("get", "/v1/jobs"),
        ("get", "/v1/tasks"),
        ("get", "/v1/partners"),
    ):
        response = getattr(client, method)(path, json=SLEEP, headers=headers)
        assert_error(response, 401, "unauthorized")


def test_partner_key_on_admin_routes_is_403(client, partner, other_partner, redis_client):
    before = gateway_keys(redis_client)
    for method, path, body in (
        ("post", "/v1/partners", {"name": "intruder"}),
        ("get", "/v1/partners", None),
        ("post", f"/v1/partners/{other_partner['id']}/rotate-secret", {}),
    ):
        response = getattr(client, method)(path, json=body, headers=partner["headers"])
        assert_error(response, 403, "forbidden")
    assert gateway_keys(redis_client) == before


def test_admin_key_cannot_submit(client, admin_headers, unchanged):
    assert_error(client.post("/v1/jobs", json=SLEEP, headers=admin_headers), 403, "forbidden")


def test_other_partners_job_is_404_like_an_unknown_id(client, partner, other_partner, worker):
    submitted = client.post("/v1/jobs", json=SLEEP, headers=partner["headers"])
    assert submitted.status_code == 202
    job_id = submitted.get_json()["job_id"]
    theirs = client.get(f"/v1/jobs/{job_id}", headers=other_partner["headers"])
    unknown = client.get(
        "/v1/jobs/00000000-0000-4000-8000-000000000000", headers=other_partner["headers"]
    )
    assert_error(theirs, 404, "not_found")
    assert_error(unknown, 404, "not_found")
    assert theirs.get_json() == unknown.get_json(), "a foreign id must look like a missing one"
    for path in (
        f"/v1/jobs/{job_id}/events",
        f"/v1/jobs/{job_id}/deliveries",
        f"/v1/jobs/{job_id}?wait=1",
    ):
        assert_error(client.get(path, headers=other_partner["headers"]), 404, "not_found")
    wait_until(lambda: job_id in job_list(client, partner), 20, message="the job listed")
    assert job_id not in job_list(client, other_partner)


def test_partner_cannot_revoke_anyones_job(client, partner, other_partner, worker, redis_client):
    submitted = client.post(
        "/v1/jobs",
        json={"task": "demo.sleep", "params": {"seconds": 0}},
        headers=partner["headers"],
    )
    job_id = submitted.get_json()["job_id"]
    record = redis_client.hgetall(f"jobgate:job:{job_id}")
    for headers in (partner["headers"], other_partner["headers"]):
        response = client.post(f"/v1/jobs/{job_id}/revoke", json={}, headers=headers)
        assert_error(response, 403, "forbidden")
    assert_error(
        client.post(f"/v1/jobs/{job_id}/redeliver", json={}, headers=other_partner["headers"]),
        404,
        "not_found",
    )
    after = redis_client.hgetall(f"jobgate:job:{job_id}")
    assert after.get("status") != "REVOKED"
    assert "revoke_reason" not in after and "revoked_by" not in after
    assert set(after) >= set(record) - {"status"}


@pytest.mark.parametrize(
    "job_id",
    [
        "00000000-0000-4000-8000-000000000000",
        "not-a-uuid",
        "x" * 65,
        "x" * 4000,
        "..%2F..%2Fetc%2Fpasswd",
        "' OR 1=1 --",
        "jobgate:partners",
    ],
)
def test_unknown_job_id_is_404(client, partner, unchanged, job_id):
    assert_error(client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]), 404, "not_found")


def test_a_path_id_naming_another_key_is_404(client, partner, admin_headers):
    """An id with ``:`` (the Redis keys' separator) names no job, batch, partner or
    endpoint: ``<batch id>:jobs`` is the batch's member list, not a 503 ``WRONGTYPE``."""
    created = client.post("/v1/batches", json={"jobs": [SLEEP]}, headers=partner["headers"])
    assert created.status_code == 202, created.get_json()
    batch_id, job_id = created.get_json()["batch_id"], created.get_json()["jobs"][0]["job_id"]
    for suffix in ("jobs", "done"):
        path = f"/v1/batches/{batch_id}:{suffix}"
        assert_error(client.get(path, headers=partner["headers"]), 404, "not_found")
        assert_error(client.post(f"{path}/revoke", headers=admin_headers), 404, "not_found")
    assert job_id  # its own keys hold no sub-key: a job id with ':' was a 404 already


def test_idempotency_key_same_body_is_same_job_other_body_409(
    client, partner, redis_client, worker, archived
):
    headers = {**partner["headers"], "Idempotency-Key": "order-1234"}
    first = client.post("/v1/jobs", json=SLEEP, headers=headers)
    assert first.status_code == 202
    job_id = first.get_json()["job_id"]
    again = client.post("/v1/jobs", json=SLEEP, headers=headers)
    assert again.status_code == 200
    assert again.get_json()["job_id"] == job_id
    assert again.headers["Location"] == f"/v1/jobs/{job_id}"
    archived(job_id)
    before = gateway_keys(redis_client), job_list(client, partner)
    other = client.post("/v1/jobs", json={**SLEEP, "metadata": {"x": 1}}, headers=headers)
    assert_error(other, 409, "idempotency_conflict")
    assert (gateway_keys(redis_client), job_list(client, partner)) == before
    assert job_list(client, partner) == [job_id]


@pytest.mark.parametrize("key", ["", "k" * 256])
def test_idempotency_key_out_of_bounds_is_422(client, partner, unchanged, key):
    response = client.post(
        "/v1/jobs", json=SLEEP, headers={**partner["headers"], "Idempotency-Key": key}
    )
    assert_error(response, 422, "validation_error")


def test_redis_stopped_is_503_and_writes_nothing(settings: Settings, fresh_own_redis: OwnRedis):
    app = create_app(settings.with_overrides(redis_url=fresh_own_redis.url))
    client = app.test_client()
    created = client.post(
        "/v1/partners",
        json={"name": "acme"},
        headers={"Authorization": f"Bearer {settings.admin_keys[0]}"},
    )
    assert created.status_code == 201
    headers = {"Authorization": f"Bearer {created.get_json()['api_key']}"}
    store = fresh_own_redis.client()
    before = sorted(store.keys("*"))
    fresh_own_redis.stop()
    try:
        for method, path in (
            ("post", "/v1/jobs"),
            ("get", "/v1/jobs"),
            ("get", "/v1/jobs/00000000-0000-4000-8000-000000000000"),
        ):
            response = getattr(client, method)(path, json=SLEEP, headers=headers)
            assert_error(response, 503, "unavailable")
            assert response.headers["Retry-After"]
    finally:
        fresh_own_redis.start()
    assert sorted(store.keys("*")) == before
    assert client.get("/v1/jobs", headers=headers).get_json()["jobs"] == []
    store.close()


@pytest.mark.parametrize("cursor", ["garbage", "http_error", "nan:abc", "abc:def"])
def test_malformed_list_cursor_is_422_not_503(client, partner, worker, cursor):
    """Found by schemathesis: a garbage cursor on a non-empty list reached Redis (503)."""
    assert client.post("/v1/jobs", json=SLEEP, headers=partner["headers"]).status_code == 202
    response = client.get("/v1/jobs", query_string={"cursor": cursor}, headers=partner["headers"])
    assert_error(response, 422, "validation_error")


SSRF_URLS = [
    "https://127.0.0.1/hooks",
    "https://localhost/hooks",
    "https://[::1]/hooks",
    "https://169.254.169.254/latest/meta-data/",
    "https://10.0.0.1/",
    "https://172.16.5.4/",
    "https://192.168.1.1/",
    "https://100.64.0.1/",
    "https://0.0.0.0/",
    "https://2130706433/",
    "https://0x7f.0.0.1/",
    "https://0177.0.0.1/",
    "https://127.1/",
    "https://[::ffff:127.0.0.1]/",
    "https://[::ffff:169.254.169.254]/",
    "https://[64:ff9b::a9fe:a9fe]/",
    "https://[fe80::1]/",
    "https://[fc00::1]/",
    "https://224.0.0.1/",
    "https://255.255.255.255/",
    "https://user:pass@example.com/",
    "https://@127.0.0.1/",
    "http://example.com/hooks",
    "ftp://example.com/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_FLUSHALL",
    "javascript:alert(1)",
    "https:///no-host",
    "https://example.com:0/",
    "https://exa mple.com/",
    "https://example.com/\r\nX-Injected: 1",
    "//example.com/",
]
# Refused for where they point (the first 20): one generic answer, the reason only logged.
ADDRESS_BASED = SSRF_URLS[:20]


@pytest.fixture(scope="module")
def strict_app(settings: Settings):
    """The gateway with production callback rules: https only, no allowlist."""
    return create_app(settings.with_overrides(callback_allow_http=False, callback_allowlist=""))


@pytest.mark.parametrize("url", SSRF_URLS)
def test_ssrf_callback_urls_are_refused(strict_app, partner, redis_client, url):
    client = strict_app.test_client()
    before = gateway_keys(redis_client), job_list(client, partner)
    response = client.post(
        "/v1/jobs", json={**SLEEP, "callback_url": url}, headers=partner["headers"]
    )
    error = assert_error(response, 422, "callback_url_refused")
    assert error["details"]["callback_url"]
    if url in ADDRESS_BASED:
        assert error["message"] == REFUSED
        assert error["details"] == {"callback_url": [REFUSED]}
    else:
        assert error["message"] != REFUSED
    assert (gateway_keys(redis_client), job_list(client, partner)) == before


# ------------------------------------------------- text the database cannot store
# Found in review: a job whose metadata held "\u0000" or "\ud800" was accepted, then
# never archived on PostgreSQL; a NUL in a path id or a cursor was a 500 there. Such text
# is refused wherever a caller sends it, naming the field as other 422s do.
BAD = UNSTORABLE_VALUE
MEMBER = '{"task": "demo.sleep", "params": {"seconds": 0}}'


@pytest.mark.parametrize(
    ("path", "body", "details"),
    [
        (
            "/v1/jobs",
            '{"task": "demo.sleep", "metadata": {"note": "a\\u0000b"}}',
            {"metadata": {"note": [BAD]}},
        ),
        (
            "/v1/jobs",
            '{"task": "demo.sleep", "metadata": {"note": "\\ud800"}}',
            {"metadata": {"note": [BAD]}},
        ),
        (
            "/v1/jobs",
            '{"task": "demo.sleep", "metadata": {"rows": [{"x": ["ok", "\\uDFFF"]}]}}',
            {"metadata": {"rows": {"0": {"x": {"1": [BAD]}}}}},
        ),
        (
            "/v1/jobs",
            '{"task": "demo.sleep", "params": {"sec\\u0000onds": 1}}',
            {"params": {"sec\\u0000onds": [UNSTORABLE_KEY]}},
        ),
        ("/v1/jobs", '{"task": "demo.sleep\\u0000"}', {"task": [BAD]}),
        (
            "/v1/jobs",
            '{"task": "demo.sleep", "callback_url": "http://127.0.0.1/\\u0000"}',
            {"callback_url": [BAD]},
        ),
        (
            "/v1/batches",
            f'{{"jobs": [{MEMBER}, {{"task": "demo.sleep", "metadata": {{"n": "\\ud83d"}}}}]}}',
            {"jobs": {"1": {"metadata": {"n": [BAD]}}}},
        ),
        (
            "/v1/batches",
            f'{{"jobs": [{MEMBER}], "metadata": {{"upload": "\\u0000"}}}}',
            {"metadata": {"upload": [BAD]}},
        ),
        (
            "/v1/endpoints",
            '{"url": "http://127.0.0.1:9/hooks", "description": "orders\\u0000"}',
            {"description": [BAD]},
        ),
        (
            "/v1/endpoints",
            '{"url": "http://127.0.0.1:9/hooks", "event_types": ["job.failed\\udc00"]}',
            {"event_types": {"0": [BAD]}},
        ),
    ],
    ids=[
        "job-metadata-nul",
        "job-metadata-surrogate",
        "job-metadata-deep",
        "params-key",
        "task",
        "callback-url",
        "batch-member",
        "batch-metadata",
        "endpoint-description",
        "endpoint-event-type",
    ],
)
def test_text_the_database_cannot_store_is_422_naming_the_field(
    client, partner, unchanged, path, body, details
):
    response = client.post(
        path, data=body, content_type="application/json", headers=partner["headers"]
    )
    error = assert_error(response, 422, "validation_error")
    assert error["details"] == details


def test_a_raw_surrogate_in_the_body_is_422_too(client, partner, unchanged):
    body = b'{"task": "demo.sleep", "metadata": {"note": "\xed\xa0\x80"}}'
    response = client.post("/v1/jobs", data=body, headers=partner["headers"])
    assert assert_error(response, 422, "validation_error")["details"] == {
        "metadata": {"note": [BAD]}
    }


def test_deep_or_many_such_strings_get_a_bounded_answer(client, partner, unchanged):
    """Nested as deep as the parser takes, or thousands of them: still one clear 422."""
    deep = '{"task": "demo.sleep", "metadata": ' + '{"k": ' * 900 + '"\\u0000"' + "}" * 901
    details = assert_error(
        client.post("/v1/jobs", data=deep, headers=partner["headers"]), 422, "validation_error"
    )["details"]
    for _ in range(32 - 1):
        details = next(iter(details.values()))
    assert details == {"k": [BAD]}
    many = {"task": "demo.sleep", "metadata": {f"n{i}": "\x00" for i in range(5000)}}
    response = client.post("/v1/jobs", json=many, headers=partner["headers"])
    assert len(assert_error(response, 422, "validation_error")["details"]["metadata"]) == 100


def test_admin_bodies_with_such_text_are_422(client, admin_headers, redis_client):
    before = gateway_keys(redis_client)
    for path, body, details in (
        ("/v1/partners", {"name": "acme\x00"}, {"name": [BAD]}),
        ("/v1/jobs/no-such-job/revoke", {"reason": "\ud800"}, {"reason": [BAD]}),
    ):
        response = client.post(path, json=body, headers=admin_headers)
        assert assert_error(response, 422, "validation_error")["details"] == details
    assert gateway_keys(redis_client) == before


@pytest.mark.parametrize(
    ("method", "path", "name"),
    [
        ("get", "/v1/jobs/%00", "job_id"),
        ("get", "/v1/jobs/abc%00def/events", "job_id"),
        ("get", "/v1/jobs/%00/deliveries", "job_id"),
        ("post", "/v1/jobs/%00/redeliver", "job_id"),
        ("get", "/v1/batches/%00", "batch_id"),
        ("get", "/v1/endpoints/ep_%00", "endpoint_id"),
        ("get", "/v1/endpoints/%00/attempts", "endpoint_id"),
        ("get", "/v1/partners/ptn_%00", "partner_id"),
        ("post", "/v1/partners/%00/disable", "partner_id"),
    ],
)
def test_a_nul_in_a_path_id_is_422_naming_it(
    client, partner, admin_headers, unchanged, method, path, name
):
    headers = admin_headers if "/partners/" in path else partner["headers"]
    response = getattr(client, method)(path, headers=headers)
    assert assert_error(response, 422, "validation_error")["details"] == {name: [BAD]}


@pytest.mark.parametrize(
    ("path", "query", "details"),
    [
        ("/v1/jobs", "task=demo%00", {"task": [BAD]}),
        ("/v1/jobs", "cursor=%00", {"cursor": [BAD]}),
        ("/v1/jobs", "status=SUCCESS&status=%00", {"status": [BAD]}),
        ("/v1/jobs", "li%00mit=5", {"li\\u0000mit": [UNSTORABLE_KEY]}),
        ("/v1/endpoints", "state=%00", {"state": [BAD]}),
    ],
)
def test_a_nul_in_a_query_parameter_is_422_naming_it(
    client, partner, unchanged, path, query, details
):
    response = client.get(f"{path}?{query}", headers=partner["headers"])
    assert assert_error(response, 422, "validation_error")["details"] == details


def test_a_cursor_that_decodes_to_a_nul_is_422(client, partner, worker):
    """A cursor is base64: the NUL hides in what it decodes to (a 500 on PostgreSQL)."""
    assert client.post("/v1/jobs", json=SLEEP, headers=partner["headers"]).status_code == 202
    cursor = base64.urlsafe_b64encode(b"2026-05-01T12:00:00.000Z|\x00").decode().rstrip("=")
    response = client.get("/v1/jobs", query_string={"cursor": cursor}, headers=partner["headers"])
    assert "cursor" in assert_error(response, 422, "validation_error")["details"]


def test_redis_lost_mid_stream_ends_it_with_an_error_event_and_one_line(
    settings: Settings, fresh_own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
):
    """An open event stream whose Redis goes away: the client gets an ``error`` event
    (it reconnects after ``retry``) and the gateway logs one line, not a traceback."""
    app = create_app(settings.with_overrides(redis_url=fresh_own_redis.url, sse_heartbeat=0.2))
    client = app.test_client()
    created = client.post(
        "/v1/partners",
        json={"name": "acme"},
        headers={"Authorization": f"Bearer {settings.admin_keys[0]}"},
    )
    headers = {"Authorization": f"Bearer {created.get_json()['api_key']}"}
    job = client.post("/v1/jobs", json=SLEEP, headers=headers).get_json()  # no worker: queued
    response = client.get(f"/v1/jobs/{job['job_id']}/events", headers=headers, buffered=False)
    chunks = iter(response.response)
    assert next(chunks).startswith(b"retry:")
    assert b"event: status" in next(chunks)
    fresh_own_redis.stop()
    with caplog.at_level("WARNING"):
        rest = b"".join(chunks)  # ends: no exception reaches the server
    response.close()
    events = [part for part in rest.split(b"\n\n") if part.startswith(b"id:")]
    assert len(events) == 1 and b"event: error" in events[0], rest
    error = json.loads(events[0].split(b"data: ", 1)[1])
    assert error["error"]["code"] == "unavailable"
    ended = [r for r in caplog.records if "event stream" in r.getMessage()]
    assert len(ended) == 1 and ended[0].exc_info is None
    # Nothing of the request's logged a traceback (the partners' change feed, a thread of
    # the process, logs its own loss once).
    assert not [r for r in caplog.records if r.exc_info and r.name.startswith("gateway")]
