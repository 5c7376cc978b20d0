"""Deciding gated steps in the transaction that finished their last parent.

A gated step (`tasker.domain.control.gated`) stays `pending` when its parents' completion brings its
count of unfinished parents to zero; `readiness.release_children` hands it here, in the same
transaction. The decision reads only that step's parents, the results its expressions name and its
task's context (`tasker.domain.control.decide` makes it), then the step becomes `ready`, `skipped`
(a skip finishes it: its own children are released in turn) or `error` (its condition failed).

A `foreach` step that is to run expands instead (`_expand`): one step row per item, each waited for
by the fan-out step through an ordinary edge, so that the fan-out step becomes `ready` when the last
instance completes, on any path; a worker then completes it with the list of their results
(`completion.collect_fanouts`). With `max_parallel: M`, instance `i + M` also waits for instance
`i`: M chains, so at most M instances of the task run at once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.engine import Connection

from tasker.domain.control import (
    CONDITION_ERROR,
    FANOUT_ERROR,
    Decision,
    StepControl,
    Verdict,
    decide,
    fanout_results,
    instance_name,
    items_of,
    skip_cascade,
)
from tasker.domain.records import FailureRecord
from tasker.domain.states import StepState
from tasker.domain.storable import MAX_MESSAGE_CHARS, storable_text
from tasker.domain.templates import TaskTemplate
from tasker.store.journal import Journal
from tasker.store.schema import step_edges, steps, tasks, templates
from tasker.store.step_keys import step_idempotency_key

_RAN = (StepState.COMPLETE.value, StepState.RESOLVED_MANUALLY.value)
_TASKS = (
    select(
        tasks.c.id,
        tasks.c.template_id,
        tasks.c.context,
        tasks.c.namespace,
        tasks.c.name,
        tasks.c.idempotency_key,
        templates.c.content_hash,
    )
    .select_from(tasks.join(templates, templates.c.id == tasks.c.template_id))
    .where(tasks.c.id.in_(bindparam("ids", expanding=True)))
)
_READS = select(steps.c.task_id, steps.c.name, steps.c.state, steps.c.results).where(
    steps.c.task_id.in_(bindparam("ids", expanding=True)),
    steps.c.name.in_(bindparam("names", expanding=True)),
)
_IDS = select(steps.c.task_id, steps.c.name, steps.c.id).where(
    steps.c.task_id.in_(bindparam("ids", expanding=True)),
    steps.c.name.in_(bindparam("names", expanding=True)),
)
#: PostgreSQL: the same with two array parameters, the names joined (an IN list of a cascade's 450
#: names over ten tasks cost 180 ms to send and test; `name = ANY(...)`, 66 ms; this, a few).
_IDS_PG = text(
    "SELECT s.task_id, s.name, s.id FROM tasker_steps s"
    " JOIN unnest(CAST(:names AS text[])) AS n(name) ON n.name = s.name"
    " WHERE s.task_id = ANY(CAST(:ids AS bigint[]))"
)
_DEFINITION = select(templates.c.definition).where(templates.c.id == bindparam("template_id"))
_MOVE = (
    update(steps)
    .where(steps.c.id == bindparam("step_id"), steps.c.state == StepState.PENDING.value)
    .values(
        state=bindparam("target"),
        run_at=bindparam("run_at"),
        finished_at=bindparam("finished_at"),
        last_error=bindparam("error"),
        decision=bindparam("decision"),
        # a step skipped by a skipped parent's cascade was never released: nothing waits now
        pending_parents=0,
        updated_at=bindparam("now"),
    )
)

#: PostgreSQL: `_MOVE` for every decision at once, from one JSON parameter (5,000 skips of a
#: cascade over ten tasks: 156 ms as an executemany).
_MOVE_PG = text(f"""
    UPDATE tasker_steps AS s
       SET state = v.target,
           run_at = CASE WHEN v.target = '{StepState.READY.value}' THEN CAST(:now AS timestamptz)
                    END,
           finished_at = CASE WHEN v.target <> '{StepState.READY.value}'
                              THEN CAST(:now AS timestamptz) END,
           last_error = v.error, decision = v.decision, pending_parents = 0, updated_at = :now
      FROM jsonb_to_recordset(CAST(:rows AS jsonb))
           AS v(step_id bigint, target text, error jsonb, decision text)
     WHERE s.id = v.step_id AND s.state = '{StepState.PENDING.value}'
""")


@dataclass(frozen=True)
class _Task:
    """What a decision reads of a task: its template, its context, and what names its steps."""

    template_id: int
    digest: str
    context: Any
    namespace: str
    name: str
    key: str


@dataclass(frozen=True)
class _Rules:
    """A template snapshot's control-flow rules by step name, and each step's children."""

    controls: dict[str, StepControl]
    children: dict[str, list[str]]


#: Each template snapshot's rules by its content hash, compiled once per process: a hash names one
#: definition in every store (an id does not: two stores, or a wiped one, reuse ids).
_RULES: dict[str, _Rules] = {}
_LOCK = threading.Lock()


def _rules_of(conn: Connection, template_id: int, digest: str) -> _Rules:
    """The control-flow rules of a stored template snapshot (`digest`: its hash)."""
    found = _RULES.get(digest)
    if found is None:
        definition = conn.execute(_DEFINITION, {"template_id": template_id}).scalar_one()
        template = TaskTemplate.from_snapshot(definition)
        found = _Rules(template.controls(), template.children())
        with _LOCK:
            _RULES[digest] = found
    return found


#: The columns a fan-out's instances take from their fan-out step, read once per expansion.
_INHERITED = (
    "position",
    "namespace",
    "dependent_system",
    "retry_limit",
    "retryable",
    "undo",
    "stops",
    "priority",
    "concurrency_key",
)
_FANOUT_STEP = select(*(steps.c[k] for k in _INHERITED)).where(steps.c.id == bindparam("step_id"))
_INSERT_INSTANCES = insert(steps).returning(steps.c.id, sort_by_parameter_order=True)
_INSERT_EDGES = insert(step_edges)
_EXPANDED = (
    update(steps)
    .where(steps.c.id == bindparam("step_id"), steps.c.state == StepState.PENDING.value)
    .values(
        pending_parents=bindparam("count"),
        fanout=bindparam("count"),
        gated=False,
        decision=bindparam("decision"),
        state=bindparam("target"),
        run_at=bindparam("run_at"),
        updated_at=bindparam("now"),
    )
)


def condition_failure(reason: str, error_class: str = CONDITION_ERROR) -> FailureRecord:
    """The stored failure of a step whose condition (or fan-out) could not be decided."""
    return {
        "class": error_class,
        "message": storable_text(reason, MAX_MESSAGE_CHARS),
        "retryable": False,
        "system_fault": False,
        "no_system_evidence": True,
    }


@dataclass
class Decided:
    """What `decide_gated` decided: the steps it made ready ((step_id, task_id, name), as
    `readiness.release_children` returns them), the ids of those it skipped (with the cascade
    of skips that follows from them alone), and the children those skips release, one entry per
    edge (ids of steps outside the cascade, which have other parents)."""

    readied: list[tuple[int, int, str]]
    skipped: list[int]
    released: list[int]


def decide_gated(
    conn: Connection, journal: Journal, waiting: Sequence[tuple[int, int, str]]
) -> Decided:
    """Decide the gated steps in `waiting`, (step_id, task_id, name) of steps whose parents are
    all finished, and the skips that follow from theirs alone (`control.skip_cascade`: a branch
    skipped by its first step is skipped whole here, in one statement, not step by step)."""
    task_ids = sorted({task_id for _, task_id, _ in waiting})
    found = {
        r.id: _Task(
            r.template_id, r.content_hash, r.context, r.namespace, r.name, r.idempotency_key
        )
        for r in conn.execute(_TASKS, {"ids": task_ids})
    }
    rules = {t: _rules_of(conn, f.template_id, f.digest) for t, f in found.items()}
    controls = {
        (step_id, task_id): rules[task_id].controls[name] for step_id, task_id, name in waiting
    }
    names = sorted({n for c in controls.values() for n in c.reads})
    seen: dict[tuple[int, str], tuple[str, Any]] = {}
    if names:
        for r in conn.execute(_READS, {"ids": task_ids, "names": names}):
            seen[(r.task_id, r.name)] = (r.state, r.results)
    readied: list[tuple[int, int, str]] = []
    skipped: dict[int, list[tuple[int, str]]] = {}
    moves: list[_Move] = []
    for step_id, task_id, name in waiting:
        control = controls[(step_id, task_id)]
        task = found[task_id]
        parents = {p: seen[(task_id, p)][0] for p in control.parents}
        results = _results_read(control, task_id, seen, rules[task_id].controls)
        decision = decide(control, parents, task.context, results)
        if decision.verdict == Verdict.RUN and control.foreach is not None:
            items = items_of(control, task.context, results)
            if isinstance(items, Decision):
                _apply(conn, journal, step_id, task_id, name, items, FANOUT_ERROR)
                continue
            grown = _expand(conn, journal, step_id, task_id, name, items, control, task, decision)
            if grown and not items:
                readied.append((step_id, task_id, name))  # nothing to wait for: ready now
            continue
        moves.append(_Move(step_id, task_id, name, decision, CONDITION_ERROR))
        if decision.verdict == Verdict.RUN:
            readied.append((step_id, task_id, name))
        elif decision.verdict == Verdict.SKIP:
            skipped.setdefault(task_id, []).append((step_id, name))
    released = _cascade(conn, rules, skipped, moves)
    _apply_all(conn, journal, moves)
    return Decided(
        readied, [m.step_id for m in moves if m.decision.verdict == Verdict.SKIP], released
    )


def _cascade(
    conn: Connection,
    rules: dict[int, _Rules],
    skipped: dict[int, list[tuple[int, str]]],
    moves: list[_Move],
) -> list[int]:
    """Add to `moves` the skips that follow from `skipped` (step ids and names by task) alone, and
    return the children they release, one id per edge. One read finds the ids of the steps the
    cascade names; each of them is still `pending`, as none of its parents had finished."""
    if not skipped:
        return []
    cascades = {
        task_id: skip_cascade(
            rules[task_id].controls, rules[task_id].children, (n for _, n in steps_skipped)
        )
        for task_id, steps_skipped in skipped.items()
    }
    names = sorted({n for c in cascades.values() for n in (*c.skipped, *c.released)})
    if not names:
        return []
    find = _IDS_PG if conn.dialect.name == "postgresql" else _IDS
    ids = {
        (r.task_id, r.name): r.id
        for r in conn.execute(find, {"ids": sorted(cascades), "names": names})
    }
    released: list[int] = []
    for task_id, cascade in cascades.items():
        for name, decision in cascade.skipped.items():
            moves.append(_Move(ids[(task_id, name)], task_id, name, decision, CONDITION_ERROR))
        for name, edges in cascade.released.items():
            released += [ids[(task_id, name)]] * edges
    return released


@dataclass(frozen=True)
class _Move:
    """One decision to store: the step, and where the decision sends it."""

    step_id: int
    task_id: int
    name: str
    decision: Decision
    error_class: str


def _apply_all(conn: Connection, journal: Journal, moves: list[_Move]) -> None:
    """Store decisions in one statement (a skip cascading down 50 branches moves 500 steps in one
    transaction; one statement each cost most of it). Each step is `pending`: with no parent
    left and its row this transaction's since the release that brought it there, or, in a skip
    cascade, with every parent finished by this transaction (a concurrent cancel that reached its
    row first would have met a parent's row locked by this transaction), so the statement's fence
    on `pending` cannot miss."""
    if not moves:
        return
    params = [_params(journal, m.step_id, m.decision, m.error_class) for m in moves]
    if conn.dialect.name == "postgresql":
        rows = [{k: p[k] for k in ("step_id", "target", "error", "decision")} for p in params]
        conn.execute(_MOVE_PG, {"rows": json.dumps(rows), "now": journal.now})
    else:
        conn.execute(_MOVE, params)
    for m, p in zip(moves, params):
        _record(journal, m.step_id, m.task_id, m.name, p)


def _results_read(
    control: StepControl,
    task_id: int,
    seen: dict[tuple[int, str], tuple[str, Any]],
    template: dict[str, StepControl],
) -> dict[str, Any]:
    """The results a step's expressions read: of the ancestors they name that completed or were
    resolved (a fan-out's as its list of results)."""
    names = [e.steps for e in (control.when, control.foreach) if e is not None]
    out: dict[str, Any] = {}
    for ref in frozenset().union(*names):
        state, value = seen.get((task_id, ref), (None, None))
        if state in _RAN:
            value = {} if value is None else value
            step = template.get(ref)
            out[ref] = fanout_results(value) if step and step.foreach else value
    return out


def _expand(
    conn: Connection,
    journal: Journal,
    step_id: int,
    task_id: int,
    name: str,
    items: list[Any],
    control: StepControl,
    task: _Task,
    decision: Decision,
) -> bool:
    """Expand a fan-out step into its instances (see the module's doc); False when the step was
    no longer `pending`. An empty list makes the step `ready` at once: it completes with `[]`."""
    now = journal.now
    count = len(items)
    window = control.max_parallel
    why = f"expanded into {count} instance{'s' if count != 1 else ''}"
    if window is not None and window < count:
        why += f", at most {window} at once"
    if decision.reason:
        why = f"{decision.reason}; {why}"
    params = {
        "step_id": step_id,
        "count": count,
        "decision": storable_text(why, MAX_MESSAGE_CHARS),
        "target": StepState.READY.value if count == 0 else StepState.PENDING.value,
        "run_at": now if count == 0 else None,
        "now": now,
    }
    if not conn.execute(_EXPANDED, params).rowcount:
        return False
    journal.event(
        "step.expanded", {"task_id": task_id, "step_id": step_id, "step": name, "count": count}
    )
    if count == 0:
        journal.step(step_id, task_id, StepState.PENDING, StepState.READY, 0, reason=why)
        journal.event("step.ready", {"task_id": task_id, "step_id": step_id, "step": name})
        return True
    inherited = dict(conn.execute(_FANOUT_STEP, {"step_id": step_id}).one()._mapping)
    instances = [
        _Instance(
            i,
            instance_name(name, i),
            window is None or i < window,
            step_idempotency_key(task.namespace, task.name, task.key, instance_name(name, i)),
            item,
        )
        for i, item in enumerate(items)
    ]
    insert_instances = _insert_pg if conn.dialect.name == "postgresql" else _insert_rows
    ids = insert_instances(conn, now, step_id, task_id, instances, window, inherited)
    for instance_id, new in zip(ids, instances):
        journal.step(instance_id, task_id, None, new.state, 0)
        if new.ready and journal.collect:
            journal.event(
                "step.ready", {"task_id": task_id, "step_id": instance_id, "step": new.name}
            )
    return True


@dataclass(frozen=True)
class _Instance:
    """One instance a fan-out expands into: its item, where it stands, and whether it may start
    now (`max_parallel` holds back the ones after the first lanes)."""

    index: int
    name: str
    ready: bool
    key: str
    item: Any

    @property
    def state(self) -> StepState:
        return StepState.READY if self.ready else StepState.PENDING


#: PostgreSQL: a fan-out's instances and their edges in one statement (the varying columns as one
#: JSON document; ten thousand rows through SQLAlchemy's executemany took two seconds).
_EXPAND_PG = text(f"""
    WITH v AS (
        SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb))
             AS v(name text, ready boolean, key text, item jsonb, i integer)
    ), ins AS (
        INSERT INTO tasker_steps (task_id, name, position, namespace, dependent_system, state,
                                  pending_parents, run_at, attempts, retry_limit, retryable,
                                  claim_token, idempotency_key, created_at, updated_at, gated,
                                  instance_of, item_index, item, undo, stops, priority,
                                  concurrency_key)
        SELECT :task_id, v.name, :position, :namespace, :dependent_system,
               CASE WHEN v.ready THEN '{StepState.READY.value}'
                    ELSE '{StepState.PENDING.value}' END,
               CASE WHEN v.ready THEN 0 ELSE 1 END,
               CASE WHEN v.ready THEN CAST(:now AS timestamptz) END,
               0, :retry_limit, :retryable, 0, v.key, :now, :now, false, :step_id, v.i, v.item,
               :undo, :stops, :priority, :concurrency_key
          FROM v ORDER BY v.i
        RETURNING id, item_index
    ), to_step AS (
        INSERT INTO tasker_step_edges (task_id, parent_id, child_id)
        SELECT :task_id, id, :step_id FROM ins
    ), lanes AS (
        INSERT INTO tasker_step_edges (task_id, parent_id, child_id)
        SELECT :task_id, a.id, b.id FROM ins a JOIN ins b ON b.item_index = a.item_index + :lane
    )
    SELECT id FROM ins ORDER BY item_index
""")


def _insert_pg(
    conn: Connection,
    now: Any,
    step_id: int,
    task_id: int,
    instances: list[_Instance],
    window: int | None,
    inherited: dict[str, Any],
) -> list[int]:
    """PostgreSQL: the instances and their edges in one statement (`_EXPAND_PG`); their ids in
    item order. `inherited`: the fan-out step's columns (`_INHERITED`)."""
    rows = [
        {"name": n.name, "ready": n.ready, "key": n.key, "item": n.item, "i": n.index}
        for n in instances
    ]
    found = conn.execute(
        _EXPAND_PG,
        {
            "rows": json.dumps(rows),
            "task_id": task_id,
            "step_id": step_id,
            **inherited,
            "now": now,
            "lane": window,  # NULL without max_parallel: item_index = NULL joins nothing
        },
    )
    return list(found.scalars())


def _insert_rows(
    conn: Connection,
    now: Any,
    step_id: int,
    task_id: int,
    instances: list[_Instance],
    window: int | None,
    inherited: dict[str, Any],
) -> list[int]:
    """SQLite: the instances and their edges with multi-row inserts; their ids in item order."""
    rows = [
        {
            "task_id": task_id,
            "name": n.name,
            **inherited,
            "state": n.state.value,
            "pending_parents": 0 if n.ready else 1,
            "run_at": now if n.ready else None,
            "attempts": 0,
            "claim_token": 0,
            "idempotency_key": n.key,
            "created_at": now,
            "updated_at": now,
            "gated": False,
            "instance_of": step_id,
            "item_index": n.index,
            "item": n.item,
        }
        for n in instances
    ]
    ids = list(conn.execute(_INSERT_INSTANCES, rows).scalars())
    edges = [{"task_id": task_id, "parent_id": i, "child_id": step_id} for i in ids]
    if window is not None:
        edges += [
            {"task_id": task_id, "parent_id": ids[i], "child_id": ids[i + window]}
            for i in range(len(ids) - window)
        ]
    conn.execute(_INSERT_EDGES, edges)
    return ids


def _apply(
    conn: Connection,
    journal: Journal,
    step_id: int,
    task_id: int,
    name: str,
    decision: Decision,
    error_class: str = CONDITION_ERROR,
) -> bool:
    """Store one decision (fenced on the step being `pending`); False when it was not."""
    params = _params(journal, step_id, decision, error_class)
    if not conn.execute(_MOVE, params).rowcount:
        return False
    _record(journal, step_id, task_id, name, params)
    return True


def _params(journal: Journal, step_id: int, decision: Decision, error_class: str) -> dict[str, Any]:
    """The values of `_MOVE` for one decision."""
    now = journal.now
    error: FailureRecord | None = None
    if decision.verdict == Verdict.RUN:
        target, run_at, finished = StepState.READY, now, None
    elif decision.verdict == Verdict.SKIP:
        target, run_at, finished = StepState.SKIPPED, None, now
    else:
        target, run_at, finished = StepState.ERROR, None, now
        error = condition_failure(decision.reason, error_class)
    reason = storable_text(decision.reason, MAX_MESSAGE_CHARS) if decision.reason else None
    return {
        "decision": reason,
        "step_id": step_id,
        "target": target.value,
        "run_at": run_at,
        "finished_at": finished,
        "error": error,
        "now": now,
    }


def _record(
    journal: Journal, step_id: int, task_id: int, name: str, params: dict[str, Any]
) -> None:
    """The transition row and event of a stored decision."""
    target, error, reason = StepState(params["target"]), params["error"], params["decision"]
    journal.step(step_id, task_id, StepState.PENDING, target, 0, error, reason=reason)
    payload: dict[str, Any] = {"task_id": task_id, "step_id": step_id, "step": name}
    if target == StepState.READY:
        journal.event("step.ready", payload)
    elif target == StepState.SKIPPED:
        journal.event("step.skipped", {**payload, "reason": reason})
    else:
        journal.event("step.failed", {**payload, "attempt": 0, "error": error})
