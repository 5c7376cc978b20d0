"""Sub-workflows (`task:` steps) on both stores: the child task is created once, the step waits
holding nothing, completes with the child's results or fails with its error, cancelling the parent
cancels the child, and both link to each other."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tasker import Tasker
from tasker.domain.errors import TemplateError
from tasker.store import completion
from tests.fixture_types import LoadTemplate, WriteTemplate
from tests.integration import handlers as h
from tests.integration.support import step, step_history, template_yaml, to_states

CHILD = [step("pay", handler_config={"value": "paid"}), step("confirm", after="pay")]


def _parent(**extra: Any) -> list[dict[str, Any]]:
    refund = {"name": "refund", "depends_on_step": "check", "task": "itest/child"}
    refund.update(extra)
    return [step("check", handler_config={"value": 120}), refund, step("after", after="refund")]


@pytest.fixture
def refs(tasker: Tasker, load: LoadTemplate) -> tuple[str, str]:
    child = load("child", CHILD)
    parent = load(
        "parent", _parent(context={"key": "context.key", "amount": "results.check.value"})
    )
    return parent, child


def test_a_task_step_runs_a_child_task_and_completes_with_its_results(
    tasker: Tasker, refs: tuple[str, str], key: str
) -> None:
    parent_ref, _ = refs
    created = tasker.create_task(parent_ref, {"key": key})
    done = tasker.run(created.id)

    assert done.status == "complete"
    refund = done.step("refund")
    assert refund.status == "complete" and refund.attempts == 1  # waiting spent no attempt
    assert refund.results == {
        "pay": {"step": "pay", "attempt": 1, "value": "paid"},
        "confirm": {"step": "confirm", "attempt": 1, "value": "confirm"},
    }
    (child_id,) = tasker.child_tasks(done.id)
    child = tasker.get_task(child_id)
    assert child.status == "complete"
    assert (child.parent_task_id, child.parent_step_id) == (done.id, refund.id)
    assert child.correlation_id == done.correlation_id
    assert child.context == {"key": key, "amount": 120}
    assert refund.decision == f"waiting for child task {child_id} ({child.template_key})"
    # The step parked (no run_at) and was woken by the child, then completed: no polling.
    assert to_states(step_history(tasker, done.id, "refund")) == [
        "pending",
        "ready",
        "in_progress",
        "waiting_retry",
        "in_progress",
        "complete",
    ]
    (after,) = h.calls(key, "after")
    assert after["results"]["refund"]["pay"]["value"] == "paid"


def test_a_waiting_step_holds_no_worker_slot(
    tasker: Tasker, refs: tuple[str, str], key: str
) -> None:
    parent_ref, _ = refs
    done = tasker.run(tasker.create_task(parent_ref, {"key": key}).id, concurrency=1)
    assert done.status == "complete"  # with the slot held, the child could never have run


def test_a_child_that_fails_fails_the_step_with_its_error(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    load(
        "child", [step("pay", handler_config={"fail": ["permanent"]}), step("confirm", after="pay")]
    )
    parent_ref = load("parent", _parent())
    done = tasker.run(tasker.create_task(parent_ref, {"key": key}).id)
    assert done.status == "error"
    refund = done.step("refund")
    assert refund.status == "error"
    assert refund.last_error is not None and refund.last_error["class"] == "ChildTaskFailed"
    (child_id,) = tasker.child_tasks(done.id)
    assert refund.last_error["message"] == (
        f"child task {child_id} (itest/child@1.0.0) failed: step 'pay': pay failed on attempt 1"
    )
    assert done.step("after").status == "pending"


def test_cancelling_the_parent_cancels_a_running_child(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    load("child", [step("wait", "Gated"), step("confirm", after="wait")])
    parent_ref = load("parent", _parent())
    task = tasker.create_task(parent_ref, {"key": key})
    worker = tasker.worker(concurrency=2)
    thread = threading.Thread(
        target=lambda: tasker.work(worker=worker, until_idle=False), daemon=True
    )
    thread.start()
    try:
        assert h.started(f"{key}:wait").wait(20), "the child's first step never started"
        (child_id,) = tasker.child_tasks(task.id)
        tasker.cancel_task(task.id, reason="customer withdrew")
        child = tasker.get_task(child_id)
        assert child.status == "cancelled"
        assert {str(s.status) for s in child.steps} == {"cancelled"}
        assert tasker.get_task(task.id).step("refund").status == "cancelled"
    finally:
        h.gate(f"{key}:wait").set()
        worker.stop()
        thread.join(30)
    rows = tasker.history.task_transitions(child_id)
    assert rows[-1]["to_state"] == "cancelled"
    assert rows[-1]["reason"] == f"parent task {task.id} cancelled"


def test_an_unknown_child_template_fails_the_step_saying_what_to_load(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    parent_ref = load("orphan", _parent(task="itest/nowhere"))
    done = tasker.run(tasker.create_task(parent_ref, {"key": key}).id)
    error = done.step("refund").last_error
    assert error is not None and error["class"] == "ChildTaskFailed"
    assert "task: itest/nowhere cannot be started" in error["message"]
    assert "load that template in the workers" in error["message"]
    assert tasker.child_tasks(done.id) == []


def test_a_context_the_child_refuses_fails_the_step(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    schema = {
        "type": "object",
        "required": ["amount"],
        "properties": {"amount": {"type": "integer"}},
    }
    load("strict", CHILD, schema=schema)
    parent_ref = load("parent", _parent(task="itest/strict", context={"amount": "'not a number'"}))
    done = tasker.run(tasker.create_task(parent_ref, {"key": key}).id)
    error = done.step("refund").last_error
    assert error is not None and "the child's context is refused" in error["message"]
    assert "$.amount" in error["message"]


def test_a_crash_while_parking_creates_the_child_once(
    tasker: Tasker, refs: tuple[str, str], key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent_ref, _ = refs
    real = completion.create_child
    crashed: list[int] = []

    def crash_once(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)  # the child is inserted...
        if not crashed:
            crashed.append(1)
            raise RuntimeError("worker killed while parking")  # ...and rolled back

    monkeypatch.setattr(completion, "create_child", crash_once)
    done = tasker.run(tasker.create_task(parent_ref, {"key": key}).id)
    assert crashed == [1] and done.status == "complete"
    assert len(tasker.child_tasks(done.id)) == 1
    assert len([c for c in h.calls(key, kind="attempt") if c["step"] == "pay"]) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"handler_class": "m:C"}, "needs handler_class (its code) or task (a sub-workflow), not"),
        ({"task": "not a ref!"}, "is not a template reference"),
        ({"context": {"x": "results.after.value"}}, "context.x: results.after at line 1"),
        ({"context": {"x": "context.a +"}}, "context.x: Syntax error"),
    ],
)
def test_a_bad_task_step_is_refused_when_the_template_loads(
    tasker: Tasker, write_template: WriteTemplate, extra: dict[str, Any], message: str
) -> None:
    path = write_template(template_yaml("bad", _parent(**extra)))
    with pytest.raises(TemplateError) as caught:
        tasker.load_templates(path)
    assert "\n" not in str(caught.value) and message in str(caught.value)


def test_a_worker_until_idle_does_not_wait_for_a_child_out_of_its_scope(
    tasker: Tasker, write_template: WriteTemplate, load: LoadTemplate, key: str
) -> None:
    tasker.load_templates(
        write_template(template_yaml("child", CHILD, namespace="kids"), "kids.yaml")
    )
    parent_ref = load("parent", _parent(task="kids/child"))
    task = tasker.create_task(parent_ref, {"key": key})
    tasker.work(until_idle=True, namespaces=["itest"])  # returns: the parked step is no work
    waiting = tasker.get_task(task.id)
    assert waiting.step("refund").status == "waiting_retry"
    (child_id,) = tasker.child_tasks(task.id)
    assert tasker.get_task(child_id).status == "pending"
    tasker.work(until_idle=True, namespaces=["kids"])  # the child settles: it wakes the step
    tasker.work(until_idle=True, namespaces=["itest"])
    assert tasker.get_task(task.id).status == "complete"
