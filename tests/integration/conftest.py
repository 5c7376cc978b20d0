"""Fixtures of the integration tests: a unique key per test and a template loader."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from tasker import Tasker
from tasker.store.database import Database
from tests.fixture_types import LoadTemplate, WriteTemplate
from tests.integration.support import template_yaml


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (overrides the shared fixture).

    The shared one runs `PRAGMA wal_checkpoint` inside the write transaction of `Database.write()`,
    where SQLite refuses it ("database table is locked"); here the checkpoint runs once every engine
    is closed.
    """
    path = tmp_path_factory.mktemp("sqlite-template-integration") / "template.db"
    Database(f"sqlite:///{path}").dispose()
    raw = sqlite3.connect(path)
    try:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()
    return path


@pytest.fixture
def key() -> str:
    """A value unique to this test run on this store, put in each task's context as `key`."""
    return f"k-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def load(tasker: Tasker, write_template: WriteTemplate) -> LoadTemplate:
    """Write a template built from steps, load it into `tasker`, return its reference `ns/name`."""

    def _load(name: str, steps: list[dict[str, Any]], **top: Any) -> str:
        text = template_yaml(name, steps, **top)
        path = write_template(text, f"{name}-{top.get('version', '1.0.0')}.yaml")
        loaded = tasker.load_templates(path)
        return f"{loaded[0].namespace_name}/{loaded[0].name}"

    return _load
