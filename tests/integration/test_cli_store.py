"""Opening a store never surprises (issue 11, point 4), and the CLI commands that use one (point 8).

Read-only commands against a database without the Tasker schema create nothing and name the fix;
PostgreSQL is migrated only when asked; a database that does not exist is one line; `sqlite://`
works for users' unit tests. Each test runs on SQLite and on the real PostgreSQL where it matters.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from tasker import Tasker
from tasker.cli.main import cli
from tasker.store.database import Database, SchemaError
from tasker.store.schema import dependent_systems
from tests.conftest import PG_ADMIN_URL, STORES
from tests.integration.support import step, template_yaml

READ_ONLY = [
    ["tasks", "list"],
    ["tasks", "list", "--json"],
    ["tasks", "show", "1"],
    ["systems"],
    ["systems", "--json"],
    ["limits"],
    ["keys", "list"],
    ["tasks", "cancel", "1"],
    ["tasks", "retry-step", "1", "a"],
]


def invoke(*argv: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(argv), env=env)


@pytest.fixture(params=STORES)
def empty_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, Callable[[], set[str]]]]:
    """A database that exists, holds a table of someone else's and no Tasker schema; and its table
    names."""
    if request.param == "sqlite":
        path = tmp_path / "other.db"
        with sqlite3.connect(path) as db:
            db.execute("create table invoices (id integer primary key)")

        def sqlite_tables() -> set[str]:
            with sqlite3.connect(path) as db:
                return {
                    r[0] for r in db.execute("select name from sqlite_master where type = 'table'")
                }

        yield f"sqlite:///{path}", sqlite_tables
        return
    request.getfixturevalue("pg_url")  # skips when PostgreSQL is not reachable
    name = f"tasker_unrelated_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    own = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with own.begin() as conn:
        conn.exec_driver_sql("create table invoices (id integer primary key)")

    def pg_tables() -> set[str]:
        with own.connect() as conn:
            return set(
                conn.execute(
                    sa.text("select tablename from pg_tables where schemaname = 'public'")
                ).scalars()
            )

    yield url.replace("postgresql+psycopg://", "postgresql://"), pg_tables
    own.dispose()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.mark.parametrize("argv", READ_ONLY, ids=" ".join)
def test_read_only_commands_create_nothing_and_name_the_fix(
    empty_store: tuple[str, Callable[[], set[str]]], argv: list[str]
) -> None:
    url, tables = empty_store

    result = invoke(*argv, "--database-url", url)

    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1, line
    assert "has no Tasker schema" in line and "tasker db upgrade" in line
    assert "Traceback" not in line
    assert tables() == {"invoices"}


def test_the_password_is_never_shown(empty_store: tuple[str, Callable[[], set[str]]]) -> None:
    url, _ = empty_store
    if not url.startswith("postgresql"):
        pytest.skip("an SQLite URL has no password")
    with_password = url.replace("postgres@", "postgres:s3cret@")  # trust auth ignores it
    result = invoke("tasks", "list", "--database-url", with_password)
    assert result.exit_code == 2
    assert "s3cret" not in result.output and "***" in result.output


def test_db_upgrade_then_read_only_commands_work(
    empty_store: tuple[str, Callable[[], set[str]]],
) -> None:
    url, tables = empty_store

    upgraded = invoke("db", "upgrade", "--database-url", url)
    listed = invoke("tasks", "list", "--json", "--database-url", url)

    assert upgraded.exit_code == 0, upgraded.output
    assert "empty ->" in upgraded.output
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout)["total"] == 0
    assert "tasker_tasks" in tables()


def test_a_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "nothing.db"
    for argv in [*READ_ONLY, ["db", "current"]]:
        result = invoke(*argv, "--database-url", f"sqlite:///{path}")
        assert result.exit_code in (0, 2), result.output
    assert not path.exists() and not path.parent.exists()
    assert "no such file" in invoke("tasks", "list", "--database-url", f"sqlite:///{path}").output


def test_a_postgres_database_that_does_not_exist_is_one_line(pg_url: str) -> None:
    url = pg_url.rsplit("/", 1)[0] + "/tasker_no_such_db"
    for argv in (["tasks", "list"], ["worker"], ["db", "upgrade"]):
        result = invoke(*argv, "--database-url", url)
        assert result.exit_code == 2, result.output
        line = result.output.strip()
        assert len(line.splitlines()) == 1, line
        assert "tasker_no_such_db does not exist; fix: createdb" in line
        assert 'CREATE DATABASE "tasker_no_such_db"' in line


def test_postgres_is_migrated_only_when_asked(
    empty_store: tuple[str, Callable[[], set[str]]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url, tables = empty_store
    if not url.startswith("postgresql"):
        # The embedded SQLite default migrates by itself unless auto_migrate is off.
        with Tasker(url) as engine:
            assert engine.list_tasks()[1] == 0
        return
    monkeypatch.delenv("TASKER_AUTO_MIGRATE", raising=False)
    with pytest.raises(SchemaError, match="has no Tasker schema"):
        Tasker(url)
    created = invoke("tasks", "create", "itest/x", "--database-url", url, "-t", str(tmp_path))
    assert created.exit_code == 2 and "has no Tasker schema" in created.output
    assert tables() == {"invoices"}

    monkeypatch.setenv("TASKER_AUTO_MIGRATE", "1")
    with Tasker(url) as engine:
        assert engine.list_tasks()[1] == 0
    assert "tasker_tasks" in tables()


def test_auto_migrate_off_in_the_config_file_also_holds_for_sqlite(tmp_path: Path) -> None:
    config = tmp_path / "tasker.toml"
    config.write_text("[tasker]\nauto_migrate = false\n")
    db = tmp_path / "fresh.db"
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "t.yaml").write_text(template_yaml("x", [step("a")]))

    refused = invoke(
        "tasks",
        "create",
        "itest/x",
        "-t",
        str(templates),
        "--config",
        str(config),
        "--database-url",
        f"sqlite:///{db}",
    )
    allowed = invoke(
        "tasks", "create", "itest/x", "-t", str(templates), "--database-url", f"sqlite:///{db}"
    )

    assert refused.exit_code == 2 and "no such file" in refused.output
    assert allowed.exit_code == 0, allowed.output


def test_an_in_memory_store_works_for_unit_tests(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(template_yaml("mem", [step("a"), step("b", after="a"), step("c", after="a")]))
    with Tasker("sqlite://", templates=path, concurrency=4) as engine, Tasker("sqlite://") as other:
        ids = [engine.create_task("itest/mem", {"key": f"mem-{i}"}).id for i in range(5)]
        assert engine.run(ids[0]).status == "complete"
        engine.work()
        assert {engine.get_task(i).status for i in ids} == {"complete"}
        assert engine.list_tasks()[1] == 5
        assert other.list_tasks()[1] == 0  # each sqlite:// engine is its own database


# -- commands on a migrated store ------------------------------------------------------------------
@pytest.fixture
def templates_dir(write_template: Callable[[str, str], Path]) -> Path:
    write_template(
        template_yaml("cli", [step("a", handler_config={"value": 1}), step("b", after="a")]),
        "cli.yaml",
    )
    write_template(
        template_yaml("doomed", [step("a", handler_config={"always_fail": "permanent"})]),
        "doomed.yaml",
    )
    return write_template(template_yaml("unused", [step("a")]), "unused.yaml").parent


def test_tasks_create_queues_without_running(
    store_url: str, templates_dir: Path, tasker: Tasker
) -> None:
    ctx = json.dumps({"key": f"k-{uuid.uuid4().hex[:8]}"})
    args = [
        "tasks",
        "create",
        "itest/cli",
        "--context",
        ctx,
        "-t",
        str(templates_dir),
        "--database-url",
        store_url,
    ]

    first = invoke(*args)
    again = invoke(*args, "--idempotency-key", "order-1")
    same = invoke(*args, "--idempotency-key", "order-1")

    assert first.exit_code == 0, first.output
    task = tasker.get_task(int(first.stdout.strip()))
    assert task.status == "pending" and {s.status for s in task.steps} == {"ready", "pending"}
    assert again.exit_code == 0 and same.exit_code == 0
    assert again.stdout == same.stdout and again.stdout != first.stdout
    assert "already exists" in same.stderr


def test_tasks_show_and_list_as_json_with_results_and_context(
    store_url: str, templates_dir: Path, tasker: Tasker
) -> None:
    tasker.load_templates(templates_dir)
    key = f"k-{uuid.uuid4().hex[:8]}"
    task = tasker.run(tasker.create_task("itest/cli", {"key": key}).id)

    shown = invoke("tasks", "show", str(task.id), "--json", "--database-url", store_url)
    listed = invoke("--database-url", store_url, "tasks", "list", "--json")
    text = invoke(
        "tasks", "show", str(task.id), "--results", "--context", "--database-url", store_url
    )

    assert shown.exit_code == 0, shown.output
    body = json.loads(shown.stdout)
    assert body["status"] == "complete" and body["context"]["key"] == key
    assert body["template"] == "itest/cli@1.0.0"
    assert {s["name"]: s["results"]["value"] for s in body["steps"]} == {"a": 1, "b": "b"}
    assert datetime.fromisoformat(body["created_at"]).tzinfo is not None
    page = json.loads(listed.stdout)
    assert (
        page["total"] == 1 and page["tasks"][0]["id"] == task.id and "steps" not in page["tasks"][0]
    )
    assert text.exit_code == 0, text.output
    assert "Context:" in text.output and key in text.output
    assert "Results of a:" in text.output and "Results of b:" in text.output


def test_retry_step_rearms_one_failed_step(
    store_url: str, templates_dir: Path, tasker: Tasker
) -> None:
    tasker.load_templates(templates_dir)
    task = tasker.run(tasker.create_task("itest/doomed", {"key": f"k-{uuid.uuid4().hex[:8]}"}).id)
    assert task.step("a").status == "error"

    result = invoke("tasks", "retry-step", str(task.id), "a", "--database-url", store_url)
    unknown = invoke("tasks", "retry-step", str(task.id), "nope", "--database-url", store_url)

    assert result.exit_code == 0, result.output
    assert f"step a of task {task.id} is ready" in result.output
    assert tasker.get_task(task.id).step("a").status == "ready"
    assert unknown.exit_code == 2 and "nope" in unknown.output


def test_systems_show_the_current_cooldown(store_url: str, tasker: Tasker) -> None:
    tasker.systems.configure("billing", cooldown_seconds=30)
    now = datetime.now(UTC)
    with tasker.db.write() as conn:
        conn.execute(
            dependent_systems.update()
            .where(dependent_systems.c.name == "billing")
            .values(
                circuit_state="open",
                consecutive_failures=7,
                current_cooldown_seconds=120.0,
                opened_at=now,
                open_until=now + timedelta(seconds=120),
            )
        )

    as_json = invoke("systems", "--json", "--database-url", store_url)
    table = CliRunner().invoke(cli, ["systems", "--database-url", store_url], terminal_width=200)

    billing = next(r for r in json.loads(as_json.stdout) if r["name"] == "billing")
    assert (billing["cooldown_seconds"], billing["current_cooldown_seconds"]) == (30, 120)
    assert "120s (base 30s)" in table.output
    # and /health/status is not "healthy" while the circuit is open
    status = tasker.insight.status().model_dump()
    assert status["status"] == "degraded"
    assert "the circuit of dependent system 'billing' is open" in status["reasons"]


def test_database_url_schema_check_is_quiet_on_a_current_store(store_url: str) -> None:
    Database(store_url, migrate=False).require_schema()
