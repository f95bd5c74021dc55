"""The README's walkthrough ("A 5-minute walkthrough" and "Webhooks in 2 minutes"), run as
a newcomer runs it: its shell blocks, in order, in one bash, against a real ``jobgate dev``
(a free port, a directory of its own, an embedded Redis of its own).

What a newcomer does besides typing the blocks is all the test does:

- pastes what the README says to paste: a ``NAME=...`` (or ``…``) placeholder line gets
  what it names (``ADMIN``: the admin key jobgate dev printed; another: that field of the
  last JSON answer above, ``KEY`` the ``api_key``, ``JOB`` the ``job_id``), ``<that
  job_id>`` the last job id, and ``whsec_...`` the webhook secret jobgate dev printed (what
  the README says it is);
- skips ``pip install`` (the test environment has the packages), runs the receiver in the
  background (another terminal) if the block does not, on a free port instead of 9000
  (``RECEIVER_PORT``), and jobgate dev's port instead of 8000.

Each step must work: the shell runs every block to its end (``set -eo pipefail``), no
answer but the README's error example is an error, the jobs end as the README says, and a
delivery is verified by the receiver (``msg_… job.succeeded SUCCESS``), never rejected.
``JOBGATE_WALKTHROUGH_README`` runs another README (say, an older one) the same way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import ROOT, free_port, wait_until
from tests.integration.devstack import Dev, newcomer_env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (shutil.which("curl") and shutil.which("bash")),
        reason="the README's walkthrough is bash and curl",
    ),
]

SECTIONS = ("## A 5-minute walkthrough", "## Webhooks in 2 minutes")
PLACEHOLDER = re.compile(r"^(?P<name>[A-Z_]+)=(?P<value>\S*(\.\.\.|…)\S*)\s*(#.*)?$")
FIELD_OF = {"KEY": "api_key", "JOB": "job_id", "SECRET": "webhook_secret"}


def walkthrough_blocks(readme: str) -> list[str]:
    """The ```bash blocks of the walkthrough sections, in order."""
    blocks = []
    for title in SECTIONS:
        start = readme.index(title)
        end = readme.find("\n## ", start + len(title))
        section = readme[start : end if end != -1 else None]
        blocks += re.findall(r"```(?:bash|sh)\n(.*?)```", section, flags=re.S)
    return blocks


class Shell:
    """One bash the blocks are typed into; everything it (and what it started) prints is
    kept in ``output``."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["bash", "--norc", "--noprofile"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.output: list[str] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.type("set -eo pipefail")

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.changed:
                self.output.append(line)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def type(self, text: str, timeout: float = 60) -> str:
        """Run ``text``; what it printed. AssertionError if the shell stopped (a command
        failed under ``set -e``) or took longer than ``timeout``."""
        marker = f"@@done-{uuid.uuid4().hex}"
        with self.changed:
            first = len(self.output)
        self.proc.stdin.write(f"{text}\necho {marker}\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        with self.changed:
            while not any(line.startswith(marker) for line in self.output[first:]):
                left = deadline - time.monotonic()
                assert self.proc.poll() is None, (
                    f"the shell stopped at:\n{text}\n{self.printed(first)}"
                )
                assert left > 0, f"timed out running:\n{text}\n{self.printed(first)}"
                self.changed.wait(min(left, 0.5))
            lines = self.output[first:]
        return "".join(line for line in lines if not line.startswith(marker))

    def printed(self, since: int = 0) -> str:
        return "".join(line for line in self.output[since:] if not line.startswith("@@done-"))

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str] | None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while (found := re.search(pattern, self.printed(), flags=re.M)) is None:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return None
                self.changed.wait(min(left, 0.5))
        return found

    def close(self) -> None:
        """End the shell and what it started in the background (its process group)."""
        try:
            os.killpg(self.proc.pid, 9)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


def json_answers(text: str) -> list[dict]:
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    stack = Dev(tmp_path).start()
    yield stack
    stack.stop()


def test_the_readme_walkthrough_works_word_for_word(dev: Dev, tmp_path: Path):
    readme = Path(os.environ.get("JOBGATE_WALKTHROUGH_README") or ROOT / "README.md")
    blocks = walkthrough_blocks(readme.read_text())
    assert len(blocks) >= 8, "the walkthrough's shell blocks"
    receiver_port = free_port()
    env = newcomer_env(dev.redis_port, RECEIVER_PORT=str(receiver_port))
    shell = Shell(ROOT, env)
    answers: list[dict] = []

    def last(field: str) -> str:
        value = next((a[field] for a in reversed(answers) if field in a), None)
        assert value, f"no answer above carries {field!r} to paste"
        return value

    try:
        for block in blocks:
            block = block.replace("http://127.0.0.1:8000", dev.url).replace(
                "127.0.0.1:9000", f"127.0.0.1:{receiver_port}"
            )
            pending: list[str] = []

            def run(lines: list[str], source: str = block) -> None:
                if not lines:
                    return
                text = shell.type("\n".join(lines))
                answers.extend(json_answers(text))
                errors = [a for a in json_answers(text) if isinstance(a.get("error"), dict)]
                if '"nope"' not in "\n".join(lines):
                    assert not errors, f"an error answer in:\n{source}\n{text}"

            for line in block.splitlines():
                stripped = line.strip()
                if stripped.startswith("pip install"):
                    continue
                match = PLACEHOLDER.match(stripped)
                if match:  # paste: what came before it has printed what it names
                    run(pending)
                    pending = []
                    name = match.group("name")
                    value = dev.admin_key if name == "ADMIN" else last(FIELD_OF.get(name, name))
                    line = f"{name}='{value}'"
                if "<that job_id>" in line:
                    run(pending)
                    pending = []
                    line = line.replace("<that job_id>", last("job_id"))
                line = line.replace("whsec_...", dev.webhook_secret)
                if "examples/receiver.py" in line and not stripped.split("#")[0].rstrip().endswith(
                    "&"
                ):
                    line = line.split("#")[0].rstrip() + " &"  # its own terminal
                pending.append(line)
            run(pending)

            if "examples/receiver.py" in block:
                time.sleep(1)  # the receiver binds its port
            if "callback_url" in block:
                job = next(a for a in reversed(answers) if "job_id" in a)
                hook = shell.wait_for(r"^msg_\S+ job\.\S+ \S+$|^rejected msg_", 20)
                assert hook is not None, f"the receiver printed nothing:\n{shell.printed()}"
                assert hook.group(0).endswith("job.succeeded SUCCESS"), (
                    f"the receiver did not verify the delivery:\n{shell.printed()}"
                )
                key = shell.type('echo "$KEY"').strip()

                def recorded(job_id: str = job["job_id"], key: str = key) -> bool:
                    # The attempt is recorded once the receiver has answered.
                    view = requests.get(
                        f"{dev.url}/v1/jobs/{job_id}",
                        headers={"Authorization": f"Bearer {key}"},
                        timeout=5,
                    ).json()
                    return view["status"] == "SUCCESS" and view["webhook"]["state"] == "delivered"

                wait_until(recorded, 15, message="the delivery recorded as delivered")

        # What the walkthrough said would happen, did.
        statuses = {a.get("status") for a in answers}
        assert {"SUCCESS", "FAILURE"} <= statuses, shell.printed()
        failed = next(a for a in answers if a.get("status") == "FAILURE")
        assert failed["error"] == "the printer is on fire"
        codes = {a["error"].get("code") for a in answers if isinstance(a.get("error"), dict)}
        assert codes == {"unknown_task"}
        assert "rejected" not in shell.printed()
        assert any(line.startswith("msg_") for line in shell.printed().splitlines())
    finally:
        shell.close()
