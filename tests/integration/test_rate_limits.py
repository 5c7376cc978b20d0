"""Rate limits per time window on both stores: a dependent system limited to N starts per second
never starts more than N steps in any second, every step still runs once (a deferral spends no
attempt), the limit is set from YAML, code and the CLI, and `tasker systems` shows its use."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from tasker import Tasker
from tasker.cli.main import cli
from tasker.domain.errors import TaskerInputError, TemplateError
from tasker.domain.states import StepState
from tests.fixture_types import LoadTemplate, WriteTemplate
from tests.integration.support import step, template_yaml


def starts(tasker: Tasker) -> list[float]:
    """When each attempt started (its move to in_progress), in seconds, sorted."""
    with tasker.db.read() as conn:
        found = conn.execute(
            sa.text("SELECT at FROM tasker_step_transitions WHERE to_state = :s ORDER BY at"),
            {"s": StepState.IN_PROGRESS.value},
        ).scalars()
        times = list(found)
    return [_seconds(t, times[0]) for t in times]


def _seconds(t: datetime | str, first: datetime | str) -> float:
    """SQLite returns the stored text through a text() query, PostgreSQL a datetime."""
    a = datetime.fromisoformat(t) if isinstance(t, str) else t
    b = datetime.fromisoformat(first) if isinstance(first, str) else first
    return (a.replace(tzinfo=None) - b.replace(tzinfo=None)).total_seconds()


def busiest_second(times: list[float]) -> int:
    return max(sum(1 for u in times if t <= u < t + 1.0) for t in times)


def test_no_second_starts_more_than_the_limit_and_nothing_is_lost(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "limited",
        [step("send", dependent_system="mailer")],
        dependent_systems={"mailer": {"rate_limit": {"limit": 5, "per": "second"}}},
    )
    tasker.create_tasks(ref, [{"key": key, "n": n} for n in range(16)])
    tasker.work(concurrency=8)
    times = starts(tasker)
    assert len(times) == 16  # one attempt each: deferrals spend none
    assert busiest_second(times) <= 5
    assert times[-1] >= 2.0  # 16 at 5 a second cannot all start sooner
    with tasker.db.read() as conn:
        states = conn.execute(sa.text("SELECT state, attempts FROM tasker_steps")).all()
    assert {(s, a) for s, a in states} == {(StepState.COMPLETE.value, 1)}
    (mailer,) = [r for r in tasker.systems.report() if r["name"] == "mailer"]
    assert mailer["rate_limit"] == "5/second"
    assert mailer["rate_deferrals"] >= 11 - 5  # at least the first burst's overflow


def test_a_limit_is_set_and_cleared_from_code_and_the_cli(tasker: Tasker, store_url: str) -> None:
    tasker.systems.configure("billing", rate_limit="100/minute")
    (row,) = [r for r in tasker.systems.report() if r["name"] == "billing"]
    assert (row["rate_limit"], row["rate_used"]) == ("100/minute", 0)
    runner = CliRunner()
    base = ["--database-url", store_url]
    out = runner.invoke(cli, [*base, "systems", "set", "billing", "--rate-limit", "7/second"])
    assert out.exit_code == 0, out.output
    listed = runner.invoke(cli, [*base, "systems", "list", "--json"])
    (row,) = [r for r in json.loads(listed.output) if r["name"] == "billing"]
    assert row["rate_limit"] == "7/second"
    table = runner.invoke(cli, [*base, "systems", "list"], env={"COLUMNS": "200"})
    assert "0/7/second" in table.output
    bad = runner.invoke(cli, [*base, "systems", "set", "billing", "--rate-limit", "7/day"])
    assert bad.exit_code != 0 and "per must be one of second, minute, hour" in bad.output
    assert "Traceback" not in bad.output
    cleared = runner.invoke(cli, [*base, "systems", "set", "billing", "--clear-rate-limit"])
    assert cleared.exit_code == 0, cleared.output
    (row,) = [r for r in tasker.systems.report() if r["name"] == "billing"]
    assert row["rate_limit"] is None


def test_a_bad_rate_limit_is_refused_at_load_and_in_code(
    tasker: Tasker, write_template: WriteTemplate
) -> None:
    text = template_yaml(
        "badrate", [step("a")], dependent_systems={"x": {"rate_limit": {"limit": -1}}}
    )
    with pytest.raises(TemplateError, match="rate_limit"):
        tasker.load_templates(write_template(text, "badrate.yaml"))
    with pytest.raises(TaskerInputError, match="per must be one of"):
        tasker.systems.configure("x", rate_limit={"limit": 3, "per": "fortnight"})
