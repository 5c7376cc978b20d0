"""The outage promise for one task: a dependent system that is down for longer than a step's retry
budget costs the task nothing; it completes after recovery (issue #11)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasker import Tasker
from tasker.domain.failures import DEFAULT_MAX_OUTAGE_SECONDS, outage_verdict
from tests.chaos.support import wait_for

P = "tests.integration.poison_handlers"


def _load(
    tasker: Tasker,
    tmp_path: Path,
    name: str,
    *,
    system: dict[str, Any],
    config: dict[str, Any] | None = None,
) -> str:
    data = {
        "name": name,
        "namespace_name": "outage",
        "version": "1.0.0",
        "retry": {"backoff_base_seconds": 0.02, "backoff_max_seconds": 0.05},
        "dependent_systems": {"billing": system},
        "step_templates": [
            {
                "name": "charge",
                "handler_class": f"{P}:Billing",
                "dependent_system": "billing",
                "default_retry_limit": 3,
                "handler_config": config or {},
            }
        ],
    }
    path = tmp_path / "templates" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    tasker.load_templates(path)
    return f"outage/{name}"


def _calls(tmp_path: Path) -> int:
    path = tmp_path / "billing.calls"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_one_task_alone_survives_an_outage_longer_than_its_retries(
    tasker: Tasker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tasker.worker")
    ref = _load(
        tasker, tmp_path, "one", system={"cooldown_seconds": 0.1, "max_cooldown_seconds": 0.2}
    )
    (tmp_path / "down").touch()
    task_id = tasker.create_task(ref, {"dir": str(tmp_path)}).id
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(task=tasker.run(task_id)), daemon=True)
    runner.start()
    deadline = time.monotonic() + 20
    while _calls(tmp_path) < 7 and time.monotonic() < deadline:  # 3 attempts, 2 held, then probes
        time.sleep(0.05)
    assert _calls(tmp_path) >= 7, "the step stopped trying while billing was down"

    def waiting() -> bool:
        step = tasker.get_task(task_id).step("charge")
        assert step.last_error is not None
        return (
            step.status == "waiting_retry" and "waiting for 'billing'" in step.last_error["message"]
        )

    wait_for(waiting, 10, "the step to wait for billing")
    assert tasker.get_task(task_id).status != "error"
    (tmp_path / "down").unlink()
    runner.join(30)
    task = result["task"]
    assert task.status == "complete", task.step("charge").last_error
    assert task.step("charge").attempts <= 3
    history = tasker.systems.circuit_history("billing")
    moves = [(r["from_state"], r["to_state"]) for r in history]
    assert tasker.systems.circuit_history("billing", last=2) == history[-2:]
    assert moves[0] == ("closed", "open"), "its failures kept counting until the circuit opened"
    assert moves[-1] == ("half_open", "closed"), "a probe decided when it ran again"
    state = {s["name"]: s for s in tasker.systems.report()}["billing"]
    assert state["circuit_state"] == "closed" and state["failing_since"] is None
    logged = [r.getMessage() for r in caplog.records if "circuit of 'billing'" in r.getMessage()]
    assert any("closed -> open" in m for m in logged) and any(
        "half_open -> closed" in m for m in logged
    )


def test_a_step_gives_up_after_max_outage_seconds(tasker: Tasker, tmp_path: Path) -> None:
    ref = _load(
        tasker,
        tmp_path,
        "short",
        system={"cooldown_seconds": 0.1, "max_cooldown_seconds": 0.1, "max_outage_seconds": 0.6},
    )
    (tmp_path / "down").touch()
    task = tasker.run(tasker.create_task(ref, {"dir": str(tmp_path)}).id)
    assert task.status == "error"
    error = task.step("charge").last_error
    assert error is not None
    message = error["message"]
    assert "past its max_outage_seconds=0.6" in message and "gave up after 3 attempts" in message


def test_a_service_that_answers_500_still_stops_at_its_retry_limit(
    tasker: Tasker, tmp_path: Path
) -> None:
    ref = _load(
        tasker, tmp_path, "answers", system={"cooldown_seconds": 0.1}, config={"answer_500": True}
    )
    task = tasker.run(tasker.create_task(ref, {"dir": str(tmp_path)}).id)
    assert task.status == "error"
    assert task.step("charge").attempts == 3 and _calls(tmp_path) == 3
    assert tasker.systems.circuit_history("billing") == []


def test_the_default_is_an_hour() -> None:
    assert DEFAULT_MAX_OUTAGE_SECONDS == 3600


def test_outage_verdict() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 1, 1, tzinfo=UTC)
    hold = outage_verdict(
        failing_since=now - timedelta(seconds=30),
        now=now,
        max_outage_seconds=60,
        unanswered_failures=3,
        attempts=3,
    )
    assert hold.hold and hold.silent_seconds == 30
    assert not outage_verdict(
        failing_since=now - timedelta(seconds=61),
        now=now,
        max_outage_seconds=60,
        unanswered_failures=9,
        attempts=3,
    ).hold
    assert not outage_verdict(
        failing_since=now, now=now, max_outage_seconds=60, unanswered_failures=1, attempts=3
    ).hold, "billing answered meanwhile"
    assert (
        outage_verdict(
            failing_since=None, now=now, max_outage_seconds=60, unanswered_failures=3, attempts=3
        ).silent_seconds
        == 0
    )


def test_max_outage_is_set_from_the_command_line(tasker: Tasker, store_url: str) -> None:
    from click.testing import CliRunner

    from tasker.cli.main import cli

    runner = CliRunner()
    ok = runner.invoke(
        cli,
        ["--database-url", store_url, "systems", "set", "billing", "--max-outage-seconds", "90"],
    )
    assert ok.exit_code == 0, ok.output
    assert {s["name"]: s for s in tasker.systems.report()}["billing"]["max_outage_seconds"] == 90
    for bad in ("nan", "inf", "0", "1e9"):
        refused = runner.invoke(
            cli,
            ["--database-url", store_url, "systems", "set", "billing", "--max-outage-seconds", bad],
        )
        assert refused.exit_code == 2 and "--max-outage-seconds" in refused.output, (
            bad,
            refused.output,
        )
