"""The one helper tasks use to report progress (Celery state ``PROCESSING``)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from celery.exceptions import Ignore
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobgate.failpoints import failpoint
from jobgate.timers import Timers
from tasks.publish import script_meta

log = logging.getLogger(__name__)

SKIP_AFTER_FAILURE = 5.0  # seconds of reports skipped after one Redis could not take
COALESCE = 0.1  # seconds: at most one progress write per job per this, none in its first


class JobRevoked(Ignore):
    """Raised inside a task whose job was revoked (or ended elsewhere) while it ran.

    An ``Ignore``: the task stops cleanly and Celery records nothing over the job's end.
    """


class _Task(Protocol):
    request: Any
    backend: Any

    def update_state(
        self, task_id: str | None = ..., state: str | None = ..., meta: dict | None = ...
    ) -> None: ...


class Progress:
    """Report ``current`` of ``total`` with a message; stops the task if it was revoked.

    A written report sets Celery's ``PROCESSING`` meta (what ``AsyncResult`` reads),
    keeps the progress in the job record and publishes it for live listeners (SSE,
    ?wait=), in one script. Reports are coalesced: one that comes less than
    ``COALESCE`` s after the job began or after the last write is held, and the latest
    held one is written ``COALESCE`` s after that by the process's flusher thread, unless
    the task returns or raises first: ``close`` then keeps it for the job's end to record
    with the terminal status (``held_for_end``). So a job that ends within ``COALESCE`` s
    writes no progress of its own, and a chatty one at most 1 / ``COALESCE`` reports a
    second; one that reports less often writes each at once. Writes are serialised and
    never older than the last one written; none starts once the task has returned, so a
    report cannot land after (or, Celery's FAILURE being stored before the end is
    recorded, over) the job's end.

    A revoke that could not terminate the process (threads/solo pools, or terminate=false
    on a job that checks in) takes effect at a report: the one written, or the next one
    after a flusher's write found it. A report that cannot reach Redis (down, failing over)
    is skipped with a warning: progress is not worth failing a job for, and the job's end
    is recorded with retries of its own.
    """

    def __init__(self, task: _Task | None = None, store: Any = None) -> None:
        self.task = task
        self.store = store
        # The task's request, for the flusher's write (Celery's request stack is per thread).
        self.request = task.request if task is not None else None
        self.job_id = self.request.id if self.request is not None else None
        self.reports: list[dict[str, Any]] = []
        self._skip_until = 0.0  # monotonic: reports before it skip Redis (it was down)
        self._lock = threading.Lock()  # guards the fields below
        self._writing = threading.Lock()  # one write at a time, in report order
        self._last_write = time.monotonic()  # the job's start counts as a write
        self._held: tuple[int, dict[str, Any]] | None = None  # (report number, report)
        self._written = 0  # number of the last report written
        self._scheduled = False  # the flusher will look at what is held
        self._closed = False  # the task returned: no write starts; the held one is the end's
        self._ended = False  # the flusher's write found the job revoked or ended

    def __call__(self, current: int, total: int, message: str = "") -> None:
        percent = round(100 * current / total) if total else 0
        info = {"current": current, "total": total, "percent": percent, "message": message}
        self.reports.append(info)
        number = len(self.reports)
        if self._ended:
            raise JobRevoked(f"job {self.job_id} was revoked or already ended")
        if self.store is None or not self.job_id:
            if self.task is not None and self.job_id:
                self.task.update_state(state="PROCESSING", meta=info)
            return
        with self._lock:
            wait = self._last_write + COALESCE - time.monotonic()
            if wait > 0:
                self._held = (number, info)
                if not self._scheduled:
                    self._scheduled = True
                    FLUSHER.schedule(wait, self.write_held)
                return
            self._held = None
            self._last_write = time.monotonic()
        if self._write(number, info) == 0:
            raise JobRevoked(f"job {self.job_id} was revoked or already ended")

    def close(self) -> None:
        """The task returned or raised: no write starts after this (one under way is waited
        for), and the report still held is kept for ``held_for_end``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with self._writing:  # a flusher write under way lands before the end is recorded
            pass

    def held_for_end(self) -> dict[str, Any] | None:
        """The last report not written (None if none), for the job's end to record; closes
        the helper first."""
        self.close()
        with self._lock:
            held, self._held = self._held, None
            return held[1] if held is not None and held[0] > self._written else None

    def write_held(self) -> None:
        """Write the report held, if any (the flusher calls this when it is due)."""
        with self._lock:
            self._scheduled = False
            if self._closed or self._held is None:
                return
            number, info = self._held
            self._last_write = time.monotonic()
        try:
            if self._write(number, info) == 0:
                self._ended = True
        except Exception:  # noqa: BLE001 - the flusher has no caller to tell
            log.warning("job %s: progress not recorded", self.job_id, exc_info=True)

    def _write(self, number: int, info: dict[str, Any]) -> int | None:
        """Write report ``number`` unless a later one was written or the task returned; the
        script's answer (0: the job has ended), None if nothing was written."""
        with self._writing:
            with self._lock:
                if self._closed:
                    return None  # a held report goes with the end instead
                if number <= self._written:
                    return None
                if self._held is not None and self._held[0] <= number:
                    self._held = None
            if time.monotonic() < self._skip_until:
                return None
            answer = self._send(info)
            if answer is not None:
                with self._lock:
                    self._written = max(self._written, number)
            return answer

    def _send(self, info: dict[str, Any]) -> int | None:
        """One report to Redis (and Celery's meta); None if Redis could not take it."""
        meta = script_meta(self.task, "PROCESSING", info, self.request)
        try:
            answer = self.store.report_progress(self.job_id, info, meta)
        except (RedisConnectionError, RedisTimeoutError) as error:
            # Each try spends redis-py's own retries: skip the next reports for a while
            # rather than stall the job that long at every one of them.
            self._skip_until = time.monotonic() + SKIP_AFTER_FAILURE
            log.warning(
                "job %s: progress not recorded (%s); skipping reports for %g s",
                self.job_id,
                error,
                SKIP_AFTER_FAILURE,
                extra={"job_id": self.job_id},
            )
            return None
        failpoint("job.progress")
        if answer != 0 and not (meta is not None and answer == 1) and self.task is not None:
            # No meta given (broker apart from the store), or no record to write it with:
            # Celery's update_state, with the request of the task's own thread.
            self.task.backend.store_result(self.job_id, info, "PROCESSING", request=self.request)
        return answer


# The held reports' writes when they are due: one thread per process (a timer per job
# would start a thread per job, costing as much as the write it saves).
FLUSHER = Timers("jobgate-progress")
