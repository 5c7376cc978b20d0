"""Helpers for the integration tests: templates built as data and views of the transition
history."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from tasker import Tasker
from tasker.domain.history import StepTransition
from tasker.domain.records import Step, Task

H = "tests.integration.handlers"
FAST_RETRY = {"backoff_base_seconds": 0.01, "backoff_max_seconds": 0.05}


def step(
    name: str, handler: str = "Scripted", *, after: str | list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    """A step template entry; `after` names the parent(s)."""
    s: dict[str, Any] = {"name": name, "handler_class": f"{H}:{handler}"}
    if isinstance(after, str):
        s["depends_on_step"] = after
    elif after:
        s["depends_on_steps"] = list(after)
    s.update(extra)
    return s


def template_yaml(
    name: str,
    steps: list[dict[str, Any]],
    *,
    namespace: str = "itest",
    version: str = "1.0.0",
    **top: Any,
) -> str:
    data: dict[str, Any] = {
        "name": name,
        "namespace_name": namespace,
        "version": version,
        "retry": dict(FAST_RETRY),
        "step_templates": steps,
    }
    data.update(top)
    return yaml.safe_dump(data, sort_keys=False)


def work_in_threads(engines: Sequence[Tasker], *, concurrency: int, timeout: float) -> list[int]:
    """Run `work(until_idle=True)` on each engine in a thread of its own, as separate worker
    processes would; returns each one's count of attempts, and fails if one raised or hung."""
    ran: list[int] = []
    errors: list[BaseException] = []

    def work(engine: Tasker) -> None:
        try:
            ran.append(engine.work(concurrency=concurrency, until_idle=True))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(e,), daemon=True) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), "a worker did not finish"
    assert errors == []
    return ran


def history(tasker: Tasker, task_id: int) -> dict[int, list[StepTransition]]:
    """Step transitions grouped by step id, in the order they were written."""
    out: dict[int, list[StepTransition]] = {}
    for row in tasker.history.step_transitions(task_id):
        out.setdefault(row["step_id"], []).append(row)
    return out


def step_history(tasker: Tasker, task_id: int, name: str) -> list[StepTransition]:
    task = tasker.get_task(task_id)
    return history(tasker, task_id).get(task.step(name).id, [])


def to_states(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return [r["to_state"] for r in rows]


def instances_of(task: Task, fanout: str) -> list[Step]:
    """The instances a fan-out step of `task` expanded into, in their order."""
    return [s for s in task.steps if s.instance_of == task.step(fanout).id]
