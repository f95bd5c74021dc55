"""Start, wait for, stop and supervise child processes.

The one launcher behind ``jobgate dev``, ``jobgate worker``, the tests' Redis, gunicorn and
workers (``tests/helpers.py``) and the benchmarks' stack (``bench/common.py``):

- :meth:`Child.start` runs a command in a process group of its own, its output to a log
  file (or to this process's own stdout/stderr);
- :meth:`Child.wait_ready` polls a readiness condition with a timeout and fails with the
  log's tail if the child exits first;
- :meth:`Child.stop` is a graceful stop (SIGTERM to the group, SIGKILL after a timeout),
  :meth:`Child.kill` signals the group and every group started under it (SIGKILL: the
  whole thing, as a crash would);
- :func:`supervise` runs children until one exits or a signal arrives (``jobgate worker``).

Only the standard library: neither ``jobgate/`` nor ``tasks/`` imports it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

__all__ = ["Child", "LaunchError", "http_status", "stop_all", "supervise"]


class LaunchError(RuntimeError):
    """A child exited before it was ready, or did not get ready in time."""


def _parent_death_signal(sig: int) -> Callable[[], None] | None:
    """A preexec_fn asking Linux to send ``sig`` to the child when this process dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)

    return preexec


class Child:
    """One started command in its own process group."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log_path: Path | None) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path

    @classmethod
    def start(
        cls,
        name: str,
        args: Sequence[str],
        *,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        stop_with_parent: bool = False,
    ) -> Child:
        """Run ``args`` in a new session (so a new process group) named ``name``.

        ``log``: a file for its stdout and stderr (truncated), or None to share ours.
        ``env``: its whole environment (default: ours). ``stop_with_parent``: SIGTERM it
        if this process dies without stopping it (Linux), so no child outlives a
        SIGKILLed supervisor.
        """
        preexec = _parent_death_signal(signal.SIGTERM) if stop_with_parent else None
        if log is None:
            proc = subprocess.Popen(
                list(args), env=env, cwd=cwd, start_new_session=True, preexec_fn=preexec
            )
        else:
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "wb") as out:  # the child keeps its own descriptor
                proc = subprocess.Popen(
                    list(args),
                    env=env,
                    cwd=cwd,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    preexec_fn=preexec,
                )
        return cls(name, proc, log)

    # ------------------------------------------------------------------------ state
    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def running(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        """The last ``lines`` of its log ('' when it logs to our own output)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def check(self) -> bool:
        """True while it runs; LaunchError (with the log's tail) once it has exited."""
        code = self.proc.poll()
        if code is None:
            return True
        where = f"; log {self.log_path}:\n{self.tail()}" if self.log_path else ""
        raise LaunchError(f"{self.name} exited with {code}{where}")

    def wait_ready(
        self, condition: Callable[[], T], timeout: float, what: str = "", interval: float = 0.1
    ) -> T:
        """Poll ``condition`` until it returns something truthy, and return that.

        LaunchError if the child exits first (with its log's tail) or after ``timeout``
        seconds. The condition answers False while the child is not up yet; whatever it
        raises propagates.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                where = f" (log: {self.log_path})" if self.log_path else ""
                raise LaunchError(
                    f"timed out after {timeout:g}s waiting for "
                    f"{what or self.name + ' to be ready'}{where}"
                )
            time.sleep(interval)

    # ------------------------------------------------------------------------ stopping
    def send(self, sig: int, *, group: bool = True) -> None:
        """Send ``sig`` to its process group, or with ``group=False`` to the child alone
        (nothing if it has exited)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if group:
                    os.killpg(self.proc.pid, sig)
                else:
                    self.proc.send_signal(sig)

    def kill_leftovers(self) -> None:
        """SIGKILL what is left in its group once it has exited (say, the pool processes of
        a Celery worker that was SIGKILLed)."""
        if self.proc.poll() is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM the group; SIGKILL what is left after ``timeout`` s. Its exit code."""
        self.send(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.wait()

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 30.0) -> None:
        """Send ``sig`` to its whole tree (``signal_tree``), then wait for it to exit.

        With SIGKILL this is the whole thing gone at once, as in a crash: a supervisor
        that puts its own children in groups of their own (``jobgate worker``) dies with
        them, and no process of the tree is left to react.
        """
        self.signal_tree(sig)
        self.proc.wait(timeout=timeout)

    def signal_tree(self, sig: int) -> None:
        """Send ``sig`` to its group and to every group started under it (no wait: SIGSTOP
        and SIGCONT pause and resume the whole tree)."""
        groups = {self.proc.pid} if self.proc.poll() is None else set()
        groups |= {_pgid(pid) for pid in descendants(self.proc.pid)}
        for group in groups - {0, os.getpgrp()}:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)


def stop_all(children: Iterable[Child], timeout: float = 20.0) -> None:
    """Stop several children at once: SIGTERM every group, then SIGKILL what is left after
    ``timeout`` s (one deadline for all)."""
    children = list(children)
    for child in children:
        child.send(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()


def supervise(
    children: Sequence[Child], *, say: Callable[[str], None] | None = None, poll: float = 0.2
) -> int:
    """Run until a child exits or this process gets SIGTERM/SIGINT; then stop the rest.

    A SIGTERM or SIGINT is forwarded to every child as SIGTERM (a warm shutdown for a
    Celery worker: running tasks finish) and this waits for them all, however long that
    takes; a second one forwards SIGQUIT (Celery's cold shutdown). Signals go to each
    child's own process, not its group: a Celery worker stops its pool itself, while a
    pool process that gets SIGTERM dies with its task. If a child exits on its own, what
    is left of its group is killed and the others get SIGTERM the same way. The result is
    an exit status: 0 when every child stopped cleanly after a signal, else non-zero (a
    child that exits on its own is a failure, even with status 0).
    """
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        failed: Child | None = None
        while not received and failed is None:
            failed = next((c for c in children if not c.running()), None)
            if failed is None and not received:
                time.sleep(poll)
        if failed is not None:
            failed.kill_leftovers()
            others = [c.name for c in children if c.running()]
            say(
                f"{failed.name} exited with {failed.returncode}"
                + (f"; stopping {', '.join(others)}" if others else "")
            )
        else:
            say(
                f"got {signal.Signals(received[0]).name}: stopping "
                f"{', '.join(c.name for c in children)} (warm; a second signal: cold)"
            )
        for child in children:
            child.send(signal.SIGTERM, group=False)
        handled = len(received)
        while any(child.running() for child in children):
            if len(received) > handled:
                handled = len(received)
                cold = handled >= 2
                if cold:
                    say("stopping now (cold shutdown)")
                for child in children:
                    child.send(signal.SIGQUIT if cold else signal.SIGTERM, group=False)
            time.sleep(poll)
        for child in children:
            child.kill_leftovers()
        if failed is not None:
            return _exit_status(failed.returncode) or 1
        return max((_exit_status(child.returncode) for child in children), default=0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _exit_status(returncode: int | None) -> int:
    """A child's return code as a shell would report it (killed by signal N: 128 + N)."""
    if returncode is None:
        return 0
    return 128 - returncode if returncode < 0 else returncode


# ----------------------------------------------------------------------------- helpers
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The status a GET of ``url`` answers, or None while nothing answers (a readiness
    condition: ``lambda: http_status(url) == 200``)."""
    try:
        with _DIRECT.open(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc; empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return 0
