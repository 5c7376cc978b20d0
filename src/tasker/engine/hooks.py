"""The worker's side of its hooks (`tasker.domain.hooks`): one dispatcher per worker that calls
only the hooks that override a method, and isolates their failures.

`Hooks` sorts the installed hooks by method once, when the worker is made, so a concern nobody
installed costs one empty-tuple test where the worker would call it, and the attempt path builds no
scope at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from types import TracebackType

from tasker.domain.hooks import (
    AttemptScope,
    CircuitMoved,
    CycleReport,
    ServiceCall,
    SettledTasks,
    WorkerHooks,
)
from tasker.domain.records import ClaimedStep, Outcome

log = logging.getLogger("tasker.worker")


def _overriding(hooks: Sequence[WorkerHooks], name: str) -> tuple[WorkerHooks, ...]:
    base = getattr(WorkerHooks, name)
    return tuple(h for h in hooks if getattr(type(h), name) is not base)


class _Scopes:
    """Several attempt scopes as one: entered in order, exited in reverse."""

    __slots__ = ("_scopes",)

    def __init__(self, scopes: list[AttemptScope]):
        self._scopes = scopes

    def __enter__(self) -> object:
        entered: list[AttemptScope] = []
        try:
            for scope in self._scopes:
                scope.__enter__()
                entered.append(scope)
        except BaseException as exc:
            for scope in reversed(entered):
                scope.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def finished(self, outcome: Outcome) -> None:
        for scope in self._scopes:
            scope.finished(outcome)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        for scope in reversed(self._scopes):
            scope.__exit__(exc_type, exc, tb)
        return None


class Hooks:
    """The hooks of one worker, by method."""

    __slots__ = (
        "_circuit",
        "_claimed",
        "_cycle",
        "_scopes",
        "_service",
        "_settled",
        "_stuck",
        "installed",
    )

    def __init__(self, hooks: Sequence[WorkerHooks] = ()):
        self.installed = tuple(hooks)
        self._scopes = _overriding(self.installed, "attempt_scope")
        self._claimed = _overriding(self.installed, "on_claimed")
        self._service = _overriding(self.installed, "on_service_call")
        self._cycle = _overriding(self.installed, "on_cycle")
        self._circuit = _overriding(self.installed, "on_circuit_change")
        self._stuck = _overriding(self.installed, "on_stuck_handlers")
        self._settled = _overriding(self.installed, "on_tasks_settled")

    # -- on the attempt path ----------------------------------------------------------------------
    def attempt_scope(self, claimed: ClaimedStep, template: str) -> AttemptScope | None:
        """The scope of one attempt: None when no hook wants one (the usual cheap case)."""
        hooks = self._scopes
        if not hooks:
            return None
        made: list[AttemptScope] = []
        for hook in hooks:
            try:
                scope = hook.attempt_scope(claimed, template)
            except Exception:
                log.exception("hook %r failed to open the scope of an attempt; ignored", hook)
                continue
            if scope is not None:
                made.append(scope)
        if not made:
            return None
        return made[0] if len(made) == 1 else _Scopes(made)

    @property
    def service_call(self) -> Callable[[ServiceCall], None]:
        """What a step context reports its service calls to (to no one when no hook listens: a
        context made by a worker never falls back to the process's own metrics)."""
        return self._report_service_call

    def _report_service_call(self, call: ServiceCall) -> None:
        for hook in self._service:
            try:
                hook.on_service_call(call)
            except Exception:
                log.exception("hook %r failed on a service call; the step is not affected", hook)

    # -- per cycle --------------------------------------------------------------------------------
    @property
    def wants_cycles(self) -> bool:
        return bool(self._cycle)

    def cycle(self, report: CycleReport) -> None:
        for hook in self._cycle:
            try:
                hook.on_cycle(report)
            except Exception:  # the cycle is committed: a hook must not make the worker rerun it
                log.exception("hook %r failed on a committed cycle; ignored", hook)

    def claimed(self, worker_id: str, claimed: Sequence[ClaimedStep]) -> None:
        for hook in self._claimed:
            try:
                hook.on_claimed(worker_id, claimed)
            except Exception:
                log.exception("hook %r failed on claimed steps; ignored", hook)

    def circuit_change(self, worker_id: str, change: CircuitMoved) -> None:
        for hook in self._circuit:
            try:
                hook.on_circuit_change(worker_id, change)
            except Exception:
                log.exception("hook %r failed on a circuit change; ignored", hook)

    def stuck_handlers(self, worker_id: str, stuck: int) -> None:
        for hook in self._stuck:
            try:
                hook.on_stuck_handlers(worker_id, stuck)
            except Exception:
                log.exception("hook %r failed on the stuck handler count; ignored", hook)

    # -- settled tasks (off the event loop) -------------------------------------------------------
    def wants_settled_tasks(self) -> bool:
        for hook in self._settled:
            try:
                if hook.observes_settled_tasks():
                    return True
            except Exception:
                log.exception("hook %r failed to say whether it observes settled tasks", hook)
        return False

    def tasks_settled(self, settled: SettledTasks) -> None:
        for hook in self._settled:
            try:
                if hook.observes_settled_tasks():
                    hook.on_tasks_settled(settled)
            except Exception:
                log.exception("hook %r failed on settled tasks; ignored", hook)
