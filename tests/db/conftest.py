"""Every test here runs on both databases jobgate supports: a SQLite file and a real
PostgreSQL server (a new database per test module; skipped locally without a server,
never under CI)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jobgate.db import Database
from tests.helpers import migrated_database


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with migrated_database(request.param, tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()
