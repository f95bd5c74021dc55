"""Secrets at rest, on both databases: the rows and the Redis mirrors hold signing
secrets sealed, never in clear; a key rotation reseals them; a wrong or missing key
stops a command with one line; secrets past their grace period are deleted."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from config import Settings
from jobgate.db import Database
from jobgate.db.models import Partner, SigningSecret
from jobgate.endpoints import Endpoints
from jobgate.partners import Partners, reseal_all
from jobgate.retention import prune
from jobgate.sealing import PREFIX, Sealer, generate_key
from jobgate.signing import generate_secret
from jobgate.store import Store, secrets_of
from jobgate.times import now_utc
from tests.helpers import ROOT, migrated_database, settings_env

KEY = generate_key()


def world(redis_client: redis.Redis, db: Database, keys: str = KEY) -> tuple[Partners, Endpoints]:
    store = Store(redis_client, prefix="seal-" + uuid.uuid4().hex[:8], sealer=Sealer(keys))
    partners = Partners(store, db)
    return partners, Endpoints(store, db, partners)


def stored(db: Database) -> list[str]:
    with db.session() as session:
        return list(session.scalars(select(SigningSecret.secret)))


def in_redis(store: Store) -> str:
    """Every value of every hash under the store's prefix, joined."""
    values = []
    for key in store.redis.scan_iter(f"{store.prefix}:*"):
        if store.redis.type(key) == "hash":
            values += store.redis.hvals(key)
    return " ".join(values)


def test_the_database_and_redis_hold_no_secret_in_clear(
    redis_client: redis.Redis, db: Database
) -> None:
    partners, endpoints = world(redis_client, db)
    record, _ = partners.create("acme", first := generate_secret())
    assert partners.rotate_secret(record["id"], second := generate_secret(), grace=600)
    endpoint = endpoints.create(record["id"], "https://hooks.example/x", third := generate_secret())
    assert endpoint is not None
    secrets = (first, second, third)
    assert all(value.startswith(PREFIX) for value in stored(db))
    assert not any(secret in " ".join(stored(db)) for secret in secrets)
    assert not any(secret in in_redis(partners.store) for secret in secrets)
    # What signs is the secret itself, opened from the mirror.
    sealer = partners.store.sealer
    assert secrets_of(partners.get(record["id"]) or {}, sealer=sealer) == [second, first]
    mirror = endpoints.mirror(endpoint["id"]) or {}
    assert secrets_of(mirror, sealer=sealer) == [third]


def test_a_key_rotation_reseals_every_secret_with_the_new_key(
    redis_client: redis.Redis, db: Database
) -> None:
    old, new = KEY, generate_key()
    partners, endpoints = world(redis_client, db, old)
    record, _ = partners.create("acme", secret := generate_secret())
    legacy = generate_secret()
    with db.session() as session:  # one stored before sealing existed
        session.add(SigningSecret(partner_id=record["id"], secret=legacy, created_at=now_utc()))
    rotating, rotating_endpoints = world(redis_client, db, f"{new},{old}")
    rotating.store.prefix = partners.store.prefix
    assert reseal_all(rotating, rotating_endpoints) >= 2
    only_new = Sealer(new)
    opened = {only_new.open(value) for value in stored(db)}
    assert {secret, legacy} <= opened
    assert all(value.startswith(PREFIX) for value in stored(db))
    assert legacy not in in_redis(partners.store)


def test_secrets_past_their_grace_are_deleted_by_the_pruner(
    redis_client: redis.Redis, db: Database
) -> None:
    partners, _ = world(redis_client, db)
    record, _ = partners.create("acme", generate_secret())
    assert partners.rotate_secret(record["id"], generate_secret(), grace=60)
    assert len(rows_of(db, record["id"])) == 2
    prune(db, retention=86400, now=time.time() + 30)  # within the grace: both kept
    assert len(rows_of(db, record["id"])) == 2
    prune(db, retention=86400, now=time.time() + 120)  # past it: the rotated one goes
    assert [row.expires_at for row in rows_of(db, record["id"])] == [None]


def rows_of(db: Database, partner_id: str) -> list[SigningSecret]:
    with db.session() as session:
        query = select(SigningSecret).where(SigningSecret.partner_id == partner_id)
        return list(session.scalars(query))


def cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        env={**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_missing_or_wrong_key_stops_a_command_and_the_gateway_with_one_line(
    settings: Settings, db_url: str, tmp_path: Path
) -> None:
    kind = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    with migrated_database(kind, tmp_path) as url:  # its own: one key sealed all it holds
        refused_with_one_line(settings.with_overrides(database_url=url))


def refused_with_one_line(own: Settings) -> None:
    made = cli(own, "partner", "create", "acme")
    assert made.returncode == 0, made.stderr
    for keys, said in (("", "JOBGATE_SECRET_KEY is not set"), (generate_key(), "does not open")):
        refused = cli(own, "partner", "list", JOBGATE_SECRET_KEY=keys)
        assert refused.returncode == 1
        [line] = refused.stderr.strip().splitlines()
        assert said in line
        gateway = subprocess.run(
            [sys.executable, "-c", "import wsgi"],
            env={
                **os.environ,
                **settings_env(own),
                "PYTHONPATH": str(ROOT),
                "JOBGATE_SECRET_KEY": keys,
            },
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert gateway.returncode == 1
        [line] = gateway.stderr.strip().splitlines()
        assert line.startswith("jobgate: ") and said in line
    assert cli(own, "partner", "list").returncode == 0
    # A worker Celery starts itself (not through `jobgate worker`) stops the same way.
    plain = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks.worker",
            "worker",
            "-P",
            "solo",
            "-Q",
            "nothing-" + uuid.uuid4().hex[:6],
            "--without-gossip",
            "--without-mingle",
        ],
        env={
            **os.environ,
            **settings_env(own),
            "PYTHONPATH": str(ROOT),
            "JOBGATE_SECRET_KEY": generate_key(),
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode == 1, plain.stderr[-2000:]
    assert "jobgate: JOBGATE_SECRET_KEY does not open" in plain.stderr


def test_secrets_stored_before_sealing_are_counted_at_start(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A database from before sealing holds its secrets in clear until the reseal: every
    start says so, with the command that seals them."""
    kind = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    with migrated_database(kind, tmp_path) as url:
        db = Database(url)
        try:
            with db.session() as session:
                session.add(Partner(id="ptn_legacy", name="old", created_at=now_utc()))
                session.flush()
                session.add(
                    SigningSecret(
                        partner_id="ptn_legacy", secret=generate_secret(), created_at=now_utc()
                    )
                )
            with caplog.at_level(logging.WARNING, logger="jobgate.db"):
                db.check_ready(KEY)
        finally:
            db.dispose()
    assert "1 signing secret(s) stored before sealing, in clear" in caplog.text
    assert "jobgate secrets reseal" in caplog.text
