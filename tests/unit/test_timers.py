"""jobgate.timers: calls at their time from one thread per process."""

from __future__ import annotations

import os
import threading
import time

from jobgate.timers import Timers


def test_calls_each_function_at_its_deadline_sooner_first() -> None:
    """One thread serves every deadline; a sooner one scheduled later wakes it early."""
    timers = Timers("test-timers")
    called: list[str] = []
    both = threading.Event()

    def late() -> None:
        called.append("late")
        both.set()

    started = time.monotonic()
    timers.schedule(0.6, late)
    timers.schedule(0.05, lambda: called.append("soon"))
    assert both.wait(5), called
    assert called == ["soon", "late"]
    assert time.monotonic() - started >= 0.6


def test_cancel_and_a_failing_call_leave_the_rest_running() -> None:
    timers = Timers("test-timers")
    ran = threading.Event()
    cancelled: list[str] = []

    def boom() -> None:
        raise RuntimeError("abort failed")

    handle = timers.schedule(0.05, lambda: cancelled.append("ran"))
    timers.cancel(handle)
    timers.schedule(0.05, boom)
    timers.schedule(0.1, ran.set)
    assert ran.wait(5)
    assert cancelled == []


def test_in_a_forked_child_starts_its_own_thread() -> None:
    """The parent's thread does not survive ``fork``: the child's first schedule starts one."""
    timers = Timers("test-timers")
    parent = threading.Event()
    timers.schedule(0.01, parent.set)
    assert parent.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if its own deadline fired
        fired = threading.Event()
        timers.schedule(0.01, fired.set)
        os._exit(0 if fired.wait(5) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
