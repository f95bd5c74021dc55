"""Group commit: the rows that a process's concurrent requests write, committed together.

Each caller of ``GroupCommit.commit`` waits until its row is committed, as with a write of
its own; whichever caller finds no write under way leads: it lets the requests already
running in the process join (one ``time.sleep(0)``, a turn of gevent's loop), writes
every waiting row in one transaction, then wakes the others and hands the lead to the
first that came since. One commit, one lock of SQLite's file and one round trip serve a
group instead of each row. Rows are taken first come, first served, at most ``limit``
per transaction, so a partner's burst makes groups larger without holding anyone's row
back more than a group.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import IntegrityError


class _Waiter:
    __slots__ = ("row", "done", "leads", "error")

    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row
        self.done = threading.Event()
        self.leads = False
        self.error: BaseException | None = None


class GroupCommit:
    """Rows written by ``write`` (one transaction for the list it is given), in groups."""

    def __init__(
        self,
        write: Callable[[list[dict[str, Any]]], Any],
        limit: int = 500,
        share: Callable[[dict[str, Any]], Any] = lambda row: row.get("partner_id"),
    ) -> None:
        self._write = write
        self._limit = limit
        self._share = share
        self._lock = threading.Lock()
        self._waiting: list[_Waiter] = []
        self._leading = False

    def commit(self, row: dict[str, Any]) -> None:
        """Return once ``row`` is committed; raise what its write raised. A group that
        fails on a constraint (an Idempotency-Key taken) is written again row by row,
        so only the row at fault gets the ``IntegrityError``."""
        me = _Waiter(row)
        with self._lock:
            self._waiting.append(me)
            me.leads = not self._leading
            self._leading = True
        try:
            if not me.leads:
                me.done.wait()
            if me.leads:
                time.sleep(0)  # the requests ready to run join this group
                self._lead()
        except BaseException:  # killed while waiting (a greenlet killed at shutdown)
            self._abandon(me)
            raise
        if me.error is not None:
            raise me.error

    def _abandon(self, me: _Waiter) -> None:
        """A caller gone before its row was taken: its row is not written, and a lead it
        held passes on, so the rows behind it are not left without a writer."""
        with self._lock:
            if me not in self._waiting:
                return  # taken into a group: written (or failed) with it
            self._waiting.remove(me)
            if not me.leads:
                return
            me.leads = False
            following = self._pass_lead()
        if following is not None:
            following.done.set()

    def _lead(self) -> None:
        with self._lock:
            group = self._take()
        try:
            self._write_group(group)
        finally:
            with self._lock:
                following = self._pass_lead()
            for waiter in group:
                waiter.leads = False
                waiter.done.set()
            if following is not None:
                following.done.set()

    def _pass_lead(self) -> _Waiter | None:
        """(Under the lock) the lead passes to the oldest waiting caller, if any: the
        caller to wake; with none waiting, no one leads."""
        following = self._waiting[0] if self._waiting else None
        self._leading = following is not None
        if following is not None:
            following.leads = True
        return following

    def _take(self) -> list[_Waiter]:
        """The next group (under the lock): every waiting row, or past ``limit`` rows
        taken in turn across partners, first the partner of the oldest waiting row."""
        if len(self._waiting) <= self._limit:
            group, self._waiting = self._waiting, []
            return group
        queues: dict[Any, list[_Waiter]] = {}
        for waiter in self._waiting:
            queues.setdefault(self._share(waiter.row), []).append(waiter)
        taken: set[int] = set()
        while len(taken) < self._limit:
            for queue in queues.values():
                if queue and len(taken) < self._limit:
                    taken.add(id(queue.pop(0)))
        group = [w for w in self._waiting if id(w) in taken]
        self._waiting = [w for w in self._waiting if id(w) not in taken]
        return group

    def _write_group(self, group: list[_Waiter]) -> None:
        for waiter in group:  # until the write says otherwise (it may be interrupted)
            waiter.error = RuntimeError("the group commit was interrupted")
        try:
            self._write([waiter.row for waiter in group])
        except IntegrityError as exc:
            if len(group) == 1:
                group[0].error = exc
                return
            for waiter in group:
                try:
                    self._write([waiter.row])
                    waiter.error = None
                except Exception as alone:  # noqa: BLE001 - its own request raises it
                    waiter.error = alone
        except Exception as exc:  # noqa: BLE001 - every request of the group raises it
            for waiter in group:
                waiter.error = exc
        else:
            for waiter in group:
                waiter.error = None
