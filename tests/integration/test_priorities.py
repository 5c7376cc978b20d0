"""Priorities with ageing on both stores (`tasker.domain.priorities`): claims take due steps of
higher priority first, a low-priority step that has waited `(p_high - p)` minutes goes before new
high-priority work, the claim reads the prioritized steps from their own index, and a store where
no task has a priority takes the fast path as before."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from tasker import Tasker
from tasker.cli.main import cli
from tasker.domain.errors import TaskerInputError, TemplateError
from tasker.domain.listing import TaskQuery
from tasker.domain.priorities import claim_key
from tasker.engine import clock
from tasker.store import claims, systems
from tasker.store.journal import Journal
from tasker.store.schema import PRIORITIZED, PRIORITY_KEY, steps
from tasker.testing import WorkflowEnv, workflow_env
from tests.fixture_types import LoadTemplate, WriteTemplate
from tests.integration.handlers import calls
from tests.integration.support import step, template_yaml

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


@pytest.fixture
def env(store_url: str) -> Iterator[WorkflowEnv]:
    with workflow_env(database_url=store_url, start=T0) as env:
        yield env


def order_run(key: str) -> list[int]:
    return [c["context"]["n"] for c in calls(key, "only")]


def test_higher_priority_runs_first_and_ties_keep_their_order(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("prio", [step("only")])
    levels = [0, 3, 0, 7, 1, 3]
    for n, level in enumerate(levels):
        tasker.create_task(ref, {"key": key, "n": n}, priority=level)
    tasker.work(concurrency=1)
    assert order_run(key) == [3, 1, 5, 4, 0, 2]


def test_a_template_gives_its_tasks_a_default_priority(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    low = load("low", [step("only")])
    high = load("high", [step("only")], priority=10)
    first = tasker.create_task(low, {"key": key, "n": 0})
    second = tasker.create_task(high, {"key": key, "n": 1})
    third = tasker.create_task(high, {"key": key, "n": 2}, priority=0)
    assert [t.priority for t in (first, second, third)] == [0, 10, 0]
    tasker.work(concurrency=1)
    assert order_run(key) == [1, 0, 2]


def test_ageing_a_waiting_step_goes_before_newer_higher_priority_work(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    env.engine.load_templates(write_template(template_yaml("aged", [step("only")]), "aged.yaml"))
    env.engine.create_task("itest/aged", {"key": key, "n": 0})  # priority 0 at 9:00
    env.clock.advance(minutes=3)
    env.engine.create_task("itest/aged", {"key": key, "n": 1}, priority=2)  # as if 9:01
    env.engine.create_task("itest/aged", {"key": key, "n": 2}, priority=5)  # as if 8:58
    env.engine.work(concurrency=1)
    assert order_run(key) == [2, 0, 1]


def claim_one(engine: Tasker) -> list[int]:
    """Claim one step as a worker would (limits, priorities and all); the task ids claimed."""
    journal = Journal(clock.now(), "test-worker")
    pg = engine.db.is_postgres
    with engine.db.write() as conn:
        plan = systems.plan_claim(conn, journal, systems.load_view(conn), lock=pg)
        taken = claims.claim(
            conn,
            journal,
            worker="test-worker",
            limit=1,
            lease_seconds=600,
            skip_locked=pg,
            plan=plan,
        )
        journal.flush(conn)
    return [c.task_id for c in taken]


def test_under_a_steady_stream_of_high_priority_work_a_low_one_waits_at_most_its_bound(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    """Every minute a priority-5 task arrives and one step is claimed: the priority-0 step, due
    first, is claimed after five minutes, though higher-priority work is always due."""
    env.engine.load_templates(write_template(template_yaml("steady", [step("only")]), "s.yaml"))
    low = env.engine.create_task("itest/steady", {"key": key, "n": -1}).id
    claimed_at: dict[int, int] = {}
    for minute in range(12):
        env.engine.create_task("itest/steady", {"key": key, "n": minute}, priority=5)
        for task_id in claim_one(env.engine):
            claimed_at[task_id] = minute
        env.clock.advance(minutes=1)
    assert claimed_at[low] == 5
    assert len(claimed_at) == 12  # one claim a minute, none lost


def test_the_claim_key_in_sql_orders_as_the_policy_does(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("keyed", [step("only")])
    for n, level in enumerate([0, 1000, 5, 5, 999, 0, 1]):
        tasker.create_task(ref, {"key": key, "n": n}, priority=level)
    expression = PRIORITY_KEY[tasker.db.writer.dialect.name]
    with tasker.db.read() as conn:
        in_sql = conn.execute(
            sa.text(f"SELECT id FROM tasker_steps WHERE {PRIORITIZED} ORDER BY {expression}, id")
        ).scalars()
        typed = {
            r.id: claim_key(r.run_at, r.priority)
            for r in conn.execute(
                sa.select(steps.c.id, steps.c.run_at, steps.c.priority).where(steps.c.priority > 0)
            )
        }
        ordered = list(in_sql)
    assert len(ordered) == 5
    assert ordered == sorted(typed, key=lambda i: (typed[i], i))


def test_the_prioritized_queue_is_read_from_its_own_index_on_postgresql(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    if tasker.db.writer.dialect.name != "postgresql":
        pytest.skip("EXPLAIN plans are PostgreSQL's")
    ref = load("planned", [step("only")])
    tasker.create_tasks(ref, [{"key": key, "n": n} for n in range(200)], priority=3)
    with tasker.db.read() as conn:
        conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            conn.execute(
                sa.text(
                    f"EXPLAIN SELECT id FROM tasker_steps WHERE {PRIORITIZED} AND run_at <= now()"
                    f" ORDER BY {PRIORITY_KEY['postgresql']}, id LIMIT 32"
                )
            ).scalars()
        )
    assert "ix_tasker_steps_prioritized" in plan
    assert "Sort" not in plan  # the index serves the order: the claim reads what it returns


def test_a_priority_out_of_range_is_refused_in_one_line(
    tasker: Tasker, load: LoadTemplate, write_template: WriteTemplate, key: str
) -> None:
    ref = load("bounded", [step("only")])
    for bad in (-1, 1001, 2.5, True, "high"):
        with pytest.raises(TaskerInputError, match="priority"):
            tasker.create_task(ref, {"key": key}, priority=bad)  # type: ignore[arg-type]
    path = write_template(template_yaml("badprio", [step("only")], priority=-3), "bad.yaml")
    with pytest.raises(TemplateError, match="priority"):
        tasker.load_templates(path)


def test_the_cli_creates_lists_and_sorts_by_priority(
    store_url: str, write_template: WriteTemplate, key: str
) -> None:
    path = write_template(template_yaml("clip", [step("only")]), "clip.yaml")
    runner = CliRunner()
    base = ["--database-url", store_url]
    for level in ("4", "0", "9"):
        out = runner.invoke(
            cli,
            [
                *base,
                "tasks",
                "create",
                "itest/clip",
                "--templates",
                str(path),
                "--priority",
                level,
                "--context",
                f'{{"key": "{key}"}}',
            ],
        )
        assert out.exit_code == 0, out.output
    listed = runner.invoke(cli, [*base, "tasks", "list", "--sort", "priority", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    rows = rows["tasks"] if isinstance(rows, dict) else rows
    assert [r["priority"] for r in rows] == [9, 4, 0]
    only = runner.invoke(cli, [*base, "tasks", "list", "--min-priority", "4", "--json"])
    got = json.loads(only.output)
    got = got["tasks"] if isinstance(got, dict) else got
    assert sorted(r["priority"] for r in got) == [4, 9]
    # The table shows each task's priority in its own column, highest first when sorted so.
    table = runner.invoke(cli, [*base, "tasks", "list", "--sort", "priority"], terminal_width=200)
    assert table.exit_code == 0, table.output
    header = next(line for line in table.output.splitlines() if "priority" in line)
    column = header.split("┃").index(" priority ") if "┃" in header else None
    assert column is not None, table.output
    cells = [
        line.split("│")[column].strip()
        for line in table.output.splitlines()
        if line.startswith("│") and "itest/clip" in line
    ]
    assert cells == ["9", "4", "0"]


def test_pages_by_priority_hold_every_task_once_in_order(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("paged", [step("only")])
    made = [
        (tasker.create_task(ref, {"key": key}, priority=p).id, p) for p in [0, 2, 0, 5, 2, 0, 1]
    ]
    seen = []
    for offset in (0, 3, 6):
        page = tasker.listing.page(TaskQuery(by_priority=True), limit=3, offset=offset)
        seen += [(t.id, t.priority) for t in page.tasks]
    assert seen == sorted(made, key=lambda m: (-m[1], -m[0]))
    high = tasker.listing.page(TaskQuery(by_priority=True, min_priority=2), limit=10)
    assert [t.priority for t in high.tasks] == [5, 2, 2]
