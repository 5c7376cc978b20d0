"""Fixtures of the fault tests: an empty PostgreSQL store, an engine on it, and template files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasker import Tasker
from tests.chaos.support import ensure_postgres_up, require_postgres, scratch_engine, wipe_store
from tests.fixture_types import TemplateFile


@pytest.fixture
def chaos_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The session's scratch PostgreSQL database, emptied of tasker rows (and of the tests' own
    tables after)."""
    require_postgres()
    pg_url: str = request.getfixturevalue("pg_url")
    wipe_store(pg_url)
    yield pg_url
    ensure_postgres_up()
    with scratch_engine(pg_url) as db, db.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS chaos_effects, chaos_attempts")


@pytest.fixture
def engine(chaos_url: str) -> Iterator[Tasker]:
    t = Tasker(chaos_url, poll_interval=0.05, migrate=True)
    yield t
    t.close()


@pytest.fixture
def template_file(tmp_path: Path) -> TemplateFile:
    def write(name: str, steps: list[dict[str, Any]], **top: Any) -> Path:
        data: dict[str, Any] = {
            "name": name,
            "namespace_name": "chaos",
            "version": "1.0.0",
            "step_templates": steps,
        }
        data.update(top)
        path = tmp_path / "templates" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write
