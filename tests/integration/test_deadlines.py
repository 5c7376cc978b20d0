"""Delayed starts and deadlines on both stores, on the test clock (`tasker.testing`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from tasker.domain.errors import TaskerInputError
from tasker.testing import WorkflowEnv, workflow_env
from tests.fixture_types import WriteTemplate
from tests.integration import handlers as h
from tests.integration.support import step, template_yaml

H = "tests.integration.handlers"


@pytest.fixture
def env(store_url: str) -> Iterator[WorkflowEnv]:
    with workflow_env(database_url=store_url) as env:
        yield env


def load(
    env: WorkflowEnv,
    write_template: WriteTemplate,
    name: str,
    steps: list[dict[str, Any]],
    **top: Any,
) -> str:
    path = write_template(template_yaml(name, steps, **top), f"{name}.yaml")
    (loaded,) = env.engine.load_templates(path)
    return f"{loaded.namespace_name}/{loaded.name}"


def task_reasons(env: WorkflowEnv, task_id: int) -> list[tuple[str, str | None]]:
    return [(str(t["to_state"]), t["reason"]) for t in env.engine.history.task_transitions(task_id)]


# -- delayed start ---------------------------------------------------------------------------------
def test_a_delayed_task_waits_pending_until_its_start(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(env, write_template, "later", [step("a"), step("b", after="a")])
    start = env.now()
    task = env.engine.create_task(ref, {"key": key}, delay="2h")

    assert task.status == "pending" and task.starts_at == start + timedelta(hours=2)
    assert task.step("a").status == "ready" and task.step("a").run_at == task.starts_at
    env.advance(hours=1, minutes=59)
    assert h.calls(key) == [] and env.engine.get_task(task.id).status == "pending"
    env.advance(minutes=1)
    done = env.engine.get_task(task.id)
    assert done.status == "complete" and done.starts_at == task.starts_at
    assert done.started_at == start + timedelta(hours=2)


def test_run_at_starts_a_task_at_that_time_and_cancel_works_before_it(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(env, write_template, "at", [step("a")])
    when = env.now() + timedelta(days=1)
    kept = env.engine.create_task(ref, {"key": key}, run_at=when)
    dropped = env.engine.create_task(ref, {"key": key}, run_at=when)
    env.engine.cancel_task(dropped.id, "not needed")
    env.advance(days=1)
    assert env.engine.get_task(kept.id).status == "complete"
    assert env.engine.get_task(dropped.id).status == "cancelled"
    assert len(h.calls(key)) == 1


def test_a_start_in_the_past_is_now(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(env, write_template, "past", [step("a")])
    task = env.engine.create_task(ref, {"key": key}, run_at=env.now() - timedelta(hours=1))
    assert task.starts_at is None
    env.advance(0)
    assert env.engine.get_task(task.id).status == "complete"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"run_at": datetime(2030, 1, 1)}, "has no time zone"),
        ({"delay": "soon"}, "delay: 'soon' is not a duration"),
        ({"delay": -5}, "out of range"),
        ({"delay": 5, "run_at": datetime(2030, 1, 1)}, "not both"),
        ({"deadline": "PT-1H"}, "deadline"),
    ],
)
def test_bad_start_times_and_deadlines_are_refused_saying_why(
    env: WorkflowEnv,
    write_template: WriteTemplate,
    key: str,
    options: dict[str, Any],
    message: str,
) -> None:
    ref = load(env, write_template, "bad_times", [step("a")])
    with pytest.raises(TaskerInputError, match=message):
        env.engine.create_task(ref, {"key": key}, **options)


def test_create_tasks_starts_a_batch_later(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(env, write_template, "batch_later", [step("a")])
    ids = env.engine.create_tasks(ref, [{"key": key}, {"key": key}], delay=60)
    assert {env.engine.get_task(i).starts_at for i in ids} == {env.now() + timedelta(seconds=60)}
    env.advance(seconds=60)
    assert {env.engine.get_task(i).status for i in ids} == {"complete"}


# -- deadlines -------------------------------------------------------------------------------------
def test_a_task_past_its_template_deadline_ends_in_error(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(
        env,
        write_template,
        "slow",
        [
            step("a"),
            {"name": "wait", "sleep": "1h", "depends_on_step": "a"},
            step("b", after="wait"),
        ],
        timeout_seconds="10m",
    )
    start = env.now()
    task = env.engine.create_task(ref, {"key": key})
    assert task.deadline_at == start + timedelta(minutes=10)
    done = env.run(task.id)

    assert env.now() == start + timedelta(minutes=10)  # the deadline, not the sleep's end
    assert done.status == "error"
    assert [s.status for s in done.steps] == ["complete", "cancelled", "cancelled"]
    assert task_reasons(env, task.id)[-1] == ("error", "deadline_exceeded")
    assert [c["step"] for c in h.calls(key)] == ["a"]


def test_a_deadline_given_at_creation_overrides_the_templates(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(
        env,
        write_template,
        "override",
        [{"name": "wait", "sleep": "1h"}],
        timeout_seconds="10m",
    )
    start = env.now()
    task = env.engine.create_task(ref, {"key": key}, deadline="2h")
    assert task.deadline_at == start + timedelta(hours=2)
    assert env.run(task.id).status == "complete"
    at = env.now() + timedelta(minutes=5)
    other = env.engine.create_task(ref, {"key": key}, deadline=at)
    assert other.deadline_at == at
    assert env.run(other.id).status == "error"


def test_a_deadline_counts_from_a_delayed_start(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(env, write_template, "delayed_deadline", [step("a")], timeout_seconds=60)
    start = env.now()
    task = env.engine.create_task(ref, {"key": key}, delay="1h")
    assert task.deadline_at == start + timedelta(hours=1, seconds=60)
    assert env.run(task.id).status == "complete"


def test_a_task_past_its_deadline_compensates_what_it_declared(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    compensation = {"handler_class": f"{H}:Scripted", "handler_config": {"value": "undone"}}
    ref = load(
        env,
        write_template,
        "undo_on_deadline",
        [
            step("charge", compensation=compensation),
            {"name": "wait", "wait_for": "shipped", "depends_on_step": "charge"},
        ],
        timeout_seconds="1d",
    )
    done = env.run(env.engine.create_task(ref, {"key": key}).id)
    assert done.status == "compensated"
    assert [(t, r) for t, r in task_reasons(env, done.id)][-2:] == [
        ("compensating", "deadline_exceeded"),
        ("compensated", None),
    ]
    assert [c["step"] for c in h.calls(key)] == ["charge", "undo:charge"]


def test_a_finished_task_is_not_touched_by_its_deadline(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(env, write_template, "quick", [step("a")], timeout_seconds=60)
    task = env.engine.create_task(ref, {"key": key})
    env.advance(0)
    env.advance(minutes=5)
    assert env.engine.get_task(task.id).status == "complete"
    assert [t for t, _ in task_reasons(env, task.id)] == ["pending", "in_progress", "complete"]


def test_a_long_running_worker_ends_tasks_past_their_deadline(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    """Not only `run()`: the worker that holds the timers job ends any task at its deadline."""
    ref = load(
        env, write_template, "global", [{"name": "w", "wait_for": "never"}], timeout_seconds=30
    )
    tasks = [env.engine.create_task(ref, {"key": key}).id for _ in range(3)]
    env.advance(0)
    env.advance(seconds=30)
    assert {env.engine.get_task(t).status for t in tasks} == {"error"}


def test_a_step_running_at_the_deadline_is_cancelled_and_its_late_result_discarded(
    env: WorkflowEnv, write_template: WriteTemplate, key: str
) -> None:
    ref = load(
        env,
        write_template,
        "running_late",
        [step("slow", "Gated"), step("after", after="slow")],
        timeout_seconds=60,
    )
    task = env.engine.create_task(ref, {"key": key})
    worker = threading.Thread(target=env.engine.work, kwargs={"until_idle": True})
    worker.start()
    assert h.started(f"{key}:slow").wait(10)
    env.clock.advance(seconds=61)
    env.fire_timers()  # the deadline passes while `slow` runs
    assert env.engine.get_task(task.id).status == "error"
    h.gate(f"{key}:slow").set()
    worker.join(20)
    assert not worker.is_alive()

    done = env.engine.get_task(task.id)
    assert done.status == "error"
    assert [s.status for s in done.steps] == ["cancelled", "cancelled"]
    assert done.step("slow").results is None  # the late result was not stored
    assert [c["step"] for c in h.calls(key, kind="attempt")] == ["slow"]
