"""What a worker tells the code that watches it: the hook interface for metrics, traces and logs.

The worker and the executor import no observability module. They call the hooks installed on them
(`Worker(hooks=...)`; `Tasker` installs `tasker.observability.hooks.default_hooks()`), in the
manner of Dramatiq's middleware: subclass `WorkerHooks`, override what you want to observe, leave
the rest. A method left as inherited is never called, so an uninstalled concern costs nothing on the
hot path.

A hook observes; it cannot change what the worker does. An exception it raises is logged and
ignored (the attempt, the cycle and the worker go on), except in an attempt scope's `__enter__` and
`__exit__`, which wrap the handler and must not fail.

Where each method is called:

- `attempt_scope`, `on_claimed`, `on_circuit_change`, `on_stuck_handlers`: the worker's event loop;
- `on_cycle`: the worker's database thread, once the cycle's transaction committed;
- `on_service_call`: wherever the handler runs (a handler thread, or the event loop);
- `on_tasks_settled`: a background thread of the worker, off the event loop;
- `on_tasks_purged`: the thread of the purge (the housekeeping job's, off the event loop, or the
  caller's of `engine.retention.purge`), once its batch committed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tasker.domain.records import ClaimedStep, Outcome, Task


class AttemptScope(Protocol):
    """Wraps one attempt: entered before its handler starts (in the attempt's own context, so
    context variables it sets are seen by the handler and its log lines), told the outcome, then
    exited. An exception passes through `__exit__` only when the worker cancels the attempt."""

    def __enter__(self) -> object: ...

    def finished(self, outcome: Outcome) -> None: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...


@dataclass(frozen=True, slots=True)
class ServiceCall:
    """One outgoing call of a handler to a dependent system (`ApiStepHandler` reports each)."""

    system: str
    method: str
    #: The HTTP status code, or the kind of error when no answer came (`timeout`, `connect_error`).
    status: str
    seconds: float


@dataclass(frozen=True, slots=True)
class CycleReport:
    """What one committed worker cycle did."""

    worker_id: str
    #: Every outcome the cycle tried to store, with the claim it ends.
    done: Sequence[tuple[Outcome, ClaimedStep]]
    #: The outcomes the store took; the others had lost their lease (another worker owns the step).
    accepted: Sequence[Outcome]
    #: The steps the cycle claimed.
    claimed: Sequence[ClaimedStep]
    #: From the start of the claim to the commit, when the cycle claimed; else None.
    claim_seconds: float | None
    #: The template key (`namespace/name@version`) of a template id; raises KeyError for one the
    #: worker does not know.
    template_key: Callable[[int], str]
    #: Due steps the claim deferred to a later slot of their system's rate limit, by system.
    deferred: Mapping[str, int] = field(default_factory=dict)
    #: Due steps the claim passed over because their fair-share key was full, by template scope.
    key_waits: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CircuitMoved:
    """A dependent system's circuit moved, in a transaction that committed."""

    system: str
    from_state: str
    to_state: str
    reason: str


@dataclass(frozen=True, slots=True)
class TasksPurged:
    """Finished tasks deleted in a transaction that committed."""

    #: (namespace, status, how many) for each namespace and status of the deleted tasks.
    counts: Sequence[tuple[str, str, int]]
    #: `retention` (the housekeeping job) or `purge` (`engine.retention.purge`, by hand).
    trigger: str
    #: The worker whose housekeeping job deleted them (None: by hand).
    worker_id: str | None = None


class SettledTasks(Protocol):
    """The tasks one cycle settled. `settled` is what the cycle knows; `tasks()` reads the task
    records, on first use only, and every hook of the cycle shares that one read."""

    @property
    def settled(self) -> Sequence[tuple[int, str]]: ...

    def tasks(self) -> Sequence[Task]: ...


class WorkerHooks:
    """Base class of worker hooks: every method does nothing; override the ones you need."""

    def attempt_scope(self, claimed: ClaimedStep, template: str) -> AttemptScope | None:
        """A scope around one attempt of `claimed` (template key `template`), or None for none."""
        return None

    def on_claimed(self, worker_id: str, claimed: Sequence[ClaimedStep]) -> None:
        """A cycle claimed these steps; their attempts start now."""

    def on_service_call(self, call: ServiceCall) -> None:
        """A handler called a dependent system."""

    def on_cycle(self, report: CycleReport) -> None:
        """A cycle committed: the outcomes it stored, what it claimed."""

    def on_circuit_change(self, worker_id: str, change: CircuitMoved) -> None:
        """A circuit moved in a cycle this worker committed."""

    def on_stuck_handlers(self, worker_id: str, stuck: int) -> None:
        """How many handler threads are stuck in timed-out sync handlers, when that changes."""

    def observes_settled_tasks(self) -> bool:
        """Whether `on_tasks_settled` wants the settled tasks now (checked on the event loop; when
        no hook wants them and no task handler needs them, the worker does not read them)."""
        return type(self).on_tasks_settled is not WorkerHooks.on_tasks_settled

    def on_tasks_settled(self, settled: SettledTasks) -> None:
        """Tasks reached an end (complete, error, cancelled, resolved) or were reopened."""

    def on_tasks_purged(self, purged: TasksPurged) -> None:
        """Finished tasks were deleted (by their retention, or by hand)."""
