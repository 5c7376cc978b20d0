"""The durable event log: every engine event, from every worker process, read back from the
database.

Lifecycle events are not written twice: each one is exactly one transition row (a step's, a task's
or a circuit's), so the transition tables *are* the log, and only custom events (`ctx.publish`) have
a table of their own. Reading merges the four sources in time order.

Positions are per-source id horizons. On PostgreSQL ids are allocated before commit, so a row with a
smaller id can become visible after a larger one (two transactions committing out of order). A
reader that jumped over such a hole would lose the late row for good, so a horizon only moves past a
missing id once the rows behind the hole are `SETTLE_SECONDS` old: by then the hole is a rolled-back
insert, not a transaction still committing. Within that window a page stops at the hole and the next
page continues.
"""

from __future__ import annotations

import fnmatch
import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Select, func, select

from tasker.domain.circuits import CircuitState
from tasker.domain.errors import TaskerInputError
from tasker.domain.events import STEP_EVENT_FOR_STATE, TASK_EVENT_FOR_STATE, Events
from tasker.domain.history import EventFields, EventRecord
from tasker.domain.states import StepState, TaskState
from tasker.store.schema import (
    circuit_transitions,
    custom_events,
    step_transitions,
    steps,
    task_transitions,
    tasks,
)

#: How long a hole in the ids may stay open before it counts as a rolled-back insert.
SETTLE_SECONDS = 2.0

SOURCES = ("step", "task", "circuit", "custom")
_CIRCUIT_EVENTS = {
    CircuitState.OPEN: Events.CIRCUIT_OPENED,
    CircuitState.CLOSED: Events.CIRCUIT_CLOSED,
    CircuitState.HALF_OPEN: Events.CIRCUIT_HALF_OPEN,
}
_NAMES = {
    "step": (*STEP_EVENT_FOR_STATE.values(), Events.STEP_WAITING),
    "task": (*TASK_EVENT_FOR_STATE.values(), Events.TASK_CREATED, Events.TASK_RETRIED),
    "circuit": tuple(_CIRCUIT_EVENTS.values()),
}
_LIFECYCLE_PREFIXES = ("step.", "task.", "circuit.")


@dataclass(frozen=True)
class Cursor:
    """How far a reader got in each source: every row at or below these ids has been seen or
    skipped."""

    step: int = 0
    task: int = 0
    circuit: int = 0
    custom: int = 0

    def __str__(self) -> str:
        return f"{self.step}-{self.task}-{self.circuit}-{self.custom}"

    @classmethod
    def parse(cls, text: str | None) -> Cursor:
        if text is None or text == "":
            return cls()
        parts = text.split("-")
        if len(parts) != 4 or not all(p.isdigit() and len(p) <= 18 for p in parts):
            raise TaskerInputError(
                f"invalid event cursor {text[:40]!r}; fix: pass back the `cursor` (or SSE id) of an"
                " earlier page, four numbers joined by '-', or omit it to read from the start"
            )
        return cls(*(int(p) for p in parts))

    def get(self, source: str) -> int:
        return int(getattr(self, source))


class _Pending(EventFields, total=False):
    """An event as a source reads it, before the merge hands it out as an `EventRecord`."""

    #: The row's id in its source (popped once the event is merged).
    _id: int
    #: Not an event a reader is shown, but its id moves the source's horizon.
    _skip: bool
    cursor: str


@dataclass
class EventPage:
    events: list[EventRecord]
    cursor: str
    #: True when a source had more rows than the page could take: read again at once.
    more: bool = False


@dataclass
class _Filter:
    task_id: int | None = None
    namespace: str | None = None
    names: tuple[str, ...] = ()
    sources: tuple[str, ...] = field(default_factory=lambda: SOURCES)


def read(
    conn: Connection,
    after: str | None = None,
    *,
    task_id: int | None = None,
    namespace: str | None = None,
    names: Sequence[str] | None = None,
    limit: int = 1000,
    now: datetime,
) -> EventPage:
    """The events after `after` (a cursor), oldest first, at most `limit`; filters narrow what is
    returned."""
    if not 1 <= limit <= 10_000:
        raise TaskerInputError("limit must be between 1 and 10000")
    cursor = Cursor.parse(after)
    flt = _Filter(task_id, namespace, tuple(names or ()))
    flt.sources = tuple(s for s in SOURCES if _source_may_match(s, flt))
    settled_before = now - timedelta(seconds=SETTLE_SECONDS)
    heads: dict[str, Iterator[_Pending]] = {}
    fetched: dict[str, int] = {}
    for source in flt.sources:
        rows = _fetch(conn, source, cursor.get(source), flt, limit)
        fetched[source] = len(rows)
        heads[source] = iter(_until_hole(rows, cursor.get(source), settled_before))
    horizons = {s: cursor.get(s) for s in SOURCES}
    out: list[EventRecord] = []
    more = any(n >= limit for n in fetched.values())
    # k-way merge by time; each source is consumed in id order, so every cursor handed out is a
    # clean prefix
    heap: list[tuple[datetime, int, int, int, _Pending, str]] = []
    order_of = {s: i for i, s in enumerate(heads)}
    for source, it in heads.items():
        first = next(it, None)
        if first is not None:
            heap.append((first["at"], _rank(first), order_of[source], first["_id"], first, source))
    heapq.heapify(heap)
    while heap and len(out) < limit:
        *_, row, source = heapq.heappop(heap)
        horizons[source] = row.pop("_id")
        nxt = next(heads[source], None)
        if nxt is not None:
            heapq.heappush(heap, (nxt["at"], _rank(nxt), order_of[source], nxt["_id"], nxt, source))
        if row.pop("_skip", False) or not _name_matches(row["event"], flt.names):
            continue
        row["cursor"] = str(Cursor(**horizons))
        out.append(cast(EventRecord, row))
    if heap:
        more = True
    return EventPage(out, str(Cursor(**horizons)), more)


def tail(conn: Connection) -> str:
    """A cursor at the current end of the log: reading from it returns only events that happen
    later."""
    ids = [
        conn.execute(select(func.max(t.c.id))).scalar() or 0
        for t in (step_transitions, task_transitions, circuit_transitions, custom_events)
    ]
    return str(Cursor(*ids))


# -- sources ---------------------------------------------------------------------------------------
def _source_may_match(source: str, flt: _Filter) -> bool:
    if source == "circuit" and (flt.task_id is not None or flt.namespace is not None):
        return False  # circuits belong to systems, not to a task or namespace
    if not flt.names:
        return True
    if (
        source == "custom"
    ):  # custom names are the templates' own: only lifecycle-only filters rule them out
        return any(not p.startswith(_LIFECYCLE_PREFIXES) for p in flt.names)
    return any(fnmatch.fnmatchcase(name, p) for p in flt.names for name in _NAMES[source])


_OPENING = frozenset({Events.TASK_CREATED, Events.TASK_STARTED, Events.TASK_RETRIED})


def _rank(row: _Pending) -> int:
    """Order of events one transaction wrote at the same instant: a task opens, its steps move,
    their custom events follow, circuits react, and the task closes last."""
    event = row["event"]
    if event.startswith("task."):
        return 0 if event in _OPENING else 4
    if row["id"].startswith("step:"):
        return 1
    return 2 if row["id"].startswith("custom:") else 3


def _name_matches(name: str, patterns: tuple[str, ...]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _until_hole(rows: list[_Pending], horizon: int, settled_before: datetime) -> list[_Pending]:
    """Rows up to the first hole in the ids that may still fill (see the module docstring)."""
    out: list[_Pending] = []
    expected = horizon + 1
    for row in rows:
        if row["_id"] != expected and row["at"] > settled_before:
            break
        out.append(row)
        expected = row["_id"] + 1
    return out


def _fetch(conn: Connection, source: str, after: int, flt: _Filter, limit: int) -> list[_Pending]:
    return {"step": _steps, "task": _tasks, "circuit": _circuits, "custom": _customs}[source](
        conn, after, flt, limit
    )


def _template(ns: str, name: str, version: str) -> str:
    return f"{ns}/{name}@{version}"


def _steps(conn: Connection, after: int, flt: _Filter, limit: int) -> list[_Pending]:
    st, s, t = step_transitions, steps, tasks
    q: Select[Any] = (
        select(
            st.c.id,
            st.c.step_id,
            st.c.task_id,
            st.c.from_state,
            st.c.to_state,
            st.c.attempt,
            st.c.at,
            st.c.worker,
            st.c.error_class,
            st.c.error_message,
            st.c.duration_ms,
            st.c.reason,
            s.c.name.label("step"),
            s.c.dependent_system,
            t.c.namespace,
            t.c.name,
            t.c.version,
        )
        .join(s, s.c.id == st.c.step_id)
        .join(t, t.c.id == st.c.task_id)
        .where(st.c.id > after)
        .order_by(st.c.id)
        .limit(limit)
    )
    if flt.task_id is not None:
        q = q.where(st.c.task_id == flt.task_id)
    if flt.namespace is not None:
        q = q.where(t.c.namespace == flt.namespace)
    out: list[_Pending] = []
    for r in conn.execute(q):
        name = STEP_EVENT_FOR_STATE.get(r.to_state)
        if r.to_state == StepState.WAITING_RETRY and r.error_class is None:
            # No error: the step parked itself (a sleep, a signal, a child task), as the
            # in-process event says; a retry always records the failure that caused it.
            name = Events.STEP_WAITING
        data: dict[str, Any] = {
            "from_state": r.from_state,
            "to_state": r.to_state,
            "dependent_system": r.dependent_system,
        }
        if r.error_class:
            data["error"] = {"class": r.error_class, "message": r.error_message}
        if r.duration_ms is not None:
            data["duration_ms"] = r.duration_ms
        if r.reason:
            data["reason"] = r.reason
        out.append(
            {
                "_id": r.id,
                "_skip": name is None,
                "id": f"step:{r.id}",
                "event": name or f"step.{r.to_state}",
                "at": r.at,
                "task_id": r.task_id,
                "step_id": r.step_id,
                "step": r.step,
                "namespace": r.namespace,
                "template": _template(r.namespace, r.name, r.version),
                "attempt": r.attempt,
                "worker": r.worker,
                "data": data,
            }
        )
    return out


def _tasks(conn: Connection, after: int, flt: _Filter, limit: int) -> list[_Pending]:
    tt, t = task_transitions, tasks
    q: Select[Any] = (
        select(
            tt.c.id,
            tt.c.task_id,
            tt.c.from_state,
            tt.c.to_state,
            tt.c.at,
            tt.c.worker,
            tt.c.reason,
            t.c.namespace,
            t.c.name,
            t.c.version,
            t.c.correlation_id,
        )
        .join(t, t.c.id == tt.c.task_id)
        .where(tt.c.id > after)
        .order_by(tt.c.id)
        .limit(limit)
    )
    if flt.task_id is not None:
        q = q.where(tt.c.task_id == flt.task_id)
    if flt.namespace is not None:
        q = q.where(t.c.namespace == flt.namespace)
    out: list[_Pending] = []
    for r in conn.execute(q):
        if r.to_state == TaskState.PENDING:
            name = Events.TASK_CREATED if r.from_state is None else Events.TASK_RETRIED
        else:
            name = TASK_EVENT_FOR_STATE.get(r.to_state, f"task.{r.to_state}")
        data = {
            "from_state": r.from_state,
            "to_state": r.to_state,
            "correlation_id": r.correlation_id,
        }
        if r.reason:
            data["reason"] = r.reason
        out.append(
            {
                "_id": r.id,
                "id": f"task:{r.id}",
                "event": name,
                "at": r.at,
                "task_id": r.task_id,
                "step_id": None,
                "step": None,
                "namespace": r.namespace,
                "template": _template(r.namespace, r.name, r.version),
                "attempt": None,
                "worker": r.worker,
                "data": data,
            }
        )
    return out


def _circuits(conn: Connection, after: int, flt: _Filter, limit: int) -> list[_Pending]:
    ct = circuit_transitions
    q = select(ct).where(ct.c.id > after).order_by(ct.c.id).limit(limit)
    return [
        {
            "_id": r.id,
            "id": f"circuit:{r.id}",
            "event": _CIRCUIT_EVENTS.get(r.to_state, f"circuit.{r.to_state}"),
            "at": r.at,
            "task_id": None,
            "step_id": None,
            "step": None,
            "namespace": None,
            "template": None,
            "attempt": None,
            "worker": r.worker,
            "data": {
                "system": r.system,
                "from_state": r.from_state,
                "to_state": r.to_state,
                "reason": r.reason,
            },
        }
        for r in conn.execute(q)
    ]


def _customs(conn: Connection, after: int, flt: _Filter, limit: int) -> list[_Pending]:
    ce, s, t = custom_events, steps, tasks
    q: Select[Any] = (
        select(
            ce.c.id,
            ce.c.name,
            ce.c.task_id,
            ce.c.step_id,
            ce.c.namespace,
            ce.c.payload,
            ce.c.at,
            ce.c.worker,
            s.c.name.label("step"),
            s.c.attempts,
            t.c.name.label("task_name"),
            t.c.version,
        )
        .outerjoin(s, s.c.id == ce.c.step_id)
        .outerjoin(t, t.c.id == ce.c.task_id)
        .where(ce.c.id > after)
        .order_by(ce.c.id)
        .limit(limit)
    )
    if flt.task_id is not None:
        q = q.where(ce.c.task_id == flt.task_id)
    if flt.namespace is not None:
        q = q.where(ce.c.namespace == flt.namespace)
    return [
        {
            "_id": r.id,
            "id": f"custom:{r.id}",
            "event": r.name,
            "at": r.at,
            "task_id": r.task_id,
            "step_id": r.step_id,
            "step": r.step,
            "namespace": r.namespace,
            "template": _template(r.namespace, r.task_name, r.version) if r.task_name else None,
            "attempt": (r.payload or {}).get("attempt"),
            "worker": r.worker,
            "data": r.payload or {},
        }
        for r in conn.execute(q)
    ]
