"""Read models handed to users (`Task`, `Step`) and the records a worker passes around while it runs
steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NotRequired, Required, TypedDict

from tasker.domain.states import StepState, TaskState

#: A failure as the engine records it: in `Step.last_error`, in the API, in an attempt's outcome.
#: It stays a JSON object (the stored and served form); the keys are fixed here so that every reader
#: is type-checked. Functional syntax because one key is `class`.
FailureRecord = TypedDict(
    "FailureRecord",
    {
        # The exception's class name, e.g. `RetryableError`, `LeaseExpired`, `OutcomeNotStorable`.
        "class": Required[str],
        "message": Required[str],
        # The engine tries the step again (before the retry limit is spent).
        "retryable": NotRequired[bool],
        # The failure says the dependent system is unwell (it counts towards its circuit breaker).
        "system_fault": NotRequired[bool],
        # A handler's own code (`StepFailure.error_code`, `HTTP_409`) and its JSON context.
        "error_code": NotRequired[str],
        "context": NotRequired[Any],
        "traceback": NotRequired[str],
        # The handler asked for a retry delay the engine could not use; why.
        "retry_after_ignored": NotRequired[str],
        # The handler class no worker could import (`HandlerUnavailable`).
        "handler": NotRequired[str],
        # The step waits for this dependent system to answer again; no attempt is spent meanwhile.
        "waiting_for_system": NotRequired[str],
        # The failure says nothing about the dependent system, not even that it answered (the
        # handler could not be loaded, or broke the template's contract): the circuit ignores it.
        "no_system_evidence": NotRequired[bool],
    },
)


@dataclass(frozen=True)
class Step:
    id: int
    task_id: int
    name: str
    status: StepState
    attempts: int
    retry_limit: int
    retryable: bool
    dependent_system: str
    results: dict[str, Any] | None
    last_error: FailureRecord | None
    run_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    created_at: datetime
    position: int
    idempotency_key: str
    #: A fan-out's instance: the fan-out step's id, the item's index and the item (None otherwise).
    instance_of: int | None = None
    item_index: int | None = None
    item: Any = None
    #: A fan-out step: how many instances it expanded into (None before, or for other steps).
    fanout: int | None = None
    #: Why a control-flow decision skipped the step, or that its condition held (None: no
    #: decision was made).
    decision: str | None = None
    #: An undo row (`undo:<step>`): the id of the step it undoes (None for any other step).
    compensates: int | None = None
    #: A durable wait (JSON of `tasker.domain.waits.Wait`): what the step sleeps or waits for, or
    #: how its wait ended; None for a step that never waited.
    wait: dict[str, Any] | None = None

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return max(0.0, (self.finished_at - self.started_at).total_seconds())
        return None


@dataclass(frozen=True)
class Task:
    id: int
    namespace: str
    name: str
    version: str
    status: TaskState
    context: dict[str, Any]
    idempotency_key: str
    correlation_id: str
    annotations: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    steps: list[Step] = field(default_factory=list)
    #: True when `create_task` found an existing task with the same idempotency key and returned it.
    deduplicated: bool = False
    #: A child task: the task and the `task:` step that created it (None for other tasks).
    parent_task_id: int | None = None
    parent_step_id: int | None = None
    #: A delayed start: when its first steps become claimable (None: at creation).
    starts_at: datetime | None = None
    #: Past this time the task ends in `error` (`deadline_exceeded`) if it has not finished.
    deadline_at: datetime | None = None
    #: Claims take its steps ahead of lower-priority work (`tasker.domain.priorities`).
    priority: int = 0
    #: Its fair-share key, `<template scope>:<value>` (`tasker.domain.fairness`), if it has one.
    concurrency_key: str | None = None

    @property
    def template_key(self) -> str:
        return f"{self.namespace}/{self.name}@{self.version}"

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        names = [s.name for s in self.steps if s.instance_of is None]
        raise KeyError(f"task {self.id} has no step '{name}'; steps: {', '.join(names)}")

    def instances(self, step: Step) -> list[Step]:
        """A fan-out step's instances, in item order."""
        found = [s for s in self.steps if s.instance_of == step.id]
        return sorted(found, key=lambda s: s.item_index or 0)

    def undo_of(self, step: Step) -> Step | None:
        """The row that undoes `step`, once its task is compensating (None otherwise)."""
        return next((s for s in self.steps if s.compensates == step.id), None)

    def fanout_progress(self, step: Step) -> str:
        """`n/N done` of a fan-out step's finished instances ("" for any other step, or one that
        has not expanded)."""
        if step.fanout is None:
            return ""
        done = sum(1 for s in self.instances(step) if s.status in _FINISHED_INSTANCE)
        return f"{done}/{step.fanout} done"

    def diagram_states(self) -> tuple[dict[str, str], dict[str, str]]:
        """Each template step's state, and the notes of fan-out steps (`n/N done`) and of steps
        being undone (`undo: complete`), for a diagram of the task."""
        steps = [s for s in self.steps if s.instance_of is None and s.compensates is None]
        states = {s.name: str(s.status) for s in steps}
        notes = {s.name: self.fanout_progress(s) for s in steps if s.fanout is not None}
        for s in steps:
            undo = self.undo_of(s)
            if undo is not None:
                notes[s.name] = f"undo: {undo.status}"
        return states, notes

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return max(0.0, (self.finished_at - self.started_at).total_seconds())
        return None


#: The instance states `fanout_progress` counts as done.
_FINISHED_INSTANCE = frozenset(
    {StepState.COMPLETE, StepState.RESOLVED_MANUALLY, StepState.SKIPPED, StepState.CANCELLED}
)


@dataclass(frozen=True)
class Signal:
    """A signal sent to a task (`Tasker.signal`): what a `wait_for` step or a handler waiting with
    `ctx.wait_for_signal` receives."""

    id: int
    task_id: int
    name: str
    payload: Any
    idempotency_key: str | None
    created_at: datetime
    sender: str | None = None
    #: True when `Tasker.signal` found a signal with the same idempotency key and returned it.
    deduplicated: bool = False
    #: The waiting steps this signal woke (their ids), when it was sent.
    woke: tuple[int, ...] = ()


@dataclass(frozen=True)
class ClaimedStep:
    """A step a worker holds under a lease, with everything its handler needs."""

    step_id: int
    task_id: int
    name: str
    template_id: int
    attempt: int
    retry_limit: int
    claim_token: int
    idempotency_key: str
    dependent_system: str
    context: dict[str, Any]
    correlation_id: str
    results: dict[str, dict[str, Any]]
    from_state: StepState
    #: Ids of every step of the task by name, so completing this step can ready its children by id.
    step_ids: dict[str, int] = field(default_factory=dict)
    #: This attempt is the one probe let through a half-open circuit.
    probe: bool = False
    #: A fan-out instance's item and its index in the list (None for other steps).
    item: Any = None
    index: int | None = None


@dataclass(frozen=True)
class ChildTask:
    """A child task a `task:` step creates: its template (pinned as any task's), its context
    (validated), its idempotency key (derived from the step's) and the parent's correlation id."""

    template: Any  # a tasker.domain.templates.TaskTemplate
    context: dict[str, Any]
    idempotency_key: str
    correlation_id: str
    #: Its template's priority and its fair-share key (`TaskTemplate.concurrency_key_of`).
    priority: int = 0
    concurrency_key: str | None = None


@dataclass
class Outcome:
    """What happened to one attempt; the store applies it fenced by `claim_token`."""

    step_id: int
    task_id: int
    claim_token: int
    attempt: int
    #: complete, waiting_retry or error.
    state: StepState
    results: dict[str, Any] | None = None
    error: FailureRecord | None = None
    retry_delay: float = 0.0
    duration_ms: float = 0.0
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: Step ids of this step's children, when the worker knows them (saves reading the edges).
    children: list[int] | None = None
    #: A child waits for a control-flow decision (`tasker.domain.control.gated`): only the general
    #: path, which decides it in the same transaction, may store this outcome.
    gates_children: bool = False
    #: The completion of a fan-out step whose instances all completed: the store gathers their
    #: results into this step's (`completion.collect_fanouts`), on the general path.
    collects: bool = False
    #: A `task:` step's first attempt: the child task to create with the step's parking (in the
    #: same transaction); the step then waits, with no `run_at`, until the child settles.
    child: ChildTask | None = None
    #: The step waits for its child task (no `run_at`: the child's settling wakes it).
    parks: bool = False
    dependent_system: str = ""
    step: str = ""
    probe: bool = False
    #: A failed circuit probe: the attempt is given back, the step waits for the circuit instead.
    refund_attempt: bool = False
    #: The attempt failed and the step's retry limit allows no other (the outage hold may still
    #: wait).
    exhausted: bool = False
    #: A durable wait began, goes on or ended (`tasker.engine.waits`): when `wait_note` is set the
    #: store writes `wait` (JSON of `tasker.domain.waits.Wait`; None clears it) and the note as the
    #: step's decision, on the general path.
    wait: dict[str, Any] | None = None
    wait_note: str | None = None
    #: The step parks until this signal: the store checks in the same transaction whether the
    #: signal has arrived meanwhile (then the step wakes at once).
    waits_for: str | None = None

    @property
    def transient_failure(self) -> bool:
        """A failure that says the dependent system is unwell, as opposed to an answer or a bug.

        `tasker.domain.failures.is_system_fault` decides, when the attempt's error is described:
        connection errors, timeouts and `RetryableError`s (unless `system_fault=False`) count; a
        `KeyError` in a handler, or a "not done yet", is retried but is no such sign.
        """
        error = self.error
        if error is None or self.state == StepState.COMPLETE or not error.get("retryable"):
            return False
        return error.get("system_fault") is True
