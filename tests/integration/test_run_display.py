"""`tasker run` says why a task waits and what each step cost (issue 11, point 7).

The run is driven through the real command on both stores, on a template whose mail service fails
twice with a system fault and then recovers: the first failure schedules a retry, the second opens
the circuit, and the probe after the cool-down completes the step. The reasons are read from stderr,
where the command prints each new one when its output is not a terminal (on a terminal they are a
live line under the progress bar).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tasker.cli import common
from tasker.cli import run as run_module
from tasker.cli.main import cli
from tasker.cli.render import step_cost, waiting_line, waiting_reason
from tasker.domain.records import Step, Task
from tasker.domain.states import TaskState

TEMPLATE = """\
name: flaky_mail
namespace_name: run_display
version: 1.0.0
default_dependent_system: mailer
dependent_systems:
  mailer: {failure_threshold: 2, cooldown_seconds: 1}
retry: {backoff_base_seconds: 1.0, backoff_max_seconds: 1.0}
step_templates:
  - name: prepare
    dependent_system: local
    handler_class: tests.integration.handlers:Scripted
  - name: send_mail
    depends_on_step: prepare
    default_retry_limit: 5
    handler_class: tests.integration.handlers:Scripted
    handler_config: {fail: [retryable, retryable, null]}
"""
CLOCK = r"\d\d:\d\d:\d\d"


def test_run_says_why_it_waits_and_what_each_step_cost(
    store_url: str, tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No fallback refresh within the run: every reason seen must have come from an engine event.
    # The retry waits a second (the template's backoff), so that a display thread slowed by a busy
    # machine still reads the step while it waits (at 0.2 s, a CI run once read it running again).
    monkeypatch.setattr(run_module, "FALLBACK_SECONDS", 60.0)
    monkeypatch.setattr(common.console, "width", 160)  # one line per row, to read the cells
    (tmp_path / "flaky.yaml").write_text(TEMPLATE)

    context = f'{{"key": "{key}"}}'
    result = CliRunner().invoke(
        cli,
        [
            "--database-url",
            store_url,
            "run",
            "run_display/flaky_mail",
            "--templates",
            str(tmp_path),
            "--context",
            context,
        ],
    )

    assert result.exit_code == 0, result.output
    err = result.stderr
    assert re.search(rf"waiting: retry 2/5 at {CLOCK} \(send_mail\)", err), err
    assert re.search(rf"waiting: circuit 'mailer' open, next probe {CLOCK} \(send_mail\)", err), err
    out = result.stdout
    for column in ("attempts", "probes", "total", "waited", "last error"):
        assert column in out, out
    row = next(line for line in out.splitlines() if "send_mail" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[:4] == ["send_mail", "complete", "3/5", "1"], row
    waited = cells[5]
    assert waited.endswith("ms") or waited.endswith(" s"), row
    # The error of the last failed attempt stays visible although the step completed afterwards.
    assert "attempt 2: RetryableError" in out, out


def _step(name: str = "charge", **over: Any) -> Step:
    now = datetime.now(UTC)
    fields: dict[str, Any] = dict(
        id=1,
        task_id=1,
        name=name,
        status="ready",
        attempts=0,
        retry_limit=3,
        retryable=True,
        dependent_system="billing",
        results=None,
        last_error=None,
        run_at=now,
        started_at=None,
        finished_at=None,
        created_at=now,
        position=0,
        idempotency_key="k",
    )
    fields.update(over)
    return Step(**fields)


def _task(*steps: Step) -> Task:
    now = datetime.now(UTC)
    return Task(
        id=1,
        namespace="payments",
        name="refund",
        version="1.0.0",
        status=TaskState.IN_PROGRESS,
        context={},
        idempotency_key="k",
        correlation_id="c",
        annotations=None,
        created_at=now,
        updated_at=now,
        started_at=now,
        finished_at=None,
        steps=list(steps),
    )


def test_each_reason_a_step_can_wait_for() -> None:
    now = datetime.now(UTC)
    later = now + timedelta(seconds=30)
    clock = f"{later.astimezone():%H:%M:%S}"
    closed = {"name": "billing", "circuit_state": "closed", "in_flight": 0, "max_in_flight": None}

    def why(step: Step, system: dict[str, Any], namespace_limit: int | None = None) -> str | None:
        return waiting_reason(step, system, "payments", namespace_limit, now)

    retry = _step(status="waiting_retry", attempts=1, retry_limit=5, run_at=later)
    assert why(retry, closed) == f"retry 2/5 at {clock}"
    held = _step(
        status="waiting_retry",
        attempts=2,
        retry_limit=3,
        run_at=later,
        last_error={"class": "RetryableError", "waiting_for_system": "billing"},
    )
    assert why(held, closed) == f"'billing' answers nothing, next try {clock} (attempts not spent)"
    opened = {**closed, "circuit_state": "open", "open_until": later}
    assert why(retry, opened) == f"circuit 'billing' open, next probe {clock}"
    half = {**closed, "circuit_state": "half_open"}
    assert why(_step(), half) == "circuit 'billing' half-open, a probe decides"
    full = {**closed, "in_flight": 4, "max_in_flight": 4}
    assert why(_step(), full) == "limit of 'billing' reached (4 in flight)"
    overdue = _step(run_at=now - timedelta(seconds=5))
    assert why(overdue, closed, 2) == "limit of namespace 'payments' reached (2 in flight)"
    assert why(_step(), closed, 2) is None  # just ready: about to be claimed
    assert why(_step(status="in_progress"), opened) is None


def test_steps_held_for_one_reason_are_named_together() -> None:
    now = datetime.now(UTC)
    until = now + timedelta(seconds=9)
    task = _task(
        _step("charge"), _step("refund", id=2), _step("notify", id=3, dependent_system="mail")
    )
    systems = [{"name": "billing", "circuit_state": "open", "open_until": until}]

    line = waiting_line(task, systems, {}, now)

    clock = f"{until.astimezone():%H:%M:%S}"
    assert line == f"waiting: circuit 'billing' open, next probe {clock} (charge, refund)"
    assert waiting_line(_task(_step(status="complete")), systems, {}, now) == ""


def test_step_cost_counts_probes_waiting_and_keeps_the_last_error() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def at(seconds: float) -> datetime:
        return t0 + timedelta(seconds=seconds)

    rows = [
        {"to_state": "ready", "at": at(0), "attempt": 0},
        {"to_state": "in_progress", "at": at(1), "attempt": 1},
        {
            "to_state": "waiting_retry",
            "at": at(2),
            "attempt": 1,
            "error_class": "Timeout",
            "error_message": "slow",
        },
        {"to_state": "in_progress", "at": at(10), "attempt": 2},
        {"to_state": "complete", "at": at(11), "attempt": 2},
    ]
    cost = step_cost(_step(status="complete", attempts=2), rows, [at(10)])

    assert (cost.attempts, cost.probes) == (2, 1)
    assert (cost.total_seconds, cost.waited_seconds) == (11.0, 9.0)
    assert cost.last_error == "attempt 1: Timeout: slow"
    never = step_cost(_step(status="pending"), [], [])
    assert (never.total_seconds, never.waited_seconds, never.last_error) == (None, None, "")
