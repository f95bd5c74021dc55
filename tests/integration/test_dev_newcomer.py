"""``jobgate dev`` as a newcomer meets it (issue 28): the URL it prints leads to the status
page, a second one on the same port is refused, the partner and revoke commands run from a
second terminal find its database, and a restart keeps its keys and its one dev partner."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import free_port, wait_until
from tests.integration.devstack import Dev, newcomer_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    stack = Dev(tmp_path_factory.mktemp("dev")).start()
    yield stack
    stack.stop()


def second_terminal(directory: Path, redis_port: int, *args: str, timeout: float = 60):
    """A jobgate command typed in another shell in ``directory`` (no JOBGATE_* set)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=directory,
        env=newcomer_env(redis_port),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def admin(dev: Dev) -> dict[str, str]:
    return {"Authorization": f"Bearer {dev.admin_key}"}


def test_the_printed_url_leads_to_the_status_page(dev: Dev):
    assert f"{dev.url}/ui/" in dev.banner
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    first = requests.get(dev.url + "/", headers=browser, allow_redirects=False, timeout=5)
    assert first.status_code == 302
    page = requests.get(dev.url + "/", headers=browser, timeout=5)
    assert page.status_code == 200 and page.url == dev.url + "/ui/"
    assert "text/html" in page.headers["Content-Type"]
    api = requests.get(dev.url + "/", timeout=5)  # curl's */*: the error model, with a hint
    assert api.status_code == 404 and "/ui/" in api.json()["error"]["message"]


def test_a_second_dev_on_the_same_port_is_refused_with_one_line(dev: Dev, tmp_path: Path):
    other_redis = free_port()
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "dev", "--port", str(dev.port)],
        cwd=tmp_path,
        env=newcomer_env(other_redis),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert time.monotonic() - started < 30
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {dev.port}" in lines[0] and "in use" in lines[0], lines
    assert "jobgate is running" not in out.stdout
    assert not (tmp_path / ".jobgate-dev").exists()  # nothing started, nothing written
    # The first one still answers, alone on its port.
    assert requests.get(dev.url + "/healthz", timeout=5).status_code == 200


def test_partner_create_and_revoke_from_a_second_terminal(dev: Dev, tmp_path: Path):
    created = second_terminal(dev.directory, dev.redis_port, "partner", "create", "acme")
    assert created.returncode == 0, created.stderr
    assert "database of `jobgate dev`" in created.stderr
    acme = json.loads(created.stdout)
    assert acme["name"] == "acme" and acme["api_key"].startswith("jgp_")
    listed = requests.get(dev.url + "/v1/partners", headers=admin(dev), timeout=5).json()
    assert acme["id"] in {p["id"] for p in listed["partners"]}
    headers = {"Authorization": f"Bearer {acme['api_key']}"}
    assert requests.get(dev.url + "/v1/tasks", headers=headers, timeout=5).status_code == 200
    job = requests.post(
        dev.url + "/v1/jobs",
        json={"task": "demo.sleep", "params": {"seconds": 60, "steps": 60}},
        headers=headers,
        timeout=5,
    ).json()
    revoked = second_terminal(dev.directory, dev.redis_port, "revoke", job["job_id"])
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["status"] == "REVOKED"
    view = requests.get(f"{dev.url}/v1/jobs/{job['job_id']}", headers=headers, timeout=5)
    assert view.json()["status"] == "REVOKED"

    # Elsewhere, with no jobgate dev and no JOBGATE_DATABASE_URL: one line, no file left.
    lost = second_terminal(tmp_path, dev.redis_port, "partner", "create", "acme")
    assert lost.returncode == 1
    lines = lost.stderr.strip().splitlines()
    assert len(lines) == 1 and "no database" in lines[0] and "jobgate dev" in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_a_restart_keeps_the_keys_and_the_one_dev_partner(dev: Dev):
    before = (dev.admin_key, dev.partner_key, dev.webhook_secret)
    code = dev.stop()
    assert code == 0
    said = dev.stderr_text()
    assert "stopping: " in said and "running jobs" in said and "15 s" in said
    dev.start()
    assert (dev.admin_key, dev.partner_key, dev.webhook_secret) == before
    partners = requests.get(dev.url + "/v1/partners", headers=admin(dev), timeout=5).json()
    assert [p["name"] for p in partners["partners"]].count("dev") == 1
    headers = {"Authorization": f"Bearer {dev.partner_key}"}
    wait_until(
        lambda: requests.get(dev.url + "/v1/tasks", headers=headers, timeout=5).status_code == 200,
        timeout=10,
        message="the kept partner key to work",
    )
