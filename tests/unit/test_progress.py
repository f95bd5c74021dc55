"""Progress reports are coalesced: a quick job writes none, a chatty one a few a second."""

from __future__ import annotations

import threading
import time

import pytest

from tasks import progress as module
from tasks.progress import COALESCE, JobRevoked, Progress
from tests.helpers import wait_until


class Backend:
    def __init__(self) -> None:
        self.stored: list[tuple] = []

    def store_result(self, task_id, meta, state, request=None):
        self.stored.append((task_id, state, request.id))


class Task:
    """A job task as Progress sees it, with Celery writing its meta (not the scripts)."""

    class request:
        id = "j1"

    app = None

    def __init__(self) -> None:
        self.backend = Backend()

    def update_state(self, **_):
        raise AssertionError("with a store, a report goes through the store")


class Store:
    """Records each report written; answers ``answer`` (1 written, 0 the job ended)."""

    def __init__(self, answer: int = 1) -> None:
        self.answer = answer
        self.written: list[dict] = []

    def report_progress(self, job_id, info, meta):
        self.written.append(info)
        return self.answer


def test_a_job_that_ends_within_the_window_writes_no_report_and_its_end_takes_the_last():
    store = Store()
    progress = Progress(Task(), store)
    progress(0, 1, "Step 1 of 1")
    progress(1, 1, "Done")
    assert progress.held_for_end() == {"current": 1, "total": 1, "percent": 100, "message": "Done"}
    time.sleep(2 * COALESCE)  # the flusher comes, finds the helper closed, writes nothing
    assert store.written == []
    assert progress.held_for_end() is None


def test_held_reports_are_written_once_per_window_the_latest_only():
    store, task = Store(), Task()
    progress = Progress(task, store)
    for step in range(5):
        progress(step, 10)
    wait_until(lambda: task.backend.stored, timeout=5 * COALESCE + 1, message="the timer's write")
    assert [report["current"] for report in store.written] == [4]
    # Celery's meta, written from the timer's thread, is for the task's own request.
    assert task.backend.stored == [("j1", "PROCESSING", "j1")]
    assert progress.held_for_end() is None


def test_a_report_after_a_quiet_window_is_written_at_once(monkeypatch):
    store = Store()
    progress = Progress(Task(), store)
    monkeypatch.setattr(progress, "_last_write", time.monotonic() - COALESCE)
    progress(3, 10, "slow step")
    assert [report["current"] for report in store.written] == [3]


def test_a_flusher_write_that_finds_the_job_ended_stops_it_at_the_next_report():
    store = Store(answer=0)
    progress = Progress(Task(), store)
    progress(1, 10)
    wait_until(lambda: progress._ended, timeout=5 * COALESCE + 1, message="the flusher's write")
    with pytest.raises(JobRevoked):
        progress(2, 10)


def test_no_write_starts_after_close_and_the_end_gets_the_held_report():
    """Celery stores a FAILURE before the end is recorded: a report landing in between
    would stand over it."""
    store = Store()
    progress = Progress(Task(), store)
    progress(1, 10)
    progress.close()  # the task returned or raised
    time.sleep(2 * COALESCE)
    assert store.written == []
    assert progress.held_for_end()["current"] == 1


class SlowStore(Store):
    """A store whose first write waits until ``go`` is set (Redis slow to answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()
        self.waiting = threading.Event()

    def report_progress(self, job_id, info, meta):
        if not self.written:
            self.waiting.set()
            assert self.go.wait(10)
        return super().report_progress(job_id, info, meta)


def test_close_waits_for_a_flusher_write_under_way():
    """The end is recorded after the flusher's write, never under it."""
    store = SlowStore()
    progress = Progress(Task(), store)
    progress(1, 10)
    assert store.waiting.wait(5 * COALESCE + 1)  # the flusher is writing it
    closing = threading.Thread(target=progress.close)
    closing.start()
    closing.join(2 * COALESCE)
    assert closing.is_alive()
    store.go.set()
    closing.join(5)
    assert not closing.is_alive()
    assert [report["current"] for report in store.written] == [1]
    assert progress.held_for_end() is None  # written already: the end has nothing to add


def test_an_older_report_is_never_written_after_a_newer_one():
    store = Store()
    progress = Progress(Task(), store)
    progress._write(2, {"current": 2})
    progress._write(1, {"current": 1})  # a flusher that took report 1 and came late
    assert store.written == [{"current": 2}]


def test_a_written_report_that_finds_the_job_ended_stops_it_at_once(monkeypatch):
    monkeypatch.setattr(module, "COALESCE", 0.0)
    progress = Progress(Task(), Store(answer=0))
    with pytest.raises(JobRevoked):
        progress(1, 10)
