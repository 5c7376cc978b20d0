"""Analytics rollups per 30-minute slot: what `performance` and `bottlenecks` add up instead.

Joining every attempt of a day to its step and task costs seconds at a million tasks
(docs/benchmarks.md). The reports cover the tasks *created* in a period, so the rollups are keyed by
the slot (30 minutes, `SLOT_MINUTES`) in which each task was created, per template (and step), and
hold only facts that never change once written:

- every attempt outcome (a step transition out of `in_progress` to complete, waiting_retry or
  error), counted per outcome and error class, and its duration in a histogram;
- every task that reached a final state (complete, cancelled, resolved_manually never change again),
  counted per state, with the duration of the completed ones in a histogram.

Nothing is written on the workers' hot path. `catch_up` reads the transitions tables from a cursor
(the last id rolled up) and adds the new rows to the slots' rows, under a lock on the cursor row
(PostgreSQL: `FOR UPDATE SKIP LOCKED`, so a second caller does not wait; SQLite: the one writer).
PostgreSQL hands out ids before commit, so a row with a smaller id can become visible after a larger
one: the ids missing below the cursor are kept as *gaps* and read again until they appear or are
older than `GRACE_SECONDS` (a rolled-back transaction leaves its ids unused for ever).

A report reads, in one snapshot: the rows of the whole slots of the period, the rows not
rolled up yet (the *tail*: ids above the cursor and in its gaps), the partial first slot from the
raw tables (at most one slot of tasks), and the tasks still open (pending, in progress, error)
through the index on `(status, created_at)`. Counts, sums and maxima are exact; p50 and p95 come
from the histograms.

Histogram buckets are logarithmic, `BUCKETS_PER_DOUBLING` per power of two: a value v > 0 falls in
bucket `floor(log2(v) * 8)`, and a percentile is reported as its bucket's geometric middle, clamped
to the exact minimum and maximum, so it is within 2**(1/16) - 1 = 4.4% of the exact nearest-rank
value (and exact when it is the smallest or largest value, e.g. for one sample).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Row,
    Select,
    Table,
    and_,
    bindparam,
    cast,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from tasker.domain.control import parse_instance
from tasker.domain.states import TERMINAL_TASK_STATES, StepState, TaskState
from tasker.store import systems
from tasker.store.analytics import (
    ATTEMPT_OUTCOMES,
    Distribution,
    Scope,
    StepCounts,
    StepKey,
    TaskOutcomes,
    TemplateKey,
)
from tasker.store.database import Database
from tasker.store.schema import (
    rollup_cursors,
    step_duration_rollups,
    step_rollups,
    step_transitions,
    steps,
    task_rollups,
    task_transitions,
    tasks,
)

BUCKETS_PER_DOUBLING = 8
#: Relative error of a percentile read from the histogram (half a bucket, geometrically).
BUCKET_ERROR = 2 ** (1 / (2 * BUCKETS_PER_DOUBLING)) - 1
#: Values <= 0 (a duration of zero) have a bucket of their own, reported as 0.
ZERO_BUCKET = -100_000
#: An id missing below the cursor for longer than this belongs to a transaction that rolled back.
GRACE_SECONDS = 600.0
#: Ids read per catch-up transaction; gaps remembered at most (the newest are kept).
BATCH_IDS = 100_000
MAX_GAPS = 1_000
FINAL_TASK_STATES = tuple(sorted(s.value for s in TERMINAL_TASK_STATES))
OPEN_TASK_STATES = tuple(s.value for s in TaskState if s not in TERMINAL_TASK_STATES)
STEP_SOURCE, TASK_SOURCE = "step_transitions", "task_transitions"
#: The rollups' time slot (column `hour` holds the slot's start): short enough that the raw partial
#: first slot of a period stays cheap, long enough that a day is 48 slots.
SLOT_MINUTES = 30
HOUR = timedelta(minutes=SLOT_MINUTES)


# -- histograms
# -----------------------------------------------------------------------------------------
def bucket_of(value: float) -> int:
    if value <= 0:
        return ZERO_BUCKET
    return max(ZERO_BUCKET + 1, math.floor(math.log2(value) * BUCKETS_PER_DOUBLING))


def bucket_value(bucket: int) -> float:
    """The geometric middle of a bucket: at most `BUCKET_ERROR` away from any value in it."""
    return 0.0 if bucket == ZERO_BUCKET else 2 ** ((bucket + 0.5) / BUCKETS_PER_DOUBLING)


@dataclass
class Histogram:
    """Count, sum, min, max (exact) and log-bucket counts of a set of values; mergeable."""

    count: int = 0
    total: float = 0.0
    low: float | None = None
    high: float | None = None
    #: bucket number (as text, the JSON key it is stored under: no conversion when merging) -> count
    buckets: dict[str, int] = field(default_factory=dict)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.low = value if self.low is None else min(self.low, value)
        self.high = value if self.high is None else max(self.high, value)
        b = str(bucket_of(value))
        self.buckets[b] = self.buckets.get(b, 0) + 1

    def merge(self, other: Histogram) -> None:
        if not other.count:
            return
        self.count += other.count
        self.total += other.total
        self.low = other.low if self.low is None or other.low is None else min(self.low, other.low)
        self.high = (
            other.high if self.high is None or other.high is None else max(self.high, other.high)
        )
        for b, n in other.buckets.items():
            self.buckets[b] = self.buckets.get(b, 0) + n

    def percentile(self, percent: int) -> float | None:
        """Nearest rank (the `ceil(p * n)`-th value), from its bucket; exact at either end."""
        if not self.count or self.low is None or self.high is None:
            return None
        rank = (self.count * percent + 99) // 100
        if rank >= self.count:
            return self.high
        if rank <= 1:
            return self.low
        seen = 0
        for b in sorted(self.buckets, key=int):
            seen += self.buckets[b]
            if seen >= rank:
                return min(max(bucket_value(int(b)), self.low), self.high)
        return self.high  # pragma: no cover - the buckets hold `count` values

    def distribution(self) -> Distribution:
        if not self.count:
            return Distribution()
        return Distribution(
            self.count,
            self.total / self.count,
            self.percentile(50),
            self.percentile(95),
            self.high,
            self.total,
        )

    def encode(self) -> str:
        return json.dumps(self.buckets, separators=(",", ":"))

    @classmethod
    def decode(
        cls, count: int, total: float, low: float | None, high: float | None, buckets: str
    ) -> Histogram:
        return cls(
            int(count),
            float(total),
            low,
            high,
            json.loads(buckets),
        )


def slot_start(at: datetime) -> datetime:
    """The start of the slot holding `at` (UTC): where a report's window begins."""
    at = at.astimezone(UTC)
    return at.replace(minute=at.minute - at.minute % SLOT_MINUTES, second=0, microsecond=0)


# -- what the sources hold
# ------------------------------------------------------------------------------
@dataclass
class _StepCell:
    attempts: int = 0
    after_retries: int = 0
    first_outcomes: int = 0
    retry_limit: int = 0

    def merge(self, other: _StepCell) -> None:
        self.attempts += other.attempts
        self.after_retries += other.after_retries
        self.first_outcomes += other.first_outcomes
        self.retry_limit = max(self.retry_limit, other.retry_limit)


@dataclass
class _TaskCell:
    tasks: int = 0
    started: int = 0
    durations: Histogram = field(default_factory=Histogram)
    #: The steps of these tasks by state.
    steps: dict[str, int] = field(default_factory=dict)

    def merge(self, other: _TaskCell) -> None:
        self.tasks += other.tasks
        self.started += other.started
        self.durations.merge(other.durations)
        add_counts(self.steps, other.steps)


def add_counts(into: dict[str, int], more: dict[str, int]) -> None:
    """Add counts by name (steps by state) into `into`."""
    for k, n in more.items():
        into[k] = into.get(k, 0) + n


#: (hour, step key, outcome, error class or '')
StepCellKey = tuple[datetime, StepKey, str, str]
#: (hour, template key, final status)
TaskCellKey = tuple[datetime, TemplateKey, str]


@dataclass
class StepFacts:
    """Attempt outcomes added up per hour of task creation and step, and their durations."""

    cells: dict[StepCellKey, _StepCell] = field(default_factory=dict)
    durations: dict[tuple[datetime, StepKey], Histogram] = field(default_factory=dict)

    def add(self, r: Row[Any]) -> None:
        instance = parse_instance(r.step)  # a fan-out's instances add up under their step
        step = instance[0] if instance else r.step
        key: StepKey = (r.namespace, r.name, r.version, step, r.dependent_system)
        hour = slot_start(r.created_at)
        cell = self.cells.setdefault((hour, key, r.to_state, r.error_class or ""), _StepCell())
        cell.attempts += 1
        cell.after_retries += int(r.to_state == StepState.ERROR and r.attempt > 1)
        cell.first_outcomes += int(bool(r.first))
        cell.retry_limit = max(cell.retry_limit, int(r.retry_limit))
        if r.duration_ms is not None:
            self.durations.setdefault((hour, key), Histogram()).add(float(r.duration_ms))


@dataclass
class TaskFacts:
    """Tasks in a final state added up per hour of creation, template and state."""

    cells: dict[TaskCellKey, _TaskCell] = field(default_factory=dict)

    def add(
        self,
        created_at: datetime,
        key: TemplateKey,
        status: str,
        started_at: datetime | None,
        finished_at: datetime | None,
        steps: dict[str, int] | None = None,
    ) -> None:
        cell = self.cells.setdefault((slot_start(created_at), key, status), _TaskCell())
        cell.tasks += 1
        cell.started += int(started_at is not None)
        add_counts(cell.steps, steps or {})
        if status == TaskState.COMPLETE and started_at is not None and finished_at is not None:
            cell.durations.add((finished_at - started_at).total_seconds())


_PRIOR = step_transitions.alias("prior")
_FIRST = ~exists().where(
    _PRIOR.c.task_id == step_transitions.c.task_id,  # the index that serves it (migration 0010)
    _PRIOR.c.step_id == step_transitions.c.step_id,
    _PRIOR.c.id < step_transitions.c.id,
    _PRIOR.c.from_state == StepState.IN_PROGRESS.value,
    _PRIOR.c.to_state.in_(ATTEMPT_OUTCOMES),
)


def _step_rows(conn: Connection, *where: ColumnElement[bool]) -> Iterable[Row[Any]]:
    """Attempt outcomes with their task's creation time and template, their step, and whether this
    is the step's first outcome (so `steps` counts steps, not attempts, across hours, batches)."""
    q = (
        select(
            step_transitions.c.id,
            step_transitions.c.to_state,
            step_transitions.c.attempt,
            step_transitions.c.error_class,
            step_transitions.c.duration_ms,
            tasks.c.created_at,
            tasks.c.namespace,
            tasks.c.name,
            tasks.c.version,
            steps.c.name.label("step"),
            steps.c.dependent_system,
            steps.c.retry_limit,
            _FIRST.label("first"),
        )
        .select_from(
            step_transitions.join(tasks, tasks.c.id == step_transitions.c.task_id).join(
                steps, steps.c.id == step_transitions.c.step_id
            )
        )
        .where(
            step_transitions.c.from_state == StepState.IN_PROGRESS.value,
            step_transitions.c.to_state.in_(ATTEMPT_OUTCOMES),
            *where,
        )
    )
    return conn.execute(q)


def _task_rows(conn: Connection, *where: ColumnElement[bool]) -> Iterable[Row[Any]]:
    """Transitions into a final task state, with the task's creation time, template, timestamps."""
    q = (
        select(
            task_transitions.c.id,
            task_transitions.c.task_id,
            task_transitions.c.to_state.label("status"),
            tasks.c.created_at,
            tasks.c.namespace,
            tasks.c.name,
            tasks.c.version,
            tasks.c.started_at,
            tasks.c.finished_at,
        )
        .select_from(task_transitions.join(tasks, tasks.c.id == task_transitions.c.task_id))
        .where(task_transitions.c.to_state.in_(FINAL_TASK_STATES), *where)
    )
    return conn.execute(q)


def step_states(conn: Connection, task_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """The steps of these tasks counted by state, per task (by primary-key ranges of steps)."""
    ids = sorted(set(task_ids))
    out: dict[int, dict[str, int]] = {}
    for i in range(0, len(ids), 1000):
        rows = conn.execute(
            select(steps.c.task_id, steps.c.state, func.count())
            .where(steps.c.task_id.in_(ids[i : i + 1000]))
            .group_by(steps.c.task_id, steps.c.state)
        )
        for task_id, state, n in rows:
            out.setdefault(int(task_id), {})[str(state)] = int(n)
    return out


def _add_tasks(
    conn: Connection, facts: TaskFacts, rows: Iterable[Row[Any]], taken: set[int] | None = None
) -> None:
    """Add final tasks to `facts` with their steps by state: `rows` name each task (`task_id`),
    its state (`status`), creation, template and times; with `taken`, only the rows whose `id`
    (a transition's) is in it."""
    chosen = [r for r in rows if taken is None or r.id in taken]
    states = step_states(conn, (r.task_id for r in chosen))
    for r in chosen:
        facts.add(
            r.created_at,
            (r.namespace, r.name, r.version),
            r.status,
            r.started_at,
            r.finished_at,
            states.get(int(r.task_id), {}),
        )


# -- the cursor
# -----------------------------------------------------------------------------------------
Gap = tuple[int, int, float]  # lo, hi, first seen (epoch seconds)


@dataclass
class Cursor:
    last_id: int = 0
    gaps: list[Gap] = field(default_factory=list)

    def pending(self, table: Table) -> ColumnElement[bool]:
        """Ids of `table` not rolled up yet: above the cursor or in one of its gaps."""
        terms = [table.c.id > self.last_id] + [
            table.c.id.between(lo, hi) for lo, hi, _ in self.gaps
        ]
        return or_(*terms)


def _read_cursor(conn: Connection, source: str, *, lock: bool) -> Cursor | None:
    """The cursor of `source`; with `lock`, None when another caller holds it (catching up)."""
    q = select(rollup_cursors.c.last_id, rollup_cursors.c.gaps).where(
        rollup_cursors.c.source == source
    )
    if lock:
        row = conn.execute(q.with_for_update(skip_locked=True)).first()
        if row is None:
            if conn.execute(select(func.count()).where(rollup_cursors.c.source == source)).scalar():
                return None
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            conn.execute(
                dialect.insert(rollup_cursors)
                .values(source=source, last_id=0, gaps="[]", updated_at=datetime.now(UTC))
                .on_conflict_do_nothing()
            )
            row = conn.execute(q.with_for_update(skip_locked=True)).first()
            if row is None:
                return None
    else:
        row = conn.execute(q).first()
        if row is None:
            return Cursor()
    return Cursor(
        int(row.last_id), [(int(lo), int(hi), float(at)) for lo, hi, at in json.loads(row.gaps)]
    )


def _advance(
    conn: Connection, table: Table, cursor: Cursor, now: float
) -> tuple[set[int], Cursor, bool]:
    """The ids to roll up in this transaction, the cursor after them, and whether the table is read
    to its end. Ids skipped over become gaps; gaps that filled in are taken; old ones dropped."""
    ids = list(
        conn.execute(
            select(table.c.id)
            .where(table.c.id > cursor.last_id)
            .order_by(table.c.id)
            .limit(BATCH_IDS)
        ).scalars()
    )
    taken = set(ids)
    gaps: list[Gap] = []
    young = [g for g in cursor.gaps if now - g[2] < GRACE_SECONDS]
    if young:
        arrived = sorted(
            conn.execute(
                select(table.c.id).where(or_(*[table.c.id.between(lo, hi) for lo, hi, _ in young]))
            ).scalars()
        )
        taken.update(arrived)
        for lo, hi, seen in young:
            start = lo
            for i in (i for i in arrived if lo <= i <= hi):
                if i > start:
                    gaps.append((start, i - 1, seen))
                start = i + 1
            if start <= hi:
                gaps.append((start, hi, seen))
    # The first read of a table starts at its first row, not at id 1 (older ids may have been
    # deleted).
    expected = cursor.last_id + 1 if cursor.last_id or not ids else ids[0]
    for i in ids:
        if i > expected:
            gaps.append((expected, i - 1, now))
        expected = i + 1
    return taken, Cursor(ids[-1] if ids else cursor.last_id, gaps[-MAX_GAPS:]), len(ids) < BATCH_IDS


def _save_cursor(conn: Connection, source: str, cursor: Cursor) -> None:
    conn.execute(
        update(rollup_cursors)
        .where(rollup_cursors.c.source == source)
        .values(
            last_id=cursor.last_id,
            gaps=json.dumps([list(g) for g in cursor.gaps]),
            updated_at=datetime.now(UTC),
        )
    )


def _taken_condition(table: Table, old: Cursor, new: Cursor) -> ColumnElement[bool]:
    return or_(
        and_(table.c.id > old.last_id, table.c.id <= new.last_id),
        *[table.c.id.between(lo, hi) for lo, hi, _ in old.gaps],
    )


# -- writing the hourly rows
# ----------------------------------------------------------------------------
_STEP_PK = (
    step_rollups.c.hour,
    step_rollups.c.namespace,
    step_rollups.c.name,
    step_rollups.c.version,
    step_rollups.c.step,
    step_rollups.c.dependent_system,
    step_rollups.c.outcome,
    step_rollups.c.error_class,
)
_DUR_PK = (
    step_duration_rollups.c.hour,
    step_duration_rollups.c.namespace,
    step_duration_rollups.c.name,
    step_duration_rollups.c.version,
    step_duration_rollups.c.step,
    step_duration_rollups.c.dependent_system,
)
_TASK_PK = (
    task_rollups.c.hour,
    task_rollups.c.namespace,
    task_rollups.c.name,
    task_rollups.c.version,
    task_rollups.c.status,
)


def _existing(
    conn: Connection,
    table: Table,
    pk: Sequence[Any],
    keys: list[tuple[Any, ...]],
) -> dict[tuple[Any, ...], Row[Any]]:
    out: dict[tuple[Any, ...], Row[Any]] = {}
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        for row in conn.execute(select(table).where(tuple_(*pk).in_(chunk))):
            out[tuple(row[: len(pk)])] = row
    return out


def _store(
    conn: Connection,
    table: Table,
    pk: Sequence[Any],
    rows: dict[tuple[Any, ...], dict[str, Any]],
    merge: Callable[[Row[Any], dict[str, Any]], dict[str, Any]],
) -> None:
    """Add `rows` (primary key -> values) to `table`: merged into existing rows, else inserted."""
    if not rows:
        return
    existing = _existing(conn, table, pk, list(rows))
    names = [c.name for c in pk]
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    columns: list[str] = []
    for key, values in rows.items():
        ident = dict(zip(names, key))
        old = existing.get(key)
        if old is None:
            inserts.append({**ident, **values})
        else:
            merged = merge(old, values)
            updates.append(
                {
                    **{f"k_{n}": v for n, v in ident.items()},
                    **{f"v_{n}": v for n, v in merged.items()},
                }
            )
            columns = list(merged)
    if inserts:
        conn.execute(insert(table), inserts)
    if updates:
        stmt = update(table).where(*[c == bindparam(f"k_{c.name}") for c in pk])
        conn.execute(stmt.values({n: bindparam(f"v_{n}") for n in columns}), updates)


def _hist_values(h: Histogram) -> dict[str, Any]:
    return {
        "samples": h.count,
        "total": h.total,
        "low": h.low,
        "high": h.high,
        "buckets": h.encode(),
    }


def _merge_hist(old: Row[Any], new: dict[str, Any]) -> dict[str, Any]:
    h = Histogram.decode(old.samples, old.total, old.low, old.high, old.buckets)
    h.merge(Histogram.decode(new["samples"], new["total"], new["low"], new["high"], new["buckets"]))
    return _hist_values(h)


def _write_steps(conn: Connection, facts: StepFacts) -> None:
    cells = {
        (hour, *key, outcome, cls): {
            "attempts": c.attempts,
            "after_retries": c.after_retries,
            "first_outcomes": c.first_outcomes,
            "retry_limit": c.retry_limit,
        }
        for (hour, key, outcome, cls), c in facts.cells.items()
    }

    def merge(old: Row[Any], new: dict[str, Any]) -> dict[str, Any]:
        return {
            "attempts": old.attempts + new["attempts"],
            "after_retries": old.after_retries + new["after_retries"],
            "first_outcomes": old.first_outcomes + new["first_outcomes"],
            "retry_limit": max(old.retry_limit, new["retry_limit"]),
        }

    _store(conn, step_rollups, _STEP_PK, cells, merge)
    durations = {(hour, *key): _hist_values(h) for (hour, key), h in facts.durations.items()}
    _store(conn, step_duration_rollups, _DUR_PK, durations, _merge_hist)


def _write_tasks(conn: Connection, facts: TaskFacts) -> None:
    cells = {
        (hour, *key, status): {
            "tasks": c.tasks,
            "started": c.started,
            **_hist_values(c.durations),
            "step_states": json.dumps(c.steps, sort_keys=True),
        }
        for (hour, key, status), c in facts.cells.items()
    }

    def merge(old: Row[Any], new: dict[str, Any]) -> dict[str, Any]:
        states: dict[str, int] = json.loads(old.step_states)
        add_counts(states, json.loads(new["step_states"]))
        return {
            "tasks": old.tasks + new["tasks"],
            "started": old.started + new["started"],
            **_merge_hist(old, new),
            "step_states": json.dumps(states, sort_keys=True),
        }

    _store(conn, task_rollups, _TASK_PK, cells, merge)


# -- catching up
# ----------------------------------------------------------------------------------------
Begin = Callable[[], AbstractContextManager[Connection]]


def catch_up(begin: Begin, *, max_seconds: float = 600.0) -> int:
    """Roll up the transitions written since the last call; returns how many ids were read.

    `begin` opens a write transaction (`Database.write`); each batch of ids commits on its own, so a
    long backlog (after an upgrade or a bulk load) holds no lock for long. A caller that finds the
    cursor locked returns at once: the report then reads the rows not rolled up yet from the tables.
    After `max_seconds` it stops too (the rest is read as the tail, and rolled up by the next call).
    """
    read = 0
    deadline = time.monotonic() + max_seconds
    for source, table, roll in (
        (STEP_SOURCE, step_transitions, _roll_steps),
        (TASK_SOURCE, task_transitions, _roll_tasks),
    ):
        done = False
        while not done and time.monotonic() < deadline:
            with begin() as conn:
                cursor = _read_cursor(conn, source, lock=True)
                if cursor is None:
                    break
                taken, after, done = _advance(conn, table, cursor, time.time())
                if taken:
                    roll(conn, _taken_condition(table, cursor, after), taken)
                if taken or after != cursor:
                    _save_cursor(conn, source, after)
                read += len(taken)
    return read


def _roll_steps(conn: Connection, where: ColumnElement[bool], taken: set[int]) -> None:
    facts = StepFacts()
    for r in _step_rows(conn, where):
        if r.id in taken:
            facts.add(r)
    _write_steps(conn, facts)


def _roll_tasks(conn: Connection, where: ColumnElement[bool], taken: set[int]) -> None:
    facts = TaskFacts()
    _add_tasks(conn, facts, _task_rows(conn, where), taken)
    _write_tasks(conn, facts)


def clear(conn: Connection) -> None:
    """Forget every rollup and rewind the cursors: the next catch-up reads the whole history again
    (after rows were edited or deleted by hand)."""
    for table in (step_rollups, step_duration_rollups, task_rollups, rollup_cursors):
        conn.execute(delete(table))


# -- reading a report
# -----------------------------------------------------------------------------------
def _edge(since: datetime) -> datetime:
    """The first whole hour of a period from `since`: earlier tasks are read from the raw rows."""
    hour = slot_start(since)
    return hour if hour == since else hour + HOUR


def _template_filter(scope: Scope, table: Table) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    for column, value in (
        ("namespace", scope.namespace),
        ("name", scope.name),
        ("version", scope.version),
    ):
        if value:
            out.append(table.c[column] == value)
    return out


def _window(scope: Scope, table: Table) -> list[ColumnElement[bool]]:
    return [table.c.hour >= _edge(scope.since), *_template_filter(scope, table)]


def step_report(
    conn: Connection, scope: Scope, *, durations: bool = True
) -> tuple[dict[StepKey, StepCounts], dict[StepKey, Distribution]]:
    """Per step of each template: the counts of `analytics.step_counts`, attempt durations (ms).

    `durations=False` leaves the histograms out (the status needs counts only): decoding them is
    most of what a report over many slots costs."""
    edge = _edge(scope.since)
    facts = StepFacts()
    cursor = _read_cursor(conn, STEP_SOURCE, lock=False) or Cursor()
    for r in _step_rows(
        conn,
        cursor.pending(step_transitions),
        tasks.c.created_at >= edge,
        *_template_filter(scope, tasks),
    ):
        facts.add(r)
    if edge > scope.since:
        for r in _step_rows(
            conn,
            tasks.c.created_at >= scope.since,
            tasks.c.created_at < edge,
            *_template_filter(scope, tasks),
        ):
            facts.add(r)
    counts: dict[StepKey, StepCounts] = {}
    firsts: dict[StepKey, _StepCell] = {}

    def count(key: StepKey, outcome: str, cls: str, cell: _StepCell) -> None:
        c = counts.setdefault(key, StepCounts())
        c.attempts += cell.attempts
        c.completed += cell.attempts if outcome == StepState.COMPLETE else 0
        c.retries += cell.attempts if outcome == StepState.WAITING_RETRY else 0
        c.errors += cell.attempts if outcome == StepState.ERROR else 0
        c.errors_after_retries += cell.after_retries
        if cls:
            c.error_classes[cls] = c.error_classes.get(cls, 0) + cell.attempts
        firsts.setdefault(key, _StepCell()).merge(cell)

    for (_, key, outcome, cls), cell in facts.cells.items():
        count(key, outcome, cls, cell)
    c = step_rollups.c
    q = (
        select(
            c.namespace,
            c.name,
            c.version,
            c.step,
            c.dependent_system,
            c.outcome,
            c.error_class,
            func.sum(c.attempts),
            func.sum(c.after_retries),
            func.sum(c.first_outcomes),
            func.max(c.retry_limit),
        )
        .where(*_window(scope, step_rollups))
        .group_by(
            c.namespace, c.name, c.version, c.step, c.dependent_system, c.outcome, c.error_class
        )
    )
    for row in conn.execute(q):
        key = (row[0], row[1], row[2], row[3], row[4])
        count(key, row[5], row[6], _StepCell(int(row[7]), int(row[8]), int(row[9]), int(row[10])))
    for key, total in counts.items():
        total.steps, total.retry_limit = firsts[key].first_outcomes, firsts[key].retry_limit
    if not durations:
        return counts, {}
    hists: dict[StepKey, Histogram] = {}
    for (_, key), h in facts.durations.items():
        hists.setdefault(key, Histogram()).merge(h)
    d = step_duration_rollups.c
    keys = [d.namespace, d.name, d.version, d.step, d.dependent_system]
    for rolled_key, h in merged_histograms(
        conn, step_duration_rollups, keys, _window(scope, step_duration_rollups)
    ).items():
        key = (rolled_key[0], rolled_key[1], rolled_key[2], rolled_key[3], rolled_key[4])
        hists.setdefault(key, Histogram()).merge(h)
    return counts, {key: h.distribution() for key, h in hists.items()}


def task_report(
    conn: Connection,
    scope: Scope,
    *,
    durations: bool = True,
) -> tuple[dict[TemplateKey, TaskOutcomes], dict[TemplateKey, Distribution]]:
    """Per template: what `analytics.task_outcomes` and `analytics.task_durations` answer
    (`durations=False`: no histograms, the distributions are left empty)."""
    edge = _edge(scope.since)
    facts = TaskFacts()
    cursor = _read_cursor(conn, TASK_SOURCE, lock=False) or Cursor()
    _add_tasks(
        conn,
        facts,
        _task_rows(
            conn,
            cursor.pending(task_transitions),
            tasks.c.created_at >= edge,
            *_template_filter(scope, tasks),
        ),
    )
    if edge > scope.since:  # the partial first slot: its final tasks, from the tasks table
        q = select(
            tasks.c.id.label("task_id"),
            tasks.c.created_at,
            tasks.c.namespace,
            tasks.c.name,
            tasks.c.version,
            tasks.c.status,
            tasks.c.started_at,
            tasks.c.finished_at,
        ).where(
            tasks.c.created_at >= scope.since,
            tasks.c.created_at < edge,
            tasks.c.status.in_(FINAL_TASK_STATES),
            *_template_filter(scope, tasks),
        )
        _add_tasks(conn, facts, conn.execute(q))
    outcomes: dict[TemplateKey, TaskOutcomes] = {}
    hists: dict[TemplateKey, Histogram] = {}

    def count(key: TemplateKey, status: str, cell: _TaskCell) -> None:
        o = outcomes.setdefault(key, TaskOutcomes())
        o.created += cell.tasks
        o.started += cell.started
        o.by_status[status] = o.by_status.get(status, 0) + cell.tasks
        add_counts(o.steps, cell.steps)
        if cell.durations.count:
            hists.setdefault(key, Histogram()).merge(cell.durations)

    for (_, key, status), cell in facts.cells.items():
        count(key, status, cell)
    t = task_rollups.c
    rolled = select(
        t.namespace,
        t.name,
        t.version,
        t.status,
        t.tasks,
        t.started,
        t.step_states,
    ).where(*_window(scope, task_rollups))
    for row in conn.execute(rolled):
        count(
            (row[0], row[1], row[2]),
            row[3],
            _TaskCell(int(row[4]), int(row[5]), Histogram(), json.loads(row[6])),
        )
    if durations:
        keys = [t.namespace, t.name, t.version]
        for rolled_key, h in merged_histograms(
            conn, task_rollups, keys, _window(scope, task_rollups)
        ).items():
            hists.setdefault((rolled_key[0], rolled_key[1], rolled_key[2]), Histogram()).merge(h)
    open_q = (
        select(
            tasks.c.namespace,
            tasks.c.name,
            tasks.c.version,
            tasks.c.status,
            func.count(),
            func.count(tasks.c.started_at),
        )
        .where(
            tasks.c.status.in_(OPEN_TASK_STATES),
            tasks.c.created_at >= scope.since,
            *_template_filter(scope, tasks),
        )
        .group_by(tasks.c.namespace, tasks.c.name, tasks.c.version, tasks.c.status)
    )
    for ns, name, version, status, n, started in conn.execute(open_q):
        count((ns, name, version), status, _TaskCell(int(n), int(started)))
    for template, live in open_step_states(conn, scope).items():
        add_counts(outcomes.setdefault(template, TaskOutcomes()).steps, live)
    if not durations:
        return outcomes, {}
    return outcomes, {key: h.distribution() for key, h in hists.items()}


def merged_histograms(
    conn: Connection,
    table: Table,
    keys: Sequence[ColumnElement[Any]],
    where: Sequence[ColumnElement[bool]],
) -> dict[tuple[Any, ...], Histogram]:
    """The histograms of `table`'s rows in `where`, merged per `keys` by the database: sums,
    minima and maxima, and the bucket counts added up from the rows' JSON (`jsonb_each_text` on
    PostgreSQL, `json_each` on SQLite). A 24-hour report merges some 300 slot rows; decoding each
    in Python made it grow with the number of slots."""
    c = table.c
    out: dict[tuple[Any, ...], Histogram] = {}
    totals = (
        select(*keys, func.sum(c.samples), func.sum(c.total), func.min(c.low), func.max(c.high))
        .where(*where, c.samples > 0)
        .group_by(*keys)
    )
    k = len(keys)
    for row in conn.execute(totals):
        out[tuple(row[:k])] = Histogram(
            int(row[k]), float(row[k + 1]), _opt(row[k + 2]), _opt(row[k + 3]), {}
        )
    if not out:
        return out
    if conn.dialect.name == "postgresql":
        pairs: Any = (
            func.jsonb_each_text(cast(c.buckets, postgresql.JSONB))
            .table_valued("key", "value", name="b")
            .lateral()
        )
    else:
        pairs = func.json_each(c.buckets).table_valued("key", "value", name="b")
    counted = (
        select(*keys, pairs.c.key, func.sum(cast(pairs.c.value, BigInteger)))
        .select_from(table.join(pairs, true()))
        .where(*where, c.samples > 0)
        .group_by(*keys, pairs.c.key)
    )
    for row in conn.execute(counted):
        out[tuple(row[:k])].buckets[str(row[k])] = int(row[k + 1])
    return out


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


def open_step_states(conn: Connection, scope: Scope) -> dict[TemplateKey, dict[str, int]]:
    """Per template, the steps of the scope's open tasks (pending, in progress, error) by state:
    the tasks through `(status, created_at)`, their steps by `task_id`; the live part only."""
    out: dict[TemplateKey, dict[str, int]] = {}
    for ns, name, version, state, n in conn.execute(open_steps_statement(scope)):
        out.setdefault((ns, name, version), {})[str(state)] = int(n)
    return out


def open_steps_statement(scope: Scope) -> Select[Any]:
    """The statement of `open_step_states`."""
    return (
        select(tasks.c.namespace, tasks.c.name, tasks.c.version, steps.c.state, func.count())
        .select_from(tasks.join(steps, steps.c.task_id == tasks.c.id))
        .where(
            tasks.c.status.in_(OPEN_TASK_STATES),
            tasks.c.created_at >= scope.since,
            *_template_filter(scope, tasks),
        )
        .group_by(tasks.c.namespace, tasks.c.name, tasks.c.version, steps.c.state)
    )


@dataclass(frozen=True)
class ReportFigures:
    """What the performance and bottlenecks reports are computed from, read at one instant."""

    outcomes: dict[TemplateKey, TaskOutcomes]
    task_durations: dict[TemplateKey, Distribution]
    step_counts: dict[StepKey, StepCounts]
    step_durations: dict[StepKey, Distribution]
    #: Dependent system -> its circuit state.
    circuits: dict[str, str]


def read_reports(db: Database, scope: Scope) -> ReportFigures:
    """Bring the rollups up to date, then read the figures of a report in one snapshot.

    The rollups, the rows not rolled up yet and the open tasks are read in one `snapshot`.
    """
    catch_up(db.write)
    with snapshot(db) as conn:
        outcomes, task_durations = task_report(conn, scope)
        counts, durations = step_report(conn, scope)
        circuits = {c["name"]: c["circuit_state"] for c in systems.report(conn, datetime.now(UTC))}
    return ReportFigures(outcomes, task_durations, counts, durations, circuits)


@contextmanager
def snapshot(db: Database) -> Iterator[Connection]:
    """A read transaction that sees one instant: the rollups, the rows not rolled up yet and the
    open tasks must agree, or a task finishing between two reads is counted twice or not at all.
    PostgreSQL reads in REPEATABLE READ; a SQLite read transaction is a snapshot already."""
    with db.read() as conn:
        if db.is_postgres:
            conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn
