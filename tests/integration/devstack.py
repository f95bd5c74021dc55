"""``jobgate dev`` as a newcomer runs it: a real subprocess in a directory of its own, on a
free port, with an embedded Redis of its own; stopped with Ctrl-C (SIGINT to its group)
and, should that fail, killed by process group, never by name."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT, free_port, wait_until


def newcomer_env(redis_port: int, **extra: str) -> dict[str, str]:
    """The environment of a fresh shell: none of the suite's jobgate settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
    env.update({"PYTHONPATH": str(ROOT), "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", **extra})
    return env


class Dev:
    """One ``jobgate dev`` run: ``start()`` waits for its banner and parses it."""

    def __init__(self, directory: Path, port: int | None = None, redis_port: int | None = None):
        self.directory = directory
        self.port = port or free_port()
        self.redis_port = redis_port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self.banner = ""
        self.runs = 0

    @property
    def env(self) -> dict[str, str]:
        return newcomer_env(self.redis_port)

    @property
    def stderr_path(self) -> Path:
        return self.directory / f"dev-{self.runs}.stderr"

    def start(self, timeout: float = 90) -> Dev:
        self.runs += 1
        self.stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "dev", "--port", str(self.port)],
            cwd=self.directory,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            start_new_session=True,
        )
        lines: list[str] = []

        def banner_done() -> bool:
            lines.append(self.proc.stdout.readline())
            return "Ctrl-C stops everything" in lines[-1] or self.proc.poll() is not None

        try:
            wait_until(banner_done, timeout=timeout, interval=0, message="jobgate dev's banner")
        except BaseException:
            self.stop()
            raise
        self.banner = "".join(lines)
        if self.proc.poll() is not None:
            raise AssertionError(f"jobgate dev exited:\n{self.banner}\n{self.stderr_text()}")
        return self

    def printed(self, label: str) -> str:
        return re.search(rf"{label}:\s+(\S+)", self.banner).group(1)

    @property
    def admin_key(self) -> str:
        return self.printed("admin key")

    @property
    def partner_key(self) -> str:
        return self.printed("partner key")

    @property
    def webhook_secret(self) -> str:
        return self.printed("webhook secret")

    def stderr_text(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def stop(self, timeout: float = 60) -> int | None:
        """Ctrl-C (SIGINT to its process group), then wait; SIGKILL to every group under
        it if it does not stop. Its exit code."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    from gateway.launch import descendants

                    groups = set()
                    for pid in [proc.pid, *descendants(proc.pid)]:
                        with contextlib.suppress(ProcessLookupError):
                            groups.add(os.getpgid(pid))
                    for group in groups - {os.getpgrp()}:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(group, signal.SIGKILL)
                    proc.wait(timeout=30)
            return proc.returncode
        finally:
            proc.stdout.close()
            self.stderr.close()
            self.proc = None
