"""PostgreSQL: a worker's cycle in two round trips, or one when it only claims.

The general cycle (`tasker.engine.cycle`, through `completion`, `readiness` and `claims`) sends one
statement at a time and waits for each. Here the common cycle, the one that stores outcomes, readies
children, claims work and settles finished tasks when no limit or circuit is in play, is sent in
psycopg's pipeline mode on a connection whose transaction is opened and closed by hand:

1. `BEGIN` and one statement (`_first`): store the outcomes fenced by their claim tokens, release
   the children of the completed steps (and claim those that become ready, when there is room for
   all of them), pick and claim due steps from the queue, and start the tasks of those steps.
   Its rows come back before anything else is sent, because what to write next depends on them;
2. the reads of tasks this worker does not know yet, the lock of the tasks that may settle, the
   settle statement (`_SETTLE`), the transition rows and custom events, and `COMMIT`: sent
   together, answered together.

A cycle with nothing to store (an idle worker's claim, a poll) is one round trip: `BEGIN`, a
statement that also writes its claims' transition rows and reads the claimed tasks
(`_claim_only`), and `COMMIT`, sent together.

Statements after the first see every row committed before they start (READ COMMITTED), which is
why the lock of a task and the count of its steps are two statements, as in `readiness`; the
pipeline only spares the waiting between them. Whatever this module decides in SQL is what the
pure policies decide (`tasker.domain.states`): the settle statement's decision is built from the
state sets and the transition table, and a test compares it with `final_task_state` over every
combination of step states it can meet.

The texts never change (values travel as arrays), so psycopg prepares each one once per connection,
and the claim statement names its states as literals, so the partial claim index serves it under a
generic plan too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb
from sqlalchemy.pool import PoolProxiedConnection

from tasker.domain.states import (
    ACTIVE_STEP_STATES,
    CLAIMABLE_STEP_STATES,
    FINISHED_TASK_STATES,
    TASK_TRANSITIONS,
    StepState,
    TaskState,
)
from tasker.store.claims import (
    KnownTask,
    attach_items,
    carries_item,
    claimed_steps,
    unknown_tasks,
)
from tasker.store.cycle_rows import EXPIRED_SQL, Cycle, CycleInput, record_rows
from tasker.store.journal import Journal
from tasker.store.notify import CHANNEL

S, T = StepState, TaskState


def _in(states: Sequence[str]) -> str:
    return "(" + ", ".join(f"'{s}'" for s in sorted(states)) + ")"


_CLAIMABLE = _in([s.value for s in CLAIMABLE_STEP_STATES])
_TAKE = f"""state = '{S.IN_PROGRESS.value}', lease_owner = %(worker)s,
           lease_expires_at = %(lease_until)s, claim_token = s.claim_token + 1,
           attempts = s.attempts + 1, started_at = %(now)s, finished_at = NULL,
           updated_at = %(now)s"""
#: A gated child stays `pending` here: the engine never sends its parent's outcome down this path
#: (`cycle_rows.eligible`), and if one came, the step would wait rather than run undecided.
_BECOMES_READY = f"s.pending_parents <= r.n AND s.state = '{S.PENDING.value}' AND NOT s.gated"
_CLAIM_IT = f"{_BECOMES_READY} AND %(take)s"
_COLUMNS = "s.id, s.task_id, s.name, s.attempts, s.retry_limit, s.claim_token, s.idempotency_key,"
_COLUMNS += " s.dependent_system"


def _scope(namespaces: bool, task: bool) -> str:
    scope = ""
    if namespaces:
        scope += " AND namespace = ANY(%(namespaces)s::text[])"
    if task:
        scope += " AND task_id = ANY(%(scope_tasks)s::bigint[])"
    return scope


#: Whether this cycle may act, and whether a lease ran out (both statements open with it).
#: The gate's check (`GATE_SQL`) lives in the view `tasker_gate` (migration 0019), which keeps these
#: statements under psycopg's 4,096 characters (`compact`).
_GATE = f"""
    gate AS MATERIALIZED (
        SELECT (SELECT open FROM tasker_gate) AS open,
               %(check_expired)s AND {EXPIRED_SQL.format(now="%(now)s")} AS expired
    )"""


def _claim_ctes(scope: str) -> str:
    """Pick due steps from the queue, claim them, and start their tasks (both statements)."""
    return f"""
    picked AS (
        SELECT id, state FROM tasker_steps
         WHERE state IN {_CLAIMABLE} AND run_at <= %(now)s{scope} AND (SELECT open FROM gate)
         ORDER BY run_at, id
         LIMIT %(scan_limit)s
           FOR UPDATE SKIP LOCKED
    ), took AS (
        UPDATE tasker_steps s SET {_TAKE}
          FROM picked
         WHERE s.id = ANY(ARRAY(SELECT id FROM picked)) AND s.id = picked.id
           -- coalesce, as in fin: by primary key, never a walk of the claim index's backlog
           AND coalesce(s.state, '') IN {_CLAIMABLE}
        RETURNING {_COLUMNS}, picked.state
    ), started AS (
        UPDATE tasker_tasks t
           SET status = '{T.IN_PROGRESS.value}', started_at = %(now)s, updated_at = %(now)s
         WHERE t.id = ANY(ARRAY(SELECT task_id FROM took))
           AND coalesce(t.status, '') = '{T.PENDING.value}'
        RETURNING t.id
    )"""


#: The rows that say the gate was shut, or that a lease ran out.
_GATE_ROWS = """
    UNION ALL SELECT 'g', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL{extra} FROM gate
               WHERE NOT open
    UNION ALL SELECT 'x', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL{extra} FROM gate
               WHERE expired"""


def _first(namespaces: bool, task: bool) -> str:
    return f"""
    WITH {_GATE}, v AS (
        SELECT * FROM jsonb_to_recordset(%(outcomes)s::jsonb)
             AS v(id bigint, token integer, target text, results jsonb, error jsonb,
                  run_at timestamptz, finished_at timestamptz, refund integer)
         WHERE (SELECT open FROM gate)
    ), fin AS (
        UPDATE tasker_steps s
           SET state = v.target, results = v.results, last_error = v.error, run_at = v.run_at,
               finished_at = v.finished_at, attempts = s.attempts - v.refund,
               lease_owner = NULL, lease_expires_at = NULL, updated_at = %(now)s
          FROM v
         WHERE s.id = ANY(ARRAY(SELECT id FROM v)) AND s.id = v.id AND s.claim_token = v.token
           -- The state is tested through coalesce (never null: the same test) so that the planner
           -- cannot use the partial index of running steps and reads these rows by primary key,
           -- instead of every running step of the store, which its generic plan chose.
           AND coalesce(s.state, '') = '{S.IN_PROGRESS.value}'
        RETURNING s.id, s.state
    ), rel_in AS (
        SELECT e.child AS id, count(*) AS n
          FROM jsonb_to_recordset(%(edges)s::jsonb) AS e(parent bigint, child bigint)
          JOIN fin ON fin.id = e.parent AND fin.state = '{S.COMPLETE.value}'
         GROUP BY e.child
    ), rel AS (
        UPDATE tasker_steps s
           SET pending_parents = s.pending_parents - r.n,
               state = CASE WHEN {_BECOMES_READY}
                            THEN CASE WHEN %(take)s THEN '{S.IN_PROGRESS.value}'
                                      ELSE '{S.READY.value}' END
                            ELSE s.state END,
               run_at = CASE WHEN {_BECOMES_READY} THEN %(now)s ELSE s.run_at END,
               lease_owner = CASE WHEN {_CLAIM_IT} THEN %(worker)s ELSE s.lease_owner END,
               lease_expires_at = CASE WHEN {_CLAIM_IT} THEN %(lease_until)s
                                       ELSE s.lease_expires_at END,
               claim_token = s.claim_token + CASE WHEN {_CLAIM_IT} THEN 1 ELSE 0 END,
               attempts = s.attempts + CASE WHEN {_CLAIM_IT} THEN 1 ELSE 0 END,
               started_at = CASE WHEN {_CLAIM_IT} THEN %(now)s ELSE s.started_at END,
               updated_at = %(now)s
          FROM rel_in r
         WHERE s.id = r.id
        RETURNING {_COLUMNS}, s.state
    ), {_claim_ctes(_scope(namespaces, task))}
    SELECT 'f' AS kind, id, NULL::bigint, NULL, NULL::integer, NULL::integer, NULL::integer,
           NULL, NULL, state
      FROM fin
    UNION ALL SELECT 'r', * FROM rel
    UNION ALL SELECT 't', * FROM took
    UNION ALL SELECT 's', id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM started
    {_GATE_ROWS.format(extra="")}
    """


def _claim_only(namespaces: bool, task: bool) -> str:
    """A cycle with nothing to store: the claim, its transition rows (as `journal_claims` and the
    task's start would record them; the settle statement logs its moves the same way) and the
    claimed tasks' context and step results, so that with its `COMMIT` it is one round trip. The
    reads see the tasks as they were before the claim, which only moved steps to `in_progress`:
    no result a step's handler reads is among them."""
    return f"""
    WITH {_GATE}, {_claim_ctes(_scope(namespaces, task))}, step_log AS (
        INSERT INTO tasker_step_transitions (step_id, task_id, from_state, to_state, attempt, at,
                                             worker)
        SELECT id, task_id, state, '{S.IN_PROGRESS.value}', attempts, %(now)s, %(worker)s
          FROM took
    ), task_log AS (
        INSERT INTO tasker_task_transitions (task_id, from_state, to_state, at, worker)
        SELECT id, '{T.PENDING.value}', '{T.IN_PROGRESS.value}', %(now)s, %(worker)s FROM started
    )
    SELECT 't' AS kind, *, NULL::jsonb AS data FROM took
    UNION ALL SELECT 's', id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM started
    UNION ALL SELECT 'k', t.id, t.template_id, t.correlation_id, NULL, NULL, NULL, NULL, NULL,
                     NULL, t.context
      FROM tasker_tasks t WHERE t.id = ANY(ARRAY(SELECT task_id FROM took))
    UNION ALL SELECT 'p', s.id, s.task_id, s.name, NULL, NULL, NULL, NULL, NULL, s.state,
                     s.results
      FROM tasker_steps s WHERE s.task_id = ANY(ARRAY(SELECT task_id FROM took))
                            AND s.instance_of IS NULL
    UNION ALL SELECT 'i', s.id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, s.item
      FROM tasker_steps s WHERE s.id = ANY(ARRAY(SELECT id FROM took))
                            AND (s.instance_of IS NOT NULL OR s.compensates IS NOT NULL)
    {_GATE_ROWS.format(extra=", NULL")}
    """


def compact(sql: str) -> str:
    """The statement without its comments and runs of whitespace (none of its literals holds
    either). psycopg converts a statement's placeholders once and caches the result only for texts
    of at most 4,096 characters; the first statement, indented, was longer and was parsed again at
    every cycle (0.1 ms)."""
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    return " ".join(" ".join(lines).split())


_FIRST = {(ns, tk): compact(_first(ns, tk)) for ns in (False, True) for tk in (False, True)}
_CLAIM_ONLY = {
    (ns, tk): compact(_claim_only(ns, tk)) for ns in (False, True) for tk in (False, True)
}

_TASKS = """SELECT id, context, correlation_id, template_id FROM tasker_tasks
             WHERE id = ANY(%(ids)s::bigint[])"""
_TASK_STEPS = """SELECT task_id, id, name, state, results FROM tasker_steps
                  WHERE task_id = ANY(%(ids)s::bigint[]) AND instance_of IS NULL"""
_ITEMS = "SELECT id, item FROM tasker_steps WHERE id = ANY(%(ids)s::bigint[])"
_LOCK = """SELECT id FROM tasker_tasks WHERE id = ANY(%(ids)s::bigint[]) ORDER BY id
           FOR NO KEY UPDATE"""


def _settle() -> str:
    """Settle tasks by their steps, as `readiness.settle_tasks` does with `final_task_state`.

    The order of the CASE is that function's; the states come from the state sets, and a move the
    transition table forbids fails the statement (and the transaction) as `check_task_transition`
    would, by casting its description to a boolean.
    """
    active = _in([s.value for s in ACTIVE_STEP_STATES])
    ended = _in([t.value for t in FINISHED_TASK_STATES - {T.ERROR}])
    finished = _in([t.value for t in FINISHED_TASK_STATES])
    legal = ", ".join(
        f"('{src.value}', '{dst.value}')"
        for src, dsts in sorted(TASK_TRANSITIONS.items())
        for dst in sorted(dsts)
    )
    return f"""
    WITH counted AS (
        -- a task's own steps (not its undo rows), and its undo rows, counted apart
        SELECT t.id, t.status,
               count(s.id) FILTER (WHERE s.compensates IS NULL AND s.state IN {active}) AS active,
               count(s.id) FILTER (WHERE s.compensates IS NULL AND s.state = '{S.ERROR.value}')
                   AS failed,
               count(s.id) FILTER (WHERE s.compensates IS NULL
                                     AND s.state = '{S.CANCELLED.value}') AS cancelled,
               count(s.id) FILTER (WHERE s.compensates IS NULL AND s.state = '{S.PENDING.value}')
                   AS pending,
               count(s.id) FILTER (WHERE s.compensates IS NULL
                                     AND s.state = '{S.RESOLVED_MANUALLY.value}') AS resolved,
               count(s.id) FILTER (WHERE s.undo AND s.compensates IS NULL
                                     AND s.state = '{S.COMPLETE.value}') AS undoable,
               -- readiness._HOLDS: a failure that leaves the task in error (on_failure: stop,
               -- or a retryable failure that ran out of attempts)
               count(s.id) FILTER (WHERE s.compensates IS NULL AND s.state = '{S.ERROR.value}'
                                     AND (s.stops OR (s.last_error->>'retryable') = 'true'))
                   AS stopping,
               count(s.id) FILTER (WHERE s.compensates IS NOT NULL) AS undos
          FROM tasker_tasks t LEFT JOIN tasker_steps s ON s.task_id = t.id
         WHERE t.id = ANY(%(ids)s::bigint[])
         GROUP BY t.id, t.status
    ), finals AS MATERIALIZED (
        SELECT id, status,
               -- a task in compensation settles on the general path (its undo rows' outcomes
               -- never take this one)
               undos > 0 OR status = '{T.COMPENSATING.value}' AS held,
               CASE WHEN active > 0 THEN NULL
                    WHEN failed > 0 AND undoable > 0 AND stopping = 0
                    THEN '{T.COMPENSATING.value}'
                    WHEN failed > 0 THEN '{T.ERROR.value}'
                    WHEN cancelled > 0 THEN '{T.CANCELLED.value}'
                    WHEN pending > 0 AND undoable > 0 AND stopping = 0
                    THEN '{T.COMPENSATING.value}'
                    WHEN pending > 0 THEN '{T.ERROR.value}'
                    WHEN resolved > 0 THEN '{T.RESOLVED_MANUALLY.value}'
                    ELSE '{T.COMPLETE.value}' END AS final
          FROM counted
    ), decided AS MATERIALIZED (
        SELECT id, status AS src,
               CASE WHEN held THEN NULL
                    WHEN final IS NULL
                    THEN CASE WHEN status = '{T.ERROR.value}' THEN '{T.PENDING.value}' END
                    WHEN final = status OR status IN {ended} THEN NULL
                    ELSE final END AS dst
          FROM finals
    ), checked AS (
        SELECT id, src, dst FROM decided
         WHERE dst IS NOT NULL
           AND CASE WHEN (src, dst) IN ({legal}) THEN true
                    ELSE CAST('task cannot go from ' || src || ' to ' || dst AS boolean) END
    ), moved AS (
        UPDATE tasker_tasks t
           SET status = c.dst, updated_at = %(now)s::timestamptz,
               finished_at = CASE WHEN c.dst IN {finished} THEN %(now)s::timestamptz END
          FROM checked c
         WHERE t.id = c.id
        RETURNING t.id, c.src, c.dst
    ), logged AS (
        INSERT INTO tasker_task_transitions (task_id, from_state, to_state, at, worker)
        SELECT id, src, dst, %(now)s::timestamptz, %(worker)s::text FROM moved
    ), woken AS (
        -- readiness.WAKE_PARENT: a child task that finished wakes the step parked for it
        -- by primary key (the parked steps are read one by one, never through the claim index,
        -- whose parked entries may be 100,000 steps waiting for signals); coalesce keeps the
        -- partial index out of the plan
        UPDATE tasker_steps s
           SET run_at = %(now)s::timestamptz, updated_at = %(now)s::timestamptz
         WHERE s.id = ANY(ARRAY(
                   SELECT t.parent_step_id FROM moved m JOIN tasker_tasks t ON t.id = m.id
                    WHERE m.dst IN {finished} AND t.parent_step_id IS NOT NULL))
           AND coalesce(s.state, '') = '{S.WAITING_RETRY.value}' AND s.run_at IS NULL
        RETURNING s.id, pg_notify('{CHANNEL}', '')
    )
    SELECT id, src, dst FROM moved ORDER BY id
    """


_SETTLE = compact(_settle())
_CUSTOM = """INSERT INTO tasker_custom_events (name, task_id, step_id, namespace, payload, at,
                                               worker)
             VALUES (%(name)s, %(task_id)s, %(step_id)s, %(namespace)s, %(payload)s, %(at)s,
                     %(worker)s)"""


def run_cycle(conn: PoolProxiedConnection, journal: Journal, work: CycleInput) -> Cycle:
    """Run one cycle on `conn` (a connection of the store's PostgreSQL pool, not in a
    transaction); the transaction is committed when this returns. Raises `psycopg.Error` after
    rolling back."""
    raw: psycopg.Connection[Any] = conn.driver_connection  # type: ignore[assignment]
    raw.autocommit = True  # BEGIN and COMMIT are ours to send, inside the pipeline
    try:
        with raw.pipeline():
            receive = _send(raw, journal, work)
        # Leaving the pipeline sent its Sync: round trip 2 answered everything queued after the
        # first statement, COMMIT included.
        return receive()
    except BaseException:
        if raw.broken or raw.closed:
            conn.invalidate()
        elif raw.info.transaction_status != TransactionStatus.IDLE:
            try:
                raw.execute("ROLLBACK")
            except psycopg.Error:
                conn.invalidate()  # a connection in an unknown state is not handed out again
        raise
    finally:
        if not raw.closed:
            raw.autocommit = False


def _send(raw: psycopg.Connection[Any], journal: Journal, work: CycleInput) -> Callable[[], Cycle]:
    """Round trip 1, then queue round trip 2; returns what reads its answers."""
    now = journal.now
    out = Cycle()
    outcomes, known = work.outcomes, work.known
    by_id = {o.step_id: o for o in outcomes}
    edges = [(o.step_id, child) for o in outcomes if o.children for child in o.children]
    children = {child for _, child in edges}
    take, scan_limit = work.claim_split(len(children))
    params: dict[str, Any] = {
        "now": now,
        "worker": work.worker,
        "lease_until": now + timedelta(seconds=work.lease_seconds),
        # Values travel as one JSON document per list (json.dumps is C; dumping a dozen Python
        # lists as typed arrays costs more than the statement).
        "outcomes": json.dumps(
            [
                {
                    "id": o.step_id,
                    "token": o.claim_token,
                    "target": o.state.value,
                    "results": o.results if o.state == S.COMPLETE else None,
                    "error": o.error if o.state != S.COMPLETE else None,
                    "run_at": (
                        (now + timedelta(seconds=o.retry_delay)).isoformat()
                        if o.state == S.WAITING_RETRY
                        else None
                    ),
                    "finished_at": None if o.state == S.WAITING_RETRY else now.isoformat(),
                    "refund": 1 if o.refund_attempt else 0,
                }
                for o in outcomes
            ]
        ),
        "edges": json.dumps([{"parent": p, "child": c} for p, c in edges]),
        "take": take,
        "scan_limit": scan_limit,
        "namespaces": list(work.namespaces or []),
        "scope_tasks": list(work.task_ids or []),
        "check_expired": work.check_expired,
    }
    variant = (bool(work.namespaces), work.task_ids is not None)
    cur = raw.cursor()
    cur.execute("BEGIN")
    if not outcomes and scan_limit:
        claim_cur = raw.cursor()
        claim_cur.execute(_CLAIM_ONLY[variant], params, prepare=True)
        cur.execute("COMMIT")
        return lambda: _claimed_only(claim_cur.fetchall(), journal, work.known, scan_limit, out)
    cur.execute(_FIRST[variant], params, prepare=True)
    rows = cur.fetchall()  # round trip 1

    seen = record_rows(journal, rows, by_id, out)
    claims = seen.claims
    if scan_limit:  # else, as in the general path, no scan ran: nothing learnt
        out.scanned_full = sum(1 for c in claims if c.step_id not in children) >= scan_limit

    unknown = unknown_tasks(known, claims)
    settle = seen.to_settle
    # A cursor per statement whose rows are read after the Sync, made only when it is sent.
    task_cur = steps_cur = settle_cur = items_cur = cur
    instances = [c.step_id for c in claims if carries_item(c.name)]
    if unknown:
        task_cur, steps_cur = raw.cursor(), raw.cursor()
        task_cur.execute(_TASKS, {"ids": unknown}, prepare=True)
        steps_cur.execute(_TASK_STEPS, {"ids": unknown}, prepare=True)
    if instances:
        items_cur = raw.cursor()
        items_cur.execute(_ITEMS, {"ids": instances}, prepare=True)
    if settle:
        cur.execute(_LOCK, {"ids": settle}, prepare=True)
        settle_cur = raw.cursor()
        settle_cur.execute(
            _SETTLE, {"ids": settle, "now": now, "worker": work.worker}, prepare=True
        )
    flush = journal.flush_statement()
    if flush is not None:
        cur.execute(flush[0], flush[1], prepare=True)
    if journal.custom_rows:
        cur.executemany(
            _CUSTOM, [{**r, "payload": Jsonb(r["payload"])} for r in journal.custom_rows]
        )
        journal.custom_rows = []
    cur.execute("COMMIT")

    def receive() -> Cycle:
        if settle:
            for settled_id, src, dst in settle_cur.fetchall():
                out.settled.append((settled_id, dst))
                journal.task_settled(settled_id, src, dst)
        if claims:
            tasks = task_cur.fetchall() if unknown else []
            steps = steps_cur.fetchall() if unknown else []
            out.claimed = claimed_steps(claims, known, tasks, steps)
            if instances:
                attach_items(out.claimed, dict(items_cur.fetchall()))
        return out

    return receive


def _claimed_only(
    rows: list[Any],
    journal: Journal,
    known: dict[int, KnownTask],
    scan_limit: int,
    out: Cycle,
) -> Cycle:
    """Read what the claim-only statement did (committed): journal it as the first statement's
    rows are journaled, less the transition rows it wrote itself, and attach the tasks it read."""
    claim_rows, tasks, steps = [], [], []
    items: dict[int, Any] = {}
    for row in rows:
        kind = row[0]
        if kind == "k":  # a claimed task: id, template, correlation id, context
            tasks.append((row[1], row[10], row[3], row[2]))
        elif kind == "p":  # a step of a claimed task: task, id, name, state, results
            steps.append((row[2], row[1], row[3], row[9], row[10]))
        elif kind == "i":  # a claimed fan-out instance: id, item
            items[row[1]] = row[10]
        else:
            claim_rows.append(row[:10])
    seen = record_rows(journal, claim_rows, {}, out)
    journal.written()
    claims = seen.claims
    out.scanned_full = len(claims) >= scan_limit
    if claims:
        out.claimed = claimed_steps(claims, known, tasks, steps)
        attach_items(out.claimed, items)
    return out
