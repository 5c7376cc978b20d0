"""Operator actions on live and failed tasks: cancel, retry a task or a step, resolve a step by
hand."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tasker import NotFoundError, OperationError, Tasker, TaskerInputError
from tests.fixture_types import LoadTemplate, MakeTasker, WriteTemplate
from tests.integration import handlers as h
from tests.integration.support import step, step_history, to_states


def _in_thread(
    fn: Callable[..., object], *args: Any, **kwargs: Any
) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # pragma: no cover - surfaced by the test
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def _wait_started(key: str, name: str) -> None:
    assert h.started(f"{key}:{name}").wait(10), f"step {name} never started"


# -- cancel ----------------------------------------------------------------------------------------
def test_cancel_while_running_discards_the_late_result(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("gated", [step("a", "Gated"), step("b", after="a"), step("c", after="b")])
    task_id = tasker.create_task(ref, {"key": key}).id
    seen: list[str] = []
    tasker.bus.subscribe(lambda e: seen.append(e.name), "step.*", "task.*")
    worker, out = _in_thread(tasker.run, task_id)
    _wait_started(key, "a")

    cancelled = tasker.cancel_task(task_id, reason="customer asked")
    assert cancelled.status == "cancelled"
    assert [s.status for s in cancelled.steps] == ["cancelled"] * 3

    h.gate(f"{key}:a").set()  # the handler returns its result after the cancel
    worker.join(15)
    assert not worker.is_alive()
    assert "error" not in out
    assert out["value"].status == "cancelled"
    assert h.calls(key, "a", kind="finished"), "the handler should have returned"

    task = tasker.get_task(task_id)
    assert task.status == "cancelled"
    assert task.finished_at is not None
    a = task.step("a")
    assert a.status == "cancelled"
    assert a.results is None
    assert a.attempts == 1
    assert [s.status for s in task.steps] == ["cancelled"] * 3
    assert h.calls(key, "b") == [] and h.calls(key, "c") == []
    assert to_states(step_history(tasker, task_id, "a")) == ["ready", "in_progress", "cancelled"]
    assert to_states(step_history(tasker, task_id, "b")) == ["pending", "cancelled"]
    rows = tasker.history.task_transitions(task_id)
    assert [r["to_state"] for r in rows] == ["pending", "in_progress", "cancelled"]
    assert rows[-1]["reason"] == "customer asked"
    assert "step.completed" not in seen
    assert seen.count("task.cancelled") == 1


def test_worker_stops_waiting_for_a_step_of_a_cancelled_task(
    make_tasker: MakeTasker, write_template: WriteTemplate, key: str
) -> None:
    """With short leases the heartbeat notices the cancel and drops the attempt without waiting for
    it."""
    from tests.integration.support import template_yaml

    tasker = make_tasker(lease_seconds=0.6)
    ref_path = write_template(template_yaml("gated", [step("a", "Gated"), step("b", after="a")]))
    tasker.load_templates(ref_path)
    task_id = tasker.create_task("itest/gated", {"key": key}).id
    worker, out = _in_thread(tasker.run, task_id)
    _wait_started(key, "a")
    tasker.cancel_task(task_id)
    worker.join(8)
    try:
        assert not worker.is_alive(), "the worker kept waiting for a cancelled step"
        assert out["value"].status == "cancelled"
        assert h.calls(key, "a", kind="finished") == []
    finally:
        h.gate(f"{key}:a").set()
    deadline = time.monotonic() + 5
    while not h.calls(key, "a", kind="finished") and time.monotonic() < deadline:
        time.sleep(0.05)
    task = tasker.get_task(task_id)
    assert task.status == "cancelled"
    assert task.step("a").results is None
    assert h.calls(key, "b") == []


def test_cancel_a_pending_task_runs_nothing(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    ref = load("chain", [step("a"), step("b", after="a")])
    task_id = tasker.create_task(ref, {"key": key}).id
    task = tasker.cancel_task(task_id)
    assert task.status == "cancelled"
    assert tasker.work(until_idle=True) == 0
    assert h.calls(key) == []
    assert [r["to_state"] for r in tasker.history.task_transitions(task_id)] == [
        "pending",
        "cancelled",
    ]


def test_cancel_a_failed_task(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    h.set_fault(key, "b")
    ref = load(
        "toggle",
        [step("a", "Toggle"), step("b", "Toggle", after="a"), step("c", "Toggle", after="b")],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "error"
    task = tasker.cancel_task(task.id)
    assert task.status == "cancelled"
    assert [s.status for s in task.steps] == ["complete", "cancelled", "cancelled"]
    with pytest.raises(OperationError):
        tasker.retry_task(task.id)


def test_cancel_a_finished_task_is_refused(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    ref = load("one", [step("a")])
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    with pytest.raises(OperationError, match="complete"):
        tasker.cancel_task(task.id)
    assert tasker.get_task(task.id).status == "complete"
    with pytest.raises(NotFoundError):
        tasker.cancel_task(999_999)


# -- retry -----------------------------------------------------------------------------------------
def test_retry_task_rearms_failed_steps_with_fresh_attempts(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    h.set_fault(key, "b")
    ref = load(
        "toggle",
        [
            step("a", "Toggle"),
            step("b", "Toggle", after="a", default_retry_limit=2),
            step("c", "Toggle", after="b"),
        ],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "error"
    assert task.step("b").attempts == 1

    # Still faulty: a retry fails again, and the task is in error again.
    again = tasker.retry_task(task.id)
    assert again.status == "pending"
    assert again.step("b").status == "ready" and again.step("b").attempts == 0
    assert tasker.run(task.id).status == "error"

    h.set_fault(key, "b", on=False)
    tasker.retry_task(task.id)
    done = tasker.run(task.id)

    assert done.status == "complete"
    assert [s.status for s in done.steps] == ["complete"] * 3
    assert done.step("a").attempts == 1  # complete steps are never re-run
    assert done.step("b").attempts == 1  # fresh attempts after the retry
    assert done.step("b").results == {"step": "b", "ok": True}
    assert len(h.calls(key, "a")) == 1
    assert len(h.calls(key, "b")) == 3
    assert h.calls(key, "c")[0]["results"]["b"] == {"step": "b", "ok": True}
    rows = step_history(tasker, task.id, "b")
    assert to_states(rows) == [
        "pending",
        "ready",
        "in_progress",
        "error",
        "ready",
        "in_progress",
        "error",
        "ready",
        "in_progress",
        "complete",
    ]
    assert [r["to_state"] for r in tasker.history.task_transitions(task.id)] == [
        "pending",
        "in_progress",
        "error",
        "pending",
        "in_progress",
        "error",
        "pending",
        "in_progress",
        "complete",
    ]


def test_retry_task_rearms_every_failed_branch(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    h.set_fault(key, "left")
    h.set_fault(key, "right")
    ref = load(
        "two_faults",
        [
            step("start", "Toggle"),
            step("left", "Toggle", after="start"),
            step("right", "Toggle", after="start"),
            step("join", "Toggle", after=["left", "right"]),
        ],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert [task.step(n).status for n in ("left", "right", "join")] == ["error", "error", "pending"]
    h.set_fault(key, "left", on=False)
    h.set_fault(key, "right", on=False)
    tasker.retry_task(task.id)
    done = tasker.run(task.id)
    assert done.status == "complete"
    assert done.step("join").results == {"step": "join", "ok": True}


def test_retry_of_a_task_not_in_error_is_refused(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("one", [step("a")])
    task = tasker.create_task(ref, {"key": key})
    with pytest.raises(OperationError, match="pending"):
        tasker.retry_task(task.id)
    tasker.run(task.id)
    with pytest.raises(OperationError, match="complete"):
        tasker.retry_task(task.id)
    with pytest.raises(NotFoundError):
        tasker.retry_task(999_999)


def test_retry_step(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    h.set_fault(key, "b")
    ref = load(
        "toggle",
        [step("a", "Toggle"), step("b", "Toggle", after="a"), step("c", "Toggle", after="b")],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "error"

    with pytest.raises(OperationError, match="complete"):
        tasker.retry_step(task.id, "a")
    with pytest.raises(OperationError, match="pending"):
        tasker.retry_step(task.id, "c")
    with pytest.raises(NotFoundError, match="a, b, c"):
        tasker.retry_step(task.id, "nope")

    h.set_fault(key, "b", on=False)
    rearmed = tasker.retry_step(task.id, "b")
    assert rearmed.status == "pending"
    assert rearmed.step("b").status == "ready" and rearmed.step("b").attempts == 0
    done = tasker.run(task.id)
    assert done.status == "complete"
    assert done.step("b").attempts == 1
    assert len(h.calls(key, "a")) == 1


# -- resolve ---------------------------------------------------------------------------------------
def test_resolve_a_failed_step_lets_dependents_proceed(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    h.set_fault(key, "b")
    ref = load(
        "toggle",
        [
            step("a", "Toggle"),
            step("b", "Toggle", after="a"),
            step("c", "Toggle", after="b"),
            step("d", "Toggle", after="c"),
        ],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "error"

    supplied = {"charge_id": "manual-42", "amount": 10.5, "items": [1, 2]}
    resolved = tasker.resolve_step(task.id, "b", supplied)
    assert resolved.step("b").status == "resolved_manually"
    assert resolved.step("b").results == supplied
    assert resolved.step("c").status == "ready"
    assert resolved.status == "pending"

    done = tasker.run(task.id)
    assert done.status == "resolved_manually"
    assert done.step("b").status == "resolved_manually"
    assert done.step("b").attempts == 1
    assert [done.step(n).status for n in ("a", "c", "d")] == ["complete"] * 3
    assert h.calls(key, "c")[0]["results"]["b"] == supplied
    assert h.calls(key, "d")[0]["results"]["b"] == supplied
    assert len(h.calls(key, "b")) == 1
    assert to_states(step_history(tasker, task.id, "b"))[-2:] == ["error", "resolved_manually"]
    assert [r["to_state"] for r in tasker.history.task_transitions(task.id)][-3:] == [
        "pending",
        "in_progress",
        "resolved_manually",
    ]
    with pytest.raises(OperationError):
        tasker.resolve_step(task.id, "d", {})


def test_resolve_the_last_failed_step_settles_the_task(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    h.set_fault(key, "b")
    ref = load("toggle", [step("a", "Toggle"), step("b", "Toggle", after="a")])
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    done = tasker.resolve_step(task.id, "b", {"ok": "by hand"})
    assert done.status == "resolved_manually"
    assert done.finished_at is not None
    assert [r["to_state"] for r in tasker.history.task_transitions(task.id)] == [
        "pending",
        "in_progress",
        "error",
        "resolved_manually",
    ]


def test_resolve_step_refuses_bad_requests(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    h.set_fault(key, "b")
    ref = load(
        "toggle",
        [step("a", "Toggle"), step("b", "Toggle", after="a"), step("c", "Toggle", after="b")],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    with pytest.raises(NotFoundError) as info:
        tasker.resolve_step(task.id, "charge", {"x": 1})
    assert "'charge'" in str(info.value)
    assert "a, b, c" in str(info.value)
    with pytest.raises(OperationError, match="complete"):
        tasker.resolve_step(task.id, "a", {"x": 1})
    with pytest.raises(TaskerInputError):
        tasker.resolve_step(task.id, "b", ["not", "an", "object"])  # type: ignore[arg-type]
    with pytest.raises(NotFoundError):
        tasker.resolve_step(999_999, "b", {})
    after = tasker.get_task(task.id)
    assert after.status == "error"
    assert after.step("b").status == "error"


def test_resolving_a_pending_step_whose_parent_is_running_is_refused(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    """Issue 9, point 7: resolving `b` while `a` runs would release `c` before `a` finished."""
    ref = load("gated", [step("a", "Gated"), step("b", after="a"), step("c", after="b")])
    task_id = tasker.create_task(ref, {"key": key}).id
    worker, out = _in_thread(tasker.run, task_id)
    _wait_started(key, "a")

    with pytest.raises(OperationError) as info:
        tasker.resolve_step(task_id, "b", {"by": "operator"})
    msg = str(info.value)
    assert "step 'b' of task" in msg and "cannot be resolved" in msg and "a (in_progress)" in msg, (
        msg
    )
    assert "\n" not in msg and "fix:" in msg
    task = tasker.get_task(task_id)
    assert [task.step(n).status for n in ("a", "b", "c")] == ["in_progress", "pending", "pending"]
    assert h.calls(key, "c") == []

    h.gate(f"{key}:a").set()
    worker.join(15)
    assert not worker.is_alive() and "error" not in out
    done = tasker.get_task(task_id)
    assert done.status == "complete"
    finished_a = done.step("a").finished_at
    started_c = done.step("c").started_at
    assert finished_a is not None and started_c is not None
    assert finished_a <= started_c
    assert not any(r["to_state"] == "resolved_manually" for r in step_history(tasker, task_id, "b"))


def test_resolving_below_a_failed_parent_names_every_unfinished_parent(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    h.set_fault(key, "b")
    ref = load(
        "diamond",
        [
            step("a", "Toggle"),
            step("b", "Toggle", after="a"),
            step("c", "Toggle", after="a"),
            step("d", "Toggle", after=["b", "c"]),
            step("e", "Toggle", after="d"),
        ],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "error"
    assert [task.step(n).status for n in "abcde"] == [
        "complete",
        "error",
        "complete",
        "pending",
        "pending",
    ]

    with pytest.raises(OperationError, match=r"parent b \(error\) is not finished"):
        tasker.resolve_step(task.id, "d", {})
    with pytest.raises(OperationError, match=r"parent d \(pending\) is not finished"):
        tasker.resolve_step(task.id, "e", {})
    assert tasker.get_task(task.id).step("d").status == "pending"

    # Parents first: then the child may be resolved too, and the task settles without running
    # anything.
    tasker.resolve_step(task.id, "b", {"by": "hand"})
    assert tasker.get_task(task.id).step("d").status == "ready"
    tasker.resolve_step(task.id, "d", {"by": "hand"})
    tasker.resolve_step(task.id, "e", {"by": "hand"})
    done = tasker.get_task(task.id)
    assert done.status == "resolved_manually"
    assert h.calls(key, "d") == [] and h.calls(key, "e") == []


def test_unfinished_parents_message_lists_them_in_order() -> None:
    from tasker.store.operations import unfinished_parents_message

    msg = unfinished_parents_message(
        7, "ship", "resolved", [("charge", "error"), ("reserve", "ready")]
    )
    assert msg.startswith(
        "step 'ship' of task 7 cannot be resolved while its parents charge (error), "
        "reserve (ready) are not finished; fix: resolve or wait for the parents first"
    )


def test_cancel_storm_while_workers_run(
    make_tasker: MakeTasker, write_template: WriteTemplate, key: str
) -> None:
    """Operators cancel tasks while two workers claim and complete them (on PostgreSQL a cancel and
    a claim may deadlock; the engine must absorb that). Every task ends complete or cancelled, and
    nothing of a cancelled task starts or completes after its cancel."""
    from tests.integration.support import history, template_yaml

    path = write_template(
        template_yaml("storm", [step("a"), step("b", after="a"), step("c", after="a")])
    )
    operator = make_tasker()
    operator.load_templates(path)
    ids = [operator.create_task("itest/storm", {"key": key, "n": i}).id for i in range(120)]
    engines = [make_tasker(poll_interval=0.01) for _ in range(2)]
    errors: list[BaseException] = []
    refused: list[int] = []

    def work(engine: Tasker) -> None:
        try:
            engine.work(concurrency=4, until_idle=True)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(e,), daemon=True) for e in engines]
    for thread in threads:
        thread.start()
    for task_id in ids:
        try:
            operator.cancel_task(task_id)
        except OperationError:
            refused.append(task_id)  # it finished first
        except Exception as exc:
            errors.append(exc)
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    tasks = operator.get_tasks(ids)
    assert {t.status for t in tasks} <= {"complete", "cancelled"}
    assert {t.id for t in tasks if t.status == "complete"} == set(refused)
    for t in tasks:
        if t.status != "cancelled":
            assert all(s.status == "complete" for s in t.steps)
            continue
        assert {s.status for s in t.steps} <= {"complete", "cancelled"}
        by_step = history(operator, t.id)
        for s in t.steps:
            # The last word on each step is its final state: nothing happened to it after the
            # cancel.
            assert by_step[s.id][-1]["to_state"] == s.status
        if t.step("a").status == "cancelled":
            # a never completed, so its children never started.
            assert all("in_progress" not in to_states(by_step[t.step(n).id]) for n in ("b", "c"))
        if operator.db.is_sqlite:
            # One writer at a time: transition times follow commit order.
            cancelled_at = operator.history.task_transitions(t.id)[-1]["at"]
            for rows in by_step.values():
                assert all(
                    r["at"] <= cancelled_at
                    for r in rows
                    if r["to_state"] in ("in_progress", "complete")
                )


def _wait_for_state(
    tasker: Tasker, task_id: int, name: str, state: str, timeout: float = 10
) -> None:
    deadline = time.monotonic() + timeout
    while tasker.get_task(task_id).step(name).status != state:
        assert time.monotonic() < deadline, f"step {name} never reached {state}"
        time.sleep(0.02)


def test_resolve_a_step_waiting_to_retry_wakes_the_worker(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    """The service asked for 30 s; an operator supplies the result instead, and the worker goes on
    at once."""
    ref = load(
        "slow_retry", [step("a", handler_config={"fail": ["retry_after:30"]}), step("b", after="a")]
    )
    task_id = tasker.create_task(ref, {"key": key}).id
    worker, _ = _in_thread(tasker.work, until_idle=True)
    _wait_for_state(tasker, task_id, "a", "waiting_retry")
    started = time.monotonic()
    tasker.resolve_step(task_id, "a", {"by": "operator"})
    worker.join(15)
    assert not worker.is_alive()
    assert time.monotonic() - started < 15
    task = tasker.get_task(task_id)
    assert task.status == "resolved_manually"
    assert task.step("a").attempts == 1
    assert h.calls(key, "b")[0]["results"]["a"] == {"by": "operator"}
    assert to_states(step_history(tasker, task_id, "a"))[-2:] == [
        "waiting_retry",
        "resolved_manually",
    ]


def test_cancel_a_task_waiting_to_retry(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    ref = load(
        "slow_retry", [step("a", handler_config={"fail": ["retry_after:30"]}), step("b", after="a")]
    )
    task_id = tasker.create_task(ref, {"key": key}).id
    worker, out = _in_thread(tasker.run, task_id)
    _wait_for_state(tasker, task_id, "a", "waiting_retry")
    tasker.cancel_task(task_id)
    worker.join(15)
    assert not worker.is_alive()
    assert out["value"].status == "cancelled"
    assert [s.status for s in out["value"].steps] == ["cancelled", "cancelled"]
    assert len(h.calls(key, "a")) == 1


def test_worker_only_runs_its_namespaces(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    mine = load("mine", [step("a")], namespace="payments")
    theirs = load("theirs", [step("a")], namespace="shipping")
    t1 = tasker.create_task(mine, {"key": key})
    t2 = tasker.create_task(theirs, {"key": key})
    assert tasker.work(namespaces=["payments"], until_idle=True) == 1
    assert tasker.get_task(t1.id).status == "complete"
    assert tasker.get_task(t2.id).status == "pending"
    assert tasker.work(until_idle=True) == 1
    assert tasker.get_task(t2.id).status == "complete"
