"""Partners' lifecycle (admin): disable/enable at once on every gateway process, rotate
the API key with a grace period, read a partner with its counts, and the CLI verbs.

"Every process" is two app instances here (each has its own in-process key cache, as two
gunicorn workers do) and a gunicorn with two workers for the disable itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import requests

from gateway import create_app
from tests.conftest import ADMIN_KEY
from tests.helpers import ROOT, free_port, settings_env, wait_until
from tests.integration.test_cli import jobgate
from tests.webhooks.test_events import submit, webhook_settles

pytestmark = pytest.mark.integration
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def second(settings, redis_client):
    """A second gateway instance: its own process-wide caches, the same Redis and DB."""
    app = create_app(settings)
    app.config["TESTING"] = True
    return app.test_client()


def answers(client, headers) -> int:
    return client.get("/v1/tasks", headers=headers).status_code


def test_disable_answers_401_at_once_on_every_instance(client, second, partner) -> None:
    headers = partner["headers"]
    assert answers(client, headers) == 200 and answers(second, headers) == 200  # cached now
    disabled = client.post(f"/v1/partners/{partner['id']}/disable", headers=ADMIN)
    assert disabled.status_code == 200
    assert disabled.get_json()["enabled"] is False and disabled.get_json()["disabled_at"]
    assert answers(client, headers) == 401
    # The other instance learns it over pub/sub: well within a second, not after 30 s.
    wait_until(lambda: answers(second, headers) == 401, 2, message="401 on the second app")
    enabled = second.post(f"/v1/partners/{partner['id']}/enable", headers=ADMIN)
    assert enabled.get_json()["enabled"] is True
    wait_until(lambda: answers(client, headers) == 200, 2, message="200 on the first app")
    assert client.post("/v1/partners/ptn_nope/disable", headers=ADMIN).status_code == 404
    assert client.post(f"/v1/partners/{partner['id']}/disable", headers=headers).status_code == 403


def test_a_disabled_partners_queued_job_still_runs_and_its_event_is_sent(
    client, partner, worker
) -> None:
    from tests.webhooks.conftest import Receiver

    receiver = Receiver()
    try:
        job = submit(client, partner, receiver.url, params={"seconds": 0.5, "steps": 1})
        client.post(f"/v1/partners/{partner['id']}/disable", headers=ADMIN)
        [request] = receiver.wait_for(1)
        assert request.verify(partner["webhook_secret"])["data"]["job_id"] == job["job_id"]
        view = webhook_settles(client, job["job_id"], ADMIN)
        assert view["status"] == "SUCCESS"
    finally:
        receiver.stop()


def test_rotate_key_with_and_without_grace(client, second, partner) -> None:
    old = partner["headers"]
    assert answers(second, old) == 200
    rotated = client.post(
        f"/v1/partners/{partner['id']}/rotate-key", json={"grace": 60}, headers=ADMIN
    ).get_json()
    assert rotated["previous_key_valid_for"] == 60 and rotated["api_key"].startswith("jgp_")
    new = {"Authorization": f"Bearer {rotated['api_key']}"}
    assert answers(second, new) == 200 and answers(second, old) == 200  # within its grace
    again = client.post(f"/v1/partners/{partner['id']}/rotate-key", headers=ADMIN).get_json()
    assert again["previous_key_valid_for"] == 0
    newest = {"Authorization": f"Bearer {again['api_key']}"}
    wait_until(
        lambda: answers(second, old) == 401 and answers(second, new) == 401,
        2,
        message="every earlier key refused",
    )
    assert answers(client, old) == 401 and answers(second, newest) == 200
    bad = client.post(f"/v1/partners/{partner['id']}/rotate-key", json={"grace": -1}, headers=ADMIN)
    assert bad.status_code == 422


def test_read_a_partner_with_counts(client, partner, worker, archived) -> None:
    done = submit(client, partner, None)
    failed = submit(client, partner, None, task="demo.fail", params={})
    for job in (done, failed):
        webhook_settles(client, job["job_id"], partner["headers"], ("none",))
    wait_until(
        lambda: (
            client.get(f"/v1/jobs/{failed['job_id']}", headers=ADMIN).get_json()["status"]
            == "FAILURE"
        ),
        20,
    )
    archived(done["job_id"], failed["job_id"])
    client.post(
        "/v1/endpoints", json={"url": "http://127.0.0.1:9999/x"}, headers=partner["headers"]
    )
    detail = client.get(f"/v1/partners/{partner['id']}", headers=ADMIN).get_json()
    assert detail["jobs"].get("SUCCESS", 0) >= 1 and detail["jobs"].get("FAILURE", 0) >= 1
    assert detail["endpoints"] == {"total": 1, "enabled": 1, "disabled": 0, "failing": 0}
    assert detail["failing_deliveries"] == 0 and detail["enabled"] is True
    assert (
        client.get(f"/v1/partners/{partner['id']}", headers=partner["headers"]).status_code == 403
    )
    assert client.get("/v1/partners/ptn_nope", headers=ADMIN).status_code == 404


def test_cli_verbs_print_json(settings, client, partner) -> None:
    out = jobgate(settings, "partner", "disable", partner["id"])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["enabled"] is False
    wait_until(lambda: answers(client, partner["headers"]) == 401, 2, message="401 after the CLI")
    out = jobgate(settings, "partner", "enable", partner["id"])
    assert json.loads(out.stdout)["enabled"] is True
    out = jobgate(settings, "partner", "rotate-key", partner["id"], "--grace", "5")
    key = json.loads(out.stdout)
    assert key["previous_key_valid_for"] == 5
    assert answers(client, {"Authorization": f"Bearer {key['api_key']}"}) == 200
    out = jobgate(settings, "partner", "show", partner["id"])
    assert json.loads(out.stdout)["id"] == partner["id"]
    missing = jobgate(settings, "partner", "show", "ptn_nope")
    assert missing.returncode == 1 and "partner" in missing.stderr


def test_two_gunicorn_workers_refuse_a_disabled_key_at_once(settings, partner) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "wsgi:app"],
        cwd=ROOT,
        env={**os.environ, **settings_env(settings)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1/tasks"
    try:
        wait_until(lambda: _status(url, partner["headers"]) == 200, 30, message="gunicorn up")
        for _ in range(20):  # both workers answer (and cache the key) by now
            assert _status(url, partner["headers"]) == 200
        requests.post(f"http://127.0.0.1:{port}/v1/partners/{partner['id']}/disable", headers=ADMIN)
        wait_until(
            lambda: all(_status(url, partner["headers"]) == 401 for _ in range(20)),
            2,
            message="every worker refuses the key",
        )
    finally:
        proc.terminate()
        proc.wait(10)


def _status(url: str, headers: dict[str, str]) -> int:
    try:
        return requests.get(url, headers=headers, timeout=5).status_code
    except requests.ConnectionError:
        return 0
