"""Worker hooks: what a worker tells the code that watches it, one engine's observability apart
from another's, and a worker that runs with no hooks at all."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tasker import Tasker
from tasker.domain.hooks import (
    CycleReport,
    ServiceCall,
    SettledTasks,
    WorkerHooks,
)
from tasker.domain.records import ClaimedStep, Outcome
from tasker.domain.states import StepState, TaskState
from tasker.observability import metrics
from tasker.observability.hooks import default_hooks
from tests.fixture_types import LoadTemplate, MakeTasker, WriteTemplate
from tests.integration.support import H, step, template_yaml


class _Scope:
    def __init__(self, seen: Recorder, claimed: ClaimedStep):
        self.seen, self.claimed = seen, claimed

    def __enter__(self) -> object:
        self.seen.entered.append((self.claimed.name, self.claimed.attempt))
        return self

    def finished(self, outcome: Outcome) -> None:
        self.seen.finished.append((self.claimed.name, outcome.state))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.seen.exited.append(self.claimed.name)


class Recorder(WorkerHooks):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.claimed: list[str] = []
        self.entered: list[tuple[str, int]] = []
        self.finished: list[tuple[str, str]] = []
        self.exited: list[str] = []
        self.accepted: list[str] = []
        self.settled: list[tuple[int, str, TaskState]] = []

    def attempt_scope(self, claimed: ClaimedStep, template: str) -> _Scope:
        return _Scope(self, claimed)

    def on_claimed(self, worker_id: str, claimed: Sequence[ClaimedStep]) -> None:
        self.claimed += [c.name for c in claimed]

    def on_cycle(self, report: CycleReport) -> None:
        with self.lock:
            self.accepted += [o.step for o in report.accepted]

    def on_tasks_settled(self, settled: SettledTasks) -> None:
        for task in settled.tasks():
            status = dict(settled.settled)[task.id]
            self.settled.append((task.id, status, task.status))


class Broken(WorkerHooks):
    """Fails everywhere it can: the worker must not notice."""

    def attempt_scope(self, claimed: ClaimedStep, template: str) -> None:
        raise RuntimeError("scope")

    def on_claimed(self, worker_id: str, claimed: Sequence[ClaimedStep]) -> None:
        raise RuntimeError("claimed")

    def on_cycle(self, report: CycleReport) -> None:
        raise RuntimeError("cycle")

    def on_tasks_settled(self, settled: SettledTasks) -> None:
        raise RuntimeError("settled")

    def on_service_call(self, call: ServiceCall) -> None:
        raise RuntimeError("service call")


def test_hooks_see_claims_attempts_cycles_and_settled_tasks(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "hooked",
        [
            step("first", handler_config={"fail": ["retryable"]}),
            step("second", after="first"),
        ],
    )
    task_id = tasker.create_task(ref, {"key": key}).id
    seen = Recorder()
    worker = tasker.worker(hooks=[Broken(), seen])
    tasker.work(worker=worker)

    assert tasker.get_task(task_id).status == TaskState.COMPLETE
    assert seen.claimed == ["first", "first", "second"]
    assert seen.entered == [("first", 1), ("first", 2), ("second", 1)]
    assert seen.finished == [
        ("first", StepState.WAITING_RETRY),
        ("first", StepState.COMPLETE),
        ("second", StepState.COMPLETE),
    ]
    assert seen.exited == ["first", "first", "second"]
    assert seen.accepted == ["first", "first", "second"]
    assert seen.settled == [(task_id, TaskState.COMPLETE, TaskState.COMPLETE)]


def test_settled_tasks_are_read_once_for_hooks_and_task_handlers(
    tasker: Tasker, load: LoadTemplate, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasker.store import tasks as task_store

    reads: list[list[int]] = []
    real = task_store.get_tasks

    def counted(conn: Any, ids: Sequence[int]) -> Any:
        reads.append(list(ids))
        return real(conn, ids)

    ref = load("annotated", [step("only")], task_handler_class=f"{H}:OrderTaskHandler")
    task_id = tasker.create_task(ref, {"key": key}).id
    monkeypatch.setattr(task_store, "get_tasks", counted)
    seen = Recorder()
    tasker.work(worker=tasker.worker(hooks=[seen]))

    assert reads == [[task_id]]  # one read, shared by the hook and the task handler
    assert seen.settled == [(task_id, TaskState.COMPLETE, TaskState.COMPLETE)]
    assert (tasker.get_task(task_id).annotations or {})["outcome"] == "ok"


def test_a_worker_without_hooks_runs_and_feeds_no_metrics(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    fresh = metrics.EngineMetrics(CollectorRegistry())
    previous = metrics.set_engine_metrics(fresh)
    try:
        ref = load("bare", [step("only")])
        task_id = tasker.create_task(ref, {"key": key}).id
        tasker.work(worker=tasker.worker(hooks=[]))
        assert tasker.get_task(task_id).status == TaskState.COMPLETE
        assert fresh.registry.get_sample_value("tasker_claim_latency_seconds_count") == 0
    finally:
        metrics.set_engine_metrics(previous)


@pytest.fixture
def default_metrics() -> Iterator[metrics.EngineMetrics]:
    previous = metrics.set_engine_metrics(metrics.EngineMetrics())
    yield metrics.engine_metrics()
    metrics.set_engine_metrics(previous)


def test_two_engines_keep_their_metrics_apart(
    make_tasker: MakeTasker,
    write_template: WriteTemplate,
    key: str,
    default_metrics: metrics.EngineMetrics,
) -> None:
    path = write_template(template_yaml("apart", [step("only")]), "apart.yaml")
    first, second = make_tasker(templates=path), make_tasker(templates=path)
    mine = {first: metrics.EngineMetrics(CollectorRegistry())}
    mine[second] = metrics.EngineMetrics(CollectorRegistry())
    for n, engine in enumerate((first, second, first)):
        task_id = engine.create_task("itest/apart", {"key": key, "n": n}).id
        engine.work(worker=engine.worker(hooks=default_hooks(metrics=mine[engine])))
        assert engine.get_task(task_id).status == TaskState.COMPLETE

    def completed(m: metrics.EngineMetrics) -> float | None:
        return m.registry.get_sample_value(
            "tasker_step_outcomes_total",
            {"template": "itest/apart@1.0.0", "step": "only", "outcome": "complete"},
        )

    assert completed(mine[first]) == 2
    assert completed(mine[second]) == 1
    assert completed(default_metrics) is None  # the process's default saw none of it
