"""The records the store reads back about what happened and what is running: transitions, the
durable event log, dependent systems and workers.

They stay plain dicts at runtime (what the API, the CLI's `--json`, the dashboard's templates and
the tests already read); the keys are fixed here so that every reader is type-checked. The store
builds each one from a row of its table, and `tests/unit/test_history_records.py` keeps the keys of
the row-shaped ones equal to their table's columns. Times are aware UTC datetimes; states are the
stored strings (`StepState`, `TaskState` and `CircuitState` are `StrEnum`s, so they compare equal).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict


class StepTransition(TypedDict):
    """A row of `tasker_step_transitions`: one state change of one step, the audit trail."""

    id: int
    step_id: int
    task_id: int
    #: None for the step's first row (its creation).
    from_state: str | None
    to_state: str
    attempt: int
    at: datetime
    #: The worker that made the change; None for the engine's own (creation, a manual resolve).
    worker: str | None
    #: The failed attempt's error class and message, on the row that ended it.
    error_class: str | None
    error_message: str | None
    #: How long the attempt ran, on the row that ended it.
    duration_ms: float | None
    #: Why the step moved when no attempt moved it: a skip's condition and value, the skipped
    #: parent it followed, a condition that failed.
    reason: str | None


class TaskTransition(TypedDict):
    """A row of `tasker_task_transitions`: one state change of one task."""

    id: int
    task_id: int
    #: None for the task's creation.
    from_state: str | None
    to_state: str
    at: datetime
    worker: str | None
    reason: str | None


class CircuitChange(TypedDict):
    """A row of `tasker_circuit_transitions`: a dependent system's circuit changed state."""

    id: int
    system: str
    from_state: str
    to_state: str
    at: datetime
    worker: str | None
    reason: str | None


class SystemReport(TypedDict):
    """A dependent system as `Tasker.systems.report()` describes it: its circuit, limits and steps.

    Every system seen in steps or configured; an unconfigured one reports the defaults.
    """

    name: str
    circuit_state: str
    consecutive_failures: int
    open_until: datetime | None
    max_in_flight: int | None
    failure_threshold: int
    #: The base cool-down; `current_cooldown_seconds` is the one in force (None while closed).
    cooldown_seconds: float
    current_cooldown_seconds: float | None
    max_outage_seconds: float
    #: When the current streak of failures that are the system's fault began (None: it answers).
    failing_since: datetime | None
    #: A rate limit per time window (`100/minute`; None: none), the steps started in its current
    #: window, and how many due steps it deferred to a later slot since it was set.
    rate_limit: str | None
    rate_used: int
    rate_deferrals: int
    in_flight: int
    #: Steps ready or waiting for a retry.
    waiting: int
    errored_steps: int
    #: Handler -> steps waiting because no worker could import it (`HandlerUnavailable`).
    unloadable_handlers: dict[str, int]


class WorkerRecord(TypedDict):
    """A row of `tasker_workers`: a long-running worker process and when it was last heard from."""

    id: str
    hostname: str
    pid: int
    #: The namespaces it serves; None for all of them.
    namespaces: list[str] | None
    concurrency: int
    started_at: datetime
    last_seen_at: datetime
    stopped_at: datetime | None
    steps_run: int


class EventFields(TypedDict):
    """An event of the durable log, without its cursor (what the store reads before paging)."""

    #: The source and the row's id there, e.g. `step:42`, `task:7`, `circuit:3`, `custom:9`.
    id: str
    #: The event's name, e.g. `step.completed` or a template's own (`ctx.publish`).
    event: str
    at: datetime
    task_id: int | None
    step_id: int | None
    step: str | None
    namespace: str | None
    #: `namespace/name@version` of the task's template.
    template: str | None
    attempt: int | None
    worker: str | None
    #: The event's payload: the transition's details, or a custom event's own JSON.
    data: dict[str, Any]


class EventRecord(EventFields):
    """An event of the durable log as `Tasker.history.read_events` hands it out."""

    #: Where to continue reading after this event (the SSE id).
    cursor: str
