"""Dependent systems: the shared circuit breaker and the in-flight limits every worker honours.

A system's row exists once it is configured or has failed. The circuit opens after N consecutive
failures that are the system's fault (`tasker.domain.failures`: connection errors, timeouts,
`RetryableError`); the `default` system, shared by every template that names none, has no circuit
until configured. While a circuit is open its steps are not claimed, so they wait without spending
attempts. After the cool-down one worker turns it half-open and claims a single probe step: success
closes the circuit, failure opens it again with a doubled cool-down (capped) and gives the probe its
attempt back, so an outage of any length never exhausts a step's retries.

Claims read a `SystemsView` (rows that restrict anything, refreshed at most every few hundred ms by
each worker); limits are then checked exactly, under row locks on PostgreSQL.

The rules are pure functions in `tasker.domain.circuits`: this module reads the rows, asks the
policy what becomes of each circuit, and writes its answer. Where workers race for one change
(turning a circuit half-open, taking over a lost probe, ending a streak without locking the row),
the UPDATE repeats the policy's condition in its WHERE clause so that one of them wins;
tests/integration/test_circuit_sql.py checks those statements against the policy.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, cast

from sqlalchemy import bindparam, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from tasker.domain import fairness, rates
from tasker.domain.bounds import check_system_settings
from tasker.domain.circuits import (
    ANSWER_COLUMNS,
    COOLDOWN_COLUMNS,
    DEFAULT_COOLDOWN_SECONDS,
    DEFAULT_FAILURE_THRESHOLD,
    MAX_OUTAGE_CAP_SECONDS,
    RESET_COLUMNS,
    Access,
    Circuit,
    CircuitState,
    CircuitTransition,
    ClaimPlan,
    after_cycle,
    claim_access,
    columns,
    on_answer,
    on_cooldown_elapsed,
    on_reset,
    outage_decision,
    probe_lost,
    room,
    seconds,
    take_over_probe,
)
from tasker.domain.events import Events
from tasker.domain.failures import DEFAULT_MAX_OUTAGE_SECONDS, SystemEvidence, outcome_evidence
from tasker.domain.history import CircuitChange, SystemReport
from tasker.domain.rates import RateLimit
from tasker.domain.records import Outcome
from tasker.domain.states import REPORTED_STEP_STATES, StepState
from tasker.domain.templates import DEFAULT_DEPENDENT_SYSTEM
from tasker.store.journal import Journal
from tasker.store.schema import (
    CLAIMABLE,
    KEYED_RUNNING,
    PRIORITIZED,
    circuit_transitions,
    dependent_systems,
    key_limits,
    namespace_limits,
    rate_starts,
    steps,
)

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
_EVENTS = {
    OPEN: Events.CIRCUIT_OPENED,
    CLOSED: Events.CIRCUIT_CLOSED,
    HALF_OPEN: Events.CIRCUIT_HALF_OPEN,
}

#: The dependent systems that restrict claims or have failures on record: a circuit away from
#: closed, a failure on record, a limit, or a configured `default` breaker. As literal SQL, for the
#: view below and for the driver-level cycle's gate (`tasker.store.cycle_rows.GATE_SQL`).
RESTRICTING_SQL = (
    f"circuit_state <> '{CLOSED.value}' OR consecutive_failures > 0"
    " OR max_in_flight IS NOT NULL OR rate_limit IS NOT NULL"
    f" OR (name = '{DEFAULT_DEPENDENT_SYSTEM}' AND failure_threshold IS NOT NULL)"
)
_VIEW = select(dependent_systems).where(text(RESTRICTING_SQL))
_NS_LIMITS = select(namespace_limits)
_KEY_LIMITS = select(key_limits.c.scope, key_limits.c.max_in_flight)
#: Whether some claimable step has a priority: one probe of the (usually empty) partial index of
#: prioritized steps, its predicate as written so that SQLite matches it by its text.
ANY_PRIORITIZED_SQL = f"EXISTS (SELECT 1 FROM tasker_steps WHERE {PRIORITIZED})"
_ANY_PRIORITIZED = select(text(ANY_PRIORITIZED_SQL))
#: The running steps of each fair-share key (the partial index of keyed running steps).
_KEYED_BUSY = text(
    f"SELECT concurrency_key, count(*) FROM tasker_steps WHERE {KEYED_RUNNING}"
    " GROUP BY concurrency_key"
)


@dataclass(frozen=True)
class SystemsView:
    """The dependent systems that restrict claims or have failures on record, and the namespace
    limits."""

    systems: dict[str, Any] = field(default_factory=dict)
    namespace_limits: dict[str, int] = field(default_factory=dict)
    #: Fair share: the most steps in flight per key, by template scope.
    key_limits: dict[str, int] = field(default_factory=dict)
    #: Some claimable step has a priority: claims merge the prioritized queue in.
    prioritized: bool = False

    @property
    def empty(self) -> bool:
        return not (self.systems or self.namespace_limits or self.key_limits or self.prioritized)

    def has_breaker(self, system: str) -> bool:
        """Whether failures of this system feed a circuit breaker.

        Every named system has one. The `default` system (steps of templates that name none) has one
        only once it is configured (`tasker systems set default --failure-threshold N`, or a
        template's `dependent_systems: {default: ...}`): unrelated templates share it, so a bug in
        one of them must not stall the others.
        """
        return system != DEFAULT_DEPENDENT_SYSTEM or system in self.systems

    def has_failures(self, system: str) -> bool:
        row = self.systems.get(system)
        return row is not None and row.consecutive_failures > 0


#: How long a worker trusts its picture of circuits and limits before reading it again.
VIEW_TTL_SECONDS = 0.25


class ViewCache:
    """The systems view shared by the workers of one engine, trusted for `ttl` seconds.

    Every worker plans its claims on this view; reading it costs two statements. A `Tasker.run()`
    starts a worker per task, so a view per worker would be read again for every task. Changes an
    operator makes through the same engine drop it at once (`invalidate`); changes from other
    processes are seen within `ttl`, as before.
    """

    def __init__(self, ttl: float = VIEW_TTL_SECONDS) -> None:
        self.ttl = ttl
        self._view = SystemsView()
        self._at = -math.inf
        self._lock = threading.Lock()

    def fresh(self) -> SystemsView | None:
        """The view, or None when it is older than `ttl` (or dropped)."""
        with self._lock:
            return self._view if time.monotonic() - self._at < self.ttl else None

    def last(self) -> SystemsView:
        """The view last read, whatever its age (empty before the first read)."""
        with self._lock:
            return self._view

    def load(self, conn: Connection) -> SystemsView:
        """Read the view in the caller's transaction and keep it."""
        view = load_view(conn)
        with self._lock:
            self._view, self._at = view, time.monotonic()
        return view

    def invalidate(self) -> None:
        with self._lock:
            self._at = -math.inf


def load_view(conn: Connection) -> SystemsView:
    return SystemsView(
        {r.name: r for r in conn.execute(_VIEW)},
        {r.namespace: r.max_in_flight for r in conn.execute(_NS_LIMITS)},
        {r.scope: r.max_in_flight for r in conn.execute(_KEY_LIMITS)},
        bool(conn.execute(_ANY_PRIORITIZED).scalar()),
    )


def _transition(conn: Connection, journal: Journal, system: str, move: CircuitTransition) -> None:
    src, dst, reason = move.src.value, move.dst.value, move.reason
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
        _EVENTS[move.dst],
        {"system": system, "from_state": src, "to_state": dst, "reason": reason},
    )
    journal.circuits.append((system, src, dst, reason))


def plan_claim(conn: Connection, journal: Journal, view: SystemsView, *, lock: bool) -> ClaimPlan:
    """Decide what this claim may take; turns due open circuits half-open and reserves their
    probe.

    On PostgreSQL (`lock`) the rows of the limits that apply are locked, in name order, until the
    claim commits: the in-flight and rate counts read after the lock see every claim committed
    before it, so concurrent workers never overrun a limit.
    """
    plan = ClaimPlan(prioritized=view.prioritized)
    if view.empty:
        return plan
    now = journal.now
    for name, row in view.systems.items():
        circuit = Circuit.of(row)
        access = claim_access(circuit, now)
        if access == Access.FREE:
            continue
        if access == Access.COOLDOWN_OVER:
            won = _begin_probe(conn, journal, circuit)
        elif access == Access.PROBE_IF_LOST:
            won = _take_over_probe(conn, circuit, now)
        else:
            won = False
        (plan.probes if won else plan.blocked).add(name)
    limited = sorted(
        n
        for n, r in view.systems.items()
        if (r.max_in_flight is not None or r.rate_limit is not None) and n not in plan.blocked
    )
    if limited:
        q = (
            select(
                dependent_systems.c.name,
                dependent_systems.c.max_in_flight,
                dependent_systems.c.rate_limit,
                dependent_systems.c.rate_per_seconds,
            )
            .where(dependent_systems.c.name.in_(limited))
            .order_by(dependent_systems.c.name)
        )
        rows = conn.execute(q.with_for_update() if lock else q).all()
        in_flight = {r.name: r.max_in_flight for r in rows if r.max_in_flight is not None}
        if in_flight:
            plan.system_room = room(in_flight, _busy(conn, steps.c.dependent_system, in_flight))
        rated = {r.name: rate_of(r) for r in rows if r.rate_limit is not None}
        if rated:  # counted at the time after the lock: another worker may have held it a while
            plan.rate_now = at = journal.current()
        for name, rate in rated.items():
            plan.rate_room[name] = rates.room(rate, rate_starts_of(conn, name, rate, at), at)
        plan.rates = rated
    if view.namespace_limits:
        names = sorted(view.namespace_limits)
        nl = namespace_limits
        q = select(nl).where(nl.c.namespace.in_(names)).order_by(nl.c.namespace)
        limits = {
            r.namespace: r.max_in_flight for r in conn.execute(q.with_for_update() if lock else q)
        }
        plan.namespace_room = room(limits, _busy(conn, steps.c.namespace, limits))
    if view.key_limits:
        kl = key_limits
        q = select(kl.c.scope, kl.c.max_in_flight).order_by(kl.c.scope)
        plan.key_limits = {
            r.scope: r.max_in_flight for r in conn.execute(q.with_for_update() if lock else q)
        }
        busy = {str(k): int(n) for k, n in conn.execute(_KEYED_BUSY)}
        plan.key_room = fairness.key_room(plan.key_limits, busy)
    plan.limit_probes()
    return plan


def _busy(conn: Connection, column: Any, names: Iterable[str]) -> Counter[str]:
    """Running steps per value of `column` (a system or a namespace), of these names."""
    q = (
        select(column, func.count())
        .where(steps.c.state == StepState.IN_PROGRESS.value, column.in_(sorted(names)))
        .group_by(column)
    )
    return Counter({r[0]: int(r[1]) for r in conn.execute(q)})


def rate_of(row: Any) -> RateLimit:
    """The rate limit of a `tasker_dependent_systems` row that has one."""
    return RateLimit(int(row.rate_limit), float(row.rate_per_seconds or 1.0))


def rate_starts_of(conn: Connection, system: str, rate: RateLimit, now: datetime) -> list[datetime]:
    """When the steps of this system that count against its limit at `now` started."""
    q = select(rate_starts.c.at).where(
        rate_starts.c.system == system, rate_starts.c.at > now - rate.window
    )
    return [t for (t,) in conn.execute(q)]


def record_starts(
    conn: Connection, started: Counter[str], now: datetime, limits: Mapping[str, RateLimit]
) -> None:
    """Count claimed steps against their systems' rate limits, and forget the starts no window
    counts any more (older than two of the system's windows)."""
    if not started:
        return
    conn.execute(
        insert(rate_starts),
        [{"system": s, "at": now} for s, n in sorted(started.items()) for _ in range(n)],
    )
    for system in sorted(started):
        conn.execute(
            rate_starts.delete().where(
                rate_starts.c.system == system, rate_starts.c.at < now - 2 * limits[system].window
            )
        )


def defer(
    conn: Connection,
    journal: Journal,
    system: str,
    rate: RateLimit,
    step_ids: Sequence[int],
    now: datetime,
) -> list[datetime]:
    """Move due steps of a system over its rate limit (`rate`, as `plan_claim` read it) to the
    times slots free for them (no attempt spent); advances the system's horizon and counts the
    deferrals. Call under the system's row lock (`plan_claim`)."""
    horizon_now = conn.execute(
        select(dependent_systems.c.rate_horizon).where(dependent_systems.c.name == system)
    ).scalar_one()
    starts = rate_starts_of(conn, system, rate, now)
    times, horizon = rates.deferral_times(rate, starts, horizon_now, now, len(step_ids))
    conn.execute(
        update(steps)
        .where(steps.c.id == bindparam("sid"), text(CLAIMABLE))
        .values(run_at=bindparam("at"), updated_at=now),
        [{"sid": sid, "at": at} for sid, at in zip(step_ids, times, strict=True)],
    )
    conn.execute(
        update(dependent_systems)
        .where(dependent_systems.c.name == system)
        .values(
            rate_horizon=horizon,
            rate_deferrals=dependent_systems.c.rate_deferrals + len(step_ids),
        )
    )
    journal.event(
        Events.STEPS_DEFERRED,
        {"system": system, "steps": len(step_ids), "until": times[-1].isoformat()},
    )
    return times


def _begin_probe(conn: Connection, journal: Journal, circuit: Circuit) -> bool:
    """Turn an open circuit whose cool-down is over half-open, reserving its probe for this claim.

    Of several workers that saw it due, the one whose UPDATE matches wins: its WHERE clause is
    `on_cooldown_elapsed`'s condition (open, `open_until` passed).
    """
    change = on_cooldown_elapsed(circuit, journal.now)
    if change is None:
        return False
    t = dependent_systems
    won = conn.execute(
        update(t)
        .where(
            t.c.name == circuit.name, t.c.circuit_state == OPEN.value, t.c.open_until <= journal.now
        )
        .values(updated_at=journal.now, **columns(change.circuit, *COOLDOWN_COLUMNS))
    ).rowcount
    if won and change.transition is not None:
        _transition(conn, journal, circuit.name, change.transition)
    return bool(won)


def _take_over_probe(conn: Connection, circuit: Circuit, now: datetime) -> bool:
    """A half-open system whose probe is gone (its worker died) may get a new probe
    (`probe_lost`); the UPDATE wins only if no other claim took it over first."""
    probe_state = None
    if circuit.probe_step_id is not None:
        probe_state = conn.execute(
            select(steps.c.state).where(steps.c.id == circuit.probe_step_id)
        ).scalar()
    if not probe_lost(circuit, probe_state):
        return False
    t = dependent_systems
    stale = (
        t.c.probe_step_id.is_(None)
        if circuit.probe_step_id is None
        else (t.c.probe_step_id == circuit.probe_step_id)
    )
    return bool(
        conn.execute(
            update(t)
            .where(t.c.name == circuit.name, t.c.circuit_state == HALF_OPEN.value, stale)
            .values(updated_at=now, **columns(take_over_probe(circuit), "probe_step_id"))
        ).rowcount
    )


def settle_probes(
    conn: Connection, plan: ClaimPlan, probe_steps: dict[str, int], now: datetime
) -> None:
    """Record which step probes each half-open system (or free the reservation when none was
    claimed)."""
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
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    conn.execute(
        dialect_insert(dependent_systems).on_conflict_do_nothing(),
        [{"name": n, "updated_at": now, **columns(Circuit(n))} for n in missing],
    )


def record(
    conn: Connection, journal: Journal, outcomes: SystemOutcomes, view: SystemsView, *, lock: bool
) -> None:
    """Count failures, open circuits that reach their threshold, close those whose probe
    succeeded."""
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
            change = after_cycle(
                Circuit.of(rows[name]),
                now,
                failures=outcomes.failures.get(name, 0),
                probe_ok=name in outcomes.probe_ok,
                probe_failed=name in outcomes.probe_failed,
            )
            conn.execute(
                update(dependent_systems)
                .where(dependent_systems.c.name == name)
                .values(updated_at=now, **columns(change.circuit))
            )
            if change.transition is not None:
                _transition(conn, journal, name, change.transition)
    for name in sorted(resets):
        _answered(conn, Circuit.of(view.systems[name]), now)


def _answered(conn: Connection, circuit: Circuit, now: datetime) -> bool:
    """The system answered: end its streak (`on_answer`) if its circuit is still closed.

    No row lock: the WHERE clause repeats `on_answer`'s condition, so a circuit that opened since
    the view was read keeps its count.
    """
    closed = on_answer(replace(circuit, state=CLOSED))
    t = dependent_systems
    return bool(
        conn.execute(
            update(t)
            .where(t.c.name == circuit.name, t.c.circuit_state == CLOSED.value)
            .values(updated_at=now, **columns(closed, *ANSWER_COLUMNS))
        ).rowcount
    )


def hold_for_outages(
    conn: Connection,
    journal: Journal,
    outcomes: Sequence[Outcome],
    view: SystemsView,
    *,
    lock: bool,
) -> None:
    """The outage promise (`tasker.domain.circuits.outage_decision`), decided in the completion
    transaction before anything is written: a step that ran out of attempts on failures that are its
    system's fault may wait for the system instead of failing. Reads the systems' rows (locked on
    PostgreSQL) and applies each decision to its outcome in place.
    """
    held = [
        o
        for o in outcomes
        if o.exhausted
        and outcome_evidence(o) == SystemEvidence.FAULT
        and view.has_breaker(o.dependent_system)
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
        decision = outage_decision(
            Circuit.of(rows[o.dependent_system]), error=o.error, attempt=o.attempt, now=now
        )
        o.state = decision.state
        o.refund_attempt = decision.refund_attempt
        if decision.retry_delay is not None:
            o.retry_delay = decision.retry_delay
        o.error = decision.error


# -- configuration and reporting -------------------------------------------------------------------


def configure(conn: Connection, name: str, now: datetime, **settings: Any) -> None:
    """Set a system's limits and breaker settings (None clears a setting back to the default).

    Values are checked against `tasker.domain.bounds` (ValueError naming the setting): a NaN or
    infinite cool-down stored here made every worker crash when the circuit opened.
    """
    values: dict[str, Any] = {}
    if "rate_limit" in settings:
        spec = settings.pop("rate_limit")
        rate = None if spec is None else RateLimit.parse(spec)
        values["rate_limit"] = None if rate is None else rate.limit
        values["rate_per_seconds"] = None if rate is None else rate.per_seconds
    settings = {**check_system_settings(settings), **values}
    _ensure_rows(conn, [name], now)
    conn.execute(
        update(dependent_systems)
        .where(dependent_systems.c.name == name)
        .values(updated_at=now, **settings)
    )


def set_namespace_limit(
    conn: Connection, namespace: str, max_in_flight: int | None, now: datetime
) -> None:
    _set_limit(conn, namespace_limits, "namespace", namespace, max_in_flight, now)


def _set_limit(
    conn: Connection, table: Any, key: str, value: str, max_in_flight: int | None, now: datetime
) -> None:
    """Set a limit row in place (an upsert that writes only a changed value), or delete it.

    Never a delete and an insert: a claim that locks the limit rows (`plan_claim`) while another
    process loads its templates must still find the row; with a delete in between, the claim's
    `FOR UPDATE` skipped it and the claim ran without the limit.
    """
    column = table.c[key]
    if max_in_flight is None:
        conn.execute(table.delete().where(column == value))
        return
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = dialect_insert(table).values(
        {key: value, "max_in_flight": max_in_flight, "updated_at": now}
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[column],
            set_={"max_in_flight": stmt.excluded.max_in_flight, "updated_at": now},
            where=table.c.max_in_flight != stmt.excluded.max_in_flight,
        )
    )


def set_key_limit(conn: Connection, scope: str, max_in_flight: int | None, now: datetime) -> None:
    """Set (or, with None, drop) the fair-share limit of a template's keys (`_set_limit`)."""
    _set_limit(conn, key_limits, "scope", scope, max_in_flight, now)


def key_limit_scopes(conn: Connection, scopes: Sequence[str]) -> list[str]:
    """Which of these scopes have a fair-share limit stored."""
    q = select(key_limits.c.scope).where(key_limits.c.scope.in_(sorted(scopes)))
    return sorted(conn.execute(q).scalars())


def key_limit_rows(conn: Connection) -> dict[str, int]:
    """Every fair-share limit, by template scope."""
    return {r.scope: r.max_in_flight for r in conn.execute(_KEY_LIMITS)}


def reset(conn: Connection, journal: Journal, name: str) -> bool:
    row = conn.execute(select(dependent_systems).where(dependent_systems.c.name == name)).first()
    if row is None:
        return False
    change = on_reset(Circuit.of(row))
    conn.execute(
        update(dependent_systems)
        .where(dependent_systems.c.name == name)
        .values(updated_at=journal.now, **columns(change.circuit, *RESET_COLUMNS))
    )
    if change.transition is not None:
        _transition(conn, journal, name, change.transition)
    return True


#: Steps of each system by state: queued, running, or stuck in error.
_REPORTED_COUNTS = (
    select(steps.c.dependent_system, steps.c.state, func.count())
    .where(steps.c.state.in_(sorted(s.value for s in REPORTED_STEP_STATES)))
    .group_by(steps.c.dependent_system, steps.c.state)
)


def report(conn: Connection, now: datetime) -> list[SystemReport]:
    """Every dependent system seen in steps or configured: circuit, failures, in flight, waiting."""
    rows = {r.name: r for r in conn.execute(select(dependent_systems))}
    counts: dict[str, Counter[str]] = {}
    for system, state, n in conn.execute(_REPORTED_COUNTS):
        counts.setdefault(system, Counter())[state] = int(n)
    unloadable = _unloadable_handlers(conn)
    limits = {n: rate_of(r) for n, r in rows.items() if r.rate_limit is not None}
    rate_used = {
        n: rates.started_in_window(rate, rate_starts_of(conn, n, rate, now), now)
        for n, rate in limits.items()
    }
    names = sorted(set(rows) | set(counts))
    out: list[SystemReport] = []
    for name in names:
        r = rows.get(name)
        c = counts.get(name, Counter())
        out.append(
            {
                "name": name,
                "circuit_state": r.circuit_state if r else CLOSED.value,
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
                "max_outage_seconds": seconds(
                    r.max_outage_seconds if r else None,
                    DEFAULT_MAX_OUTAGE_SECONDS,
                    cap=MAX_OUTAGE_CAP_SECONDS,
                ),
                "failing_since": r.failing_since if r else None,
                "rate_limit": limits[name].describe() if name in limits else None,
                "rate_used": rate_used.get(name, 0),
                "rate_deferrals": int(r.rate_deferrals) if r else 0,
                "in_flight": c[StepState.IN_PROGRESS],
                "waiting": c[StepState.READY] + c[StepState.WAITING_RETRY],
                "errored_steps": c[StepState.ERROR],
                #: handler -> steps waiting because no worker could import it (`HandlerUnavailable`)
                "unloadable_handlers": unloadable.get(name, {}),
            }
        )
    return out


def _unloadable_handlers(conn: Connection) -> dict[str, dict[str, int]]:
    """Per system, the handlers that workers could not import, with the steps waiting for one that
    can.

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
) -> list[CircuitChange]:
    """Circuit changes, oldest first; with `last`, only the newest `last` of them (read from the
    end)."""
    q = select(circuit_transitions)
    if system:
        q = q.where(circuit_transitions.c.system == system)
    if last is None:
        rows = conn.execute(q.order_by(circuit_transitions.c.id))
        return [cast(CircuitChange, dict(r._mapping)) for r in rows]
    newest = conn.execute(q.order_by(circuit_transitions.c.id.desc()).limit(last))
    return [cast(CircuitChange, dict(r._mapping)) for r in newest][::-1]


def namespace_limit_rows(conn: Connection) -> dict[str, int]:
    return {r.namespace: r.max_in_flight for r in conn.execute(_NS_LIMITS)}
