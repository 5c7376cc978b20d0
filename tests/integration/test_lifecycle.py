"""A task's life from creation to its final state: results flow down the DAG, every change is
recorded."""

from __future__ import annotations

import itertools

from tasker import Tasker
from tests.fixture_types import LoadTemplate
from tests.integration import handlers as h
from tests.integration.support import history, step, step_history, to_states


def test_linear_chain_completes_and_each_step_sees_earlier_results(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "chain",
        [
            step("a", handler_config={"value": 1}),
            step("b", after="a", handler_config={"value": 2}),
            step("c", after="b", handler_config={"value": 3}),
        ],
    )
    task = tasker.create_task(ref, {"key": key})
    assert task.status == "pending"
    assert [s.status for s in task.steps] == ["ready", "pending", "pending"]

    done = tasker.run(task.id)

    assert done.status == "complete"
    assert done.started_at is not None and done.finished_at is not None
    assert [s.name for s in done.steps] == ["a", "b", "c"]
    for s, value in zip(done.steps, [1, 2, 3]):
        assert s.status == "complete"
        assert s.attempts == 1
        assert s.last_error is None
        assert s.results == {"step": s.name, "attempt": 1, "value": value}
    seen = {c["step"]: c["results"] for c in h.calls(key, kind="attempt")}
    assert seen["a"] == {}
    assert seen["b"] == {"a": {"step": "a", "attempt": 1, "value": 1}}
    assert seen["c"] == {
        "a": {"step": "a", "attempt": 1, "value": 1},
        "b": {"step": "b", "attempt": 1, "value": 2},
    }
    # The steps ran one after the other, never overlapping.
    runs = {c["step"]: c for c in h.calls(key, kind="attempt")}
    assert runs["a"]["end"] <= runs["b"]["start"] and runs["b"]["end"] <= runs["c"]["start"]


def test_transitions_are_recorded_in_order(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    ref = load("chain", [step("a"), step("b", after="a"), step("c", after="b")])
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "complete"

    rows = tasker.history.task_transitions(task.id)
    assert [(r["from_state"], r["to_state"]) for r in rows] == [
        (None, "pending"),
        ("pending", "in_progress"),
        ("in_progress", "complete"),
    ]
    assert [r["at"] for r in rows] == sorted(r["at"] for r in rows)

    by_step = history(tasker, task.id)
    assert set(by_step) == {s.id for s in task.steps}
    # The root is created ready (there is nothing to wait for); the others start pending.
    assert to_states(step_history(tasker, task.id, "a")) == ["ready", "in_progress", "complete"]
    for name in ("b", "c"):
        assert to_states(step_history(tasker, task.id, name)) == [
            "pending",
            "ready",
            "in_progress",
            "complete",
        ]
    for rows_of_step in by_step.values():
        # Each row starts where the previous one ended, timestamps never go backwards.
        assert rows_of_step[0]["from_state"] is None
        for prev, row in itertools.pairwise(rows_of_step):
            assert row["from_state"] == prev["to_state"]
            assert row["at"] >= prev["at"]
        running, finished = rows_of_step[-2], rows_of_step[-1]
        assert running["attempt"] == finished["attempt"] == 1
        assert running["worker"] and finished["worker"] == running["worker"]
        assert finished["duration_ms"] is not None and finished["duration_ms"] >= 0
        assert finished["error_class"] is None and finished["error_message"] is None
    # b became ready in the same transaction that completed a, and c after b.
    a_done = step_history(tasker, task.id, "a")[-1]
    b_ready = step_history(tasker, task.id, "b")[1]
    assert b_ready["at"] == a_done["at"]
    assert (
        step_history(tasker, task.id, "c")[1]["at"] >= step_history(tasker, task.id, "b")[-1]["at"]
    )


def test_work_until_idle_runs_every_task(tasker: Tasker, load: LoadTemplate, key: str) -> None:
    ref = load("chain", [step("a"), step("b", after="a")])
    ids = [tasker.create_task(ref, {"key": key, "n": i}).id for i in range(5)]
    ran = tasker.work(concurrency=3, until_idle=True)
    assert ran == 10
    assert {t.status for t in tasker.get_tasks(ids)} == {"complete"}


def test_permanent_error_fails_the_step_at_once_and_blocks_dependents(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "perm",
        [
            step("a"),
            step("b", after="a", handler_config={"always_fail": "permanent"}),
            step("c", after="b"),
            step("d", after="c"),
        ],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)

    assert task.status == "error"
    assert task.finished_at is not None
    b = task.step("b")
    assert b.status == "error"
    assert b.attempts == 1
    assert b.last_error is not None
    assert b.last_error["class"] == "PermanentError"
    assert b.last_error["message"] == "b failed on attempt 1"
    assert b.last_error["error_code"] == "DECLINED"
    assert b.last_error["retryable"] is False
    assert b.last_error["context"] == {"step": "b"}
    assert b.results is None
    assert [task.step(n).status for n in ("c", "d")] == ["pending", "pending"]
    assert [task.step(n).attempts for n in ("c", "d")] == [0, 0]
    assert len(h.calls(key, "b")) == 1
    assert h.calls(key, "c") == [] and h.calls(key, "d") == []
    rows = step_history(tasker, task.id, "b")
    assert (rows[-1]["from_state"], rows[-1]["to_state"]) == ("in_progress", "error")
    assert rows[-1]["error_class"] == "PermanentError"
    assert rows[-1]["error_message"] == "b failed on attempt 1"
    assert "waiting_retry" not in to_states(rows)
    assert [r["to_state"] for r in tasker.history.task_transitions(task.id)] == [
        "pending",
        "in_progress",
        "error",
    ]


def test_independent_branch_runs_to_the_end_before_the_task_fails(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    """Diamond: `left` fails permanently at once, `right` is a longer chain that still completes."""
    ref = load(
        "diamond_fail",
        [
            step("start"),
            step("left", after="start", handler_config={"always_fail": "permanent"}),
            step("right1", after="start", handler_config={"sleep": 0.1}),
            step("right2", after="right1", handler_config={"sleep": 0.1}),
            step("right3", after="right2"),
            step("join", after=["left", "right3"]),
        ],
    )
    task_id = tasker.create_task(ref, {"key": key}).id
    failed_at: list[object] = []
    tasker.bus.subscribe(lambda e: failed_at.append(e.payload), "task.failed")

    task = tasker.run(task_id, concurrency=2)

    assert task.status == "error"
    assert task.step("left").status == "error"
    assert [task.step(n).status for n in ("start", "right1", "right2", "right3")] == [
        "complete"
    ] * 4
    assert task.step("join").status == "pending"
    assert h.calls(key, "join") == []
    # The task failed only after the last step of the other branch completed.
    task_rows = tasker.history.task_transitions(task_id)
    assert task_rows[-1]["to_state"] == "error"
    assert task_rows[-1]["at"] >= step_history(tasker, task_id, "right3")[-1]["at"]
    assert (
        step_history(tasker, task_id, "left")[-1]["at"]
        <= step_history(tasker, task_id, "right2")[-1]["at"]
    )
    assert [t["to_state"] for t in task_rows].count("error") == 1
    assert len(failed_at) == 1


def test_run_of_a_finished_task_returns_it_unchanged(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("one", [step("a")])
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    again = tasker.run(task.id)
    assert again.status == "complete"
    assert again.step("a").attempts == 1
    assert len(h.calls(key, "a")) == 1
