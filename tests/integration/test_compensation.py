"""Compensation on both stores: a failed task undoes its completed steps' work, in reverse
dependency order, durably (each undo a step of its own: retried, failed, retried by an operator),
and a task without compensations behaves as before."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tasker import Tasker
from tasker.cli.main import cli
from tasker.domain.errors import OperationError
from tests.fixture_types import LoadTemplate
from tests.integration import handlers as h
from tests.integration.support import step

H = "tests.integration.handlers"


def undo(**extra: Any) -> dict[str, Any]:
    return {"handler_class": f"{H}:Undo", **extra}


def checkout(refund: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """A charge, a reservation and a label on either side of it (a diamond), then a shipment that
    fails for good: the charge (its undo configured by `refund`) and the reservation have undos,
    the label has none."""
    refund_undo = undo(handler_config=refund) if refund else undo()
    return [
        step("charge", handler_config={"value": "ch_1"}, compensation=refund_undo),
        step("reserve", after="charge", compensation=undo()),
        step("label", after="charge"),
        step(
            "ship",
            after=["reserve", "label"],
            handler_config={"always_fail": "permanent"},
            compensation=undo(),
        ),
    ]


def _undos(key: str) -> list[dict[str, Any]]:
    return [c for c in h.calls(key, kind="undo") if "failed" not in c]


def test_a_failed_task_undoes_its_completed_steps_newest_first(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("checkout", checkout())
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)

    assert task.status == "compensated"
    states = {s.name: str(s.status) for s in task.steps}
    assert states["ship"] == "error" and states["charge"] == "complete"
    assert states["undo:charge"] == states["undo:reserve"] == "complete"
    assert "undo:ship" not in states and "undo:label" not in states  # failed / no compensation
    done = _undos(key)
    assert [c["forward"] for c in done] == ["reserve", "charge"]  # the reservation's undo first
    assert done[0]["end"] <= done[1]["start"]
    charge = next(c for c in done if c["forward"] == "charge")
    assert charge["forward_results"]["value"] == "ch_1"  # the charge's results, to refund it
    keys = {s.name: s.idempotency_key for s in task.steps}
    assert charge["idem"] == keys["undo:charge"] != keys["charge"]


def test_a_task_without_compensations_fails_as_before(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "plain", [step("a"), step("b", after="a", handler_config={"always_fail": "permanent"})]
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "error"
    assert {s.name for s in task.steps} == {"a", "b"}


def test_on_failure_stop_leaves_the_task_in_error(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("stopping", checkout(), on_failure="stop")
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "error"
    assert not any(s.name.startswith("undo:") for s in task.steps)


def test_an_undo_that_fails_transiently_is_retried_and_completes(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("flaky_refund", checkout(refund={"fail": ["retryable", "retryable"]}))
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "compensated"
    attempts = [c for c in h.calls(key, kind="undo") if c["forward"] == "charge"]
    assert [c.get("failed") for c in attempts] == ["retryable", "retryable", None]
    assert task.step("undo:charge").attempts == 3


def test_an_undo_that_fails_for_good_leaves_the_task_in_error_until_an_operator_retries(
    tasker: Tasker, load: LoadTemplate, key: str, tmp_path: Path
) -> None:
    flag = tmp_path / "gateway-down"
    flag.write_text("down")
    ref = load("stuck_refund", checkout(refund={"fail_file": str(flag)}))
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "error"
    assert str(task.step("undo:charge").status) == "error"
    assert str(task.step("undo:reserve").status) == "complete"

    flag.unlink()  # the gateway is back
    tasker.retry_task(task.id)
    assert tasker.get_task(task.id).status == "compensating"
    task = tasker.run(task.id)
    assert task.status == "compensated"
    assert [c["forward"] for c in _undos(key)] == ["reserve", "charge"]  # reserve undone once
    assert len(h.calls(key, "ship")) == 1  # the failed step is not run again
    with pytest.raises(OperationError, match="compensated"):
        tasker.retry_task(task.id)


def _cancel_mid_run(tasker: Tasker, ref: str, key: str, *, compensate: bool) -> Any:
    """Run a task in a thread, cancel it while its `wait` step runs, let that step return, and
    give back what `Tasker.run` returned."""
    task_id = tasker.create_task(ref, {"key": key}).id
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(task=tasker.run(task_id)), daemon=True)
    thread.start()
    assert h.started(f"{key}:wait").wait(10), "the wait step never started"
    status = tasker.cancel_task(task_id, compensate=compensate).status
    assert status == ("compensating" if compensate else "cancelled")
    h.gate(f"{key}:wait").set()
    thread.join(20)
    assert not thread.is_alive()
    return out["task"]


def test_cancel_with_compensation_undoes_what_completed_and_without_it_does_not(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    steps = [
        step("charge", compensation=undo()),
        step("wait", "Gated", after="charge", compensation=undo()),
        step("ship", after="wait", compensation=undo()),
    ]
    ref = load("cancellable", steps)

    task = _cancel_mid_run(tasker, ref, key, compensate=True)
    assert task.status == "compensated"
    states = {s.name: str(s.status) for s in task.steps}
    assert states["wait"] == states["ship"] == "cancelled"
    assert states["undo:charge"] == "complete"
    assert [c["forward"] for c in _undos(key)] == ["charge"]  # only what had completed

    other = f"{key}-plain"
    task = _cancel_mid_run(tasker, ref, other, compensate=False)
    assert task.status == "cancelled"
    assert not any(s.name.startswith("undo:") for s in task.steps)
    assert _undos(other) == []


def test_an_operator_compensates_a_task_that_stopped_in_error(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("manual", checkout(), on_failure="stop")
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "error"
    assert str(tasker.compensate_task(task.id).status) == "compensating"
    task = tasker.run(task.id)
    assert task.status == "compensated"
    assert [c["forward"] for c in _undos(key)] == ["reserve", "charge"]
    with pytest.raises(OperationError, match="only a task in error"):
        tasker.compensate_task(task.id)


def test_compensating_a_task_with_nothing_to_undo_is_refused(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "nothing",
        [step("a", handler_config={"always_fail": "permanent"}, compensation=undo())],
        on_failure="stop",
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "error"
    with pytest.raises(OperationError, match="nothing to undo"):
        tasker.compensate_task(task.id)


def test_the_command_line_compensates_and_shows_each_steps_undo(
    tasker: Tasker, load: LoadTemplate, key: str, store_url: str
) -> None:
    ref = load("cli_saga", checkout(), on_failure="stop")
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)

    def invoke(*argv: str) -> Any:
        return CliRunner().invoke(cli, [*argv, "--database-url", store_url], env={"COLUMNS": "200"})

    started = invoke("tasks", "compensate", str(task.id))
    assert started.exit_code == 0, started.output
    assert f"task {task.id} is compensating" in started.output
    tasker.run(task.id)
    shown = invoke("tasks", "show", str(task.id))
    assert shown.exit_code == 0, shown.output
    assert "undo" in shown.output and "undo:charge" in shown.output
    assert "compensated" in shown.output
    diagram = invoke("tasks", "show", str(task.id), "--mermaid")
    assert diagram.exit_code == 0, diagram.output
    assert "undo: complete" in diagram.output  # each undone step's node says so
    again = invoke("tasks", "compensate", str(task.id))
    assert again.exit_code != 0 and "only a task in error" in again.output


def test_a_step_past_the_point_of_no_return_fails_without_compensating(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    steps = [
        step("charge", compensation=undo()),
        step(
            "confirm",
            after="charge",
            handler_config={"always_fail": "permanent"},
            on_failure="stop",
        ),
    ]
    ref = load("pivot", steps)
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "error"
    assert not any(s.name.startswith("undo:") for s in task.steps)
    assert str(tasker.compensate_task(task.id).status) == "compensating"  # by hand, still
    assert tasker.run(task.id).status == "compensated"


def test_analytics_count_compensated_tasks_per_template(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("counted", checkout())
    for _ in range(2):
        tasker.run(tasker.create_task(ref, {"key": key}).id)
    report = tasker.insight.performance(24).model_dump()
    (row,) = [t for t in report["templates"] if t["name"] == "counted"]
    assert (row["compensated"], row["failed"], row["completed"], row["in_flight"]) == (2, 0, 0, 0)
    assert row["completion_rate"] == 0.0


def test_an_operator_resolves_a_failed_undo_by_hand(
    tasker: Tasker, load: LoadTemplate, key: str, tmp_path: Path
) -> None:
    flag = tmp_path / "gateway-down"
    flag.write_text("down")
    ref = load("hand_refund", checkout(refund={"fail_file": str(flag)}))
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "error" and str(task.step("undo:charge").status) == "error"

    done = tasker.resolve_step(task.id, "undo:charge", {"refunded_by": "support"})
    assert done.status == "compensated"
    assert str(done.step("undo:charge").status) == "resolved_manually"


def test_a_step_out_of_retryable_attempts_holds_the_task_in_error_for_an_operator(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    # A dependency down past the step's retries: the work may still be possible, so the task waits
    # in error (retry it when the dependency is back, or compensate by hand) rather than undoing.
    steps = [
        step("charge", compensation=undo()),
        step("ship", after="charge", handler_config={"always_fail": "retryable"}),
    ]
    ref = load("outage", steps)
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "error"
    assert not any(s.name.startswith("undo:") for s in task.steps)
    assert tasker.run(tasker.compensate_task(task.id).id).status == "compensated"
