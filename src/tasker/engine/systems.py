"""Dependent systems, namespace limits and workers: the `engine.systems` part of `Tasker`.

Circuit breakers and concurrency limits are stored, so every worker on the store honours them;
this part sets and reads them, and lists the long-running workers heard from recently.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from tasker.domain.errors import TaskerInputError
from tasker.domain.fairness import key_scope
from tasker.domain.history import CircuitChange, SystemReport, WorkerRecord
from tasker.domain.templates import DependentSystemSettings, TaskTemplate
from tasker.engine import clock
from tasker.engine.running import RunningWorkers
from tasker.events.bus import EventBus
from tasker.store import systems as system_store
from tasker.store import workers as workers_store
from tasker.store.database import Database
from tasker.store.transactions import journaled


def utcnow() -> datetime:
    return clock.now()


class Systems:
    """Circuits and limits of the dependent systems and namespaces of one store, and its workers."""

    def __init__(self, db: Database, bus: EventBus, running: RunningWorkers):
        self.db = db
        self.bus = bus
        self._running = running
        #: The view of circuits and limits this engine's workers plan their claims on.
        self.views = system_store.ViewCache()

    def configure(self, name: str, **settings: Any) -> None:
        """Set `max_in_flight`, `rate_limit` (`100/minute`, `{"limit": 100, "per": "minute"}` or
        None), `failure_threshold`, `cooldown_seconds`, `max_cooldown_seconds` of a system.

        Values outside the ranges of `tasker.domain.bounds` (NaN, infinity, booleans, absurd sizes)
        are refused with `TaskerInputError` before anything is written.
        """
        try:
            with self.db.write() as conn:
                system_store.configure(conn, name, utcnow(), **settings)
            self.views.invalidate()
        except ValueError as exc:
            raise TaskerInputError(f"dependent system '{name}': {exc}") from None

    def apply_templates(self, loaded: Sequence[TaskTemplate]) -> None:
        """Store the limits and breaker settings templates declare, so every worker honours them,
        and their fair-share limits (dropping those a template no longer declares)."""
        declared = [t for t in loaded if t.dependent_systems or t.namespace_max_in_flight]
        keyed = {t.key_scope: t.max_in_flight_per_key for t in loaded if t.key_scope}
        unkeyed = [
            key_scope(t.namespace_name, t.name, t.version) for t in loaded if not t.key_scope
        ]
        with self.db.read() as conn:
            stale = system_store.key_limit_scopes(conn, unkeyed) if unkeyed else []
        if not declared and not keyed and not stale:
            return
        now = utcnow()
        try:
            with self.db.write() as conn:
                for t in declared:
                    for name, cfg in t.dependent_systems.items():
                        system_store.configure(conn, name, now, **_settings(cfg))
                    if t.namespace_max_in_flight:
                        system_store.set_namespace_limit(
                            conn, t.namespace_name, t.namespace_max_in_flight, now
                        )
                for scope, limit in sorted(keyed.items()):
                    system_store.set_key_limit(conn, scope, limit, now)
                for scope in stale:
                    system_store.set_key_limit(conn, scope, None, now)
        except ValueError as exc:
            raise TaskerInputError(f"dependent_systems: {exc}") from None
        self.views.invalidate()

    def key_limits(self) -> dict[str, int]:
        """The fair-share limits in force: most steps in flight per key, by template
        (`namespace/name@version`)."""
        with self.db.read() as conn:
            return system_store.key_limit_rows(conn)

    def set_namespace_limit(self, namespace: str, max_in_flight: int | None) -> None:
        """Cap the steps of a namespace running at once across all workers (None removes the
        cap)."""
        with self.db.write() as conn:
            system_store.set_namespace_limit(conn, namespace, max_in_flight, utcnow())
        self.views.invalidate()

    def report(self) -> list[SystemReport]:
        """Each dependent system: circuit state, consecutive failures, in flight, waiting,
        limits."""
        with self.db.read() as conn:
            return system_store.report(conn, utcnow())

    def namespace_limits(self) -> dict[str, int]:
        """Namespace -> the most of its steps that may run at once."""
        with self.db.read() as conn:
            return system_store.namespace_limit_rows(conn)

    def circuit_history(
        self, system: str | None = None, *, last: int | None = None
    ) -> list[CircuitChange]:
        """Circuit changes, oldest first (with `last`: only the newest `last`)."""
        with self.db.read() as conn:
            return system_store.circuit_history(conn, system, last=last)

    def reset_circuit(self, system: str) -> bool:
        """Close a system's circuit by hand (an operator knows it is healthy again)."""
        found, events = journaled(
            self.db, lambda conn, j: system_store.reset(conn, j, system), clock=clock.now
        )
        self.views.invalidate()
        for name, payload in events:
            self.bus.publish(name, payload)
        self._running.notify()
        return found

    def workers(
        self, within_seconds: float = workers_store.ALIVE_WITHIN_SECONDS
    ) -> list[WorkerRecord]:
        """Long-running workers heard from within `within_seconds` (any process, any machine)."""
        with self.db.read() as conn:
            return workers_store.recent(conn, utcnow(), within_seconds)


def _settings(cfg: DependentSystemSettings) -> dict[str, Any]:
    """A template's settings of one system, as `configure` takes them (None left out)."""
    out = cfg.model_dump(exclude_none=True)
    if cfg.rate_limit is not None:
        out["rate_limit"] = cfg.rate_limit.rate
    return out
