"""The ``jobgate`` command: worker, partners, secrets, database, revoke (``jobgate dev``:
gateway/dev.py)."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from config import Settings, SettingsError
from gateway.dev import DEV_DATABASE, dev, dev_database_url, kept_secret_key, read_dev_state
from gateway.launch import Child, supervise
from jobgate.connections import answers


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
        if not url and DEV_DATABASE.exists():
            url = dev_database_url()
        if url:
            environ["JOBGATE_DATABASE_URL"] = url
            if state.get("redis_url") and not environ.get("REDIS_URL"):
                environ["REDIS_URL"] = state["redis_url"]
            kept = kept_secret_key(state)
            if kept and not environ.get("JOBGATE_SECRET_KEY"):
                environ["JOBGATE_SECRET_KEY"] = kept
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


def command_app(settings: Settings | None = None):
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


main.add_command(dev)


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
# The delivery pool takes one message more than it has slots: Celery's green-pool consumer
# asks the broker for nothing while its prefetch is full and looks again only after a 2 s
# wait, so with prefetch = slots one partner's burst of quick attempts (failing, deferred)
# filling every slot at once held every partner's next delivery ~2 s after the slots were
# free. With 2x, the consumer waits in the pool for the next free slot instead.
DELIVERY_PREFETCH_MULTIPLIER = "2"


def default_delivery_concurrency(pool: str) -> int:
    """Slots of a delivery pool of ``pool`` (gevent or threads) when none are asked for."""
    return (
        DEFAULT_THREAD_DELIVERY_CONCURRENCY if pool == "threads" else DEFAULT_DELIVERY_CONCURRENCY
    )


def _has_option(args: Sequence[str], short: str | None, long: str) -> bool:
    """Whether ``args`` set Celery's option ``short``/``long`` (``-n x``, ``-nx``, ``--long=x``)."""
    return any(
        arg == long
        or arg.startswith(long + "=")
        or (short is not None and arg.startswith(short) and not arg.startswith("--"))
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
    per pool: ``default_delivery_concurrency``), ``DELIVERY_PREFETCH_MULTIPLIER``, then
    ``delivery_extra``.
    """
    settings = settings or Settings.from_env()
    celery = [sys.executable, "-m", "celery", "-A", "tasks.worker", "worker"]

    def command(
        queue: str,
        pool: str,
        slots: int,
        name: str,
        more: Sequence[str],
        prefetch: str | None = None,
    ) -> list[str]:
        ours: list[tuple[str | None, str, str]] = [
            ("-Q", "--queues", queue),
            ("-P", "--pool", pool),
            ("-c", "--concurrency", str(slots)),
            ("-n", "--hostname", name),
            ("-l", "--loglevel", loglevel),
        ]
        if prefetch is not None:  # else the app's worker_prefetch_multiplier, 1
            ours.append((None, "--prefetch-multiplier", prefetch))
        return (
            celery
            + [
                arg
                for short, long, value in ours
                if not _has_option(more, short, long)
                for arg in (short or long, value)
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
            prefetch=DELIVERY_PREFETCH_MULTIPLIER,
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
    pool_only: str | None, delivery_args: str, celery_args: tuple[str, ...], **options: Any
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
        **options,  # the other options, named as pool_commands names them
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


def _audit(action: str, target: str, details: dict[str, Any] | None = None) -> None:
    """Record a CLI verb that changed something in the audit log, the operator's login
    name as actor (in an app context)."""
    import getpass

    from gateway.extensions import services
    from jobgate import audit

    audit.record(services().db, f"cli:{getpass.getuser()}", action, target, details)


def _act(action, *args: object, audit_as: str = "", details: Any = None) -> None:
    """Run a gateway action in an app context and print its JSON; an APIError it raises
    (an unknown id, a refused value) is one line, exit 1. ``audit_as`` names a change for
    the audit log, its target the first argument."""
    from gateway.errors import APIError

    with command_app().app_context():
        try:
            done = action(*args)
        except APIError as exc:
            more = f" {json.dumps(exc.details)}" if exc.details else ""
            raise click.ClickException(f"{exc.code}: {exc.message}{more}") from None
        if audit_as:
            _audit(audit_as, str(args[0]), details)
        click.echo(json.dumps(done, indent=2))


@partner.command("create")
@click.argument("name")
def partner_create(name: str) -> None:
    """Create a partner and print its JSON (API key and secret are shown once)."""
    from gateway.schemas import load_or_422
    from gateway.schemas.partners import PartnerCreateSchema
    from gateway.views.partners import create_partner

    def create() -> dict[str, str]:
        created = create_partner(load_or_422(PartnerCreateSchema(), {"name": name})["name"])
        _audit("jobgate partner create", created["id"], {"name": name})
        return created

    _act(create)


@partner.command("list")
def partner_list() -> None:
    """List partners (never keys or secrets)."""
    from gateway.extensions import services
    from gateway.views.partners import public

    _act(lambda: [public(p) for p in services().partners.all()])


@partner.command("rotate-secret")
@click.argument("partner_id")
def partner_rotate_secret(partner_id: str) -> None:
    """Give a partner a new webhook secret; the old one still signs during the grace period."""
    from gateway.views.partners import new_webhook_secret

    _act(new_webhook_secret, partner_id, audit_as="jobgate partner rotate-secret")


@partner.command("show")
@click.argument("partner_id")
def partner_show(partner_id: str) -> None:
    """Print a partner with its counts: jobs by status, endpoints, failing deliveries."""
    from gateway.views.partners import partner_detail

    _act(partner_detail, partner_id)


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
        _act(
            set_limits,
            partner_id,
            parsed,
            audit_as="jobgate partner limits",
            details={"limits": parsed},
        )
    else:
        _act(partner_detail, partner_id)


@partner.command("disable")
@click.argument("partner_id")
def partner_disable(partner_id: str) -> None:
    """Disable a partner: its keys answer 401 at once; its queued jobs still run."""
    from gateway.views.partners import set_disabled

    _act(set_disabled, partner_id, True, audit_as="jobgate partner disable")


@partner.command("enable")
@click.argument("partner_id")
def partner_enable(partner_id: str) -> None:
    """Enable a disabled partner."""
    from gateway.views.partners import set_disabled

    _act(set_disabled, partner_id, False, audit_as="jobgate partner enable")


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

    _act(
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

    with command_app().app_context():
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
    if answers(settings.redis_url):
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
    from gateway.extensions import services
    from gateway.revoke import revoke_job

    _act(
        lambda job: revoke_job(services(), job, by="cli", reason=reason, terminate=terminate),
        job_id,
        audit_as="jobgate revoke",
        details={"reason": reason, "terminate": terminate},
    )


if __name__ == "__main__":  # pragma: no cover
    main()
