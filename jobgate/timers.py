"""Calls at a time, without a thread per call: ``Timers``, one daemon thread per process.

The delivery deadlines (``jobgate.webhooks.pool.WATCHDOG``) and the progress reports held for
later (``tasks.progress``) each keep one.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable

__all__ = ["Handle", "Timers"]

Handle = list[Callable[[], None] | None]  # a scheduled call; None once cancelled


class _Schedule:
    """One process's scheduled calls and the thread that makes them."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.wake = threading.Condition()
        self.heap: list[tuple[float, int, Handle]] = []
        self.order = itertools.count()

    def run(self) -> None:
        while True:
            with self.wake:
                due: list[Callable[[], None]] = []
                now = time.monotonic()
                # Cancelled entries at the head go at once; live ones when their time comes.
                while self.heap and (self.heap[0][2][0] is None or self.heap[0][0] <= now):
                    func = heapq.heappop(self.heap)[2][0]
                    if func is not None:
                        due.append(func)
                if not due:
                    self.wake.wait(self.heap[0][0] - now if self.heap else None)
            for func in due:
                with contextlib.suppress(Exception):  # one failing call must not stop the rest
                    func()


class Timers:
    """Calls each scheduled function at its time, from one daemon thread per process.

    Scheduling is a heap push and cancelling only marks the entry, where a
    ``threading.Timer`` starts a thread per call (a greenlet under gevent). A forked child
    starts its own thread on first use (the parent's did not come along); two first uses
    at once each start one, and each thread serves what was pushed to it. The calls run
    one after another on that thread, so each instance serves one kind of short call.
    """

    def __init__(self, name: str) -> None:
        self.name = name  # the thread's
        self._schedule: _Schedule | None = None

    def schedule(self, delay: float, func: Callable[[], None]) -> Handle:
        """Call ``func`` in ``delay`` s; returns the handle ``cancel`` takes."""
        handle: Handle = [func]
        when = time.monotonic() + delay
        state = self._schedule
        if state is None or state.pid != os.getpid():
            state = self._schedule = _Schedule()
            threading.Thread(target=state.run, name=self.name, daemon=True).start()
        with state.wake:
            heapq.heappush(state.heap, (when, next(state.order), handle))
            if state.heap[0][2] is handle:  # sooner than what the thread waits for
                state.wake.notify()
        return handle

    @staticmethod
    def cancel(handle: Handle) -> None:
        """Forget a scheduled call (harmless once it ran)."""
        handle[0] = None
