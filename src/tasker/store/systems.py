"""Dependent systems: the shared circuit breaker and the in-flight limits every worker honours.

A system's row exists once it is configured or has failed. The circuit opens after N consecutive
failures that are the system's fault (`tasker.domain.failures`: connection errors, timeouts, `RetryableError`);
the `default` system, shared by every template that names none, has no circuit until configured.
While a circuit is open its steps are not claimed, so they wait without spending attempts.
After the cool-down one worker turns it half-open and claims a single probe step: success closes the
circuit, failure opens it again with a doubled cool-down (capped) and gives the probe its attempt back,
so an outage of any length never exhausts a step's retries.

Claims read a `SystemsView` (rows that restrict anything, refreshed at most every few hundred ms by each
worker); limits are then checked exactly, under row locks on PostgreSQL.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.engine import Connection

from tasker.domain.bounds import check_system_settings
from tasker.domain.failures import DEFAULT_MAX_OUTAGE_SECONDS, GAVE_UP, outage_verdict
from tasker.domain.records import FailureRecord, Outcome
from tasker.domain.states import StepState
from tasker.store.journal import Journal
from tasker.store.schema import circuit_transitions, dependent_systems, namespace_limits, steps
from tasker.templates.model import DEFAULT_DEPENDENT_SYSTEM

DEFAULT_FAILURE_THRESHOLD = 5
DEFAULT_COOLDOWN_SECONDS = 5.0
DEFAULT_MAX_COOLDOWN_SECONDS = 30.0
RESERVED = -1  # probe_step_id while a claim transaction is choosing the probe

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
_EVENTS = {OPEN: "circuit.opened", CLOSED: "circuit.closed", HALF_OPEN: "circuit.half_open"}

_VIEW = select(dependent_systems).where(
    or_(
        dependent_systems.c.circuit_state != CLOSED,
        dependent_systems.c.consecutive_failures > 0,
        dependent_systems.c.max_in_flight.is_not(None),
        (dependent_systems.c.name == DEFAULT_DEPENDENT_SYSTEM)
        & dependent_systems.c.failure_threshold.is_not(None),
    )
)
_NS_LIMITS = select(namespace_limits)


@dataclass(frozen=True)
class SystemsView:
    """The dependent systems that restrict claims or have failures on record, and the namespace limits."""

    systems: dict[str, Any] = field(default_factory=dict)
    namespace_limits: dict[str, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.systems and not self.namespace_limits

    def has_breaker(self, system: str) -> bool:
        """Whether failures of this system feed a circuit breaker.

        Every named system has one. The `default` system (steps of templates that name none) has one
        only once it is configured (`tasker systems set default --failure-threshold N`, or a template's
        `dependent_systems: {default: ...}`): unrelated templates share it, so a bug in one of them
        must not stall the others.
        """
        return system != DEFAULT_DEPENDENT_SYSTEM or system in self.systems

    def has_failures(self, system: str) -> bool:
        row = self.systems.get(system)
        return row is not None and row.consecutive_failures > 0


def load_view(conn: Connection) -> SystemsView:
    return SystemsView(
        {r.name: r for r in conn.execute(_VIEW)},
        {r.namespace: r.max_in_flight for r in conn.execute(_NS_LIMITS)},
    )


@dataclass
class ClaimPlan:
    """What a claim must respect now: systems it may not touch, and room left under each limit."""

    blocked: set[str] = field(default_factory=set)
    system_room: dict[str, int] = field(default_factory=dict)
    namespace_room: dict[str, int] = field(default_factory=dict)
    probes: set[str] = field(default_factory=set)

    @property
    def unrestricted(self) -> bool:
        return not (self.blocked or self.system_room or self.namespace_room)

    def admit(self, system: str, namespace: str) -> bool:
        """Take one unit of room for a step of this system and namespace, if there is room."""
        if system in self.blocked:
            return False
        if self.system_room.get(system, 1) <= 0 or self.namespace_room.get(namespace, 1) <= 0:
            return False
        if system in self.system_room:
            self.system_room[system] -= 1
        if namespace in self.namespace_room:
            self.namespace_room[namespace] -= 1
        return True


def _transition(
    conn: Connection, journal: Journal, system: str, src: str, dst: str, reason: str
) -> None:
    conn.execute(
        insert(circuit_transitions),
        {
            "system": system,
            "from_state": src,
            "to_state": dst,
            "at": journal.now,
            "worker": journal.worker,
            "reason": reason,
        },
    )
    journal.event(
        _EVENTS[dst], {"system": system, "from_state": src, "to_state": dst, "reason": reason}
    )
    journal.circuits.append((system, src, dst, reason))


def plan_claim(conn: Connection, journal: Journal, view: SystemsView, *, lock: bool) -> ClaimPlan:
    """Decide what this claim may take; turns due open circuits half-open and reserves their probe."""
    plan = ClaimPlan()
    if view.empty:
        return plan
    now = journal.now
    for name, row in view.systems.items():
        state = row.circuit_state
        if state == OPEN and row.open_until is not None and row.open_until <= now:
            won = conn.execute(
                update(dependent_systems)
                .where(
                    dependent_systems.c.name == name,
                    dependent_systems.c.circuit_state == OPEN,
                    dependent_systems.c.open_until <= now,
                )
                .values(circuit_state=HALF_OPEN, probe_step_id=RESERVED, updated_at=now)
            ).rowcount
            if won:
                _transition(
                    conn, journal, name, OPEN, HALF_OPEN, "cool-down over: one probe goes through"
                )
                plan.probes.add(name)
            else:
                plan.blocked.add(name)
        elif state == OPEN:
            plan.blocked.add(name)
        elif state == HALF_OPEN:
            if _take_over_probe(conn, name, row.probe_step_id, now):
                plan.probes.add(name)
            else:
                plan.blocked.add(name)
    limited = sorted(
        n for n, r in view.systems.items() if r.max_in_flight is not None and n not in plan.blocked
    )
    if limited:
        q = (
            select(dependent_systems.c.name, dependent_systems.c.max_in_flight)
            .where(dependent_systems.c.name.in_(limited))
            .order_by(dependent_systems.c.name)
        )
        limits = {r.name: r.max_in_flight for r in conn.execute(q.with_for_update() if lock else q)}
        busy = Counter(
            {
                r[0]: int(r[1])
                for r in conn.execute(
                    select(steps.c.dependent_system, func.count())
                    .where(
                        steps.c.state == StepState.IN_PROGRESS.value,
                        steps.c.dependent_system.in_(limited),
                    )
                    .group_by(steps.c.dependent_system)
                )
            }
        )
        for name, limit in limits.items():
            if limit is not None:
                plan.system_room[name] = max(0, limit - busy[name])
    for name in plan.probes:
        plan.system_room[name] = min(plan.system_room.get(name, 1), 1)
    if view.namespace_limits:
        names = sorted(view.namespace_limits)
        nl = namespace_limits
        q = select(nl).where(nl.c.namespace.in_(names)).order_by(nl.c.namespace)
        limits = {
            r.namespace: r.max_in_flight for r in conn.execute(q.with_for_update() if lock else q)
        }
        busy = Counter(
            {
                r[0]: int(r[1])
                for r in conn.execute(
                    select(steps.c.namespace, func.count())
                    .where(
                        steps.c.state == StepState.IN_PROGRESS.value, steps.c.namespace.in_(names)
                    )
                    .group_by(steps.c.namespace)
                )
            }
        )
        plan.namespace_room = {n: max(0, lim - busy[n]) for n, lim in limits.items()}
    for name, room in plan.system_room.items():
        if room <= 0:
            plan.blocked.add(name)
    return plan


def _take_over_probe(conn: Connection, name: str, probe_step_id: int | None, now: datetime) -> bool:
    """A half-open system whose probe is gone (its worker died) may get a new probe."""
    if probe_step_id is not None:
        state = conn.execute(select(steps.c.state).where(steps.c.id == probe_step_id)).scalar()
        if state == StepState.IN_PROGRESS:
            return False
    stale = (
        dependent_systems.c.probe_step_id.is_(None)
        if probe_step_id is None
        else (dependent_systems.c.probe_step_id == probe_step_id)
    )
    return bool(
        conn.execute(
            update(dependent_systems)
            .where(
                dependent_systems.c.name == name,
                dependent_systems.c.circuit_state == HALF_OPEN,
                stale,
            )
            .values(probe_step_id=RESERVED, updated_at=now)
        ).rowcount
    )


def settle_probes(
    conn: Connection, plan: ClaimPlan, probe_steps: dict[str, int], now: datetime
) -> None:
    """Record which step probes each half-open system (or free the reservation when none was claimed)."""
    for name in plan.probes:
        conn.execute(
            update(dependent_systems)
            .where(dependent_systems.c.name == name)
            .values(probe_step_id=probe_steps.get(name), updated_at=now)
        )


@dataclass
class SystemOutcomes:
    """What one cycle's outcomes say about each dependent system."""

    failures: Counter[str] = field(default_factory=Counter)
    answered: set[str] = field(default_factory=set)
    probe_ok: set[str] = field(default_factory=set)
    probe_failed: set[str] = field(default_factory=set)

    @property
    def empty(self) -> bool:
        return not (self.failures or self.answered or self.probe_ok or self.probe_failed)


def _ensure_rows(conn: Connection, names: Iterable[str], now: datetime) -> None:
    names = sorted(set(names))
    if not names:
        return
    existing = set(
        conn.execute(
            select(dependent_systems.c.name).where(dependent_systems.c.name.in_(names))
        ).scalars()
    )
    missing = [n for n in names if n not in existing]
    if not missing:
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
    conn.execute(
        dialect_insert(dependent_systems).on_conflict_do_nothing(),
        [
            {"name": n, "circuit_state": CLOSED, "consecutive_failures": 0, "updated_at": now}
            for n in missing
        ],
    )


def record(
    conn: Connection, journal: Journal, outcomes: SystemOutcomes, view: SystemsView, *, lock: bool
) -> None:
    """Count failures, open circuits that reach their threshold, close those whose probe succeeded."""
    if outcomes.empty:
        return
    now = journal.now
    touched = set(outcomes.failures) | outcomes.probe_ok | outcomes.probe_failed
    resets = {s for s in outcomes.answered if view.has_failures(s)} - touched
    if touched:
        _ensure_rows(conn, touched, now)
        q = (
            select(dependent_systems)
            .where(dependent_systems.c.name.in_(sorted(touched)))
            .order_by(dependent_systems.c.name)
        )
        rows = {r.name: r for r in conn.execute(q.with_for_update() if lock else q)}
        for name in sorted(touched):
            _apply(conn, journal, rows[name], outcomes, now)
    for name in sorted(resets):
        conn.execute(
            update(dependent_systems)
            .where(dependent_systems.c.name == name, dependent_systems.c.circuit_state == CLOSED)
            .values(consecutive_failures=0, failing_since=None, updated_at=now)
        )


#: No cool-down is longer than a day, whatever a row says (rows written before settings were validated).
MAX_COOLDOWN_SECONDS = 86_400.0


def _seconds(value: float | None, default: float, cap: float = MAX_COOLDOWN_SECONDS) -> float:
    """A stored duration as a usable number of seconds: missing, non-finite or non-positive values
    fall back to the default, and none exceeds `cap` (a bad row must not crash every worker)."""
    if value is None or not math.isfinite(value) or value <= 0:
        return default
    return min(value, cap)


def _apply(
    conn: Connection, journal: Journal, row: Any, outcomes: SystemOutcomes, now: datetime
) -> None:
    name = row.name
    threshold = row.failure_threshold or DEFAULT_FAILURE_THRESHOLD
    base = _seconds(row.cooldown_seconds, DEFAULT_COOLDOWN_SECONDS)
    cap = max(_seconds(row.max_cooldown_seconds, DEFAULT_MAX_COOLDOWN_SECONDS), base)
    table = dependent_systems
    if name in outcomes.probe_ok:
        conn.execute(
            update(table)
            .where(table.c.name == name)
            .values(
                circuit_state=CLOSED,
                consecutive_failures=0,
                current_cooldown_seconds=None,
                open_until=None,
                probe_step_id=None,
                failing_since=None,
                updated_at=now,
            )
        )
        _transition(conn, journal, name, row.circuit_state, CLOSED, "probe succeeded")
        return
    failures = row.consecutive_failures + outcomes.failures.get(name, 0)
    since = row.failing_since or now  # the streak of unanswered failures began now, or goes on
    if name in outcomes.probe_failed:
        cooldown = min(_seconds(row.current_cooldown_seconds, base) * 2, cap)
        conn.execute(
            update(table)
            .where(table.c.name == name)
            .values(
                circuit_state=OPEN,
                consecutive_failures=failures + 1,
                current_cooldown_seconds=cooldown,
                opened_at=now,
                open_until=now + timedelta(seconds=cooldown),
                probe_step_id=None,
                failing_since=since,
                updated_at=now,
            )
        )
        _transition(
            conn,
            journal,
            name,
            row.circuit_state,
            OPEN,
            f"probe failed; next probe in {cooldown:g}s",
        )
        return
    if row.circuit_state == CLOSED and failures >= threshold:
        conn.execute(
            update(table)
            .where(table.c.name == name)
            .values(
                circuit_state=OPEN,
                consecutive_failures=failures,
                current_cooldown_seconds=base,
                opened_at=now,
                open_until=now + timedelta(seconds=base),
                probe_step_id=None,
                failing_since=since,
                updated_at=now,
            )
        )
        _transition(
            conn,
            journal,
            name,
            CLOSED,
            OPEN,
            f"{failures} consecutive retryable failures (threshold {threshold}); probe in"
            f" {base:g}s",
        )
        return
    conn.execute(
        update(table)
        .where(table.c.name == name)
        .values(consecutive_failures=failures, failing_since=since, updated_at=now)
    )


def hold_for_outages(
    conn: Connection,
    journal: Journal,
    outcomes: Sequence[Outcome],
    view: SystemsView,
    *,
    lock: bool,
) -> None:
    """The outage promise, decided in the completion transaction (DESIGN section 1).

    A step that ran out of attempts on failures that are its system's fault, while the system has
    answered nothing since its first failed attempt, does not fail: its last attempt is given back
    and it waits in `waiting_retry`, tried again at the system's cool-down pace. Its failures keep
    counting towards the circuit, which opens at its threshold, and from then on probes decide when
    it runs. After `max_outage_seconds` of silence (default an hour) it fails, with an error that
    says so. Changes the outcomes in place.
    """
    held = [
        o
        for o in outcomes
        if o.exhausted and o.transient_failure and view.has_breaker(o.dependent_system)
    ]
    if not held:
        return
    now = journal.now
    names = sorted({o.dependent_system for o in held})
    _ensure_rows(conn, names, now)
    q = (
        select(dependent_systems)
        .where(dependent_systems.c.name.in_(names))
        .order_by(dependent_systems.c.name)
    )
    rows = {r.name: r for r in conn.execute(q.with_for_update() if lock else q)}
    for o in held:
        row = rows[o.dependent_system]
        limit = _seconds(
            row.max_outage_seconds, DEFAULT_MAX_OUTAGE_SECONDS, cap=MAX_OUTAGE_CAP_SECONDS
        )
        verdict = outage_verdict(
            failing_since=row.failing_since,
            now=now,
            max_outage_seconds=limit,
            unanswered_failures=row.consecutive_failures + 1,
            attempts=o.attempt,
        )
        error: FailureRecord = (
            {**o.error} if o.error is not None else {"class": "Error", "message": ""}
        )
        message = str(error.get("message", ""))
        suffix = GAVE_UP.format(o.attempt)
        if message.endswith(suffix):
            message = message[: -len(suffix)]
        if verdict.hold:
            o.state = StepState.WAITING_RETRY
            o.refund_attempt = True
            o.retry_delay = _seconds(
                row.current_cooldown_seconds or row.cooldown_seconds, DEFAULT_COOLDOWN_SECONDS
            )
            error["message"] = (
                f"{message} (waiting for '{row.name}': it has answered nothing for "
                f"{verdict.silent_seconds:.0f}s; attempts are not spent while it is down, "
                f"up to max_outage_seconds={limit:g})"
            )
            error["waiting_for_system"] = row.name
        else:
            o.state = StepState.ERROR
            o.refund_attempt = False
            reason = (
                f"'{row.name}' has answered nothing for {verdict.silent_seconds:.0f}s, past its "
                f"max_outage_seconds={limit:g}"
                if verdict.silent_seconds >= limit
                else f"'{row.name}' answered other steps meanwhile"
            )
            error["message"] = f"{message}{suffix} ({reason})"
        o.error = error


#: No system may keep steps waiting longer than a week, whatever its row says.
MAX_OUTAGE_CAP_SECONDS = 7 * 86_400.0


def open_until(conn: Connection, system: str) -> datetime | None:
    return conn.execute(
        select(dependent_systems.c.open_until).where(dependent_systems.c.name == system)
    ).scalar()


# -- configuration and reporting ------------------------------------------------------------------------------


def configure(conn: Connection, name: str, now: datetime, **settings: Any) -> None:
    """Set a system's limits and breaker settings (None clears a setting back to the default).

    Values are checked against `tasker.domain.bounds` (ValueError naming the setting): a NaN or infinite
    cool-down stored here made every worker crash when the circuit opened.
    """
    settings = check_system_settings(settings)
    _ensure_rows(conn, [name], now)
    conn.execute(
        update(dependent_systems)
        .where(dependent_systems.c.name == name)
        .values(updated_at=now, **settings)
    )


def set_namespace_limit(
    conn: Connection, namespace: str, max_in_flight: int | None, now: datetime
) -> None:
    conn.execute(namespace_limits.delete().where(namespace_limits.c.namespace == namespace))
    if max_in_flight is not None:
        conn.execute(
            insert(namespace_limits),
            {"namespace": namespace, "max_in_flight": max_in_flight, "updated_at": now},
        )


def reset(conn: Connection, journal: Journal, name: str) -> bool:
    row = conn.execute(select(dependent_systems).where(dependent_systems.c.name == name)).first()
    if row is None:
        return False
    conn.execute(
        update(dependent_systems)
        .where(dependent_systems.c.name == name)
        .values(
            circuit_state=CLOSED,
            consecutive_failures=0,
            current_cooldown_seconds=None,
            open_until=None,
            probe_step_id=None,
            failing_since=None,
            updated_at=journal.now,
        )
    )
    if row.circuit_state != CLOSED:
        _transition(conn, journal, name, row.circuit_state, CLOSED, "reset by an operator")
    return True


def report(conn: Connection) -> list[dict[str, Any]]:
    """Every dependent system seen in steps or configured: circuit, failures, in flight, waiting."""
    rows = {r.name: r for r in conn.execute(select(dependent_systems))}
    counts: dict[str, Counter[str]] = {}
    for system, state, n in conn.execute(
        select(steps.c.dependent_system, steps.c.state, func.count())
        .where(steps.c.state.in_(["ready", "waiting_retry", "in_progress", "error"]))
        .group_by(steps.c.dependent_system, steps.c.state)
    ):
        counts.setdefault(system, Counter())[state] = int(n)
    unloadable = _unloadable_handlers(conn)
    names = sorted(set(rows) | set(counts))
    out = []
    for name in names:
        r = rows.get(name)
        c = counts.get(name, Counter())
        out.append(
            {
                "name": name,
                "circuit_state": r.circuit_state if r else CLOSED,
                "consecutive_failures": r.consecutive_failures if r else 0,
                "open_until": r.open_until if r else None,
                "max_in_flight": r.max_in_flight if r else None,
                "failure_threshold": (
                    r.failure_threshold if r and r.failure_threshold else DEFAULT_FAILURE_THRESHOLD
                ),
                "cooldown_seconds": (
                    r.cooldown_seconds if r and r.cooldown_seconds else DEFAULT_COOLDOWN_SECONDS
                ),
                "current_cooldown_seconds": r.current_cooldown_seconds if r else None,
                "max_outage_seconds": _seconds(
                    r.max_outage_seconds if r else None,
                    DEFAULT_MAX_OUTAGE_SECONDS,
                    cap=MAX_OUTAGE_CAP_SECONDS,
                ),
                "failing_since": r.failing_since if r else None,
                "in_flight": c["in_progress"],
                "waiting": c["ready"] + c["waiting_retry"],
                "errored_steps": c["error"],
                #: handler -> steps waiting because no worker could import it (`HandlerUnavailable`)
                "unloadable_handlers": unloadable.get(name, {}),
            }
        )
    return out


def _unloadable_handlers(conn: Connection) -> dict[str, dict[str, int]]:
    """Per system, the handlers that workers could not import, with the steps waiting for one that can.

    Read from the few `waiting_retry` steps whose last error says so (the partial index over active
    steps keeps this cheap).
    """
    error_class = steps.c.last_error["class"].as_string()
    handler = steps.c.last_error["handler"].as_string()
    q = (
        select(steps.c.dependent_system, handler, func.count())
        .where(steps.c.state == StepState.WAITING_RETRY.value, error_class == "HandlerUnavailable")
        .group_by(steps.c.dependent_system, handler)
    )
    found: dict[str, dict[str, int]] = {}
    for system, name, n in conn.execute(q):
        found.setdefault(system, {})[str(name)] = int(n)
    return found


def circuit_history(
    conn: Connection, system: str | None = None, *, last: int | None = None
) -> list[dict[str, Any]]:
    """Circuit changes, oldest first; with `last`, only the newest `last` of them (read from the end)."""
    q = select(circuit_transitions)
    if system:
        q = q.where(circuit_transitions.c.system == system)
    if last is None:
        return [dict(r._mapping) for r in conn.execute(q.order_by(circuit_transitions.c.id))]
    newest = conn.execute(q.order_by(circuit_transitions.c.id.desc()).limit(last))
    return [dict(r._mapping) for r in newest][::-1]


def namespace_limit_rows(conn: Connection) -> dict[str, int]:
    return {r.namespace: r.max_in_flight for r in conn.execute(_NS_LIMITS)}
