"""Open a store by URL: engines, transactions and dialect quirks, and when to migrate.

SQLite is opened in WAL mode with a busy timeout, and every write transaction starts with
`BEGIN IMMEDIATE` so that two writers queue for the lock instead of failing on upgrade; reads use a
separate engine with deferred transactions so they never wait for a writer. An in-memory SQLite
store (`sqlite://`, for users' unit tests) is one connection that every transaction takes in turn.

Opening a store never surprises (docs/configuration.md, "Migrations"): the embedded SQLite default
is migrated on first use, but a PostgreSQL database is only migrated when asked
(`tasker db upgrade`, `migrate=True` or `TASKER_AUTO_MIGRATE=1`); otherwise a database without the
Tasker schema, or one that does not exist, is one line naming it and the fix, and nothing is created
in it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.pool import NullPool, PoolProxiedConnection, QueuePool

from tasker.domain.errors import (
    StoreConflict,
    StoreContention,
    StoreError,
    StoreUnavailable,
    TaskerInputError,
)

DEFAULT_URL = "sqlite:///tasker.db"
#: Environment switch of automatic migrations (the `auto_migrate` setting): unset means "SQLite
#: only".
AUTO_MIGRATE_ENV = "TASKER_AUTO_MIGRATE"


class SchemaError(TaskerInputError):
    """The store is not usable as it is: no database, no Tasker schema, or another revision of it.

    A configuration problem rather than a failure of the engine: the message names the database
    (password hidden) and the command that fixes it.
    """


def env_auto_migrate() -> bool | None:
    """`TASKER_AUTO_MIGRATE` as a boolean, None when unset (then only SQLite migrates by itself)."""
    raw = os.environ.get(AUTO_MIGRATE_ENV, "").strip().lower()
    if not raw:
        return None
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise TaskerInputError(f"{AUTO_MIGRATE_ENV}={raw!r} is not a boolean; fix: set it to 1 or 0")


def backend_name(url: str) -> str | None:
    """The database a URL names (`sqlite`, `postgresql`, ...), or None when it is not a URL."""
    try:
        return make_url(url).get_backend_name()
    except ArgumentError:
        return None


def resolve_url(url: str | None = None) -> str:
    """The database URL: the argument, else `TASKER_DATABASE_URL`, else `./tasker.db`.

    `postgresql://` URLs are pointed at psycopg 3, the driver this project uses.
    """
    url = url or os.environ.get("TASKER_DATABASE_URL") or DEFAULT_URL
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


#: How the workers' connections plan (PostgreSQL). Their statements are prepared (psycopg) and
#: written so that one plan fits every call (literal states, indexes that serve their order): they
#: are planned once per connection instead of at every execution. Every table they touch is read
#: through an index, so a sequential scan is never their plan, even when the tables have no
#: statistics yet (a new store, or a server without autovacuum), where the planner would pick one
#: and keep it in the cached plan: `enable_seqscan=off` makes the index the choice wherever there is
#: one (a table without a usable index is still scanned). With it, a plan's cost looks enormous, so
#: JIT compiling, which only pays for long analytic queries, is off too (it would cost 50-90 ms).
#: docs/plans.md has the plans; docs/benchmarks.md the measure.
WORKER_PLANNER = {"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off", "jit": "off"}


class Database:
    """The two engines of one store (writes and reads; the same one on PostgreSQL) and its
    dialect."""

    def __init__(self, url: str | None = None, *, migrate: bool | None = None, pool_size: int = 10):
        """Open the store at `url`; `migrate` says what to do with its schema.

        True migrates to the latest revision; False leaves the database alone (nothing is checked
        until a query runs); None (the default) migrates when `TASKER_AUTO_MIGRATE` says so, or when
        it is unset and the store is SQLite, and otherwise checks that the schema is current and
        raises `SchemaError` naming the fix, so that no table is created where nobody asked.
        """
        self.url = resolve_url(url)
        self._safe_url: str | None = None
        #: The schema was found current (or migrated) through this object: not checked again.
        self._migrated = False
        self._migrate_lock = threading.Lock()
        #: Template snapshot ids this store holds, by content hash (`tasker.store.tasks`).
        self.template_ids: dict[str, int] = {}
        try:
            parsed = make_url(self.url)
        except ArgumentError:
            raise TaskerInputError(
                f"'{self.url}' is not a database URL; fix: use sqlite:///path.db or"
                " postgresql://user@host/db"
            ) from None
        self.dialect = parsed.get_backend_name()
        self.memory = False
        if self.dialect == "sqlite":
            database = parsed.database or ""
            self.memory = database in ("", ":memory:") or "mode=memory" in self.url
            if not self.memory and migrate is not False:
                # Only a store that may be migrated gets its folder; a read-only look creates
                # nothing.
                Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
            if self.memory:
                # One connection holds the whole database: reads, writes and workers share it in
                # turn.
                self.writer = _sqlite_engine(self.url, immediate=True)
                self.reader = self.writer
            else:
                self.writer = _sqlite_engine(self.url, immediate=True)
                self.reader = _sqlite_engine(self.url, immediate=False)
            self.cycles = self.writer
        elif self.dialect == "postgresql":
            self.writer = create_engine(
                self.url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800
            )
            _ping_when_idle(self.writer)
            # Reads need no transaction: under READ COMMITTED every statement reads its own
            # snapshot anyway, so BEGIN and ROLLBACK would be two round trips for nothing (and the
            # ROLLBACK makes psycopg drop its prepared statements with DEALLOCATE ALL). A read that
            # needs one snapshot for several statements opens its own transaction.
            self.reader = self.writer.execution_options(isolation_level="AUTOCOMMIT")
            # Workers' own transactions skip the ping entirely: their cycle already retries after a
            # lost connection, which also discards the broken one.
            self.cycles = create_engine(
                self.url,
                pool_size=2,
                max_overflow=2,
                pool_recycle=1800,
                connect_args={
                    "options": " ".join(f"-c {k}={v}" for k, v in WORKER_PLANNER.items())
                },
            )
        else:
            raise TaskerInputError(
                f"unsupported database '{self.dialect}'; fix: use sqlite:///path.db or"
                " postgresql://user@host/db"
            )
        try:
            if migrate is None:
                auto = env_auto_migrate()
                migrate = self.is_sqlite if auto is None else auto
                if not migrate:
                    self.require_schema()
            if migrate:
                self.migrate()
        except BaseException:
            self.dispose()
            raise

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def migrate(self) -> None:
        """Bring the schema to the latest migration (checked once per `Database`)."""
        with self._migrate_lock:
            if self._migrated:
                return
            # Alembic is imported only to migrate or check (~120 ms): `from tasker import Tasker`
            # and a store opened with migrate=False never pay for it.
            from tasker.store.migrate import upgrade

            if self.is_sqlite and not self.memory:
                Path(make_url(self.url).database or "").expanduser().resolve().parent.mkdir(
                    parents=True, exist_ok=True
                )
            with self.connection_errors():
                upgrade(self.writer)
            self._migrated = True

    def require_schema(self) -> None:
        """Raise `SchemaError` unless the Tasker schema is at the latest revision; create nothing.

        An SQLite file that does not exist is reported without being created, and a PostgreSQL
        database that does not exist or does not answer is one line with the fix.
        """
        if self._migrated:
            return
        if make_url(
            self.url
        ).password:  # a hidden password would not paste: name the option instead
            upgrade_fix = "fix: run 'tasker db upgrade' with the same --database-url"
        else:
            upgrade_fix = f"fix: run 'tasker db upgrade --database-url {self.shown_url()}'"
        if self.is_sqlite and not self.memory and not self.file_exists():
            path = Path(make_url(self.url).database or "").expanduser().resolve()
            raise SchemaError(
                f"database {self.shown_url()}: no such file ({path}); fix: check --database-url, "
                "or create it with 'tasker db upgrade'"
            )
        from tasker.store.migrate import (  # lazily, as in `migrate`
            current_revision,
            head_revision,
            known_revision,
        )

        with self.connection_errors():
            current = current_revision(self.writer)
        head = head_revision()
        if current == head:
            self._migrated = True
            return
        if current is None:
            raise SchemaError(
                f"database {self.shown_url()} has no Tasker schema; {upgrade_fix} "
                "(or set TASKER_AUTO_MIGRATE=1)"
            )
        if not known_revision(current):
            raise SchemaError(
                f"database {self.shown_url()} is at schema revision {current}, unknown to this "
                f"Tasker (latest {head}); fix: upgrade tasker-engine"
            )
        raise SchemaError(
            f"database {self.shown_url()} is at schema revision {current}, this Tasker needs "
            f"{head}; {upgrade_fix}"
        )

    def file_exists(self) -> bool:
        """Whether the SQLite file is there (checked without connecting, which would create it)."""
        return Path(make_url(self.url).database or "").expanduser().is_file()

    @contextmanager
    def connection_errors(self) -> Iterator[None]:
        """Turn "cannot connect" into one line naming the database and the fix."""
        try:
            yield
        except OperationalError as exc:
            raise SchemaError(self._connect_problem(exc)) from None
        except StoreUnavailable as exc:
            if not isinstance(exc.__cause__, OperationalError):
                raise
            raise SchemaError(self._connect_problem(exc.__cause__)) from None

    def _connect_problem(self, exc: OperationalError) -> str:
        parsed = make_url(self.url)
        detail = (
            str(exc.orig or exc).strip().splitlines()[0]
            if str(exc.orig or exc).strip()
            else repr(exc)
        )
        if self.is_postgres and "does not exist" in detail and "database" in detail:
            name = parsed.database or "tasker"
            where = " ".join(
                f"{flag} {value}"
                for flag, value in (
                    ("-h", parsed.host),
                    ("-p", parsed.port),
                    ("-U", parsed.username),
                )
                if value
            )
            return (
                f"database {self.shown_url()} does not exist; fix: createdb"
                f' {where + " " if where else ""}{name} (or in psql: CREATE DATABASE "{name}";),'
                " then 'tasker db upgrade'"
            )
        if self.is_postgres:
            return (
                f"cannot connect to {self.shown_url()} ({detail}); fix: start PostgreSQL or correct"
                " --database-url / TASKER_DATABASE_URL"
            )
        return f"cannot open {self.shown_url()} ({detail}); fix: check the path and its permissions"

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction, committed on success and rolled back on error."""
        with store_errors(), self.writer.begin() as conn:
            yield conn

    @contextmanager
    def cycle(self) -> Iterator[Connection]:
        """A worker's write transaction (see `cycles`)."""
        with store_errors(), self.cycles.begin() as conn:
            yield conn

    @contextmanager
    def single(self) -> Iterator[Connection]:
        """A connection for work done in one statement, which commits by itself on PostgreSQL (no
        BEGIN and COMMIT round trips); a write transaction on SQLite."""
        if not self.is_postgres:
            with self.write() as conn:
                yield conn
            return
        with store_errors(), self.reader.connect() as conn:
            yield conn

    def direct(self) -> AbstractContextManager[PoolProxiedConnection]:
        """A worker's pooled driver connection, not in a transaction, for code that drives the
        driver itself (`tasker.store.pg_cycle`, `tasker.store.sqlite_cycle`); the driver's errors
        are raised as the store's. The pool's own handle, without SQLAlchemy's `Connection` around
        it: nothing here runs through SQLAlchemy, and building and closing that wrapper cost a
        cycle about 45 µs (a tenth of a `Tasker.run()`'s cycle on SQLite)."""
        return _raw_connection(self.cycles)

    def direct_read(self) -> AbstractContextManager[PoolProxiedConnection]:
        """`direct`, from the readers' pool: for a read that drives the driver itself
        (`tasks.read_task` on SQLite)."""
        return _raw_connection(self.reader)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with store_errors(), self.reader.connect() as conn:
            yield conn

    def dispose(self) -> None:
        if self.cycles is not self.writer:
            self.cycles.dispose()
        self.writer.dispose()
        if self.reader.pool is not self.writer.pool:
            self.reader.dispose()

    def safe_url(self) -> str:
        """The URL with its password hidden; parsed once (every `Tasker.run()` logs it)."""
        if self._safe_url is None:
            self._safe_url = make_url(self.url).render_as_string(hide_password=True)
        return self._safe_url

    def shown_url(self) -> str:
        """The URL as a user writes it, password hidden (`postgresql://`, not the driver's name)."""
        return self.safe_url().replace("postgresql+psycopg://", "postgresql://", 1)


#: PostgreSQL's deadlock_detected and serialization_failure: the transaction may simply run again.
CONTENTION_SQLSTATES = frozenset({"40P01", "40001"})


def translated(exc: DBAPIError) -> StoreError:
    """The store's own error for a driver error, for the layers above (the driver's is its
    cause)."""
    original = exc.orig if exc.orig is not None else exc
    lines = str(original).strip().splitlines()
    message = f"{type(original).__name__}: {lines[0] if lines else type(original).__name__}"
    if getattr(exc.orig, "sqlstate", None) in CONTENTION_SQLSTATES:
        return StoreContention(message)
    if isinstance(exc, IntegrityError):
        return StoreConflict(message)
    if exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError)):
        return StoreUnavailable(message)
    return StoreError(message)


@contextmanager
def store_errors() -> Iterator[None]:
    """Raise driver errors as `StoreError`s (see `translated`)."""
    try:
        yield
    except DBAPIError as exc:
        raise translated(exc) from exc


#: A pooled PostgreSQL connection idle for longer than this is pinged before it is handed out.
IDLE_PING_SECONDS = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """Ping a pooled connection before reuse only when it sat idle for a while.

    SQLAlchemy's `pool_pre_ping` costs a round trip on every checkout, which is most of the fixed
    cost of a short operation. A connection in steady use is alive; one that idled through a
    server restart (which takes longer than `IDLE_PING_SECONDS`) is found dead by the ping and
    replaced, as `pool_pre_ping` would. A connection that dies while in use fails its statement,
    and SQLAlchemy then discards every connection the pool held before that moment.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise DisconnectionError(f"pooled connection found dead: {exc}") from exc
        if not alive:
            raise DisconnectionError("pooled connection found dead")


@contextmanager
def driver_errors() -> Iterator[None]:
    """Raise psycopg's own errors (from code that uses the driver directly) as `StoreError`s,
    classified as `translated` classifies SQLAlchemy's."""
    try:
        yield
    except sqlite3.Error as exc:
        lines = str(exc).strip().splitlines()
        message = f"{type(exc).__name__}: {lines[0] if lines else type(exc).__name__}"
        if isinstance(exc, sqlite3.IntegrityError):
            raise StoreConflict(message) from exc
        if isinstance(exc, (sqlite3.OperationalError, sqlite3.InterfaceError)):
            raise StoreUnavailable(message) from exc
        raise StoreError(message) from exc
    except Exception as exc:
        if not type(exc).__module__.startswith("psycopg"):
            raise
        import psycopg  # installed: it raised

        if not isinstance(exc, psycopg.Error):
            raise
        lines = str(exc).strip().splitlines()
        message = f"{type(exc).__name__}: {lines[0] if lines else type(exc).__name__}"
        if exc.sqlstate in CONTENTION_SQLSTATES:
            raise StoreContention(message) from exc
        if isinstance(exc, psycopg.IntegrityError):
            raise StoreConflict(message) from exc
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            raise StoreUnavailable(message) from exc
        raise StoreError(message) from exc


@contextmanager
def _raw_connection(engine: Engine) -> Iterator[PoolProxiedConnection]:
    """A pooled driver connection of `engine` (`Database.direct`), back to the pool when done,
    rolled back there if a transaction was left open."""
    with store_errors(), driver_errors():
        conn = engine.raw_connection()
        try:
            yield conn
        finally:
            conn.close()


def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
    memory = ":memory:" in url or url.rstrip("/") == "sqlite:" or "mode=memory" in url
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
    if memory:
        # A pool of one: the single connection is the database, and a thread that wants it waits
        # until the transaction holding it ends (two transactions cannot interleave on one
        # connection).
        kwargs.update(poolclass=QueuePool, pool_size=1, max_overflow=0, pool_timeout=60)
    elif os.environ.get("TASKER_SQLITE_NULLPOOL"):
        kwargs["poolclass"] = NullPool
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin() emit our own BEGIN, as the pysqlite driver's implicit one is
        # deferred.
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
