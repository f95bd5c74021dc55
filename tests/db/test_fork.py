"""A forked process (a Celery prefork slot, a gunicorn worker) never talks on a connection
its parent opened: two processes on one socket interleave their messages, and a job's
committed end failed with psycopg's "bind message supplies 6 parameters, but prepared
statement requires 5" in a worker whose parent had checked the database at start."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import text

from jobgate.db import Database
from tests.helpers import postgres_database


@pytest.fixture
def pg() -> Iterator[Database]:
    with postgres_database("fork") as url:
        database = Database(url)
        yield database
        database.dispose()


def _backend(database: Database) -> int:
    return int(database.read_first("SELECT pg_backend_pid()", ()))


def _in_child(work: Callable[[], object]) -> str:
    """``work()`` in a forked child; what it returned (or raised), as text."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_end)
        try:
            answer = repr(work())
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            answer = f"error: {exc!r}"
        os.write(write_end, answer.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    return answer


def test_a_forked_child_opens_its_own_connections(pg: Database) -> None:
    parent_reader = _backend(pg)  # a reader connection pooled in the parent
    with pg.engine.connect() as connection:  # and one of the transactions' engine
        parent_engine = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()

    def child() -> tuple[int, int]:
        with pg.engine.connect() as connection:
            own = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        return _backend(pg), own

    answer = _in_child(child)
    assert not answer.startswith("error"), answer
    reader, engine = eval(answer)  # noqa: S307 - a tuple of ints from our own child
    assert reader != parent_reader and engine != parent_engine
    # and the parent's own connections still work: the child closed none of them
    assert _backend(pg) == parent_reader
