"""The Celery app: Redis broker and backend, reliable delivery settings, job tasks."""

from __future__ import annotations

import logging
import os
import resource
import sys
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from celery import Celery, Task, states
from celery.exceptions import WorkerLostError
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    task_prerun,
    task_revoked,
    worker_init,
)
from kombu.exceptions import EncodeError
from kombu.utils.json import dumps as json_dumps

from config import Settings
from jobgate import lifecycle, logs, tracing
from jobgate.db import Database
from jobgate.endpoints import Endpoints
from jobgate.ends import committed_end
from jobgate.events import SUBJECTS
from jobgate.failpoints import failpoint
from jobgate.handoff import SEND_HEADER
from jobgate.messages import DELIVER_TASK, FAN_OUT_TASK
from jobgate.partners import Partners
from jobgate.status import error_message
from jobgate.store import Store
from tasks import webhooks
from tasks.progress import JobRevoked, Progress
from tasks.publish import CeleryMessenger, same_redis, script_meta
from tasks.registry import JobType, job_types
from tasks.transport import broker_transport_for
from tasks.upkeep import Upkeep

log = logging.getLogger(__name__)


class JobgateCelery(Celery):
    """A Celery app that carries jobgate's settings, its job store, database and messenger."""

    settings: Settings

    @cached_property
    def store(self) -> Store:
        return Store.from_settings(self.settings)

    @cached_property
    def database(self) -> Database:
        """The SQL database: jobs' ends, the archiver, partner secrets when Redis lost
        their mirror."""
        return Database.from_settings(self.settings)

    @cached_property
    def partners(self) -> Partners:
        return Partners(self.store, self.database)

    @cached_property
    def endpoints(self) -> Endpoints:
        """Registered endpoints (fan-out, their secrets and health)."""
        return Endpoints(
            self.store,
            self.database,
            self.partners,
            disable_after=self.settings.endpoint_disable_after,
            messenger=self.messenger,
        )

    @cached_property
    def meta_in_scripts(self) -> bool:
        """Whether jobgate's scripts write the job tasks' Celery meta for STARTED and
        SUCCESS (and PROCESSING) with the job record, in one round trip, instead of
        Celery: only when the result backend is the store's Redis. The job tasks then
        ignore their results and do not track their start themselves (``make_celery``);
        Celery still stores every error state (FAILURE, REVOKED, a lost worker's) as
        before, since the worker's main process writes most of them."""
        return same_redis(self.settings.result_backend, self.settings.redis_url)

    @cached_property
    def messenger(self) -> CeleryMessenger:
        """How the domain queues tasks on this app (inline when the broker is the store's)."""
        settings = self.settings
        return CeleryMessenger(
            self,
            jobs_queue=settings.queue_jobs,
            webhooks_queue=settings.queue_webhooks,
            inline=same_redis(settings.broker_url, settings.redis_url),
        )


MAX_RUNS = 3  # runs a job may start before a lost worker ends it as worker_lost


class JobTask(Task):
    """Base of every job task: refuses revoked jobs, records start and end once, and
    decides what a run after a lost worker does (run again, or end as worker_lost)."""

    abstract = True
    # Whether a run after a lost worker may run the job again (per job type: the
    # registry's retry_on_worker_lost). Not Celery 5.7's own ``retry_on_worker_lost``,
    # which is kept off: it re-publishes the task with a 180 s countdown (an ETA message,
    # which jobgate never uses) when only a pool process dies. jobgate's path is
    # reject_on_worker_lost: the message goes straight back and the start script counts
    # the run.
    rerun_on_worker_lost = True
    retry_on_worker_lost = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        job_id = self.request.id
        if not job_id:  # called directly, not through a worker
            return super().__call__(*args, **kwargs)
        store: Store = self.app.store
        started = {"pid": os.getpid(), "hostname": self.request.hostname}
        refused, runs, started_at = store.start_job(
            job_id,
            worker=self.request.hostname or "",
            celery_meta=script_meta(self, states.STARTED, started),
            send=str(getattr(self.request, SEND_HEADER, None) or ""),
        )
        if refused == "stale":
            # A second message of the job (its sender died after the publish, before the
            # handed mark, and the sweeper sent it again): the job's last send runs it.
            log.info("job %s: a stale message; dropped", job_id, extra={"job_id": job_id})
            raise JobRevoked(f"job {job_id}: a stale message")
        if refused == "missing":
            # No record: retention ran out or the message did not come from the gateway.
            log.warning("job %s has no record; not running it", job_id, extra={"job_id": job_id})
            raise JobRevoked(f"job {job_id} has no record")
        if refused:
            # Revoked while queued (kept in Redis, so a restarted worker knows too), or a
            # redelivery (acks_late / visibility timeout) of a job that already ended: do
            # not run it again, but replay its idempotent side effects in case the process
            # that recorded the end died before queuing the webhook.
            record = store.job(job_id) or {}
            if refused == "REVOKED":
                self._mark_revoked(record)
            lifecycle.side_effects(self.app.messenger, store, record)
            raise JobRevoked(f"job {job_id} already {refused}")
        self.request.jobgate_started_at = started_at
        self.request.jobgate_runs = runs
        failpoint("job.started")
        if runs > 1:
            self._record_a_committed_end(job_id)
        if runs > 1 and (not self.rerun_on_worker_lost or runs > MAX_RUNS):
            self._end_worker_lost(job_id, runs)
        if runs > 1:
            log.warning(
                "job %s: its worker was lost; running it again (run %d)",
                job_id,
                runs,
                extra={"job_id": job_id},
            )
        return super().__call__(*args, **kwargs)

    def _record_a_committed_end(self, job_id: str) -> None:
        """A job run again (its worker died, or Redis lost its end) whose end the database
        holds: record that end, without running the task again."""
        end = committed_end(self.app.database, job_id)
        if end is None:
            return
        log.warning(
            "job %s: its end (%s) is committed; not running it again",
            job_id,
            end["status"],
            extra={"job_id": job_id},
        )
        meta = None
        if end["status"] == states.SUCCESS:
            meta = script_meta(self, states.SUCCESS, end.get("result"))
        elif end["status"] == states.FAILURE:
            self.backend.mark_as_failure(
                job_id, Exception(end.get("error") or "failed"), request=self.request
            )
        else:
            self.backend.mark_as_revoked(
                job_id, end.get("revoke_reason") or "revoked", request=self.request
            )
        fields = {k: v for k, v in end.items() if k != "status"}
        self._finish(job_id, end["status"], celery_meta=meta, **fields)
        raise JobRevoked(f"job {job_id} already ended {end['status']}")

    def _end_worker_lost(self, job_id: str, runs: int) -> None:
        """End a job whose worker died while running it, instead of running it again."""
        why = (
            "its task is not safe to run twice"
            if not self.rerun_on_worker_lost
            else f"it was lost {runs - 1} times"
        )
        error = f"worker_lost: the worker running this job died, and {why}."
        log.warning("job %s: %s", job_id, error, extra={"job_id": job_id})
        self.backend.mark_as_failure(job_id, WorkerLostError(error), request=self.request)
        self._finish(job_id, "FAILURE", error=error)
        raise JobRevoked(f"job {job_id} ended as worker_lost")

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        failpoint("job.end.before")
        try:
            meta = script_meta(self, states.SUCCESS, retval)
        except EncodeError as exc:
            # Celery storing the result would have failed the task the same way.
            error = f"the task's result could not be encoded as JSON: {exc}"
            log.warning("job %s: %s", task_id, error, extra={"job_id": task_id})
            self.backend.mark_as_failure(task_id, exc, request=self.request)
            self._finish(task_id, "FAILURE", error=error, **self._run_fields())
            return
        self._finish(task_id, "SUCCESS", celery_meta=meta, result=retval, **self._run_fields())

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        # Celery stored the FAILURE meta itself (store_errors_even_if_ignored).
        ended = self._finish(task_id, "FAILURE", error=error_message(exc), **self._run_fields())
        if not ended:
            # Revoked (terminate=false) while it ran, and it raised before its next report:
            # Celery's FAILURE must not stand against the REVOKED the job has.
            record = self.app.store.job(task_id) or {}
            if record.get("status") == "REVOKED":
                self._mark_revoked(record)

    def _finish(self, job_id: str, status: str, **fields: Any) -> bool:
        """Record the job's end (committed, then announced), retrying a lost connection."""
        app = self.app
        return lifecycle.finish_job_retrying(
            app.messenger, app.store, job_id, status, db=app.database, **fields
        )

    def _mark_revoked(self, record: dict[str, Any]) -> None:
        """Celery's REVOKED meta for this job, as Celery writes it for its own revokes."""
        self.backend.mark_as_revoked(
            record["job_id"], record.get("revoke_reason") or "revoked", request=self.request
        )

    def _run_fields(self) -> dict[str, Any]:
        """What this run adds to its end: its start, run count and worker (from
        ``start_job``, so the end does not read them back, and the row keeps them should
        Redis lose the record before the archiver copies it) and its last progress report
        not yet written (``Progress`` coalesces them); only the fields it has."""
        fields: dict[str, Any] = {}
        if started_at := getattr(self.request, "jobgate_started_at", None):
            fields["started_at"] = started_at
            fields["runs"] = str(getattr(self.request, "jobgate_runs", 1))
            fields["worker"] = self.request.hostname or ""
        progress = getattr(self.request, "jobgate_progress", None)
        if progress is not None and (held := progress.held_for_end()) is not None:
            fields["progress"] = held
        return fields


class ResultTooLarge(Exception):
    """A task's result over ``JOBGATE_MAX_RESULT_BYTES``: the job fails and keeps none of it."""


def check_result_size(result: Any, limit: int) -> None:
    """Raise ``ResultTooLarge`` if ``result``, JSON-encoded as Celery stores it, is over
    ``limit`` bytes: a result is kept in the job record and Celery's meta, and sent in the
    webhook. One JSON cannot encode is left to ``JobTask.on_success`` to report."""
    try:
        size = len(json_dumps(result).encode())
    except (TypeError, ValueError):
        return
    if size > limit:
        raise ResultTooLarge(
            f"result_too_large: the result is {size} bytes, over JOBGATE_MAX_RESULT_BYTES ({limit})"
        )


def _task_body(job_type: JobType):
    """The Celery task for a job type: a thin wrapper giving the function a Progress, and
    failing the task when its result is over the cap (before anything stores it)."""

    def run(self: JobTask, **params: Any) -> Any:
        progress = Progress(self, self.app.store)
        self.request.jobgate_progress = progress  # its held report goes with the end
        try:
            result = job_type.func(progress, **params)
            check_result_size(result, self.app.settings.max_result_bytes)
            return result
        finally:
            progress.close()  # before Celery stores a FAILURE: no report lands after it

    run.__name__ = job_type.func.__name__
    run.__doc__ = job_type.description
    return run


def sentinel_options(settings: Settings, url: str) -> dict[str, Any]:
    """kombu's and Celery's transport options for a ``sentinel://`` URL (else none): the
    master's name, and short timeouts for the sentinels themselves."""
    master = settings.sentinel_master_for(url)
    if not master:
        return {}
    return {
        "master_name": master,
        "sentinel_kwargs": {"socket_timeout": 2, "socket_connect_timeout": 2},
    }


def amqp_options(url: str) -> dict[str, Any]:
    """py-amqp's transport options for an ``amqp://`` broker (else none): publisher
    confirms, so a send returns once RabbitMQ has the message (``jobgate.handoff`` marks
    it handed only then)."""
    if urlsplit(url.split(";", 1)[0]).scheme not in ("amqp", "amqps", "pyamqp"):
        return {}
    return {"confirm_publish": True}


def make_celery(settings: Settings | None = None) -> JobgateCelery:
    """Build a Celery app for ``settings`` with every enabled job type registered."""
    settings = settings or Settings.from_env()
    app = JobgateCelery("jobgate", set_as_current=False)
    app.settings = settings
    app.conf.update(
        broker_url=settings.broker_url,
        # kombu's Redis transport, its ack bookkeeping without MULTI/EXEC (tasks.transport).
        broker_transport=broker_transport_for(settings.broker_url),
        result_backend=settings.result_backend,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_track_started=True,
        result_extended=True,
        result_expires=settings.result_expires,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue_jobs,
        task_routes={"jobgate.*": {"queue": settings.queue_webhooks}},
        # A message not acked within the visibility timeout is delivered again. Workers
        # keep the messages they hold fresh (tasks.upkeep), so the timeout bounds how
        # long a dead worker's jobs wait, not how long a job may run: kombu looks for
        # such messages every few seconds (throttle 1) and its restore lock is short, so
        # a worker killed while holding it does not block restores for 5 minutes.
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": max(1, settings.visibility_timeout // 6),
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": max(5, settings.visibility_timeout // 2),
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
            # kombu's pool per channel (10 by default): every slot of a delivery pool acks
            # through one channel, and an ack that finds no free connection fails
            # ("Couldn't ack"), drops the consumer and leaves the message to the
            # visibility timeout: a webhook half a minute late. A worker with more slots
            # than this gets more (_size_for_every_slot).
            "max_connections": settings.redis_max_connections,
            **sentinel_options(settings, settings.broker_url),
            **amqp_options(settings.broker_url),
        },
        # A sentinel:// backend asks the sentinels for the master (after a failover too).
        result_backend_transport_options=sentinel_options(settings, settings.result_backend),
        # Fail fast when Redis is down: the gateway answers 503 instead of hanging.
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        broker_connection_retry_on_startup=True,
        redis_socket_connect_timeout=2,
        redis_socket_timeout=5,
        # redis-py refuses a connection past its pool size (100 by default); a gevent
        # gateway may have that many reads in flight.
        redis_max_connections=settings.redis_max_connections,
        worker_hijack_root_logger=False,
    )
    app.steps["consumer"].add(Upkeep)  # fresh messages, due retries, the sweeper
    for job_type in job_types(demo=settings.demo_tasks).values():
        # shared=False: each app built here owns its tasks (tests build several apps).
        app.task(
            name=job_type.name,
            base=JobTask,
            bind=True,
            shared=False,
            rerun_on_worker_lost=job_type.retry_on_worker_lost,
            # STARTED and SUCCESS are written by the start and end scripts
            # (JobgateCelery.meta_in_scripts); Celery writes the error states.
            ignore_result=app.meta_in_scripts,
            track_started=not app.meta_in_scripts,
            store_errors_even_if_ignored=True,
        )(_task_body(job_type))
    webhooks.register(app)  # jobgate's own task: webhook delivery, on its own queue
    return app


BROKER_POOL_SPARE = 32  # broker connections beyond one per slot: the consumer's own
FILES_PER_SLOT = 3  # a slot may hold a receiver's socket, a store and a broker connection
FILES_SPARE = 256


@after_setup_logger.connect
@after_setup_task_logger.connect
def _one_line_messages(logger: logging.Logger | None = None, **_: Any) -> None:
    """A task's exception message (often a partner's input) cannot forge a log line: its
    line breaks are escaped in the tracebacks the worker logs (``jobgate.logs``)."""
    if logger is not None:
        logs.guard(logger)


@worker_init.connect
def _check_ready(sender: Any = None, **_: Any) -> None:
    """A worker started by Celery itself (``celery -A tasks.worker worker``, not ``jobgate
    worker``, which checks first) stops with one line too when the database is not
    migrated or the secret key is missing or does not open the secrets stored: it could
    sign nothing."""
    from jobgate.db import DatabaseNotReady
    from jobgate.sealing import SecretKeyError

    app = getattr(sender, "app", None)
    if not isinstance(app, JobgateCelery):
        return
    try:
        app.database.check_ready(app.settings.secret_key)
    except (DatabaseNotReady, SecretKeyError) as exc:
        print(f"jobgate: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


@worker_init.connect
def _size_for_every_slot(sender: Any = None, **_: Any) -> None:
    """However many slots a worker has: its broker pool holds a connection for each plus
    spares (each slot acks through it, and an ack that finds none fails), and its limit on
    open files is raised to match (up to the hard limit)."""
    app = getattr(sender, "app", None)
    concurrency = getattr(sender, "concurrency", None)
    if not isinstance(app, JobgateCelery) or not isinstance(concurrency, int):
        return
    options = dict(app.conf.broker_transport_options or {})
    needed = concurrency + BROKER_POOL_SPARE
    if int(options.get("max_connections") or 0) < needed:
        options["max_connections"] = needed
        app.conf.broker_transport_options = options
    files_for(FILES_PER_SLOT * concurrency + FILES_SPARE)


def files_for(needed: int) -> None:
    """Raise this process's soft limit on open files to ``needed`` if the hard limit allows
    (warn if it does not)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        log.warning(
            "open files limited to %d (hard limit); this worker's slots may need %d: "
            "raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower the concurrency",
            target,
            needed,
        )


@task_revoked.connect
def _on_revoked(
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    signum: Any = None,
    expired: bool = False,
    **_: Any,
) -> None:
    """A revoke that reached a worker: make sure the job record says REVOKED (once)."""
    app = getattr(sender, "app", None)
    if not isinstance(app, JobgateCelery) or request is None:
        return
    lifecycle.finish_job(
        app.messenger,
        app.store,
        request.id,
        "REVOKED",
        db=app.database,
        revoked_by="worker",
        revoke_reason="terminated" if terminated else "revoked",
    )


def instrument_worker() -> bool:
    """OpenTelemetry in this worker (``jobgate.tracing``: only with
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` set): its Celery instrumentation, and ahead of it the
    hand-over of each task's kept trace (``_trace_context``)."""
    if not tracing.setup("jobgate-worker"):
        return False
    # Connected before the instrumentation's own receiver: signals run in that order.
    task_prerun.connect(_trace_context, weak=False, dispatch_uid="jobgate.trace_context")
    return tracing.instrument_celery()


def _trace_context(
    sender: Any = None, task_id: str | None = None, args: Any = None, **_: Any
) -> None:
    """Before a task runs: its job's (or webhook's subject's) kept ``traceparent`` as the
    request's, where OpenTelemetry's Celery instrumentation reads a parent. jobgate
    publishes jobs and deliveries itself (not through ``apply_async``), so no message
    carries it; one Redis read per task, only with OpenTelemetry on."""
    app = getattr(sender, "app", None)
    if not isinstance(app, JobgateCelery) or sender is None or not task_id:
        return
    try:
        key = app.store.key("job", task_id)
        if sender.name in (DELIVER_TASK, FAN_OUT_TASK) and args and len(args) >= 2:
            subject = SUBJECTS.get(str(args[0]))
            if subject is None:
                return
            key = subject.record_key(app.store, str(args[1]))
        traceparent = app.store.redis.hget(key, "traceparent")
    except Exception:  # noqa: BLE001 - tracing never stops a task
        log.debug("no trace context for %s", task_id, exc_info=True)
        return
    if traceparent:
        sender.request.traceparent = traceparent
