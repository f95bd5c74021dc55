"""Sampling profiles of the bench's processes with py-spy (optional, ``--profile DIR``).

``py-spy record --format raw`` writes collapsed stacks; ``top_frames`` turns them into the
functions holding most samples (inclusive and self), which docs/performance.md quotes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any


class PySpy:
    """``py-spy record`` attached to a process and its children until ``stop``."""

    def __init__(self, pid: int, out: Path, rate: int = 50) -> None:
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        if shutil.which("py-spy") is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(pid),
                "--subprocesses",
                "--nonblocking",
                "--rate",
                str(rate),
                "--format",
                "raw",
                "-o",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def stop(self) -> None:
        """SIGINT makes py-spy write its file; SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def _short(frame: str) -> str:
    """``func (path/to/module.py:12)`` -> ``func (module.py)``, as a stable key."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    parts = Path(path).parts
    tail = "/".join(parts[-2:]) if parts else path
    return f"{name} ({tail})"


def top_frames(path: Path, limit: int = 25) -> dict[str, Any]:
    """Functions with most samples: inclusive (anywhere on the stack) and self (leaf)."""
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    idle = 0
    if not path.exists():
        return {"samples": 0, "inclusive": [], "self": []}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            _short(f)
            for f in stack.split(";")
            if f and not f.startswith("process ") and not f.startswith("thread ")
        ]
        if not frames:
            continue
        total += count
        if any(
            k in frames[-1]
            for k in (
                "select (",
                "poll (",
                "wait (",
                "accept (",
                "_recv (",
                "readinto (",
                "sleep (",
                "epoll",
            )
        ):
            idle += count
        for frame in set(frames):
            inclusive[frame] += count
        leaf[frames[-1]] += count

    def pct(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(limit)]

    return {
        "samples": total,
        "idle_pct": round(100 * idle / total, 1) if total else None,
        "inclusive": pct(inclusive),
        "self": pct(leaf),
    }
