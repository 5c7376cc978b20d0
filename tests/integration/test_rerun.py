"""Re-running a failed task from a step, on both stores: the step and everything downstream start
over, upstream results are kept, transitions carry the reason; fan-outs expand again, sub-workflows
start a new child, a gated step is decided again; running and finished tasks and blocked steps are
refused saying why."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from tasker import Tasker
from tasker.api.app import create_app
from tasker.cli.main import cli
from tasker.domain.errors import NotFoundError, OperationError
from tests.fixture_types import LoadTemplate
from tests.integration import handlers as h
from tests.integration.support import instances_of, step, step_history, to_states

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


FANOUT = [
    step("discover", "Partitions"),
    step("process", "Instance", after="discover", foreach="results.discover.partitions"),
    step("report", "Collect", after="process", handler_config={"of": "process"}),
    step("publish", "Toggle", after="report"),
]


def test_a_rerun_from_a_fan_out_expands_it_again_and_records_what_it_dropped(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("rerun_fanout", FANOUT)
    h.set_fault(key, "process[2]")
    task_id = tasker.create_task(ref, {"key": key, "count": 4}).id
    failed = tasker.run(task_id)
    assert failed.status == "error" and failed.step("process[2]").status == "error"
    old_ids = {s.id for s in instances_of(failed, "process")}

    h.set_fault(key, "process[2]", on=False)
    retried: list[dict[str, Any]] = []
    tasker.bus.subscribe(lambda e: retried.append(dict(e.payload)), "task.retried")
    again = tasker.rerun_from(task_id, "process", "fixed partition 2")
    assert retried[-1]["instances_dropped"] == 4
    assert again.status == "pending"
    # decided again at once: expanded from discover's kept results
    new = instances_of(again, "process")
    assert [s.name for s in new] == [f"process[{i}]" for i in range(4)]
    assert all(s.status == "ready" and s.attempts == 0 for s in new)
    assert again.step("process").decision == "expanded into 4 instances"

    done = tasker.run(task_id)
    assert done.status == "complete"
    assert all(s.status == "complete" and s.attempts == 1 for s in instances_of(done, "process"))
    assert done.step("report").results == {"count": 4}
    assert [c["step"] for c in h.calls(key, kind="attempt")] == ["publish"]
    instance_calls = h.calls(key, kind="instance")
    assert len(instance_calls) == 8  # four before, four again
    # The earlier instances are gone with their rows; the fan-out's re-arm says what they were.
    audit = tasker.history.step_transitions(task_id)
    assert not {r["step_id"] for r in audit} & (
        old_ids - {s.id for s in instances_of(done, "process")}
    )
    assert any(
        r["reason"] == "re-run from 'process': fixed partition 2; 4 instances dropped: 3 complete,"
        " 1 error"
        for r in step_history(tasker, task_id, "process")
    )
    for s in instances_of(done, "process"):  # a new instance's history is its own alone
        assert to_states(step_history(tasker, task_id, s.name)) == [
            "ready",
            "in_progress",
            "complete",
        ]


def test_a_rerun_from_upstream_of_a_fan_out_redoes_it_from_the_new_results(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("rerun_fanout_up", FANOUT)
    h.set_fault(key, "publish")
    task_id = tasker.create_task(ref, {"key": key, "count": 3}).id
    assert tasker.run(task_id).status == "error"

    h.set_fault(key, "publish", on=False)
    again = tasker.rerun_from(task_id, "discover")
    assert [(s.name, s.status) for s in again.steps if s.instance_of is None] == [
        ("discover", "ready"),
        ("process", "pending"),
        ("report", "pending"),
        ("publish", "pending"),
    ]
    assert instances_of(again, "process") == [] and again.step("process").fanout is None
    done = tasker.run(task_id)
    assert done.status == "complete"
    assert [s.name for s in instances_of(done, "process")] == [f"process[{i}]" for i in range(3)]
    assert len(h.calls(key, kind="instance")) == 6
    assert len(h.calls(key, kind="collect")) == 2


def test_a_rerun_through_a_sub_workflow_starts_a_new_child_and_detaches_the_old(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    child_ref = load("rerun_child", [step("pay", "Toggle"), step("confirm", after="pay")])
    parent_ref = load(
        "rerun_parent",
        [
            step("check"),
            {
                "name": "refund",
                "depends_on_step": "check",
                "task": child_ref.split("@")[0],
                "context": {"key": "context.key"},
            },
            step("after", after="refund"),
        ],
    )
    h.set_fault(key, "pay")
    task_id = tasker.create_task(parent_ref, {"key": key}).id
    failed = tasker.run(task_id)
    assert failed.status == "error" and failed.step("refund").status == "error"
    (old_child,) = tasker.child_tasks(task_id)
    assert tasker.get_task(old_child).status == "error"

    h.set_fault(key, "pay", on=False)
    again = tasker.rerun_from(task_id, "refund", "payment provider fixed")
    assert again.step("refund").status == "ready"
    detached = tasker.get_task(old_child)
    assert detached.parent_task_id == task_id and detached.parent_step_id is None
    assert detached.idempotency_key is not None
    assert detached.idempotency_key.endswith(f"~{old_child}")

    done = tasker.run(task_id)
    assert done.status == "complete"
    old, new = tasker.child_tasks(task_id)
    assert old == old_child
    child = tasker.get_task(new)
    assert child.status == "complete"
    assert (child.parent_task_id, child.parent_step_id) == (task_id, done.step("refund").id)
    assert child.idempotency_key == detached.idempotency_key.rsplit("~", 1)[0]
    assert set(done.step("refund").results or {}) == {"pay", "confirm"}


def test_a_rerun_from_a_gated_step_decides_it_again(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "rerun_gated",
        [
            step("a", handler_config={"value": 1}),
            step("b", "Toggle", after="a", when="results.a.value == 1"),
            step("c", after="b", when="results.a.nope == 1"),  # its condition cannot be read
        ],
    )
    h.set_fault(key, "b")
    task_id = tasker.create_task(ref, {"key": key}).id
    assert tasker.run(task_id).status == "error"

    h.set_fault(key, "b", on=False)
    again = tasker.rerun_from(task_id, "b")
    assert again.step("b").status == "ready"  # its condition holds: decided, ready
    failed = tasker.run(task_id)
    assert failed.step("b").status == "complete"
    assert failed.status == "error" and failed.step("c").status == "error"  # condition error

    # Re-run from c: decided at once, its condition still cannot be read: the task is in error
    # again in the same transaction, with nothing left to run.
    once_more = tasker.rerun_from(task_id, "c")
    assert once_more.status == "error" and once_more.step("c").status == "error"
    moves = [(t["from_state"], t["to_state"]) for t in tasker.history.task_transitions(task_id)]
    assert moves[-2:] == [("error", "pending"), ("pending", "error")]
