"""Migrations: an empty database is refused with one line, upgraded, then accepted."""

from __future__ import annotations

import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from jobgate.db import Database, DatabaseNotReady
from jobgate.db.models import Base
from tests.helpers import ROOT, postgres_database


def test_an_unmigrated_database_is_refused_then_upgraded(tmp_path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    with pytest.raises(DatabaseNotReady, match="not migrated: run `jobgate db upgrade`"):
        database.check_migrated()
    database.upgrade()
    database.check_migrated()
    assert database.current_revision() == Database.head_revision()


def test_postgresql_upgrades_from_empty() -> None:
    with postgres_database("mig") as url:
        database = Database(url)
        with pytest.raises(DatabaseNotReady):
            database.check_migrated()
        database.upgrade()
        database.check_migrated()
        database.dispose()


def test_the_gateway_refuses_to_start_on_an_unmigrated_database(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    result = subprocess.run(
        [sys.executable, "-c", "import wsgi"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "JOBGATE_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines == [f"jobgate: the database at {url} is not migrated: run `jobgate db upgrade`"]


def test_an_unreachable_database_is_one_line(tmp_path) -> None:
    database = Database("postgresql://postgres@127.0.0.1:1/none")
    with pytest.raises(DatabaseNotReady, match="does not answer") as caught:
        database.check_migrated()
    assert "\n" not in str(caught.value)


def test_the_migrations_build_what_the_models_say(db) -> None:
    """On each database, what Alembic would write next is nothing: every table and index
    of jobgate/db/models.py has its migration (partners.limits: 0003, dead_letters: 0004)."""
    assert db.current_revision() == Database.head_revision()
    with db.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
