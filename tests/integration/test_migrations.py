"""The migrations on both stores: they build exactly the schema the code declares, and 0009 (step
counts in the task rollups) rebuilds what it cannot carry over."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select

from tasker import Tasker
from tasker.store import analytics, migrate, rollups
from tasker.store.schema import metadata, rollup_cursors, task_rollups
from tests.integration.support import step

Load = Callable[..., str]


def _ours(name: str | None, type_: str, parent_names: object) -> bool:
    """Tasker's own tables only: the scratch database also holds the demos' tables."""
    return type_ != "table" or (name or "").startswith("tasker_")


#: An index on an expression, which each dialect writes its own way and reflects differently (or
#: not at all): `test_priorities.py` checks that the claim reads it.
_EXPRESSION_INDEXES = {"ix_tasker_steps_prioritized"}


def _compared(obj: object, name: str | None, type_: str, reflected: bool, other: object) -> bool:
    return not (type_ == "index" and name in _EXPRESSION_INDEXES)


@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based")
@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
def test_the_migrated_schema_is_the_declared_one(tasker: Tasker) -> None:
    with tasker.db.writer.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"include_name": _ours, "include_object": _compared}
        )
        diffs = compare_metadata(context, metadata)
    assert diffs == []


def test_0009_rebuilds_the_task_rollups_with_step_counts(
    tasker: Tasker, load: Load, key: str
) -> None:
    ref = load("counted", [step("a"), step("b", after="a")])
    for i in range(3):
        tasker.create_task(ref, {"key": key, "n": i})
    tasker.work(until_idle=True)
    rollups.catch_up(tasker.db.write)
    engine = tasker.db.writer
    try:
        command.downgrade(migrate.alembic_config(engine), "0008")
        with tasker.db.read() as conn:  # rolled up before: rows without step counts
            assert conn.execute(select(func.count()).select_from(task_rollups)).scalar() == 1
        migrate.upgrade(engine)
    finally:
        migrate.upgrade(engine)
    with tasker.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(task_rollups)).scalar() == 0
        cursor = conn.execute(
            select(rollup_cursors.c.last_id).where(rollup_cursors.c.source == "task_transitions")
        ).scalar()
        assert cursor == 0
    rollups.catch_up(tasker.db.write)
    scope = analytics.Scope(datetime.now(UTC) - timedelta(hours=1))
    with tasker.db.read() as conn:
        rolled = rollups.task_report(conn, scope)[0]
        assert rolled == analytics.task_outcomes(conn, scope)
    assert rolled[("itest", "counted", "1.0.0")].steps == {"complete": 6}
