"""jobgate.db.group: concurrent writers' rows committed together, each told its own outcome.

The write here records the groups it is given (the mechanism alone, with real threads);
tests/db/test_outbox.py runs the same path against SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from jobgate.db.group import GroupCommit


class Writes:
    """A ``write`` that records each group; the first one waits for ``release``."""

    def __init__(self, fail: Any = None) -> None:
        self.groups: list[list[int]] = []
        self.release = threading.Event()
        self.fail = fail

    def __call__(self, rows: list[dict[str, Any]]) -> None:
        if not self.groups:
            self.groups.append([])  # the first group is held open until released
            assert self.release.wait(10)
            self.groups[0] = [row["n"] for row in rows]
        else:
            self.groups.append([row["n"] for row in rows])
        if self.fail is not None:
            self.fail(rows)


def run(group: GroupCommit, writes: Writes, count: int) -> dict[int, BaseException | None]:
    """Row 0 committed first (its write held), then rows 1..count-1 while it is; returns
    each row's outcome."""
    outcomes: dict[int, BaseException | None] = {}

    def commit(n: int) -> None:
        try:
            group.commit({"n": n})
            outcomes[n] = None
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcomes[n] = exc

    threads = [threading.Thread(target=commit, args=(0,))]
    threads[0].start()
    wait_for(lambda: writes.groups)
    threads += [threading.Thread(target=commit, args=(n,)) for n in range(1, count)]
    for thread in threads[1:]:
        thread.start()
    wait_for(lambda: len(group._waiting) == count - 1)  # all queued behind the held write
    writes.release.set()
    for thread in threads:
        thread.join(10)
    assert len(outcomes) == count
    return outcomes


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.001)


def test_rows_written_while_a_group_commits_go_in_the_next_one_together() -> None:
    writes = Writes()
    outcomes = run(GroupCommit(writes), writes, 10)
    assert writes.groups == [[0], list(range(1, 10))]
    assert set(outcomes.values()) == {None}


def test_a_group_is_at_most_its_limit_first_come_first_served() -> None:
    writes = Writes()
    run(GroupCommit(writes, limit=4), writes, 10)
    assert [len(g) for g in writes.groups] == [1, 4, 4, 1]
    assert sorted(n for g in writes.groups for n in g) == list(range(10))


def test_a_constraint_broken_by_one_row_fails_that_row_only() -> None:
    def fail(rows: list[dict[str, Any]]) -> None:
        if any(row["n"] == 5 for row in rows):
            raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    writes = Writes(fail)
    outcomes = run(GroupCommit(writes), writes, 8)
    assert isinstance(outcomes.pop(5), IntegrityError)
    assert set(outcomes.values()) == {None}
    assert writes.groups[1] == list(range(1, 8))  # tried together, then one by one
    assert writes.groups[2:] == [[n] for n in range(1, 8)]


def test_a_failed_write_fails_every_row_of_its_group() -> None:
    def fail(rows: list[dict[str, Any]]) -> None:
        if len(rows) > 1:
            raise OperationalError("INSERT", {}, Exception("database down"))

    writes = Writes(fail)
    outcomes = run(GroupCommit(writes), writes, 6)
    assert outcomes[0] is None
    assert all(isinstance(outcomes[n], OperationalError) for n in range(1, 6))
    assert len(writes.groups) == 2  # none of them written one by one


def test_an_interrupted_write_commits_nobody_silently() -> None:
    class Interrupted(BaseException):
        pass

    def fail(rows: list[dict[str, Any]]) -> None:
        if len(rows) > 1:
            raise Interrupted

    writes = Writes(fail)
    group = GroupCommit(writes)
    outcomes: dict[int, BaseException | None] = {}
    leader_raised: list[BaseException] = []

    def commit(n: int) -> None:
        try:
            group.commit({"n": n})
            outcomes[n] = None
        except Interrupted as exc:
            leader_raised.append(exc)
        except Exception as exc:  # noqa: BLE001
            outcomes[n] = exc

    first = threading.Thread(target=commit, args=(0,))
    first.start()
    wait_for(lambda: writes.groups)
    others = [threading.Thread(target=commit, args=(n,)) for n in (1, 2, 3)]
    for thread in others:
        thread.start()
    wait_for(lambda: len(group._waiting) == 3)
    writes.release.set()
    for thread in [first, *others]:
        thread.join(10)
    # The second group's leader gets its interruption; the two it led are told they
    # were not committed.
    assert outcomes[0] is None and len(leader_raised) == 1
    assert len(outcomes) == 3 and sum(isinstance(e, RuntimeError) for e in outcomes.values()) == 2


@pytest.mark.parametrize("count", [1, 3])
def test_the_lead_is_given_back_when_nobody_waits(count: int) -> None:
    writes = Writes()
    writes.release.set()
    group = GroupCommit(writes)
    for n in range(count):
        group.commit({"n": n})
    assert not group._leading and not group._waiting


KILLED_LEADER = r"""
import gevent.monkey
gevent.monkey.patch_all()
import gevent, json, types
from jobgate.db import group as module
from jobgate.db.group import GroupCommit

# The leader's turn of the loop made long enough to be killed in (it is one turn).
module.time = types.SimpleNamespace(sleep=lambda seconds: gevent.sleep(0.2))
written = []
group = GroupCommit(lambda rows: written.append([row["n"] for row in rows]))
leader = gevent.spawn(group.commit, {"n": 0})
gevent.sleep(0.05)  # the leader waits for the others to join ...
leader.kill()  # ... and is killed there, before it wrote anything
follower = gevent.spawn(group.commit, {"n": 1})
follower.join(timeout=5)
print(json.dumps({"done": follower.ready(), "written": written}), flush=True)
"""


def test_a_leader_killed_before_it_writes_hands_the_lead_on() -> None:
    """In a gevent process (the gateway), a request killed while it leads the group must
    not leave later submits waiting for ever; its own row is not written."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    ran = subprocess.run(
        [sys.executable, "-c", KILLED_LEADER],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == {"done": True, "written": [[1]]}


def test_a_partners_burst_never_holds_anothers_row_back_more_than_a_group() -> None:
    """1 200 of partner A's rows wait, then one of B's: with 500 rows a transaction, B's
    goes in the very next group (taken in turn across partners), not the third."""
    groups: list[list[str]] = []
    release = threading.Event()

    def write(rows: list[dict[str, Any]]) -> None:
        if not groups:
            assert release.wait(10)  # the first group is held open until all are queued
        groups.append([row["partner_id"] for row in rows])

    group = GroupCommit(write, limit=500)
    rows = [{"partner_id": "A"}] * 1201 + [{"partner_id": "B"}]
    threads = [threading.Thread(target=group.commit, args=(rows[0],))]
    threads[0].start()
    wait_for(lambda: group._leading and not group._waiting)  # the first write is under way
    threads += [threading.Thread(target=group.commit, args=(row,)) for row in rows[1:]]
    for thread in threads[1:]:
        thread.start()
    wait_for(lambda: len(group._waiting) == len(rows) - 1)
    release.set()
    for thread in threads:
        thread.join(10)
    assert [len(g) for g in groups] == [1, 500, 500, 201]
    assert groups[1].count("B") == 1  # the next group after B arrived
