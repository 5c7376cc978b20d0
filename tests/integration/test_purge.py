"""Purging finished tasks by hand on both stores (`engine.retention.purge`, `tasker tasks purge`):
only finished tasks older than the cut are deleted, with every row that names them; running ones
and newer ones stay; a dry run only counts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from tasker.cli.main import cli
from tasker.domain.errors import TaskerInputError
from tasker.domain.retention import ArchiveError
from tasker.store import archive as archive_store
from tasker.testing import WorkflowEnv, workflow_env
from tests.fixture_types import WriteTemplate
from tests.integration.support import step, template_yaml

TABLES = (
    "tasker_steps",
    "tasker_step_edges",
    "tasker_step_transitions",
    "tasker_task_transitions",
    "tasker_custom_events",
    "tasker_signals",
)


@pytest.fixture
def env(store_url: str) -> Iterator[WorkflowEnv]:
    with workflow_env(database_url=store_url) as env:
        yield env


def rows_of(env: WorkflowEnv, task_ids: list[int]) -> dict[str, int]:
    ids = ", ".join(str(i) for i in task_ids)
    with env.engine.db.read() as conn:
        return {
            t: int(
                conn.execute(
                    sa.text(f"select count(*) from {t} where task_id in ({ids})")
                ).scalar_one()
            )
            for t in TABLES
        }


def test_finished_tasks_older_than_the_cut_go_with_every_row_that_names_them(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    path = write_template(
        template_yaml(
            "purged",
            [
                step("a"),
                {"name": "w", "wait_for": "go", "depends_on_step": "a"},
                step("b", after="w"),
            ],
        ),
        "purged.yaml",
    )
    (template,) = env.engine.load_templates(path)
    ref = f"{template.namespace_name}/{template.name}"
    old = [env.engine.create_task(ref, {"key": key}).id for _ in range(3)]
    for task_id in old:
        env.engine.signal(task_id, "go", {"n": task_id})
    env.advance(0)
    running = env.engine.create_task(ref, {"key": key}).id  # waits for its signal: unfinished
    env.advance(days=40)
    recent = env.engine.create_task(ref, {"key": key}).id
    env.engine.signal(recent, "go")
    env.advance(0)
    assert {env.engine.get_task(t).status for t in [*old, recent]} == {"complete"}
    assert all(rows_of(env, old).values())

    heard: list[dict[str, object]] = []
    env.engine.bus.subscribe(lambda e: heard.append(dict(e.payload)), "tasks.purged")
    dry = env.engine.retention.purge("30d", dry_run=True)
    assert (dry.matched, dry.deleted) == (3, 0)
    assert heard == []  # a dry run deletes nothing and says nothing
    done = env.engine.retention.purge("30d", batch=2)  # two batches
    assert (done.matched, done.deleted) == (3, 3)
    # One event per committed batch, as the housekeeping job's are per pass.
    assert heard == [
        {
            "deleted": {"complete": n},
            "total": n,
            "archived": 0,
            "archive": None,
            "worker": None,
            "trigger": "purge",
        }
        for n in (2, 1)
    ]

    assert rows_of(env, old) == dict.fromkeys(TABLES, 0)
    tasks, _ = env.engine.list_tasks(limit=50)
    assert sorted(t.id for t in tasks) == [running, recent]
    assert env.engine.retention.purge("30d").deleted == 0


def test_purge_filters_by_status_and_namespace_and_refuses_unfinished_states(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    path = write_template(template_yaml("filtered", [step("a")]), "filtered.yaml")
    (template,) = env.engine.load_templates(path)
    ref = f"{template.namespace_name}/{template.name}"
    done = env.engine.create_task(ref, {"key": key}).id
    cancelled = env.engine.create_task(ref, {"key": key}).id
    env.engine.cancel_task(cancelled)
    env.advance(0)
    env.advance(days=2)
    assert env.engine.retention.purge("1d", namespace="elsewhere").deleted == 0
    assert env.engine.retention.purge("1d", statuses=["cancelled"]).deleted == 1
    assert env.engine.get_task(done).status == "complete"
    with pytest.raises(TaskerInputError, match="in_progress is not a finished state"):
        env.engine.retention.purge("1d", statuses=["in_progress"])
    with pytest.raises(TaskerInputError, match="older_than"):
        env.engine.retention.purge("a while")


def test_tasker_tasks_purge_from_the_cli(store_url: str, write_template: WriteTemplate) -> None:
    runner = CliRunner()
    base = ["--database-url", store_url, "tasks", "purge"]
    out = runner.invoke(cli, [*base, "--older-than", "30d", "--dry-run"])
    assert out.exit_code == 0 and "0 finished task(s) older than 30d would be deleted" in out.output
    out = runner.invoke(cli, [*base, "--older-than", "30d", "--status", "complete"])
    assert out.exit_code == 0 and "deleted 0 finished task(s)" in out.output
    bad = runner.invoke(cli, [*base, "--older-than", "soon"])
    assert bad.exit_code == 2 and "older_than" in bad.output and "Traceback" not in bad.output


def test_a_purge_by_hand_archives_first_to_a_directory_or_the_table(
    env: WorkflowEnv, write_template: WriteTemplate, key: str, tmp_path: Path
) -> None:
    path = write_template(template_yaml("archived", [step("a")]), "archived.yaml")
    (template,) = env.engine.load_templates(path)
    ref = f"{template.namespace_name}/{template.name}"
    ids = [env.engine.create_task(ref, {"key": key, "n": n}).id for n in range(3)]
    env.advance(0)
    env.advance(days=2)
    with env.engine.db.read() as conn:
        before = [d.document for d in archive_store.documents(conn, ids, env.now())]

    folder = tmp_path / "archive"
    to_file = env.engine.retention.purge("1d", archive=str(folder), statuses=["complete"], batch=2)
    assert (to_file.deleted, to_file.archived, to_file.archive) == (3, 3, str(folder))
    assert to_file.archive_path is not None and Path(to_file.archive_path).parent == folder
    assert archive_store.read_file(to_file.archive_path) == before

    more = [env.engine.create_task(ref, {"key": key}).id for _ in range(2)]
    env.advance(0)
    env.advance(days=2)
    to_table = env.engine.retention.purge("1d", archive="table")
    assert (to_table.deleted, to_table.archived, to_table.archive_path) == (2, 2, None)
    with env.engine.db.read() as conn:
        assert [r.id for r in archive_store.read_table(conn)] == more

    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    kept = env.engine.create_task(ref, {"key": key}).id
    env.advance(0)
    env.advance(days=2)
    with pytest.raises(ArchiveError, match="nothing was deleted"):
        env.engine.retention.purge("1d", archive=str(blocked))
    assert env.engine.get_task(kept).status == "complete"
    with pytest.raises(TaskerInputError, match="archive"):
        env.engine.retention.purge("1d", archive=7)  # type: ignore[arg-type]


def test_tasker_tasks_purge_archives_with_the_option_or_the_setting(
    store_url: str, tmp_path: Path
) -> None:
    runner = CliRunner()
    base = ["--database-url", store_url, "tasks", "purge", "--older-than", "30d"]
    out = runner.invoke(cli, [*base, "--archive", str(tmp_path / "a")])
    assert out.exit_code == 0 and "deleted 0 finished task(s)" in out.output, out.output
    out = runner.invoke(cli, base, env={"TASKER_ARCHIVE": "table"})
    assert out.exit_code == 0, out.output
    out = runner.invoke(cli, [*base, "--archive", "none"], env={"TASKER_ARCHIVE": "table"})
    assert out.exit_code == 0, out.output
    dry = runner.invoke(cli, [*base, "--archive", "table", "--dry-run"], env={"TASKER_ARCHIVE": ""})
    assert dry.exit_code == 0 and "0 finished task(s) older than 30d would be deleted" in dry.output
