"""What user code implements (`StepHandler`, `TaskHandler`) and sees (`StepContext`).

The context is deliberately narrow: a handler gets its inputs, a stable idempotency key and a way to
log and publish, but no store or engine object, so business logic cannot reach around the engine's
guarantees.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from tasker.domain.errors import TaskerError
from tasker.domain.failures import NoSystemEvidence
from tasker.domain.hooks import ServiceCall
from tasker.domain.waits import WaitKind, duration_seconds
from tasker.observability.logging import step_logger

if TYPE_CHECKING:
    from tasker.domain.records import Task


class UndeclaredEventError(TaskerError, NoSystemEvidence):
    """A handler published a custom event its template does not declare under `custom_events`."""


class UndeclaredSignalError(TaskerError, NoSystemEvidence):
    """A handler waited for a signal its step does not declare under `signals` (or `wait_for`)."""


@dataclass(frozen=True)
class WaitRequest:
    """What a handler returns to park its step until a time or a signal (`StepContext.sleep`,
    `StepContext.wait_for_signal`): the step holds no worker slot, lease or attempt meanwhile,
    then its handler is called again with `ctx.state` set to `state`."""

    kind: WaitKind
    #: How long to sleep, or the signal's timeout (None: wait for the signal for ever).
    seconds: float | None
    signal: str | None = None
    state: Any = None


#: Where a step context reports its handler's calls to dependent systems (the worker's hooks).
ServiceCallSink = Callable[[ServiceCall], None]


class TaskPort(Protocol):
    """The two engine operations a step may perform on other tasks: start one, and look one up."""

    def create_task(
        self,
        template: str,
        context: dict[str, Any],
        *,
        version: str | None,
        idempotency_key: str,
        correlation_id: str,
    ) -> Task: ...

    def get_task(self, task_id: int) -> Task: ...


@dataclass
class StepContext:
    """Everything a step handler may read, plus `log` and `publish`."""

    task_id: int
    step_id: int
    step_name: str
    namespace: str
    task_name: str
    version: str
    context: dict[str, Any]
    #: The results of the task's finished steps by name (a fan-out step's: the list of its
    #: instances' results, in item order); steps that were skipped are absent.
    results: Mapping[str, Any]
    handler_config: dict[str, Any]
    attempt: int
    retry_limit: int
    idempotency_key: str
    correlation_id: str
    dependent_system: str
    declared_events: frozenset[str] = frozenset()
    #: A fan-out instance's item (from its step's `foreach` list) and its index; None otherwise.
    item: Any = None
    index: int | None = None
    #: A compensation: the step it undoes, and that step's results (what to undo: the charge's id,
    #: the reservation's number); None for any other step.
    forward_step: str | None = None
    forward_results: Mapping[str, Any] | None = None
    #: What this handler passed as `state` when it last parked its step (`sleep`,
    #: `wait_for_signal`); None on its first call.
    state: Any = None
    #: The step's wait for a signal ended at its timeout, not with the signal.
    timed_out: bool = False
    #: The signals this step declares (`wait_for`, `signals`).
    declared_signals: frozenset[str] = frozenset()
    #: The engine's clock (set by the worker; see `now`).
    _clock: Callable[[], datetime] | None = None
    #: Payloads of the declared signals that have arrived, by name (the first of each name).
    signals: Mapping[str, Any] = field(default_factory=dict)
    published: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _logger: logging.LoggerAdapter[logging.Logger] | None = None
    _tasks: TaskPort | None = None
    #: Set by the worker that runs the attempt; None for a context made outside an engine.
    _on_service_call: ServiceCallSink | None = None

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records carry task, step, attempt and correlation id (and a call's own
        `extra`)."""
        if self._logger is None:
            self._logger = step_logger(
                f"tasker.handlers.{self.namespace}.{self.task_name}",
                {
                    "task_id": self.task_id,
                    "template": f"{self.namespace}/{self.task_name}@{self.version}",
                    "step": self.step_name,
                    "attempt": self.attempt,
                    "correlation_id": self.correlation_id,
                },
            )
        return self._logger

    @property
    def now(self) -> datetime | None:
        """The engine's time (UTC): use it rather than the wall clock in a handler that decides by
        time, so that tests on a virtual clock (`tasker.testing`) see the time they set. None for a
        context made outside an engine."""
        return self._clock() if self._clock is not None else None

    @property
    def is_retry(self) -> bool:
        return self.attempt > 1

    def result_of(self, step_name: str) -> Any:
        """Results of a finished step (a fan-out step's: the list of its instances' results, in
        item order); a missing one raises `KeyError` with the names known (a template mistake, or
        a step that was skipped)."""
        try:
            return self.results[step_name]
        except KeyError:
            raise KeyError(
                f"no results for step '{step_name}'; finished steps:"
                f" {', '.join(self.results) or 'none'}"
            ) from None

    def signal(self, name: str) -> Any:
        """The payload of the signal `name` sent to this task (None when none has arrived)."""
        self._check_signal(name)
        return self.signals.get(name)

    def has_signal(self, name: str) -> bool:
        """Whether the signal `name` has arrived (its payload may be None)."""
        self._check_signal(name)
        return name in self.signals

    def sleep(self, seconds: float | str, *, state: Any = None) -> WaitRequest:
        """Return this from `process` to be called again after `seconds` (a number, `PT10M` or
        `10m`), on any worker, with `ctx.state` set to `state` (JSON). The step holds no worker
        slot, lease or attempt while it sleeps."""
        return WaitRequest(WaitKind.SLEEP, duration_seconds(seconds), None, state)

    def wait_for_signal(
        self, name: str, *, timeout: float | str | None = None, state: Any = None
    ) -> WaitRequest:
        """Return this from `process` to be called again when the signal `name` arrives
        (`ctx.signal(name)` then holds its payload) or `timeout` passes (`ctx.timed_out`), with
        `ctx.state` set to `state`. The step holds no worker slot, lease or attempt meanwhile.

        Check `ctx.signal(name)` first: waiting for a signal that has already arrived is refused.
        """
        self._check_signal(name)
        if name in self.signals:
            raise UndeclaredSignalError(
                f"signal '{name}' has already arrived; read it with ctx.signal('{name}') instead"
                " of waiting for it"
            )
        seconds = None if timeout is None else duration_seconds(timeout)
        return WaitRequest(WaitKind.SIGNAL, seconds, name, state)

    def _check_signal(self, name: str) -> None:
        if name not in self.declared_signals:
            raise UndeclaredSignalError(
                f"signal '{name}' is not declared by step '{self.step_name}' of"
                f" {self.namespace}/{self.task_name}; declare it under the step's signals: (or"
                f" wait_for:); declared: {', '.join(sorted(self.declared_signals)) or 'none'}"
            )

    def publish(self, event: str, payload: Mapping[str, Any] | None = None) -> None:
        """Publish a custom event declared in the template; delivered after the step's outcome is
        stored."""
        if event not in self.declared_events:
            raise UndeclaredEventError(
                f"event '{event}' is not declared in custom_events of"
                f" {self.namespace}/{self.task_name}; declared:"
                f" {', '.join(sorted(self.declared_events)) or 'none'}"
            )
        self.published.append((event, dict(payload or {})))

    def create_task(
        self,
        template: str,
        context: Mapping[str, Any] | None = None,
        *,
        version: str | None = None,
        key: str = "",
    ) -> int:
        """Start another task (any namespace) from this step; returns its id.

        Idempotent across the retries of this step: the child's idempotency key derives from this
        step's, so a step that dies after creating the child finds the same task on its next attempt
        instead of starting a second one. Pass a distinct `key` to start several tasks of one
        template from one step. The child inherits this task's correlation id.
        """
        if self._tasks is None:
            raise TaskerError(
                "this step context is not attached to an engine; create_task is unavailable"
            )
        task = self._tasks.create_task(
            template,
            dict(context or {}),
            version=version,
            idempotency_key=f"spawned:{self.idempotency_key}:{template}:{key}"[:255],
            correlation_id=self.correlation_id,
        )
        return task.id

    def get_task(self, task_id: int) -> Task:
        """Read another task (status, steps and their results): e.g. a child created with
        `create_task`.

        To wait for a child without holding a worker, raise `RetryableError(retry_after=...)` while
        it runs.
        """
        if self._tasks is None:
            raise TaskerError(
                "this step context is not attached to an engine; get_task is unavailable"
            )
        return self._tasks.get_task(task_id)


class StepHandler:
    """Base class of step handlers: implement `process(ctx)` (plain or `async def`) returning a
    dict.

    Raise `PermanentError` for failures that retrying cannot fix and `RetryableError` for transient
    ones; any other exception counts as retryable. One instance handles one attempt.
    """

    process: (
        Callable[[StepContext], dict[str, Any] | None]
        | Callable[[StepContext], Awaitable[dict[str, Any] | None]]
    )

    def process(self, ctx: StepContext) -> dict[str, Any] | None:  # type: ignore[no-redef]
        raise NotImplementedError(f"{type(self).__name__} must implement process(ctx)")


class TaskHandler:
    """Optional workflow-level hooks named by a template's `task_handler_class` (the
    "ConfiguredTask").

    `prepare_context` derives settings before the first step and its result is what is stored; the
    `on_complete` / `on_error` hooks return annotations that are stored with the task.
    """

    def prepare_context(self, context: dict[str, Any]) -> dict[str, Any]:
        return context

    def on_complete(self, task: Task) -> dict[str, Any] | None:
        return None

    def on_error(self, task: Task) -> dict[str, Any] | None:
        return None
