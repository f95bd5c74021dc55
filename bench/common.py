"""What every bench script shares: start/stop the stack, percentiles, tables, JSON results.

Every process started here binds 127.0.0.1 only, is started by ``gateway.launch`` (the
launcher ``jobgate`` itself uses) in its own process group and is stopped (SIGTERM, then
SIGKILL) by ``Stack.close``, which the scripts call in a ``finally``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

from gateway.cli import default_delivery_concurrency
from gateway.launch import Child, descendants, http_status
from jobgate.sealing import generate_key

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LOGS = Path(os.environ.get("TMPDIR", "/tmp")) / "jobgate-bench"
ADMIN_KEY = "bench-admin-key"
SECRET_KEY = generate_key()  # the bench's JOBGATE_SECRET_KEY: secrets sealed as in production
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/10"
SLEEP_PARAMS = {"seconds": 0, "steps": 1}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ arguments and output
def base_parser(description: str) -> argparse.ArgumentParser:
    """Options every script takes: Redis db, output file, gunicorn and worker shape."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL),
        help="Redis db used (and FLUSHED) by the run",
    )
    parser.add_argument("--out", type=Path, help="JSON result path (default bench/results/)")
    parser.add_argument(
        "--gunicorn",
        default="",
        metavar="FLAGS",
        help="extra gunicorn flags over gunicorn.conf.py, e.g. '-w 3'",
    )
    parser.add_argument("--worker-concurrency", type=int, default=2)
    parser.add_argument(
        "--worker-instances",
        type=int,
        default=1,
        help="'jobgate worker' processes, each with its own main process",
    )
    return parser


def gunicorn_shape(flags: str) -> str:
    """How the bench ran gunicorn, for the JSON: the shipped config plus any flags."""
    return " ".join(["gunicorn.conf.py", *shlex.split(flags)])


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def machine() -> dict[str, Any]:
    """What the numbers were measured on (cores, CPU model, Python, load now)."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": list(os.getloadavg()),
    }


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A plain fixed-width table on stdout."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * w for w in widths))


def write_result(name: str, payload: dict[str, Any], out: Path | None) -> Path:
    """Write the run's JSON (bench/results/<name>.json unless ``out``).

    Called as the run ends, it stamps the load average at the end and the end time.
    """
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "loadavg_end": list(os.getloadavg()), "finished": time.time()}
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    print(f"\nwrote {path}")
    return path


# -------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``condition`` until truthy; RuntimeError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except Exception:  # noqa: BLE001 - not up yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Service(Child):
    """One started process group (gunicorn, a Celery worker, Flower, the receiver), with
    what the bench reads of it: CPU time and memory of its whole process tree."""

    def pids(self) -> list[int]:
        """This service's process and every descendant."""
        return [self.proc.pid, *descendants(self.proc.pid)]

    def cpu(self) -> float:
        """CPU seconds (user + system) the process tree has used so far."""
        return cpu_seconds(self.pids())

    def rss(self) -> dict[str, Any]:
        """Resident memory of the process tree, total and per process, in MiB."""
        per = {pid: rss_bytes(pid) for pid in self.pids()}
        per = {pid: size for pid, size in per.items() if size}
        return {
            "total_mib": round(sum(per.values()) / 2**20, 1),
            "processes_mib": [round(v / 2**20, 1) for v in per.values()],
        }


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (a gone process counts 0)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def worker_roles(worker: Service, since: Mapping[str, float] | None = None) -> dict[str, float]:
    """CPU seconds of the worker's processes by role, from their command lines: jobgate's
    job pool (``-Q jobs``, main + prefork children), its delivery pool (``-Q webhooks``),
    the supervisor; the peer's one Celery worker. So far, or since an earlier reading."""
    since = since or {}
    used: dict[str, float] = {}
    for pid in worker.pids():
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        queue = args[args.index("-Q") + 1] if "-Q" in args[:-1] else ""
        role = {"jobs": "job pool", "webhooks": "delivery pool"}.get(queue)
        if role is None:
            role = "supervisor" if "gateway.cli" in args else "celery worker"
        used[role] = used.get(role, 0.0) + cpu_seconds([pid])
    return {role: seconds - since.get(role, 0.0) for role, seconds in used.items()}


def redis_pid(client: redis.Redis) -> int:
    """The local Redis server's process id (for its CPU time)."""
    return int(client.info("server")["process_id"])


class CpuMeter:
    """CPU seconds used since it was made by each named service, the local Redis server
    and this process (the load generator)."""

    def __init__(self, services: Mapping[str, Service], redis_process: int) -> None:
        self.services, self.redis_process = services, redis_process
        self.before = self.read()

    def read(self) -> dict[str, float]:
        used = {name: service.cpu() for name, service in self.services.items()}
        used["redis"] = cpu_seconds([self.redis_process])
        used["load generator"] = time.process_time()
        return used

    def used(self) -> dict[str, float]:
        return {name: now - self.before[name] for name, now in self.read().items()}


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def spawn(name: str, args: Sequence[str], env: Mapping[str, str], root: Path = ROOT) -> Service:
    """Start ``args`` in its own process group, output to a log file under LOGS.

    ``root``: the source tree it runs from (another checkout, for A/B runs against an
    older commit: its directory comes first on ``sys.path``)."""
    return Service.start(
        name,
        args,
        log=LOGS / f"{name}-{os.getpid()}.log",
        env={**os.environ, **env, "PYTHONPATH": str(root)},
        cwd=root,
    )


def gateway_env(redis_url: str) -> dict[str, str]:
    """The gateway's production configuration for the bench (no rate limit, local hooks,
    the demo tasks on)."""
    return {
        "REDIS_URL": redis_url,
        "JOBGATE_ADMIN_KEYS": ADMIN_KEY,
        "JOBGATE_SECRET_KEY": SECRET_KEY,
        "JOBGATE_RATE_LIMIT": "0",
        "JOBGATE_CALLBACK_ALLOW_HTTP": "1",
        "JOBGATE_CALLBACK_ALLOWLIST": "127.0.0.0/8",
        "JOBGATE_DEMO_TASKS": "1",  # the benches submit demo.sleep
        "FLOWER_UNAUTHENTICATED_API": "1",
    }


def fresh_database(url: str | None = None) -> str:
    """A new, migrated database for one run: ``url`` or ``BENCH_DATABASE_URL``
    (PostgreSQL: every table emptied) or, by default, a new SQLite file beside the logs."""
    from sqlalchemy import text

    from jobgate.db import Database

    url = (
        url
        or os.environ.get("BENCH_DATABASE_URL")
        or (f"sqlite:///{LOGS / f'bench-{os.getpid()}-{time.time_ns()}.sqlite3'}")
    )
    LOGS.mkdir(parents=True, exist_ok=True)
    database = Database(url)
    database.upgrade()
    if not database.is_sqlite:
        from jobgate.db.models import Base

        # TRUNCATE, not DELETE: after bench.archive's million rows a DELETE takes
        # tens of seconds and leaves the table bloated for the next run.
        names = ", ".join(table.name for table in Base.metadata.sorted_tables)
        with database.session() as session:
            session.execute(text(f"TRUNCATE {names}"))
    database.dispose()
    return url


# The worker shapes a bench can run: what ``jobgate worker`` ships (gevent delivery pool),
# the same with a threads delivery pool, and the shape before the delivery pool.
WORKER_SHAPES = {
    "gevent": "jobgate worker",
    "threads": "jobgate worker, threads delivery pool",
    "single": "single pool (before)",
}


def worker_command(
    concurrency: int, events: bool, instance: int = 0, shape: str = "gevent"
) -> list[str]:
    """``jobgate worker`` as operators run it: the prefork job pool (``-c concurrency``)
    and the delivery pool (gevent, or threads for ``shape="threads"``), supervised.

    ``shape="single"``: the shape before the delivery pool, one prefork Celery worker on
    both queues (``celery -A tasks.worker worker -Q jobs,webhooks``), for comparisons.
    """
    quiet = ["-l", "WARNING", "--without-gossip", "--without-mingle", *(["-E"] if events else [])]
    node = f"bench{instance}-{os.getpid()}"
    if shape == "single":
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks.worker",
            "worker",
            "-Q",
            "jobs,webhooks",
            "-P",
            "prefork",
            "-c",
            str(concurrency),
            "-n",
            f"{node}@localhost",
            *quiet,
        ]
    return [
        sys.executable,
        "-m",
        "gateway.cli",
        "worker",
        "-c",
        str(concurrency),
        "--delivery-pool",
        shape,
        "--jobs-name",
        f"{node}@localhost",
        "--webhooks-name",
        f"{node}-webhooks@localhost",
        "--delivery-args",
        shlex.join(quiet[2:]),
        *quiet,
    ]


def worker_shape(concurrency: int, instances: int, shape: str = "gevent") -> str:
    """How the bench ran the workers, for the JSON."""
    one = (
        f"celery worker -Q jobs,webhooks -P prefork -c {concurrency} (single pool)"
        if shape == "single"
        else f"jobgate worker -c {concurrency} (prefork job pool + {shape} delivery pool of "
        f"{default_delivery_concurrency(shape)})"
    )
    return one if instances == 1 else f"{instances} x {one}"


@dataclass
class Stack:
    """The processes of one bench run and how to reach them."""

    redis_url: str
    env: dict[str, str] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    root: Path = ROOT  # the source tree the gateway and workers run from

    @classmethod
    def fresh(cls, redis_url: str, database_url: str | None = None, root: Path = ROOT) -> Stack:
        """A stack on a FLUSHED Redis db (the bench's own) and a fresh database
        (``fresh_database(database_url)``), running the code in ``root``."""
        client = redis.Redis.from_url(redis_url)
        client.ping()
        client.flushdb()
        client.close()
        env = {**gateway_env(redis_url), "JOBGATE_DATABASE_URL": fresh_database(database_url)}
        return cls(redis_url, env, root=root)

    def url(self, name: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[name]}{path}"

    def start_gateway(self, flags: str = "") -> Service:
        """``gunicorn wsgi:app`` as operators run it (gunicorn.conf.py), plus ``flags``."""
        port = self.ports["gateway"] = free_port()
        service = spawn(
            "gunicorn",
            [
                sys.executable,
                "-m",
                "gunicorn",
                *shlex.split(flags),
                "-b",
                f"127.0.0.1:{port}",
                "--log-level",
                "warning",
                "wsgi:app",
            ],
            self.env,
            self.root,
        )
        self.services["gateway"] = service
        service.wait_ready(
            lambda: http_status(self.url("gateway", "/healthz")) == 200, 30, "gunicorn"
        )
        return service

    def start_worker(
        self, concurrency: int = 2, events: bool = False, instances: int = 1, shape: str = "gevent"
    ) -> Service:
        """``instances`` workers as one service (one process tree, so CPU and memory
        are read over all of them)."""
        from config import Settings
        from tasks.app import make_celery

        commands = [worker_command(concurrency, events, n, shape) for n in range(instances)]
        args = (
            commands[0]
            if instances == 1
            else ["sh", "-c", " & ".join(shlex.join(command) for command in commands) + " & wait"]
        )
        service = spawn("worker", args, self.env, self.root)
        self.services["worker"] = service
        app = make_celery(Settings.from_env(self.env))
        nodes = instances * (1 if shape == "single" else 2)  # Celery nodes to answer
        try:
            service.wait_ready(
                lambda: len(app.control.ping(timeout=0.5)) >= nodes,
                60,
                "the Celery workers",
                interval=0.2,
            )
        finally:
            app.close()
        return service

    def spawn_worker(self, instance: int, concurrency: int = 2) -> tuple[Service, str]:
        """One ``jobgate worker`` (job pool + delivery pool) as its own service
        ``worker<instance>``, not waited for; with its job pool's node name. Ready once
        both pools wrote their liveness key (``worker_alive``)."""
        command = worker_command(concurrency, events=False, instance=instance)
        service = spawn(f"worker{instance}", command, self.env)
        self.services[f"worker{instance}"] = service
        return service, f"bench{instance}-{os.getpid()}@localhost"

    def worker_alive(self, node: str) -> bool:
        """Both pools of the ``jobgate worker`` whose job pool is ``node`` have written
        their liveness key (tasks.upkeep), so both consume."""
        name, host = node.split("@", 1)
        prefix = self.env.get("JOBGATE_KEY_PREFIX", "jobgate")
        client = self.redis()
        try:
            return (
                client.exists(f"{prefix}:worker:{node}", f"{prefix}:worker:{name}-webhooks@{host}")
                == 2
            )
        finally:
            client.close()

    def start_flower(self) -> Service:
        port = self.ports["flower"] = free_port()
        service = spawn(
            "flower",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.flower_app",
                "flower",
                "--address=127.0.0.1",
                f"--port={port}",
                "--logging=warning",
            ],
            self.env,
        )
        self.services["flower"] = service
        service.wait_ready(
            lambda: (http_status(self.url("flower", "/api/task/types")) or 500) < 500, 60, "Flower"
        )
        return service

    def start_receiver(self, secret: str, extra: Sequence[str] = ()) -> Service:
        """``bench.receiver`` with the partner's secret; ``extra``: its options."""
        port = self.ports["receiver"] = free_port()
        service = spawn(
            "receiver",
            [sys.executable, "-m", "bench.receiver", "--port", str(port), *extra],
            {**self.env, "BENCH_WEBHOOK_SECRET": secret},
        )
        self.services["receiver"] = service
        service.wait_ready(
            lambda: http_status(self.url("receiver", "/stats")) == 200, 30, "the receiver"
        )
        return service

    def create_partner(self, name: str = "bench") -> dict[str, Any]:
        response = requests.post(
            self.url("gateway", "/v1/partners"),
            json={"name": name},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def cpu_meter(self, services: Mapping[str, Service]) -> CpuMeter:
        """A CpuMeter over ``services``, the stack's Redis and this process, started now."""
        client = self.redis()
        try:
            return CpuMeter(services, redis_pid(client))
        finally:
            client.close()

    def close(self) -> None:
        """Stop every started process, the last started first."""
        for service in reversed(list(self.services.values())):
            try:
                service.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                print(f"could not stop {service.name}: {exc}", file=sys.stderr)


# ------------------------------------------------------------------ what is left over
def leftovers(stack: Stack) -> dict[str, Any]:
    """What would be stranded if nothing moved again: the live set, open deliveries, the
    due set, the queues and kombu's unacknowledged messages; and the sweeper's repairs."""
    prefix = stack.env.get("JOBGATE_KEY_PREFIX", "jobgate")
    client = stack.redis()
    try:
        return {
            "live": client.zcard(f"{prefix}:live"),
            "deliveries_open": client.zcard(f"{prefix}:deliveries:open"),
            "due": client.zcard(f"{prefix}:due"),
            "queue_jobs": client.llen("jobs"),
            "queue_webhooks": client.llen("webhooks"),
            "unacked": client.hlen("unacked"),
            "repairs": {k: int(v) for k, v in client.hgetall(f"{prefix}:repairs").items()},
        }
    finally:
        client.close()


def stranded_count(left: Mapping[str, Any]) -> int:
    """Records ``leftovers`` found still waiting (repairs are not counted)."""
    return sum(v for k, v in left.items() if k != "repairs")


def leftover_detail(stack: Stack, limit: int = 20) -> dict[str, Any]:
    """Evidence for a stranded record: the first entries of each set, and unacked ids."""
    prefix = stack.env.get("JOBGATE_KEY_PREFIX", "jobgate")
    client = stack.redis()
    try:
        unacked = []
        for tag, raw in list(client.hscan_iter("unacked", count=1000))[:limit]:
            try:
                unacked.append({"tag": tag, "id": json.loads(json.loads(raw)[0])["headers"]["id"]})
            except (ValueError, KeyError, TypeError, IndexError):
                unacked.append({"tag": tag})
        return {
            "live": client.zrange(f"{prefix}:live", 0, limit - 1, withscores=True),
            "deliveries_open": client.zrange(
                f"{prefix}:deliveries:open", 0, limit - 1, withscores=True
            ),
            "due": client.zrange(f"{prefix}:due", 0, limit - 1, withscores=True),
            "unacked": unacked,
        }
    finally:
        client.close()
