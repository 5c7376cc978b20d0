"""Open a store by URL: engines, transactions and dialect quirks, and migrations on first use.

SQLite is opened in WAL mode with a busy timeout, and every write transaction starts with
`BEGIN IMMEDIATE` so that two writers queue for the lock instead of failing on upgrade; reads use a
separate engine with deferred transactions so they never wait for a writer.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

from tasker.errors import TaskerInputError

DEFAULT_URL = "sqlite:///tasker.db"

_migrated: set[str] = set()
_migrate_lock = threading.Lock()


def resolve_url(url: str | None = None) -> str:
    """The database URL: the argument, else `TASKER_DATABASE_URL`, else `./tasker.db`.

    `postgresql://` URLs are pointed at psycopg 3, the driver this project uses.
    """
    url = url or os.environ.get("TASKER_DATABASE_URL") or DEFAULT_URL
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


class Database:
    """The two engines of one store (writes and reads; the same one on PostgreSQL) and its dialect."""

    def __init__(self, url: str | None = None, *, migrate: bool = True, pool_size: int = 10):
        self.url = resolve_url(url)
        try:
            parsed = make_url(self.url)
        except ArgumentError:
            raise TaskerInputError(
                f"'{self.url}' is not a database URL; fix: use sqlite:///path.db or postgresql://user@host/db"
            ) from None
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:":
                Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
            self.writer = _sqlite_engine(self.url, immediate=True)
            self.reader = _sqlite_engine(self.url, immediate=False)
            self.cycles = self.writer
        elif self.dialect == "postgresql":
            self.writer = create_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                pool_recycle=1800,
            )
            self.reader = self.writer
            # Workers' own transactions skip the ping before each checkout (a round trip per cycle): their
            # cycle already retries after a lost connection, which also discards the broken one.
            self.cycles = create_engine(self.url, pool_size=2, max_overflow=2, pool_pre_ping=False,
                                        pool_recycle=1800)
        else:
            raise TaskerInputError(
                f"unsupported database '{self.dialect}'; fix: use sqlite:///path.db or postgresql://user@host/db"
            )
        if migrate:
            self.migrate()

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def migrate(self) -> None:
        """Bring the schema to the latest migration, once per process and URL."""
        with _migrate_lock:
            if self.url in _migrated:
                return
            from tasker.store.migrate import upgrade

            upgrade(self.writer)
            _migrated.add(self.url)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction, committed on success and rolled back on error."""
        with self.writer.begin() as conn:
            yield conn

    @contextmanager
    def cycle(self) -> Iterator[Connection]:
        """A worker's write transaction (see `cycles`)."""
        with self.cycles.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.reader.connect() as conn:
            yield conn

    def dispose(self) -> None:
        if self.cycles is not self.writer:
            self.cycles.dispose()
        self.writer.dispose()
        if self.reader is not self.writer:
            self.reader.dispose()

    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)


def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
    memory = ":memory:" in url or url.rstrip("/") == "sqlite:"
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
    if memory:
        from sqlalchemy.pool import StaticPool

        kwargs["poolclass"] = StaticPool
    elif os.environ.get("TASKER_SQLITE_NULLPOOL"):
        kwargs["poolclass"] = NullPool
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin() emit our own BEGIN, as the pysqlite driver's implicit one is deferred.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if not memory:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
