"""Fixtures shared by every test: a fresh store on SQLite and on PostgreSQL for each test that asks.

PostgreSQL is the real server (never a mock): `TASKER_TEST_PG_URL` names a scratch database
(`.ci/run` creates one per run); without it a scratch database is created here and dropped at the
end. Set `TASKER_TEST_STORES=sqlite` to run the SQLite half alone on a machine without PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings

from tasker import Tasker
from tasker.store.database import Database
from tasker.store.schema import metadata
from tests.fixture_types import MakeTasker, WriteTemplate

# Property tests check behaviour, not speed: on a loaded 2-core machine generation can be slow, and
# a health check or deadline tripping on that would be a flaky failure unrelated to the code.
settings.register_profile("tasker", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tasker")

PG_ADMIN_URL = os.environ.get(
    "TASKER_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
STORES = [
    s.strip()
    for s in os.environ.get("TASKER_TEST_STORES", "sqlite,postgresql").split(",")
    if s.strip()
]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    given = os.environ.get("TASKER_TEST_PG_URL")
    if given:
        yield given
        return
    name = f"tasker_test_{uuid.uuid4().hex[:8]}"
    try:
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # pragma: no cover - depends on the machine
        if os.environ.get("CI"):
            raise
        pytest.skip(
            f"PostgreSQL is not reachable ({exc}); start it or set TASKER_TEST_STORES=sqlite"
        )
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test instead of migrating every time."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    Database(f"sqlite:///{path}").dispose()
    raw = sqlite3.connect(
        path
    )  # fold the WAL into the main file, outside any transaction, so one file copies
    try:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()
    return path


def _wipe_postgres(url: str) -> None:
    db = Database(url, migrate=True)  # a scratch database: PostgreSQL is not migrated by default
    names = ", ".join(t.name for t in metadata.sorted_tables)
    extra = [
        r[0]
        for r in db.writer.connect().execute(
            sa.text(
                "select tablename from pg_tables where schemaname = 'public' and tablename like"
                " 'tasker_%'"
            )
        )
    ]
    names = ", ".join(sorted(set(names.split(", ")) | set(extra)))
    with db.write() as conn:
        conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    db.dispose()


@pytest.fixture(params=STORES)
def store_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[str]:
    """A URL of an empty, migrated store; the test runs once per store."""
    if request.param == "sqlite":
        target = tmp_path / "tasker.db"
        shutil.copy(sqlite_template, target)
        yield f"sqlite:///{target}"
    else:
        url = request.getfixturevalue("pg_url")
        _wipe_postgres(url)
        yield url


@pytest.fixture
def make_tasker(store_url: str) -> Iterator[MakeTasker]:
    """Build engines on the test's store (several may share it, as several processes would)."""
    made: list[Tasker] = []

    def build(**kwargs: Any) -> Tasker:
        kwargs.setdefault("poll_interval", 0.05)
        t = Tasker(store_url, **kwargs)
        made.append(t)
        return t

    yield build
    for t in made:
        t.close()


@pytest.fixture
def tasker(make_tasker: MakeTasker) -> Tasker:
    return make_tasker()


@pytest.fixture
def write_template(tmp_path: Path) -> WriteTemplate:
    """Write a YAML template text to a file in the test's directory and return its path."""

    def write(text: str, name: str = "template.yaml") -> Path:
        p = tmp_path / "templates" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p

    return write
