"""`tasker worker` as a real process: it runs tasks created elsewhere, stops gracefully on SIGTERM,
and hands back a step still running when its grace period ends so that another worker completes it.

Each test runs on SQLite and on PostgreSQL. The handlers below are imported by the worker processes
from this module (they run with the repository on PYTHONPATH) and report through files in the test's
directory.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasker import StepContext, StepHandler, Tasker
from tests.chaos.support import Fleet, wait_for

HANDLER = "tests.integration.test_worker_process:FileStep"


class FileStep(StepHandler):
    """Writes `<task>-<step>.started` (one line per execution), sleeps, writes `.finished`.

    `handler_config.sleep` is the time an execution takes; with `slow_once` only the first execution
    of the step is slow (a retry after a hand-back is quick).
    """

    def process(self, ctx: StepContext) -> dict[str, Any]:
        base = Path(ctx.context["dir"]) / f"{ctx.task_id}-{ctx.step_name}"
        cfg = ctx.handler_config
        first = not base.with_suffix(".started").exists()
        with open(base.with_suffix(".started"), "a") as f:
            f.write(f"{os.getpid()} {ctx.attempt}\n")
        if first or not cfg.get("slow_once"):
            time.sleep(float(cfg.get("sleep", 0)))
        with open(base.with_suffix(".finished"), "a") as f:
            f.write(f"{os.getpid()} {ctx.attempt}\n")
        return {"pid": os.getpid(), "attempt": ctx.attempt}


def _template(path: Path, name: str, steps: list[dict[str, Any]]) -> Path:
    data = {
        "name": name,
        "namespace_name": "proc",
        "version": "1.0.0",
        "retry": {"backoff_base_seconds": 0.05, "backoff_max_seconds": 0.2},
        "step_templates": steps,
    }
    path.mkdir(parents=True, exist_ok=True)
    out = path / f"{name}.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def _step(name: str, after: str | None = None, **config: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"name": name, "handler_class": HANDLER, "handler_config": config}
    if after:
        s["depends_on_step"] = after
    return s


@pytest.fixture
def fleet_factory(store_url: str, tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    fleets: list[Fleet] = []

    def make(templates: Path, **kwargs: Any) -> Fleet:
        kwargs.setdefault("poll_interval", 0.05)
        f = Fleet(store_url, templates, tmp_path / "logs", **kwargs)
        fleets.append(f)
        return f

    yield make
    for f in fleets:
        f.kill_all()


def _finished(engine: Tasker, ids: list[int]) -> bool:
    return all(t.status == "complete" for t in engine.get_tasks(ids))


@pytest.mark.timeout(90)
def test_worker_process_runs_tasks_created_elsewhere(
    tasker: Tasker, fleet_factory: Callable[..., Fleet], tmp_path: Path
) -> None:
    path = _template(
        tmp_path / "templates",
        "chain",
        [_step("one"), _step("two", after="one"), _step("three", after="two")],
    )
    tasker.load_templates(path)
    fleet = fleet_factory(path, concurrency=4)
    w = fleet.spawn()
    wid = w.wait_started()

    ids = [tasker.create_task("proc/chain", {"dir": str(tmp_path), "n": i}).id for i in range(10)]
    wait_for(lambda: _finished(tasker, ids), 45, "the worker process to complete every task")

    for t in tasker.get_tasks(ids):
        assert [(s.results or {})["pid"] for s in t.steps] == [w.pid] * 3
        assert all(s.attempts == 1 for s in t.steps)
    assert fleet.stop_all(20) == {w.pid: 0}
    log = w.log()
    assert f"worker {wid} started" in log
    assert f"worker {wid} stopped after 30 steps" in log


@pytest.mark.timeout(90)
def test_sigterm_lets_the_running_step_finish(
    tasker: Tasker, fleet_factory: Callable[..., Fleet], tmp_path: Path
) -> None:
    path = _template(tmp_path / "templates", "slow", [_step("work", sleep=1.5)])
    tasker.load_templates(path)
    grace = 20.0
    fleet = fleet_factory(path, concurrency=2, grace_seconds=grace)
    w = fleet.spawn()
    wid = w.wait_started()
    task_id = tasker.create_task("proc/slow", {"dir": str(tmp_path)}).id
    started = Path(tmp_path) / f"{task_id}-work.started"
    wait_for(started.exists, 30, "the slow step to start")

    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    code = w.wait(grace + 10)
    elapsed = time.monotonic() - t0

    assert code == 0, fleet.logs()
    assert elapsed < grace, f"the worker took {elapsed:.1f}s to stop; the step needed 1.5s"
    task = tasker.get_task(task_id)
    assert task.status == "complete"
    (step,) = task.steps
    assert step.attempts == 1 and step.results == {"pid": w.pid, "attempt": 1}
    assert Path(tmp_path / f"{task_id}-work.finished").read_text().split() == [str(w.pid), "1"]
    log = w.log()
    assert f"worker {wid} started" in log
    assert f"worker {wid} received SIGTERM" in log
    assert f"worker {wid} stopped after 1 steps" in log
    assert log.index("started (") < log.index("received SIGTERM") < log.index("stopped after")


@pytest.mark.timeout(120)
def test_step_running_past_the_grace_period_is_released_to_another_worker(
    tasker: Tasker, fleet_factory: Callable[..., Fleet], tmp_path: Path
) -> None:
    path = _template(
        tmp_path / "templates",
        "stuck",
        [_step("work", sleep=5.0, slow_once=True), _step("after", after="work")],
    )
    tasker.load_templates(path)
    fleet = fleet_factory(path, concurrency=2, grace_seconds=0.5, lease_seconds=30)
    first = fleet.spawn()
    first_id = first.wait_started()
    task_id = tasker.create_task("proc/stuck", {"dir": str(tmp_path)}).id
    wait_for(Path(tmp_path / f"{task_id}-work.started").exists, 30, "the slow step to start")

    t0 = time.monotonic()
    first.signal(signal.SIGTERM)

    def released() -> bool:
        step = tasker.get_task(task_id).step("work")
        return step.status == "ready"

    wait_for(released, 10, "the step to be handed back")
    released_after = time.monotonic() - t0
    step = tasker.get_task(task_id).step("work")
    assert step.attempts == 0, "a released step keeps its attempt"
    moves = [
        (r["from_state"], r["to_state"], r["worker"])
        for r in tasker.history.step_transitions(task_id)
        if r["step_id"] == step.id
    ]
    assert moves[-1] == ("in_progress", "ready", first_id)
    assert released_after < 5.0, "the step was released only when the handler returned"

    second = fleet.spawn()
    second_id = second.wait_started()
    wait_for(
        lambda: tasker.get_task(task_id).status == "complete",
        30,
        "another worker to complete the task",
    )

    task = tasker.get_task(task_id)
    work = task.step("work")
    assert work.attempts == 1 and work.results == {"pid": second.pid, "attempt": 1}
    done = [
        r
        for r in tasker.history.step_transitions(task_id)
        if r["step_id"] == work.id and r["to_state"] == "complete"
    ]
    assert [r["worker"] for r in done] == [second_id]
    # the first worker's handler, past its grace period, does not get to write anything
    assert first.wait(15) == 0, fleet.logs()
    assert f"worker {first_id} released 1 unfinished steps after the grace period" in first.log()
    assert f"worker {first_id} stopped after 0 steps" in first.log()
    assert tasker.get_task(task_id).step("work").results == {"pid": second.pid, "attempt": 1}
    assert fleet.stop_all(20) == {second.pid: 0}


@pytest.mark.timeout(60)
def test_worker_process_exits_soon_after_its_grace_period(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'exit.db'}"
    path = _template(tmp_path / "templates", "hung", [_step("work", sleep=8.0)])
    engine = Tasker(url, templates=path)
    try:
        with Fleet(url, path, tmp_path / "logs", grace_seconds=0.5, poll_interval=0.05) as fleet:
            w = fleet.spawn()
            w.wait_started()
            task_id = engine.create_task("proc/hung", {"dir": str(tmp_path)}).id
            wait_for(Path(tmp_path / f"{task_id}-work.started").exists, 30, "the step to start")
            w.signal(signal.SIGTERM)
            assert w.wait(4.0) == 0, (
                "the worker was still running 4s after SIGTERM with a 0.5s grace period"
            )
    finally:
        engine.close()
