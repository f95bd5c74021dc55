"""schemathesis against ``/openapi.json``: no 5xx, every response matches the document.

Every operation gets generated inputs (valid and invalid), sent once with the admin key and
once with a partner key. The app under test queues jobs on a queue no worker listens to,
so fuzzed ``demo.sleep`` jobs of up to an hour never tie up the suite's worker.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402 - after the importorskip
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

CHECKS = [not_a_server_error, response_schema_conformance]
MAX_EXAMPLES = int(os.environ.get("JOBGATE_FUZZ_EXAMPLES", "25"))  # per operation
SENT: Counter[str] = Counter()  # requests sent per operation, reported at the end


@pytest.fixture(scope="module")
def fuzz_app(settings, redis_client):
    from gateway import create_app

    queue = f"fuzz-{uuid.uuid4().hex[:8]}"
    flask_app = create_app(
        settings.with_overrides(queue_jobs=queue, queue_webhooks=queue + "-hooks", key_prefix=queue)
    )
    flask_app.config["TESTING"] = True
    return flask_app


@pytest.fixture(scope="module")
def fuzz_keys(fuzz_app, admin_headers, worker) -> list[dict[str, str]]:
    """The admin headers and a fresh partner's headers (a worker runs, so /readyz is 200)."""
    created = fuzz_app.test_client().post(
        "/v1/partners", json={"name": "fuzzer"}, headers=admin_headers
    )
    assert created.status_code == 201
    return [admin_headers, {"Authorization": f"Bearer {created.get_json()['api_key']}"}]


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app)
    yield schema
    print(f"\nschemathesis: {sum(SENT.values())} requests over {len(SENT)} operations")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_error_and_responses_match_the_schema(case, fuzz_keys):
    for headers in fuzz_keys:
        SENT[case.operation.label] += 1
        case.call_and_validate(headers=headers, checks=CHECKS)
