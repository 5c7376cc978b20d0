"""The queries behind health status and analytics: counts, rates and duration percentiles, both
dialects.

Every query is bounded by an index: history is read through the tasks created in the period (index
on `tasks.created_at`) and joined to their transitions by `task_id` (the transitions tables are
indexed on `task_id` and `step_id` only, never on `at`); the live backlog is read through the
partial indexes over claimable and leased steps, so its cost follows the size of the queue, not of
the history.

Percentiles are exact nearest-rank values (the smallest value with at least p% of the values at or
below it) computed by the database with window functions: `row_number()` and `count()` over each
group, then the row whose rank is `ceil(p * n)`. SQLite has no percentile aggregate but has window
functions (3.25+), and one method for both stores gives both the same answer; only the rows of the
period are sorted, and only one row per group leaves the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Float, Select, and_, case, cast, extract, func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from tasker.domain.states import StepState, TaskState
from tasker.store.schema import CLAIMABLE, step_transitions, steps, tasks

#: Outcomes of an attempt: the transitions out of `in_progress` that end one (a graceful release
#: back to `ready` and a cancellation do not count as attempts that ran their course).
ATTEMPT_OUTCOMES = (StepState.COMPLETE.value, StepState.WAITING_RETRY.value, StepState.ERROR.value)


@dataclass(frozen=True)
class Scope:
    """Which tasks a report covers: created at or after `since`, optionally of one template."""

    since: datetime
    namespace: str | None = None
    name: str | None = None
    version: str | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        out: list[ColumnElement[bool]] = [tasks.c.created_at >= self.since]
        if self.namespace:
            out.append(tasks.c.namespace == self.namespace)
        if self.name:
            out.append(tasks.c.name == self.name)
        if self.version:
            out.append(tasks.c.version == self.version)
        return out


TemplateKey = tuple[str, str, str]
StepKey = tuple[str, str, str, str, str]  # namespace, name, version, step, dependent system


@dataclass(frozen=True)
class Distribution:
    count: int = 0
    avg: float | None = None
    p50: float | None = None
    p95: float | None = None
    max: float | None = None
    total: float | None = None


@dataclass
class TaskOutcomes:
    """Tasks of one template created in the scope: how many, how many started, how many in each
    state."""

    created: int = 0
    started: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    #: The steps of these tasks by state.
    steps: dict[str, int] = field(default_factory=dict)


@dataclass
class StepCounts:
    """Attempts of one step of one template in the scope and how they ended."""

    attempts: int = 0
    completed: int = 0
    retries: int = 0
    errors: int = 0
    #: `error` after at least one retry: the step ran out of attempts (or failed for good on a
    #: retry).
    errors_after_retries: int = 0
    steps: int = 0
    retry_limit: int = 0
    error_classes: dict[str, int] = field(default_factory=dict)


def _seconds(dialect: str, start: Any, end: Any) -> ColumnElement[float]:
    """`end - start` in seconds as a float, in the dialect's own date arithmetic."""
    if dialect == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return cast(extract("epoch", end - start), Float)


def _distributions(
    conn: Connection,
    keys: Sequence[ColumnElement[Any]],
    value: ColumnElement[Any],
    query: Select[Any],
) -> dict[tuple[Any, ...], Distribution]:
    """count/avg/p50/p95/max/sum of `value` per group of `keys`, over the rows `query` selects from.

    `query` supplies the FROM and WHERE clauses; its own columns are replaced.
    """
    labelled = [k.label(f"k{i}") for i, k in enumerate(keys)]
    inner = (
        query.with_only_columns(
            *labelled,
            value.label("v"),
            func.row_number().over(partition_by=list(keys), order_by=value).label("rn"),
            func.count().over(partition_by=list(keys)).label("n"),
        )
        .where(value.is_not(None))
        .subquery()
    )
    group = [inner.c[f"k{i}"] for i in range(len(keys))]
    rank50 = (
        inner.c.n * 50 + 99
    ) // 100  # ceil(n * p) in integer arithmetic, for p = 0.50 and 0.95
    rank95 = (inner.c.n * 95 + 99) // 100
    outer = select(
        *group,
        func.count(),
        func.avg(inner.c.v),
        func.max(case((inner.c.rn == rank50, inner.c.v))),
        func.max(case((inner.c.rn == rank95, inner.c.v))),
        func.max(inner.c.v),
        func.sum(inner.c.v),
    ).group_by(*group)
    out: dict[tuple[Any, ...], Distribution] = {}
    for row in conn.execute(outer):
        k = len(keys)
        n, avg, p50, p95, top, total = row[k:]
        out[tuple(row[:k])] = Distribution(int(n), _f(avg), _f(p50), _f(p95), _f(top), _f(total))
    return out


def _f(value: Any) -> float | None:
    return None if value is None else float(value)


# -- tasks -----------------------------------------------------------------------------------------
def task_outcomes(conn: Connection, scope: Scope) -> dict[TemplateKey, TaskOutcomes]:
    """Per template: tasks created in the scope, how many started, their current states, and their
    steps by state. Reads every task of the scope: the reference the rollups are tested against."""
    q = (
        select(
            tasks.c.namespace,
            tasks.c.name,
            tasks.c.version,
            tasks.c.status,
            func.count(),
            func.count(tasks.c.started_at),
        )
        .where(*scope.conditions())
        .group_by(tasks.c.namespace, tasks.c.name, tasks.c.version, tasks.c.status)
    )
    out: dict[TemplateKey, TaskOutcomes] = {}
    for ns, name, version, status, n, started in conn.execute(q):
        o = out.setdefault((ns, name, version), TaskOutcomes())
        o.created += int(n)
        o.started += int(started)
        o.by_status[status] = o.by_status.get(status, 0) + int(n)
    by_state = (
        select(tasks.c.namespace, tasks.c.name, tasks.c.version, steps.c.state, func.count())
        .select_from(tasks.join(steps, steps.c.task_id == tasks.c.id))
        .where(*scope.conditions())
        .group_by(tasks.c.namespace, tasks.c.name, tasks.c.version, steps.c.state)
    )
    for ns, name, version, state, n in conn.execute(by_state):
        out[(ns, name, version)].steps[str(state)] = int(n)
    return out


def task_durations(conn: Connection, scope: Scope) -> dict[TemplateKey, Distribution]:
    """Per template: seconds from start to finish of the tasks created in the scope that
    completed."""
    value = _seconds(conn.dialect.name, tasks.c.started_at, tasks.c.finished_at)
    keys = [tasks.c.namespace, tasks.c.name, tasks.c.version]
    q = select(tasks.c.id).where(
        *scope.conditions(),
        tasks.c.status == TaskState.COMPLETE.value,
        tasks.c.started_at.is_not(None),
    )
    return {(k[0], k[1], k[2]): d for k, d in _distributions(conn, keys, value, q).items()}


# -- steps -----------------------------------------------------------------------------------------
def _attempts(scope: Scope) -> Select[Any]:
    """The attempt outcomes of the tasks in the scope, joined to their task and step rows."""
    joined = tasks.join(step_transitions, step_transitions.c.task_id == tasks.c.id).join(
        steps, steps.c.id == step_transitions.c.step_id
    )
    return (
        select(step_transitions.c.id)
        .select_from(joined)
        .where(
            *scope.conditions(),
            step_transitions.c.from_state == StepState.IN_PROGRESS.value,
            step_transitions.c.to_state.in_(ATTEMPT_OUTCOMES),
        )
    )


_FANOUT = steps.alias("fanout")
#: A step's name for analytics: a fan-out's instances count under their step (`process`, not
#: `process[7]`), so its steps attempted are its instances.
STEP_NAME = func.coalesce(
    select(_FANOUT.c.name).where(_FANOUT.c.id == steps.c.instance_of).scalar_subquery(),
    steps.c.name,
).label("step")
_STEP_KEYS = (
    tasks.c.namespace,
    tasks.c.name,
    tasks.c.version,
    STEP_NAME,
    steps.c.dependent_system,
)


def _count(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.sum(case((condition, 1), else_=0))


def step_counts(conn: Connection, scope: Scope) -> dict[StepKey, StepCounts]:
    """Per step of each template: attempts, completions, retries, errors, steps attempted, error
    classes."""
    to = step_transitions.c.to_state
    q = (
        _attempts(scope)
        .with_only_columns(
            *_STEP_KEYS,
            func.count(),
            _count(to == StepState.COMPLETE.value),
            _count(to == StepState.WAITING_RETRY.value),
            _count(to == StepState.ERROR.value),
            _count(and_(to == StepState.ERROR.value, step_transitions.c.attempt > 1)),
            func.count(step_transitions.c.step_id.distinct()),
            func.max(steps.c.retry_limit),
        )
        .group_by(*_STEP_KEYS)
    )
    out: dict[StepKey, StepCounts] = {}
    for row in conn.execute(q):
        key = (row[0], row[1], row[2], row[3], row[4])
        attempts, completed, retries, errors, after_retries, n_steps, limit = row[5:]
        out[key] = StepCounts(
            int(attempts),
            int(completed or 0),
            int(retries or 0),
            int(errors or 0),
            int(after_retries or 0),
            int(n_steps),
            int(limit or 0),
        )
    classes = (
        _attempts(scope)
        .with_only_columns(*_STEP_KEYS, step_transitions.c.error_class, func.count())
        .where(step_transitions.c.error_class.is_not(None))
        .group_by(*_STEP_KEYS, step_transitions.c.error_class)
    )
    for row in conn.execute(classes):
        key = (row[0], row[1], row[2], row[3], row[4])
        if key in out:
            out[key].error_classes[str(row[5])] = int(row[6])
    return out


def step_durations(conn: Connection, scope: Scope) -> dict[StepKey, Distribution]:
    """Per step of each template: the distribution of attempt durations in milliseconds."""
    got = _distributions(conn, list(_STEP_KEYS), step_transitions.c.duration_ms, _attempts(scope))
    return {(k[0], k[1], k[2], k[3], k[4]): d for k, d in got.items()}


# -- the live backlog ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backlog:
    due_steps: int
    overdue_steps: int
    oldest_due_at: datetime | None
    scheduled_steps: int
    running_steps: int
    active_tasks: int
    tasks_in_error: int


_OPEN = (TaskState.PENDING.value, TaskState.IN_PROGRESS.value, TaskState.ERROR.value)


def backlog(conn: Connection, now: datetime, overdue_before: datetime) -> Backlog:
    """Steps waiting for a worker now (due, and due for longer than they should), later, and
    running.

    The predicates are written exactly as the partial indexes' so that both dialects use them.
    """
    run_at = steps.c.run_at
    due, overdue, oldest, scheduled = conn.execute(
        select(
            _count(run_at <= now),
            _count(run_at <= overdue_before),
            func.min(run_at),
            _count(run_at > now),
        ).where(text(CLAIMABLE))
    ).one()
    running = conn.execute(
        select(func.count()).select_from(steps).where(text("state = 'in_progress'"))
    ).scalar()
    by_status = {
        str(status): int(n)
        for status, n in conn.execute(
            select(tasks.c.status, func.count())
            .where(tasks.c.status.in_(_OPEN))
            .group_by(tasks.c.status)
        )
    }
    return Backlog(
        due_steps=int(due or 0),
        overdue_steps=int(overdue or 0),
        oldest_due_at=oldest if due else None,
        scheduled_steps=int(scheduled or 0),
        running_steps=int(running or 0),
        active_tasks=by_status.get(TaskState.PENDING, 0) + by_status.get(TaskState.IN_PROGRESS, 0),
        tasks_in_error=by_status.get(TaskState.ERROR, 0),
    )
