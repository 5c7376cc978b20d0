"""Creating and reading tasks. Creation writes the task, its steps, edges and first transitions at
once."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, Row, bindparam, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import PoolProxiedConnection

from tasker.domain.history import StepTransition, TaskTransition
from tasker.domain.records import Step, Task
from tasker.domain.states import (
    StepState,
    TaskState,
    check_step_transition,
    check_task_transition,
)
from tasker.domain.templates import OnFailure, TaskTemplate, canonical_json
from tasker.store.database import Database, driver_errors
from tasker.store.decisions import decide_gated
from tasker.store.journal import Journal
from tasker.store.notify import CHANNEL
from tasker.store.readiness import release_children, settle_tasks
from tasker.store.schema import (
    step_edges,
    step_transitions,
    steps,
    task_transitions,
    tasks,
    templates,
)
from tasker.store.sqlite_cycle import flush_rows, stamp
from tasker.store.step_keys import step_idempotency_key

if TYPE_CHECKING:
    import psycopg

_INSERT_TASKS = insert(tasks).returning(tasks.c.id, sort_by_parameter_order=True)
_INSERT_STEPS = insert(steps).returning(
    steps.c.id, steps.c.task_id, steps.c.name, sort_by_parameter_order=True
)
_INSERT_EDGES = insert(step_edges)


def derived_idempotency_key(template: TaskTemplate, context: dict[str, Any]) -> str:
    """Same namespace/name/version/context => same key (the keys of tasks created before idempotency
    by intent; kept so that such tasks can still be found by it)."""
    raw = f"{template.namespace_name}/{template.name}@{template.version}:{canonical_json(context)}"
    return "ctx-" + hashlib.sha256(raw.encode()).hexdigest()


def fresh_idempotency_key() -> str:
    """A key no other task has: without an explicit key or `identity:`, every create is a new
    task."""
    return f"new-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class IdentityKeys:
    """The key a task created now gets from its template's `identity:`, and the key of the previous
    window (a request just after a window's edge still finds a task created just before it)."""

    key: str
    previous: str | None
    window_seconds: float | None


def identity_keys(
    template: TaskTemplate, context: dict[str, Any], now: datetime
) -> IdentityKeys | None:
    """Keys derived from the context paths the template names, or None when it names none."""
    identity = template.identity
    if identity is None:
        return None
    raw = f"{template.namespace_name}/{template.name}:{canonical_json(identity.values(context))}"
    digest = hashlib.sha256(raw.encode()).hexdigest()[:48]
    window = identity.window_seconds
    if window is None:
        return IdentityKeys(f"id-{digest}", None, None)
    bucket = int(now.timestamp() // window)
    return IdentityKeys(f"id-{digest}-{bucket}", f"id-{digest}-{bucket - 1}", window)


def find_recent_task_id(
    conn: Connection, namespace: str, name: str, key: str, since: datetime
) -> int | None:
    """The task with this key created at or after `since`, if any."""
    return conn.execute(
        select(tasks.c.id).where(
            tasks.c.namespace == namespace,
            tasks.c.name == name,
            tasks.c.idempotency_key == key,
            tasks.c.created_at >= since,
        )
    ).scalar()


def context_differences(stored: Any, sent: Any, path: str = "$", limit: int = 20) -> list[str]:
    """JSON paths where two contexts differ (at most `limit`, sorted), to name an idempotency key's
    reuse.

    Compared as stored JSON (canonical text), so `1` and `1.0` or a tuple and a list are not
    differences a round trip through the database would invent. Iterative: a context's depth is
    bounded elsewhere, but a check should not be the thing that overflows the stack.
    """
    out: list[str] = []
    stack: list[tuple[Any, Any, str]] = [(stored, sent, path)]
    while stack and len(out) < limit:
        a, b, where = stack.pop()
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str, reverse=True):
                sub = f"{where}.{k}"
                if k not in a:
                    out.append(f"{sub} (only in the new request)")
                elif k not in b:
                    out.append(f"{sub} (only in the first request)")
                else:
                    stack.append((a[k], b[k], sub))
        elif isinstance(a, list | tuple) and isinstance(b, list | tuple) and len(a) == len(b):
            stack.extend(
                (x, y, f"{where}[{i}]")
                for i, (x, y) in reversed(list(enumerate(zip(a, b, strict=True))))
            )
        elif _same_number(a, b):
            continue
        elif canonical_json(a) != canonical_json(b):
            out.append(where)
    return sorted(out)


def _same_number(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and a == b
    )


def template_id(
    conn: Connection, template: TaskTemplate, now: datetime, known: dict[str, int] | None = None
) -> int:
    """Get or store the template snapshot; identical definitions share one row.

    `known` remembers the ids of snapshots found committed (`Database.template_ids`: one per store
    object, so a store wiped and opened again starts afresh).
    """
    digest = template.content_hash()
    cached = known.get(digest) if known is not None else None
    if cached is not None:
        return cached
    found = conn.execute(select(templates.c.id).where(templates.c.content_hash == digest)).scalar()
    if found is not None:
        if known is not None:
            known[digest] = int(found)  # committed already: safe to remember
        return int(found)
    try:
        with conn.begin_nested():
            found = conn.execute(
                insert(templates)
                .values(
                    namespace=template.namespace_name,
                    name=template.name,
                    version=template.version,
                    content_hash=digest,
                    definition=template.snapshot(),
                    created_at=now,
                )
                .returning(templates.c.id)
            ).scalar_one()
    except IntegrityError:
        found = conn.execute(
            select(templates.c.id).where(templates.c.content_hash == digest)
        ).scalar_one()
    # Not cached: this transaction may still roll back (a duplicate task), taking the new row with
    # it.
    return int(found)


def find_task_id(conn: Connection, namespace: str, name: str, key: str) -> int | None:
    return conn.execute(
        select(tasks.c.id).where(
            tasks.c.namespace == namespace, tasks.c.name == name, tasks.c.idempotency_key == key
        )
    ).scalar()


@dataclass(frozen=True)
class NewTask:
    """One task to insert: its validated context, idempotency key and correlation id."""

    context: dict[str, Any]
    idempotency_key: str
    correlation_id: str
    #: A child task: the task and the `task:` step creating it.
    parent_task_id: int | None = None
    parent_step_id: int | None = None
    #: A delayed start: when its first steps become claimable (None: now).
    starts_at: datetime | None = None
    #: When the task ends in `error` (`deadline_exceeded`) if it has not finished.
    deadline_at: datetime | None = None
    #: Its priority (`tasker.domain.priorities`) and fair-share key (`tasker.domain.fairness`),
    #: which its steps carry too.
    priority: int = 0
    concurrency_key: str | None = None


def insert_task(
    conn: Connection,
    journal: Journal,
    template: TaskTemplate,
    context: dict[str, Any],
    idempotency_key: str,
    correlation_id: str,
) -> Task:
    """Insert one task with its steps and edges; raises IntegrityError when the idempotency key is
    taken.

    Returns the new task as stored, without reading it back.
    """
    return insert_tasks(
        conn, journal, template, [NewTask(context, idempotency_key, correlation_id)]
    )[0]


def create_tasks(
    db: Database, journal: Journal, template: TaskTemplate, items: Sequence[NewTask]
) -> list[Task]:
    """Insert tasks (`insert_tasks`) in a write transaction of their own, with their transitions.

    Raises `StoreConflict` when an idempotency key is taken; nothing is written then.
    """
    digest = template.content_hash()
    if digest in db.template_ids and items and not _decides_at_creation(template):
        tid = db.template_ids[digest]
        if db.is_postgres:
            # The common case: one statement, committed by itself (one round trip in all).
            with db.single() as conn:
                return _insert_tasks_pg(conn, journal, template, items, tid)
        # SQLite: fixed statements on the driver (SQLAlchemy's compiling was most of the cost).
        with db.direct() as conn:
            return _insert_tasks_sqlite(conn, journal, template, items, tid)
    with db.write() as conn:
        created = insert_tasks(conn, journal, template, items, known=db.template_ids)
        journal.flush(conn)
    return created


#: PostgreSQL: tasks, steps, edges, first transitions and the NOTIFY of one creation in one
#: statement with a fixed text (arrays of values, unnested), so creating a task is one round trip.
#: The rows are those `insert_tasks` writes, in the same order (a test compares them).
_CREATE_PG = text(f"""
    WITH new_tasks AS (
        INSERT INTO tasker_tasks (namespace, name, version, template_id, status, context,
                                  idempotency_key, correlation_id, created_at, updated_at,
                                  starts_at, deadline_at, priority, concurrency_key)
        SELECT :ns, :name, :version, :template_id, '{TaskState.PENDING.value}', v.context, v.key,
               v.correlation_id, :now, :now, v.starts_at, v.deadline_at, v.priority, v.ckey
          FROM jsonb_to_recordset(CAST(:items AS jsonb))
               AS v(context jsonb, key text, correlation_id text, ord integer,
                    starts_at timestamptz, deadline_at timestamptz, priority integer, ckey text)
         ORDER BY v.ord
        RETURNING id, idempotency_key, starts_at, priority, concurrency_key
    ), numbered AS (
        SELECT t.id, t.idempotency_key, t.starts_at, t.priority, t.concurrency_key,
               row_number() OVER (ORDER BY t.id) AS ord
          FROM new_tasks t
    ), new_steps AS (
        INSERT INTO tasker_steps (task_id, name, position, namespace, dependent_system, state,
                                  pending_parents, run_at, attempts, retry_limit, retryable,
                                  claim_token, created_at, updated_at, idempotency_key, gated,
                                  undo, stops, priority, concurrency_key)
        SELECT t.id, s.name, s.position, :ns, s.system, s.state, s.pending,
               CASE WHEN s.state = '{StepState.READY.value}'
                    THEN coalesce(t.starts_at, CAST(:now AS timestamptz)) END,
               0, s.retry_limit, s.retryable, 0, :now, :now, k.step_key, s.gated, s.undo,
               s.stops, t.priority, t.concurrency_key
          FROM numbered t
          CROSS JOIN jsonb_to_recordset(CAST(:shapes AS jsonb))
               AS s(name text, position integer, system text, state text, pending integer,
                    retry_limit integer, retryable boolean, ord integer, gated boolean,
                    undo boolean, stops boolean)
          JOIN jsonb_to_recordset(CAST(:keys AS jsonb))
               AS k(task_key text, name text, step_key text)
            ON k.task_key = t.idempotency_key AND k.name = s.name
         ORDER BY t.ord, s.ord
        RETURNING id, task_id, name, state
    ), new_edges AS (
        INSERT INTO tasker_step_edges (task_id, parent_id, child_id)
        SELECT p.task_id, p.id, c.id
          FROM jsonb_to_recordset(CAST(:edges AS jsonb))
               AS e(parent text, child text, ord integer)
          JOIN new_steps p ON p.name = e.parent
          JOIN new_steps c ON c.name = e.child AND c.task_id = p.task_id
         ORDER BY p.task_id, e.ord
    ), step_rows AS (
        INSERT INTO tasker_step_transitions (step_id, task_id, from_state, to_state, attempt, at,
                                             worker)
        SELECT s.id, s.task_id, NULL, s.state, 0, :now, :worker FROM new_steps s ORDER BY s.id
    ), task_rows AS (
        INSERT INTO tasker_task_transitions (task_id, from_state, to_state, at, worker)
        SELECT t.id, NULL, '{TaskState.PENDING.value}', :now, :worker
          FROM new_tasks t ORDER BY t.id
    )
    SELECT s.id, s.task_id, s.name, t.idempotency_key,
           (SELECT pg_notify('{CHANNEL}', '')) AS notified
      FROM new_steps s JOIN new_tasks t ON t.id = s.task_id
""")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _run_at(shape: dict[str, Any], item: NewTask) -> datetime | None:
    """A step's first `run_at`: a ready step's is the task's delayed start, if it has one."""
    first: datetime | None = shape["run_at"]
    if first is None or item.starts_at is None:
        return first
    return max(first, item.starts_at)


def _decides_at_creation(template: TaskTemplate) -> bool:
    """Whether a step without parents is gated (has a condition): its task's creation decides it,
    on the general path."""
    gated = template.gated_steps()
    return any(not st.parents and st.name in gated for st in template.step_templates)


def _step_shapes(template: TaskTemplate, now: datetime) -> list[dict[str, Any]]:
    """The columns every task of this template starts its steps with, in template order. A gated
    step without parents starts `pending`: the creation decides it (`insert_tasks`)."""
    position = template.positions()
    policies = template.retry_policies()
    gated = template.gated_steps()
    undoes = template.compensates_on_failure
    shapes: list[dict[str, Any]] = []
    for st in template.step_templates:
        policy = policies[st.name]
        ready = not st.parents and st.name not in gated
        shapes.append(
            {
                "name": st.name,
                "position": position[st.name],
                "namespace": template.namespace_name,
                "dependent_system": template.dependent_system_of(st),
                "state": StepState.READY.value if ready else StepState.PENDING.value,
                "pending_parents": len(st.parents),
                "run_at": now if ready else None,
                "attempts": 0,
                "retry_limit": policy.max_attempts,
                "retryable": policy.retryable,
                "claim_token": 0,
                "created_at": now,
                "updated_at": now,
                "gated": st.name in gated,
                "undo": undoes and st.compensation is not None,
                "stops": st.on_failure == OnFailure.STOP,
            }
        )
    return shapes


def _insert_tasks_pg(
    conn: Connection,
    journal: Journal,
    template: TaskTemplate,
    items: Sequence[NewTask],
    tid: int,
) -> list[Task]:
    """`insert_tasks` in one statement (`_CREATE_PG`); the statement writes the transitions, so
    the journal only checks them and keeps the events."""
    now = journal.now
    ns, name = template.namespace_name, template.name
    shapes = _step_shapes(template, now)
    keys = [(item.idempotency_key, sh["name"]) for item in items for sh in shapes]
    edges = [(p, st.name) for st in template.step_templates for p in st.parents]
    rows = conn.execute(
        _CREATE_PG,
        {
            "ns": ns,
            "name": name,
            "version": template.version,
            "template_id": tid,
            "now": now,
            "worker": journal.worker,
            # One JSON document per list: cheaper to send than typed arrays.
            "items": json.dumps(
                [
                    {
                        "context": item.context,
                        "key": item.idempotency_key,
                        "correlation_id": item.correlation_id,
                        "ord": i,
                        "starts_at": _iso(item.starts_at),
                        "deadline_at": _iso(item.deadline_at),
                        "priority": item.priority,
                        "ckey": item.concurrency_key,
                    }
                    for i, item in enumerate(items)
                ]
            ),
            "shapes": json.dumps(
                [
                    {
                        "name": sh["name"],
                        "position": sh["position"],
                        "system": sh["dependent_system"],
                        "state": sh["state"],
                        "pending": sh["pending_parents"],
                        "retry_limit": sh["retry_limit"],
                        "retryable": sh["retryable"],
                        "ord": i,
                        "gated": sh["gated"],
                        "undo": sh["undo"],
                        "stops": sh["stops"],
                    }
                    for i, sh in enumerate(shapes)
                ]
            ),
            "keys": json.dumps(
                [
                    {"task_key": k, "name": n, "step_key": step_idempotency_key(ns, name, k, n)}
                    for k, n in keys
                ]
            ),
            "edges": json.dumps(
                [{"parent": p, "child": c, "ord": i} for i, (p, c) in enumerate(edges)]
            ),
        },
    ).all()
    task_of_key = {r.idempotency_key: r.task_id for r in rows}
    ids = {(r.task_id, r.name): r.id for r in rows}
    for shape in shapes:  # what the statement wrote, checked as the journal checks its rows
        check_step_transition(None, shape["state"])
    check_task_transition(None, TaskState.PENDING)
    task_ids = [task_of_key[item.idempotency_key] for item in items]
    return _created(journal, template, items, task_ids, shapes, ids, record=False)


_TASK_SQLITE = f"""
    INSERT INTO tasker_tasks (namespace, name, version, template_id, status, context,
                              idempotency_key, correlation_id, created_at, updated_at, starts_at,
                              deadline_at, priority, concurrency_key)
    VALUES (?, ?, ?, ?, '{TaskState.PENDING.value}', ?, ?, ?, ?, ?, ?, ?, ?, ?)
    RETURNING id"""
_STEP_SQLITE = """
    INSERT INTO tasker_steps (task_id, name, position, namespace, dependent_system, state,
                              pending_parents, run_at, attempts, retry_limit, retryable,
                              claim_token, idempotency_key, created_at, updated_at, gated,
                              undo, stops, priority, concurrency_key)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?)
    RETURNING id"""
_EDGE_SQLITE = "INSERT INTO tasker_step_edges (task_id, parent_id, child_id) VALUES (?, ?, ?)"


def _insert_tasks_sqlite(
    conn: PoolProxiedConnection,
    journal: Journal,
    template: TaskTemplate,
    items: Sequence[NewTask],
    tid: int,
) -> list[Task]:
    """`insert_tasks` with fixed statements on the `sqlite3` connection (`conn` from
    `Database.direct`), with its transitions, in a transaction of its own: the rows that
    `insert_tasks` and `Journal.flush` write, values bound as SQLAlchemy binds them (a test compares
    them). Raises `StoreConflict` (through `Database.direct`) when an idempotency key is taken."""
    raw: sqlite3.Connection = conn.driver_connection  # type: ignore[assignment]
    now = journal.now
    at = stamp(now)
    ns, name = template.namespace_name, template.name
    shapes = _step_shapes(template, now)
    cur = raw.cursor()
    cur.execute("BEGIN IMMEDIATE")
    try:
        task_ids: list[int] = []
        ids: dict[tuple[int, str], int] = {}
        for item in items:
            cur.execute(
                _TASK_SQLITE,
                (
                    ns,
                    name,
                    template.version,
                    tid,
                    json.dumps(item.context),
                    item.idempotency_key,
                    item.correlation_id,
                    at,
                    at,
                    stamp(item.starts_at),
                    stamp(item.deadline_at),
                    item.priority,
                    item.concurrency_key,
                ),
            )
            task_id = int(cur.fetchone()[0])
            task_ids.append(task_id)
            for sh in shapes:
                cur.execute(
                    _STEP_SQLITE,
                    (
                        task_id,
                        sh["name"],
                        sh["position"],
                        sh["namespace"],
                        sh["dependent_system"],
                        sh["state"],
                        sh["pending_parents"],
                        stamp(_run_at(sh, item)),
                        sh["retry_limit"],
                        sh["retryable"],
                        step_idempotency_key(ns, name, item.idempotency_key, sh["name"]),
                        at,
                        at,
                        sh["gated"],
                        sh["undo"],
                        sh["stops"],
                        item.priority,
                        item.concurrency_key,
                    ),
                )
                ids[(task_id, sh["name"])] = int(cur.fetchone()[0])
        edges = [
            (task_id, ids[(task_id, p)], ids[(task_id, st.name)])
            for task_id in task_ids
            for st in template.step_templates
            for p in st.parents
        ]
        if edges:
            cur.executemany(_EDGE_SQLITE, edges)
        created = _created(journal, template, items, task_ids, shapes, ids, record=True)
        flush_rows(cur, journal)
        cur.execute("COMMIT")
    except BaseException:
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        raise
    return created


def insert_tasks(
    conn: Connection,
    journal: Journal,
    template: TaskTemplate,
    items: Sequence[NewTask],
    *,
    known: dict[str, int] | None = None,
) -> list[Task]:
    """Insert tasks of one template with multi-row inserts (tasks, then all their steps, then
    edges).

    Raises IntegrityError when any idempotency key is taken; the caller's transaction then rolls
    back.
    """
    now = journal.now
    ns, name = template.namespace_name, template.name
    tid = template_id(conn, template, now, known)
    task_ids = [
        r[0]
        for r in conn.execute(
            _INSERT_TASKS,
            [
                {
                    "namespace": ns,
                    "name": name,
                    "version": template.version,
                    "template_id": tid,
                    "status": TaskState.PENDING.value,
                    "context": item.context,
                    "idempotency_key": item.idempotency_key,
                    "correlation_id": item.correlation_id,
                    "created_at": now,
                    "updated_at": now,
                    "parent_task_id": item.parent_task_id,
                    "parent_step_id": item.parent_step_id,
                    "starts_at": item.starts_at,
                    "deadline_at": item.deadline_at,
                    "priority": item.priority,
                    "concurrency_key": item.concurrency_key,
                }
                for item in items
            ],
        )
    ]
    shapes = _step_shapes(template, now)
    rows = [
        {
            **shape,
            "run_at": _run_at(shape, item),
            "task_id": task_id,
            "idempotency_key": step_idempotency_key(ns, name, item.idempotency_key, shape["name"]),
            "priority": item.priority,
            "concurrency_key": item.concurrency_key,
        }
        for task_id, item in zip(task_ids, items)
        for shape in shapes
    ]
    ids: dict[tuple[int, str], int] = {
        (r.task_id, r.name): r.id for r in conn.execute(_INSERT_STEPS, rows)
    }
    edges = [
        {"task_id": task_id, "parent_id": ids[(task_id, p)], "child_id": ids[(task_id, st.name)]}
        for task_id in task_ids
        for st in template.step_templates
        for p in st.parents
    ]
    if edges:
        conn.execute(_INSERT_EDGES, edges)
    created = _created(journal, template, items, task_ids, shapes, ids, record=True)
    if not _decides_at_creation(template):
        return created
    # Conditions of steps without parents: decided now, over the context, with what follows from
    # them (a skip releases the step's children), and the tasks settle (all skipped: complete).
    gated = template.gated_steps()
    roots = [
        (ids[(task_id, st.name)], task_id, st.name)
        for task_id in task_ids
        for st in template.step_templates
        if not st.parents and st.name in gated
    ]
    decided = decide_gated(conn, journal, roots)
    release_children(conn, decided.skipped, journal, decided.released)
    settle_tasks(conn, task_ids, journal)
    stored = {t.id: t for t in get_tasks(conn, task_ids)}
    return [stored[task_id] for task_id in task_ids]


def _created(
    journal: Journal,
    template: TaskTemplate,
    items: Sequence[NewTask],
    task_ids: Sequence[int],
    shapes: list[dict[str, Any]],
    ids: dict[tuple[int, str], int],
    *,
    record: bool,
) -> list[Task]:
    """The tasks as stored, without reading them back; their transitions go to the journal when
    `record` (else the statement wrote them), their events always."""
    now = journal.now
    ns, name = template.namespace_name, template.name
    out = []
    for task_id, item in zip(task_ids, items):
        if record:
            journal.task(task_id, None, TaskState.PENDING)
        journal.event(
            "task.created",
            {
                "task_id": task_id,
                "namespace": ns,
                "name": name,
                "version": template.version,
                "correlation_id": item.correlation_id,
            },
        )
        step_objs = []
        for shape in shapes:
            sid = ids[(task_id, shape["name"])]
            if record:
                journal.step(sid, task_id, None, shape["state"], 0)
            if shape["state"] == StepState.READY:
                journal.event(
                    "step.ready", {"task_id": task_id, "step_id": sid, "step": shape["name"]}
                )
            step_objs.append(
                Step(
                    id=sid,
                    task_id=task_id,
                    name=shape["name"],
                    status=StepState(shape["state"]),
                    attempts=0,
                    retry_limit=shape["retry_limit"],
                    retryable=shape["retryable"],
                    dependent_system=shape["dependent_system"],
                    results=None,
                    last_error=None,
                    run_at=_run_at(shape, item),
                    started_at=None,
                    finished_at=None,
                    created_at=now,
                    position=shape["position"],
                    idempotency_key=step_idempotency_key(
                        ns, name, item.idempotency_key, shape["name"]
                    ),
                )
            )
        step_objs.sort(key=lambda s: s.position)
        out.append(
            Task(
                id=int(task_id),
                namespace=ns,
                name=name,
                version=template.version,
                status=TaskState.PENDING,
                context=item.context,
                idempotency_key=item.idempotency_key,
                correlation_id=item.correlation_id,
                annotations=None,
                created_at=now,
                updated_at=now,
                started_at=None,
                finished_at=None,
                steps=step_objs,
                starts_at=item.starts_at,
                deadline_at=item.deadline_at,
                priority=item.priority,
                concurrency_key=item.concurrency_key,
            )
        )
    return out


def _step(r: Row[Any] | SimpleNamespace) -> Step:
    """A step record from a row of `tasker_steps` (SQLAlchemy's, or `_SqliteRows`')."""
    return Step(
        id=r.id,
        task_id=r.task_id,
        name=r.name,
        status=StepState(r.state),
        attempts=r.attempts,
        retry_limit=r.retry_limit,
        retryable=r.retryable,
        dependent_system=r.dependent_system,
        results=r.results,
        last_error=r.last_error,
        run_at=r.run_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
        created_at=r.created_at,
        position=r.position,
        idempotency_key=r.idempotency_key,
        decision=r.decision,
        instance_of=r.instance_of,
        item_index=r.item_index,
        item=r.item,
        fanout=r.fanout,
        compensates=r.compensates,
        wait=r.wait,
    )


def _task(r: Row[Any] | SimpleNamespace, step_rows: Sequence[Step]) -> Task:
    """A task record from a row of `tasker_tasks` (SQLAlchemy's, or `_SqliteRows`')."""
    return Task(
        id=r.id,
        namespace=r.namespace,
        name=r.name,
        version=r.version,
        status=TaskState(r.status),
        context=r.context,
        idempotency_key=r.idempotency_key,
        correlation_id=r.correlation_id,
        annotations=r.annotations,
        created_at=r.created_at,
        updated_at=r.updated_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
        steps=list(step_rows),
        parent_task_id=r.parent_task_id,
        parent_step_id=r.parent_step_id,
        starts_at=r.starts_at,
        deadline_at=r.deadline_at,
        priority=r.priority,
        concurrency_key=r.concurrency_key,
    )


def get_task(conn: Connection, task_id: int) -> Task | None:
    row = conn.execute(select(tasks).where(tasks.c.id == task_id)).first()
    if row is None:
        return None
    step_rows = conn.execute(
        select(steps).where(steps.c.task_id == task_id).order_by(steps.c.position, steps.c.id)
    ).all()
    return _task(row, [_step(s) for s in step_rows])


def get_tasks(conn: Connection, task_ids: Sequence[int]) -> list[Task]:
    if not task_ids:
        return []
    rows = conn.execute(
        select(tasks).where(tasks.c.id.in_(list(task_ids))).order_by(tasks.c.id)
    ).all()
    by_task: dict[int, list[Step]] = {}
    for s in conn.execute(
        select(steps)
        .where(steps.c.task_id.in_(list(task_ids)))
        .order_by(steps.c.task_id, steps.c.position, steps.c.id)
    ):
        by_task.setdefault(s.task_id, []).append(_step(s))
    return [_task(r, by_task.get(r.id, [])) for r in rows]


def task_template_definition(conn: Connection, task_id: int) -> dict[str, Any] | None:
    return conn.execute(
        select(templates.c.definition)
        .join(tasks, tasks.c.template_id == templates.c.id)
        .where(tasks.c.id == task_id)
    ).scalar()


def template_definition(conn: Connection, template_id: int) -> dict[str, Any]:
    return dict(
        conn.execute(
            select(templates.c.definition).where(templates.c.id == template_id)
        ).scalar_one()
    )


def step_history(conn: Connection, task_id: int) -> list[Row[Any]]:
    return list(
        conn.execute(
            select(step_transitions)
            .where(step_transitions.c.task_id == task_id)
            .order_by(step_transitions.c.id)
        ).all()
    )


def task_history(conn: Connection, task_id: int) -> list[Row[Any]]:
    return list(
        conn.execute(
            select(task_transitions)
            .where(task_transitions.c.task_id == task_id)
            .order_by(task_transitions.c.id)
        ).all()
    )


# -- in a transaction of their own -----------------------------------------------------------------
def read_task(db: Database, task_id: int) -> Task | None:
    if db.is_sqlite and not db.memory:
        with db.direct_read() as raw:
            return _read_task_sqlite(raw, task_id)
    with db.read() as conn:
        if db.is_postgres:
            with driver_errors():
                return _read_task_pg(conn, task_id)
        return get_task(conn, task_id)


_TASK_COLUMNS = (
    "id, namespace, name, version, status, context, idempotency_key, correlation_id, annotations,"
    " created_at, updated_at, started_at, finished_at, parent_task_id, parent_step_id, starts_at,"
    " deadline_at, priority, concurrency_key"
)
_STEP_COLUMNS = (
    "id, task_id, name, state, attempts, retry_limit, retryable, dependent_system, results,"
    " last_error, run_at, started_at, finished_at, created_at, position, idempotency_key,"
    " decision, instance_of, item_index, item, fanout, compensates, wait"
)
#: The same columns' names, split once (every read of a task names each row's values by them).
_TASK_NAMES = tuple(_TASK_COLUMNS.split(", "))
_STEP_NAMES = tuple(_STEP_COLUMNS.split(", "))
#: Columns SQLAlchemy's types decode (`UTCDateTime`, `Json`, `Boolean`), decoded here alike.
_TIMES = {
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "run_at",
    "starts_at",
    "deadline_at",
}
_DOCS = {"context", "annotations", "results", "last_error", "item", "wait"}


def _prefixed(alias: str, names: Sequence[str]) -> str:
    return ", ".join(f"{alias}.{name}" for name in names)


#: PostgreSQL: a task and its steps in one statement (the reader commits each statement by itself,
#: so one statement is also one snapshot), prepared once per connection.
_READ_TASK_PG = (
    f"SELECT {_prefixed('t', _TASK_NAMES)}, {_prefixed('s', _STEP_NAMES)}"
    " FROM tasker_tasks t LEFT JOIN tasker_steps s ON s.task_id = t.id"
    " WHERE t.id = %s ORDER BY s.position, s.id"
)
_TASK_WIDTH = len(_TASK_NAMES)
_READ_TASK_SQLITE = f"SELECT {_TASK_COLUMNS} FROM tasker_tasks WHERE id = ?"
_READ_STEPS_SQLITE = (
    f"SELECT {_STEP_COLUMNS} FROM tasker_steps WHERE task_id = ? ORDER BY position, id"
)


def _read_task_sqlite(raw: PoolProxiedConnection, task_id: int) -> Task | None:
    """`get_task` with fixed statements on the `sqlite3` connection, in one read transaction:
    the records SQLAlchemy's types would build (times UTC-aware, JSON decoded; a test compares
    them). It is the last call of every `Tasker.run()`, where compiling the two selects cost more
    than SQLite spent answering them. (One statement joining the steps to the task was slower:
    it repeats the task's columns, its context included, on every step's row.)"""
    driver: sqlite3.Connection = raw.driver_connection  # type: ignore[assignment]
    driver.execute("BEGIN")
    try:
        row = driver.execute(_READ_TASK_SQLITE, (task_id,)).fetchone()
        found = driver.execute(_READ_STEPS_SQLITE, (task_id,)).fetchall() if row else []
    finally:
        driver.execute("COMMIT")
    if row is None:
        return None
    return _task(_TASK_ROWS.decode(row), [_step(_STEP_ROWS.decode(s)) for s in found])


def _read_task_pg(conn: Connection, task_id: int) -> Task | None:
    """`get_task` in one prepared statement on the psycopg connection (one round trip instead of
    two, and no compiling): the records SQLAlchemy's types would build (times UTC-aware, JSON
    decoded by the driver; a test compares them). It is the last call of every `Tasker.run()`."""
    raw: psycopg.Connection[Any] = conn.connection.driver_connection  # type: ignore[assignment]
    try:
        found = raw.execute(_READ_TASK_PG, (task_id,), prepare=True).fetchall()
    except Exception:
        if raw.broken or raw.closed:
            conn.invalidate()  # SQLAlchemy did not see the error: keep it out of the pool
        raise
    if not found:
        return None
    steps_read = [
        _step(_pg_row(_STEP_NAMES, r[_TASK_WIDTH:])) for r in found if r[_TASK_WIDTH] is not None
    ]
    return _task(_pg_row(_TASK_NAMES, found[0][:_TASK_WIDTH]), steps_read)


def _pg_row(names: Sequence[str], values: Sequence[Any]) -> SimpleNamespace:
    """A row as psycopg returns it, with its times in UTC as `UTCDateTime` reads them back."""
    decoded: dict[str, Any] = {}
    for name, value in zip(names, values, strict=True):
        if value is not None and name in _TIMES:
            value = value.astimezone(UTC)
        decoded[name] = value
    return SimpleNamespace(**decoded)


class _SqliteRows:
    """Rows of one column list as SQLite returns them, decoded as SQLAlchemy's column types would
    decode them: times as UTC-aware datetimes (stored as naive UTC text), JSON documents, booleans.

    Which columns need decoding is worked out once per column list, not for every value: a task
    read decodes some 140 values, and testing each name against the sets cost more than reading
    the rows."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.times = tuple(i for i, name in enumerate(names) if name in _TIMES)
        # JSON text; a number stays a number (SQLite's column affinity turned a fan-out's item `1`
        # into an integer, as SQLAlchemy's JSON type also reads it back)
        self.docs = tuple(i for i, name in enumerate(names) if name in _DOCS)
        self.flags = tuple(i for i, name in enumerate(names) if name == "retryable")

    def decode(self, row: Sequence[Any]) -> SimpleNamespace:
        values = list(row)
        for i in self.times:
            if values[i] is not None:
                values[i] = _utc(values[i])
        for i in self.docs:
            if isinstance(values[i], str):
                values[i] = json.loads(values[i])
        for i in self.flags:
            values[i] = bool(values[i])
        return SimpleNamespace(**dict(zip(self.names, values, strict=True)))


def _utc(text: str) -> datetime:
    """A stored naive UTC time, read back aware. Parsing it with the offset appended is five
    times cheaper than `.replace(tzinfo=UTC)` afterwards (19 times in a task read)."""
    try:
        return datetime.fromisoformat(text + "+00:00")
    except ValueError:  # text that carries an offset already: SQLAlchemy ignores it, as here
        return datetime.fromisoformat(text).replace(tzinfo=UTC)


_TASK_ROWS = _SqliteRows(_TASK_NAMES)
_STEP_ROWS = _SqliteRows(_STEP_NAMES)


_CHILD = select(tasks.c.id).where(
    tasks.c.parent_task_id == bindparam("task_id"), tasks.c.parent_step_id == bindparam("step_id")
)
_CHILDREN = (
    select(tasks.c.id).where(tasks.c.parent_task_id == bindparam("task_id")).order_by(tasks.c.id)
)


def find_child(db: Database, parent_task_id: int, parent_step_id: int) -> Task | None:
    """The child task a `task:` step created, or None (by the partial index of children)."""
    with db.read() as conn:
        found = conn.execute(
            _CHILD, {"task_id": parent_task_id, "step_id": parent_step_id}
        ).scalar()
        return get_task(conn, found) if found is not None else None


def child_ids(db: Database, task_id: int) -> list[int]:
    """The ids of a task's child tasks, oldest first."""
    with db.read() as conn:
        return list(conn.execute(_CHILDREN, {"task_id": task_id}).scalars())


def read_tasks(db: Database, task_ids: Sequence[int]) -> list[Task]:
    with db.read() as conn:
        return get_tasks(conn, task_ids)


def find_id(db: Database, namespace: str, name: str, key: str) -> int | None:
    with db.read() as conn:
        return find_task_id(conn, namespace, name, key)


def find_recent_id(
    db: Database, namespace: str, name: str, key: str, since: datetime
) -> int | None:
    with db.read() as conn:
        return find_recent_task_id(conn, namespace, name, key, since)


def snapshot_of(db: Database, task_id: int) -> dict[str, Any] | None:
    """The template definition a task was created with (`TaskTemplate.from_snapshot` reads it)."""
    with db.read() as conn:
        return task_template_definition(conn, task_id)


def annotate(db: Database, task_id: int, annotations: dict[str, Any]) -> None:
    """Merge `annotations` into the task's (what task handlers' hooks return)."""
    with db.write() as conn:
        current = conn.execute(select(tasks.c.annotations).where(tasks.c.id == task_id)).scalar()
        conn.execute(
            update(tasks)
            .where(tasks.c.id == task_id)
            .values(annotations={**(current or {}), **annotations})
        )


def read_step_transitions(db: Database, task_id: int) -> list[StepTransition]:
    """The rows of `tasker_step_transitions` of a task, oldest first, as dicts."""
    with db.read() as conn:
        return [cast(StepTransition, dict(r._mapping)) for r in step_history(conn, task_id)]


def read_task_transitions(db: Database, task_id: int) -> list[TaskTransition]:
    """The rows of `tasker_task_transitions` of a task, oldest first, as dicts."""
    with db.read() as conn:
        return [cast(TaskTransition, dict(r._mapping)) for r in task_history(conn, task_id)]
