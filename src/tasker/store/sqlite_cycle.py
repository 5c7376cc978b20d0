"""SQLite: the common worker cycle with fixed statements on the `sqlite3` connection itself.

On SQLite a round trip costs nothing; what a cycle costs is Python: building, compiling and binding
each statement through SQLAlchemy took most of a cycle's time (about 1.5 ms for six statements on
the machine of docs/benchmarks.md), against some 0.2 ms in SQLite itself. Here the same cycle as
`pg_cycle` (store outcomes fenced by their claim tokens, release the children and claim those that
become ready, claim from the queue, start their tasks, settle finished tasks, write the transition
rows) runs as fixed SQL texts that `sqlite3` keeps prepared in its statement cache, values bound as
SQLAlchemy would bind them (times as naive UTC text, JSON as text). The write lock is taken at the
start (`BEGIN IMMEDIATE`), so nothing another worker does can interleave; settling decides with the
pure `settle_move`.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.pool import PoolProxiedConnection

from tasker.domain.states import (
    CLAIMABLE_STEP_STATES,
    FINISHED_TASK_STATES,
    StepState,
    TaskCounts,
    TaskState,
    settle_move,
)
from tasker.store.claims import attach_items, claimed_steps, item_claims, unknown_tasks
from tasker.store.cycle_rows import (
    EXPIRED_SQL,
    GATE_SQL,
    Cycle,
    CycleInput,
    Row,
    record_rows,
)
from tasker.store.journal import STEP_ROW_GAPS, TASK_ROW_GAPS, Journal

S, T = StepState, TaskState
_CLAIMABLE = "(" + ", ".join(f"'{s.value}'" for s in sorted(CLAIMABLE_STEP_STATES)) + ")"
_RETURNING = (
    "id, task_id, name, attempts, retry_limit, claim_token, idempotency_key, dependent_system,"
    " state"
)

_FINISH = f"""
    UPDATE tasker_steps
       SET state = ?, results = ?, last_error = ?, attempts = attempts - ?, run_at = ?,
           finished_at = ?, lease_owner = NULL, lease_expires_at = NULL, updated_at = ?
     WHERE id = ? AND claim_token = ? AND state = '{S.IN_PROGRESS.value}'
    RETURNING id, state"""
_BECOMES = f"pending_parents <= :n AND state = '{S.PENDING.value}' AND NOT gated"  # as pg_cycle
_RELEASE = f"""
    UPDATE tasker_steps
       SET pending_parents = pending_parents - :n,
           state = CASE WHEN {_BECOMES} THEN CASE WHEN :take THEN '{S.IN_PROGRESS.value}'
                                                  ELSE '{S.READY.value}' END
                        ELSE state END,
           run_at = CASE WHEN {_BECOMES} THEN :now ELSE run_at END,
           lease_owner = CASE WHEN {_BECOMES} AND :take THEN :worker ELSE lease_owner END,
           lease_expires_at = CASE WHEN {_BECOMES} AND :take THEN :lease_until
                                   ELSE lease_expires_at END,
           claim_token = claim_token + CASE WHEN {_BECOMES} AND :take THEN 1 ELSE 0 END,
           attempts = attempts + CASE WHEN {_BECOMES} AND :take THEN 1 ELSE 0 END,
           started_at = CASE WHEN {_BECOMES} AND :take THEN :now ELSE started_at END,
           updated_at = :now
     WHERE id = :id
    RETURNING {_RETURNING}"""
_TAKE = f"""
    UPDATE tasker_steps
       SET state = '{S.IN_PROGRESS.value}', lease_owner = :worker, lease_expires_at = :lease_until,
           claim_token = claim_token + 1, attempts = attempts + 1, started_at = :now,
           finished_at = NULL, updated_at = :now
     WHERE id = :id AND state IN {_CLAIMABLE}
    RETURNING {_RETURNING}"""
_START = f"""
    UPDATE tasker_tasks SET status = '{T.IN_PROGRESS.value}', started_at = ?, updated_at = ?
     WHERE id = ? AND status = '{T.PENDING.value}'
    RETURNING id"""
_SET_STATUS = "UPDATE tasker_tasks SET status = ?, finished_at = ?, updated_at = ? WHERE id = ?"
#: `readiness.WAKE_PARENT`: a settled child task wakes the `task:` step parked for it.
_WAKE = f"""
    UPDATE tasker_steps SET run_at = ?, updated_at = ?
     WHERE id = ? AND state = '{S.WAITING_RETRY.value}' AND run_at IS NULL
    RETURNING id"""
_STEP_ROW = """
    INSERT INTO tasker_step_transitions
           (step_id, task_id, from_state, to_state, attempt, at, worker, error_class,
            error_message, duration_ms, reason)
    VALUES (:step_id, :task_id, :from_state, :to_state, :attempt, :at, :worker, :error_class,
            :error_message, :duration_ms, :reason)"""
_TASK_ROW = """
    INSERT INTO tasker_task_transitions (task_id, from_state, to_state, at, worker, reason)
    VALUES (:task_id, :from_state, :to_state, :at, :worker, :reason)"""
_CUSTOM_ROW = """
    INSERT INTO tasker_custom_events (name, task_id, step_id, namespace, payload, at, worker)
    VALUES (:name, :task_id, :step_id, :namespace, :payload, :at, :worker)"""


_GATE = f"SELECT {GATE_SQL}"
_EXPIRED = f"SELECT {EXPIRED_SQL.format(now='?')}"


def _scan(namespaces: int, tasks: int) -> str:
    scope = ""
    if namespaces:
        scope += f" AND namespace IN ({', '.join('?' * namespaces)})"
    if tasks:
        scope += f" AND task_id IN ({', '.join('?' * tasks)})"
    return f"""
    SELECT id, state FROM tasker_steps
     WHERE state IN {_CLAIMABLE} AND run_at <= ?{scope}
     ORDER BY run_at, id LIMIT ?"""


def _in(n: int) -> str:
    return ", ".join("?" * n)


def stamp(value: datetime | None) -> str | None:
    """A time as SQLAlchemy stores it on SQLite (`UTCDateTime`): naive UTC, microseconds always.

    `isoformat` then the offset cut off (`+00:00`, always the last six characters in UTC): half
    the cost of `strftime`, and a cycle stamps each row it writes."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(" ", "microseconds")[:-6]


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _loads(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def run_cycle(conn: PoolProxiedConnection, journal: Journal, work: CycleInput) -> Cycle:
    """Run one cycle on `conn` (a connection of the store's SQLite engine, not in a transaction);
    committed when this returns, rolled back if it raises."""
    raw: sqlite3.Connection = conn.driver_connection  # type: ignore[assignment]
    cur = raw.cursor()
    cur.execute("BEGIN IMMEDIATE")
    try:
        out = _cycle(cur, journal, work)
        cur.execute("COMMIT")
    except BaseException:
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        raise
    return out


def _cycle(cur: sqlite3.Cursor, journal: Journal, work: CycleInput) -> Cycle:
    outcomes, known, worker = work.outcomes, work.known, work.worker
    namespaces, task_ids = work.namespaces, work.task_ids
    now = journal.now
    at = stamp(now)
    out = Cycle()
    if not cur.execute(_GATE).fetchone()[0]:
        out.shut = True  # a limit, a circuit or a failure on record: the general path's cycle
        return out
    if work.check_expired:
        out.expired = bool(cur.execute(_EXPIRED, (at,)).fetchone()[0])
    rows: list[Row] = []
    completed: set[int] = set()
    for o in outcomes:
        state = o.state
        run_at = now + timedelta(seconds=o.retry_delay) if state == S.WAITING_RETRY else None
        stored = cur.execute(
            _FINISH,
            (
                state.value,
                _json(o.results) if state == S.COMPLETE else None,
                _json(o.error) if state != S.COMPLETE else None,
                1 if o.refund_attempt else 0,
                stamp(run_at),
                None if state == S.WAITING_RETRY else at,
                at,
                o.step_id,
                o.claim_token,
            ),
        ).fetchone()
        if stored is not None:
            rows.append(("f", stored[0], None, None, None, None, None, None, None, stored[1]))
            if stored[1] == S.COMPLETE:
                completed.add(o.step_id)
    counts: dict[int, int] = {}
    for o in outcomes:
        if o.step_id in completed:
            for child in o.children or ():
                counts[child] = counts.get(child, 0) + 1
    take, scan_limit = work.claim_split(len(counts))
    lease_until = stamp(now + timedelta(seconds=work.lease_seconds))
    for child, n in counts.items():
        r = cur.execute(
            _RELEASE,
            {
                "n": n,
                "take": take,
                "now": at,
                "worker": worker,
                "lease_until": lease_until,
                "id": child,
            },
        ).fetchone()
        if r is not None:
            rows.append(("r", *r))
    if scan_limit:
        params: list[Any] = [at, *(namespaces or ())]
        if task_ids is not None:
            params.extend(task_ids)
        picked = cur.execute(
            _scan(len(namespaces or ()), len(task_ids or ())), [*params, scan_limit]
        ).fetchall()
        starting: set[int] = set()
        for step_id, from_state in picked:
            r = cur.execute(
                _TAKE, {"worker": worker, "lease_until": lease_until, "now": at, "id": step_id}
            ).fetchone()
            if r is not None:
                rows.append(("t", *r[:-1], from_state))
                starting.add(r[1])
        for t_id in sorted(starting):
            if cur.execute(_START, (at, at, t_id)).fetchone() is not None:
                rows.append(("s", t_id, None, None, None, None, None, None, None, None))
        out.scanned_full = len(picked) >= scan_limit
    seen = record_rows(journal, rows, {o.step_id: o for o in outcomes}, out)
    if seen.to_settle:
        _settle(cur, journal, seen.to_settle, out)
    unknown = unknown_tasks(known, seen.claims)
    if seen.claims:
        tasks: list[tuple[int, Any, str, int]] = []
        steps: list[tuple[int, int, str, str, Any]] = []
        if unknown:
            marks = _in(len(unknown))
            tasks = [
                (r[0], _loads(r[1]), r[2], r[3])
                for r in cur.execute(
                    "SELECT id, context, correlation_id, template_id FROM tasker_tasks"
                    f" WHERE id IN ({marks})",
                    unknown,
                )
            ]
            steps = [
                (r[0], r[1], r[2], r[3], _loads(r[4]))
                for r in cur.execute(
                    "SELECT task_id, id, name, state, results FROM tasker_steps"
                    f" WHERE task_id IN ({marks}) AND instance_of IS NULL",
                    unknown,
                )
            ]
        out.claimed = claimed_steps(seen.claims, known, tasks, steps)
        instances = item_claims(out.claimed)
        if instances:
            found = cur.execute(
                f"SELECT id, item FROM tasker_steps WHERE id IN ({_in(len(instances))})",
                instances,
            )
            attach_items(out.claimed, {r[0]: _loads(r[1]) for r in found})
    flush_rows(cur, journal)
    return out


#: `readiness._HOLDS`: a failure that leaves its task in error rather than compensating it.
_HOLDS = (
    f"(s.state = '{StepState.ERROR.value}'"
    " AND (s.stops OR coalesce(json_extract(s.last_error, '$.retryable'), 0) = 1))"
)


def _settle(cur: sqlite3.Cursor, journal: Journal, ids: list[int], out: Cycle) -> None:
    """`readiness.settle_tasks`, on the driver: the pure `settle_move` decides."""
    statuses: dict[int, str] = {}
    counts: dict[int, TaskCounts] = {}
    parents: dict[int, int] = {}
    for t_id, status, parent_step, state, is_undo, undo, stops, n in cur.execute(
        f"SELECT t.id, t.status, t.parent_step_id, s.state, s.compensates IS NOT NULL, s.undo,"
        f" {_HOLDS}, count(s.id) FROM tasker_tasks t LEFT JOIN tasker_steps s ON s.task_id = t.id"
        f" WHERE t.id IN ({_in(len(ids))}) GROUP BY t.id, t.status, t.parent_step_id, s.state,"
        f" s.compensates IS NOT NULL, s.undo, {_HOLDS}",
        ids,
    ):
        statuses[t_id] = status
        if parent_step is not None:
            parents[t_id] = parent_step
        if state is not None:
            counts.setdefault(t_id, TaskCounts()).add(
                state, int(n), is_undo=bool(is_undo), undo=bool(undo), stops=bool(stops)
            )
    at = stamp(journal.now)
    for t_id in sorted(statuses):
        status = TaskState(statuses[t_id])
        target = settle_move(status, counts.get(t_id, TaskCounts()))
        if target is None:
            continue
        cur.execute(
            _SET_STATUS, (target.value, at if target in FINISHED_TASK_STATES else None, at, t_id)
        )
        journal.task(t_id, status, target)
        out.settled.append((t_id, target.value))
        journal.task_settled(t_id, status.value, target.value)
        if t_id in parents and target in FINISHED_TASK_STATES:
            woken = cur.execute(_WAKE, (at, at, parents[t_id])).fetchone()
            if woken is not None:
                journal.readied.add(parents[t_id])


def flush_rows(cur: sqlite3.Cursor, journal: Journal) -> None:
    """The journal's rows, as `Journal.flush` writes them on SQLite (times as `stamp` stores
    them, payloads as JSON text)."""

    at = stamp(journal.now)
    if journal.step_rows:
        cur.executemany(_STEP_ROW, journal.whole_rows(journal.step_rows, STEP_ROW_GAPS, at))
    if journal.task_rows:
        cur.executemany(_TASK_ROW, journal.whole_rows(journal.task_rows, TASK_ROW_GAPS, at))
    if journal.custom_rows:
        rows = [
            {**r, "at": stamp(r["at"]), "payload": json.dumps(r["payload"])}
            for r in journal.custom_rows
        ]
        cur.executemany(_CUSTOM_ROW, rows)
    journal.step_rows, journal.task_rows, journal.custom_rows = [], [], []
    journal.readied = set()
