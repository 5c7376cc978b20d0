"""Re-running a failed task from a step, on both stores: the step and everything downstream start
over, upstream results are kept, transitions carry the reason; running, finished and unsupported
cases are refused saying why."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from tasker import Tasker
from tasker.api.app import create_app
from tasker.cli.main import cli
from tasker.domain.errors import NotFoundError, OperationError
from tests.fixture_types import LoadTemplate
from tests.integration import handlers as h
from tests.integration.support import step, step_history, to_states

STEPS = [
    step("extract"),
    step("transform", after="extract"),
    step("load", after="transform"),
    step("report", after="load"),
]


def test_a_failed_task_reruns_from_a_completed_step_keeping_upstream_results(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("rerun_ok", [*STEPS[:2], step("load", "Toggle", after="transform"), STEPS[3]])
    h.set_fault(key, "load")  # the bug
    task_id = tasker.create_task(ref, {"key": key}).id
    failed = tasker.run(task_id)
    assert failed.status == "error" and failed.step("load").status == "error"
    extract_results = failed.step("extract").results

    h.set_fault(key, "load", on=False)  # the fix is deployed
    again = tasker.rerun_from(task_id, "transform", "fixed the loader")
    assert again.status == "pending"
    assert [(s.name, s.status) for s in again.steps] == [
        ("extract", "complete"),
        ("transform", "ready"),
        ("load", "pending"),
        ("report", "pending"),
    ]
    done = tasker.run(task_id)
    assert done.status == "complete"
    assert done.step("extract").results == extract_results  # upstream kept, not run again
    assert [c["step"] for c in h.calls(key, kind="attempt")] == [
        "extract",
        "transform",
        "load",
        "transform",
        "load",
        "report",
    ]
    assert done.step("load").attempts == 1  # fresh attempts
    history = step_history(tasker, task_id, "transform")
    assert to_states(history)[-4:] == ["complete", "ready", "in_progress", "complete"]
    assert any(r["reason"] == "re-run from 'transform': fixed the loader" for r in history)
    reasons = [t["reason"] for t in tasker.history.task_transitions(task_id)]
    assert "re-run from 'transform': fixed the loader" in reasons


def test_a_rerun_is_refused_for_running_and_finished_tasks_and_unknown_steps(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("rerun_refused", STEPS)
    pending = tasker.create_task(ref, {"key": key}).id
    with pytest.raises(OperationError, match="is pending: a re-run would race"):
        tasker.rerun_from(pending, "load")
    assert tasker.run(pending).status == "complete"
    with pytest.raises(OperationError, match="only a task in error is re-run"):
        tasker.rerun_from(pending, "load")
    failing = load(
        "rerun_refused2", [step("a", handler_config={"fail": ["permanent"]}), step("b", after="a")]
    )
    failed = tasker.run(tasker.create_task(failing, {"key": key}).id)
    with pytest.raises(NotFoundError, match="has no step 'nope'"):
        tasker.rerun_from(failed.id, "nope")
    with pytest.raises(OperationError, match="waits for a, which did not complete"):
        tasker.rerun_from(failed.id, "b")


def test_rerun_from_the_cli_and_the_api(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    ref = load(
        "rerun_surfaces",
        [
            step("a"),
            step("b", after="a", handler_config={"fail": ["permanent", "permanent"]}),
            step("c", after="b"),
        ],
    )
    task_id = tasker.create_task(ref, {"key": key}).id
    assert tasker.run(task_id).status == "error"
    out = CliRunner().invoke(
        cli,
        ["--database-url", tasker.db.url, "tasks", "rerun", str(task_id), "--from", "b"],
    )
    assert out.exit_code == 0 and "re-running from b" in out.output, out.output
    assert tasker.run(task_id).status == "error"  # b's script fails its second attempt too
    with TestClient(create_app(tasker)) as client:
        answer = client.post(f"/api/v1/tasks/{task_id}/rerun", json={"from_step": "a"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "pending"
        refused = client.post(f"/api/v1/tasks/{task_id}/rerun", json={"from_step": "a"})
        assert refused.status_code == 409
        assert client.post(f"/api/v1/tasks/{task_id}/rerun", json={}).status_code == 422
