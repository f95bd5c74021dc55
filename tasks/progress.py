"""The one helper tasks use to report progress (Celery state ``PROCESSING``)."""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from celery.exceptions import Ignore
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobgate.failpoints import failpoint
from tasks.publish import script_meta

log = logging.getLogger(__name__)

SKIP_AFTER_FAILURE = 5.0  # seconds of reports skipped after one Redis could not take


class JobRevoked(Ignore):
    """Raised inside a task whose job was revoked (or ended elsewhere) while it ran.

    An ``Ignore``: the task stops cleanly and Celery records nothing over the job's end.
    """


class _Task(Protocol):
    request: Any

    def update_state(
        self, task_id: str | None = ..., state: str | None = ..., meta: dict | None = ...
    ) -> None: ...


class Progress:
    """Report ``current`` of ``total`` with a message; stops the task if it was revoked.

    Each report writes Celery's ``PROCESSING`` meta (what the status route reads), keeps
    the last progress in the job record and publishes it for live listeners (SSE, ?wait=).
    A revoke that could not terminate the process (threads/solo pools, or terminate=false
    on a job that checks in) takes effect here, at the next report. A report that cannot
    reach Redis (down, failing over) is skipped with a warning: progress is not worth
    failing a job for, and the job's end is recorded with retries of its own.
    """

    def __init__(self, task: _Task | None = None, store: Any = None) -> None:
        self.task = task
        self.store = store
        self.job_id = task.request.id if task is not None else None
        self.reports: list[dict[str, Any]] = []
        self._skip_until = 0.0  # monotonic: reports before it skip Redis (it was down)

    def __call__(self, current: int, total: int, message: str = "") -> None:
        percent = round(100 * current / total) if total else 0
        info = {"current": current, "total": total, "percent": percent, "message": message}
        self.reports.append(info)
        if self.store is not None and self.job_id:
            if time.monotonic() < self._skip_until:
                return
            meta = script_meta(self.task, "PROCESSING", info)
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
                return
            failpoint("job.progress")
            if answer == 0:
                raise JobRevoked(f"job {self.job_id} was revoked or already ended")
            if meta is not None and answer == 1:
                return  # Celery's meta was written by the same script
        if self.task is not None and self.job_id:
            self.task.update_state(state="PROCESSING", meta=info)
