"""jobgate's SQL database: what must last (partners, job history, attempts, batches).

SQLAlchemy 2 with Alembic migrations; a SQLite file by default (nothing to install),
PostgreSQL in production. ``Database`` connects lazily: building one touches nothing.
"""

from __future__ import annotations

import logging
import os
import re
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    TextClause,
    bindparam,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from config import Settings
from jobgate.db.group import GroupCommit

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("jobgate.db")

# SQLite's file lock, as ``Database.read``/``write`` wait for it (``_autocommit``).
LOCK_WAIT_MS = 2  # inside SQLite (busy_timeout), each try
LOCK_PAUSE = 0.002  # seconds between tries, in Python
LOCK_PATIENCE = 30.0  # seconds in all, as the sessions' busy_timeout

T = TypeVar("T")

# Text no database here can store: NUL (PostgreSQL's text and JSONB refuse it) and lone
# surrogates (not UTF-8; a str from JSON holds a surrogate only when it is unpaired).
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def is_locked(exc: DBAPIError) -> bool:
    """SQLite refused a statement because another connection holds the file's lock."""
    return "database is locked" in str(exc.orig)


def _immediate(connection: Connection, work: Callable[[Connection], T]) -> T:
    """``work`` in one SQLite transaction that takes the write lock first: a waiting
    writer never holds half a transaction, and once it holds the lock none of its
    statements waits for it."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")
    try:
        done = work(connection)
    except BaseException:
        connection.exec_driver_sql("ROLLBACK")
        raise
    connection.exec_driver_sql("COMMIT")
    return done


def insert_statement(table: Table, on_conflict: str) -> TextClause:
    """``INSERT`` of every column of ``table`` from parameters named after them, typed as
    the columns are, then ``on_conflict``; written as text because SQLAlchemy 2.0 does
    not cache its dialects' ``INSERT ... ON CONFLICT`` constructs (``inherit_cache =
    False``): compiled on every execute, they cost more CPU than the round trip. SQLite
    and PostgreSQL share this SQL; build it once (``functools.cache``)."""
    names = [column.name for column in table.c]
    return text(
        f"INSERT INTO {table.name} ({', '.join(names)}) "
        f"VALUES ({', '.join(':' + name for name in names)}) {on_conflict}"
    ).bindparams(*(bindparam(column.name, type_=column.type) for column in table.c))


def escape_unstorable(text: str) -> str:
    """``text`` with NUL and lone surrogates written as ``\\u0000``-style escapes: storable."""
    return UNSTORABLE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


class DatabaseNotReady(RuntimeError):
    """The database is unreachable or not migrated; the message is one line saying which."""


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3, the driver jobgate installs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


# Every Database of this process, for ``_forget_pools_after_fork``.
_LIVE: weakref.WeakSet[Database] = weakref.WeakSet()


def _forget_pools_after_fork() -> None:
    """In a forked child (a Celery prefork slot, a gunicorn worker), no connection of the
    parent's pools is used again: two processes on one socket interleave their messages
    (psycopg's "bind message supplies 6 parameters, but prepared statement requires 5").
    ``dispose(close=False)`` drops them without closing what the parent still uses
    (SQLAlchemy's "Using Connection Pools with Multiprocessing or os.fork()")."""
    for database in list(_LIVE):
        for engine in (database._engine, database._reader):
            if engine is not None:
                engine.dispose(close=False)
        database._groups = {}  # the parent's waiters are not this process's


os.register_at_fork(after_in_child=_forget_pools_after_fork)


class Database:
    """An engine and its sessions for one database URL."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        self._engine: Engine | None = None
        self._reader: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._groups: dict[Any, GroupCommit] = {}
        _LIVE.add(self)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(settings.database_url)

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``: which SQL the upserts are written in."""
        return "sqlite" if self.is_sqlite else "postgresql"

    @property
    def engine(self) -> Engine:
        """The engine of sessions and migrations (transactions)."""
        if self._engine is None:
            self._engine = self._create_engine()
        return self._engine

    @property
    def reader(self) -> Engine:
        """The engine of ``read``: its own pool of connections opened in autocommit.

        Switching a pooled connection to autocommit and back on every checkout cost more
        than the query itself (bench.archive, reads), so reads keep connections of their own.
        """
        if self._reader is None:
            self._reader = self._create_engine(LOCK_WAIT_MS, isolation_level="AUTOCOMMIT")
        return self._reader

    def _create_engine(self, busy_ms: int = 30_000, **options: Any) -> Engine:
        if not self.is_sqlite:
            # A pool sized for a gevent process serving many reads at once (with 5, the
            # bench opened a new connection for most reads), and no pre-ping round trip
            # per checkout: ``read`` retries once on a connection found dead instead.
            return create_engine(
                self.url,
                pool_size=20,
                max_overflow=20,
                pool_recycle=300,
                connect_args={"connect_timeout": 5},
                **options,
            )
        # Several processes share the file: WAL lets readers run beside the one writer,
        # and a writer waits for the lock (busy_timeout) instead of failing at once.
        engine = create_engine(self.url, connect_args={"timeout": busy_ms / 1000}, **options)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed when the block ends without error, rolled back otherwise."""
        if self._sessions is None:
            self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        with self._sessions.begin() as session:
            yield session

    def read(self, statement: Any, params: dict[str, Any] | None = None) -> list[Any]:
        """The rows of a read, on an autocommit connection (no BEGIN and COMMIT round
        trips; ``_autocommit`` says how a dead connection and SQLite's lock are met)."""
        return self._autocommit(lambda connection: list(connection.execute(statement, params)))

    def read_first(self, sql: str, params: tuple[Any, ...]) -> Any:
        """The first column of ``sql``'s first row, or None without a row: for the hottest
        reads (a job by id), run on the pooled DBAPI connection itself, where SQLAlchemy's
        execution cost more than the query. ``sql`` is written with ``%s`` placeholders
        (SQLite's ``?`` put in here); errors are SQLAlchemy's, met as ``read`` meets them."""
        dialect = self.reader.dialect
        if self.is_sqlite:
            sql = sql.replace("%s", "?")

        def wrapped(exc: Exception, dead: bool) -> Exception:
            return DBAPIError.instance(
                sql,
                params,
                exc,
                dialect.loaded_dbapi.Error,
                connection_invalidated=dead,
                dialect=dialect,
            )

        def work() -> Any:
            try:
                connection = self.reader.raw_connection()
            except dialect.loaded_dbapi.Error as exc:  # the database unreachable
                raise wrapped(exc, False) from exc
            try:
                with closing(connection.cursor()) as cursor:
                    cursor.execute(sql, params)
                    row = cursor.fetchone()
            except dialect.loaded_dbapi.Error as exc:
                dead = dialect.is_disconnect(exc, connection.dbapi_connection, None)
                if dead:
                    connection.invalidate(exc)
                raise wrapped(exc, dead) from exc
            finally:
                connection.close()
            return None if row is None else row[0]

        return self._retrying(work)

    def write(self, statement: Any, params: Any = None) -> int:
        """One statement, committed; the rows it changed. With one set of parameters, on
        an autocommit connection (a single statement needs no ``BEGIN``/``COMMIT`` round
        trips); with a list of several, in one transaction (one commit for all). Like
        ``read``, it may run twice (a connection found dead): callers give it upserts and
        updates guarded by their ``WHERE``."""

        def run(connection: Connection) -> int:
            return int(connection.execute(statement, params).rowcount)

        if not (isinstance(params, list) and len(params) > 1):
            return self._autocommit(run)
        return self.transaction(run)

    def transaction(self, work: Callable[[Connection], T]) -> T:
        """``work`` on a connection in one transaction, committed; like ``write``, run
        again on a connection found dead. On SQLite the write lock is taken first and
        waited for as ``_retrying`` does, never inside SQLite: a session's wait there
        (``busy_timeout``) holds every greenlet of a gevent process, in steps of up to
        100 ms (a gateway's batch beside another partner's submit)."""
        if self.is_sqlite:
            return self._autocommit(lambda connection: _immediate(connection, work))
        return self._retrying(lambda: self._in_transaction(work))

    def _in_transaction(self, work: Callable[[Connection], T]) -> T:
        with self.engine.begin() as connection:
            return work(connection)

    def _autocommit(self, work: Callable[[Connection], T]) -> T:
        """``work`` on a connection of ``reader``, retried as ``_retrying`` says."""

        def on_reader() -> T:
            with self.reader.connect() as connection:
                return work(connection)

        return self._retrying(on_reader)

    def _retrying(self, work: Callable[[], T]) -> T:
        """``work()``; a pooled connection found dead (the database restarted) is retried
        once on a fresh one. On SQLite, a statement that finds the file locked by another
        writer waits ``LOCK_WAIT_MS`` inside SQLite, then in Python (``time.sleep``:
        gevent's in a gevent process, so the process's other requests run meanwhile;
        SQLite's own wait would hold them all, in steps of up to 100 ms), for
        ``LOCK_PATIENCE`` s in all."""
        deadline = time.monotonic() + LOCK_PATIENCE
        revived = False
        while True:
            try:
                return work()
            except DBAPIError as exc:
                if exc.connection_invalidated and not revived:
                    revived = True
                elif self.is_sqlite and is_locked(exc) and time.monotonic() < deadline:
                    time.sleep(LOCK_PAUSE)
                else:
                    raise

    def write_grouped(self, statement: Any, row: dict[str, Any]) -> None:
        """``write`` of one row, committed in one transaction with the rows this process's
        other requests write with the same statement meanwhile (``jobgate.db.group``)."""
        group = self._groups.get(statement)
        if group is None:
            group = self._groups.setdefault(statement, GroupCommit(partial(self.write, statement)))
        group.commit(row)

    def ping(self) -> None:
        """One round trip (``SELECT 1``); raises when the database does not answer."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        for engine in (self._engine, self._reader):
            if engine is not None:
                engine.dispose()

    # ------------------------------------------------------------- migrations
    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    @staticmethod
    def head_revision() -> str | None:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(alembic_config()).get_current_head()

    def check_migrated(self) -> None:
        """Raise ``DatabaseNotReady`` (one line) unless the database is at the latest
        migration; the gateway and workers call it before they serve."""
        try:
            current = self.current_revision()
        except Exception as exc:  # noqa: BLE001 - any driver error: say it in one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DatabaseNotReady(
                f"the database at {self.safe_url} does not answer: {first}"
            ) from None
        head = self.head_revision()
        if current != head:
            state = "not migrated" if current is None else f"at revision {current}, not {head}"
            raise DatabaseNotReady(
                f"the database at {self.safe_url} is {state}: run `jobgate db upgrade`"
            )

    def check_ready(self, secret_key: str) -> None:
        """``check_migrated``, then the secret key (``jobgate.sealing.check_key``) against
        a sealed secret the database holds; one line (``DatabaseNotReady``,
        ``SecretKeyError``) when either is not right."""
        from jobgate.db.models import SigningSecret
        from jobgate.sealing import PREFIX, check_key

        self.check_migrated()
        # The newest (sealed with the current key) and the oldest (an old key dropped
        # before `jobgate secrets reseal` ran would leave it sealed with that one).
        query = select(SigningSecret.secret).where(SigningSecret.secret.startswith(PREFIX))
        newest = self.read(query.order_by(SigningSecret.id.desc()).limit(1))
        oldest = self.read(query.order_by(SigningSecret.id).limit(1))
        check_key(secret_key, newest[0][0] if newest else None)
        if oldest:
            check_key(secret_key, oldest[0][0])
        [(clear,)] = self.read(select(func.count()).where(~SigningSecret.secret.startswith(PREFIX)))
        if clear:
            log.warning(
                "%d signing secret(s) stored before sealing, in clear: run `jobgate secrets "
                "reseal`",
                clear,
            )

    def upgrade(self, revision: str = "head") -> None:
        """Run the migrations up to ``revision`` (Alembic's ``upgrade``)."""
        from alembic import command

        config = alembic_config()
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden, for messages and logs."""
        return self.engine.url.render_as_string(hide_password=True)


def alembic_config() -> Any:
    """Alembic's configuration for jobgate's migrations, built in code (no alembic.ini)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config
