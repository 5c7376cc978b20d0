"""Claiming ready steps under a lease, extending leases, reclaiming expired ones and handing steps
back.

A claim sets a fresh claim token (a per-step counter) that every later write of that attempt must
present: a worker that lost its lease, to a pause or a partition, cannot overwrite what another
worker did.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, bindparam, func, or_, select, text, tuple_, update
from sqlalchemy.engine import Connection

from tasker.domain.circuits import Admission, ClaimPlan
from tasker.domain.compensation import is_undo
from tasker.domain.control import is_instance, parse_instance
from tasker.domain.fairness import scope_of
from tasker.domain.priorities import in_claim_order
from tasker.domain.records import ClaimedStep, FailureRecord
from tasker.domain.retry import may_retry
from tasker.domain.states import (
    ACTIVE_STEP_STATES,
    CLAIMABLE_STEP_STATES,
    RESULT_STEP_STATES,
    StepState,
    TaskState,
)
from tasker.store import systems
from tasker.store.journal import Journal
from tasker.store.readiness import settle_tasks
from tasker.store.schema import CLAIMABLE as CLAIMABLE_SQL
from tasker.store.schema import PRIORITIZED as PRIORITIZED_SQL
from tasker.store.schema import PRIORITY_KEY, steps, tasks
from tasker.store.schema import RUNNING as RUNNING_SQL

CLAIMABLE = sorted(s.value for s in CLAIMABLE_STEP_STATES)
WITH_RESULTS = sorted(s.value for s in RESULT_STEP_STATES)
ACTIVE = sorted(s.value for s in ACTIVE_STEP_STATES)
#: A step parked for its child task (`waiting_retry` without `run_at`): no worker can run it
#: until the child settles, so a worker that runs "until idle" does not wait for it.
_WORKABLE = or_(steps.c.state != StepState.WAITING_RETRY.value, steps.c.run_at.is_not(None))


def _candidates(
    *,
    namespaces: bool,
    task: bool,
    skip_locked: bool,
    restricted: bool,
    full_keys: bool = False,
    prioritized: str | None = None,
    with_keys: bool = False,
) -> Select[Any]:
    """Claimable steps, oldest run_at first; `restricted` also skips blocked systems (and, with
    `full_keys`, fair-share keys with no room) and returns each step's system, namespace and key so
    limits can be checked.

    `prioritized` (a dialect's name) gives the queue of prioritized steps instead, in claim-key
    order (`tasker.domain.priorities`) from their own partial index; both queues then return each
    step's `run_at` and priority (`with_keys`), to be merged (`_merged`).
    """
    columns = [steps.c.id, steps.c.state]
    if restricted:
        columns += [steps.c.dependent_system, steps.c.namespace, steps.c.concurrency_key]
    if with_keys:
        columns += [steps.c.run_at, steps.c.priority]
    # The states as literals (`CLAIMABLE_SQL`), not bind parameters: under a generic plan, only a
    # literal condition lets PostgreSQL use the partial claim index (docs/benchmarks.md).
    where = PRIORITIZED_SQL if prioritized is not None else CLAIMABLE_SQL
    q = select(*columns).where(text(where), steps.c.run_at <= bindparam("now"))
    if restricted:
        q = q.where(steps.c.dependent_system.not_in(bindparam("blocked", expanding=True)))
    if full_keys:
        q = q.where(
            or_(
                steps.c.concurrency_key.is_(None),
                steps.c.concurrency_key.not_in(bindparam("full_keys", expanding=True)),
            )
        )
    if namespaces:
        q = q.where(steps.c.namespace.in_(bindparam("namespaces", expanding=True)))
    if task:
        q = q.where(steps.c.task_id.in_(bindparam("scope_tasks", expanding=True)))
    if prioritized is not None:
        q = q.order_by(text(PRIORITY_KEY[prioritized]), steps.c.id)
    else:
        q = q.order_by(steps.c.run_at, steps.c.id)
    q = q.limit(bindparam("limit"))
    return q.with_for_update(skip_locked=True) if skip_locked else q


_FLAGS = [(ns, tk, sl) for ns in (False, True) for tk in (False, True) for sl in (False, True)]
_CANDIDATES = {
    f: _candidates(namespaces=f[0], task=f[1], skip_locked=f[2], restricted=False) for f in _FLAGS
}


@functools.cache
def _queue(
    flags: tuple[bool, bool, bool], restricted: bool, full_keys: bool, prioritized: str | None
) -> Select[Any]:
    """A candidate query of the general claim, built once per shape."""
    return _candidates(
        namespaces=flags[0],
        task=flags[1],
        skip_locked=flags[2],
        restricted=restricted,
        full_keys=full_keys,
        prioritized=prioritized,
        with_keys=True,
    )


_TAKE_VALUES: dict[Any, Any] = {
    steps.c.state: StepState.IN_PROGRESS.value,
    steps.c.lease_owner: bindparam("worker"),
    steps.c.lease_expires_at: bindparam("lease_until"),
    steps.c.claim_token: steps.c.claim_token + 1,
    steps.c.attempts: steps.c.attempts + 1,
    steps.c.started_at: bindparam("now"),
    steps.c.finished_at: None,
    steps.c.updated_at: bindparam("now"),
}
_TAKE_RETURNING = (
    steps.c.id,
    steps.c.task_id,
    steps.c.name,
    steps.c.attempts,
    steps.c.retry_limit,
    steps.c.claim_token,
    steps.c.idempotency_key,
    steps.c.dependent_system,
)
_TAKE = (
    update(steps)
    .where(steps.c.id.in_(bindparam("ids", expanding=True)), steps.c.state.in_(CLAIMABLE))
    .values(_TAKE_VALUES)
    .returning(*_TAKE_RETURNING)
)
_TASKS = select(
    tasks.c.id, tasks.c.status, tasks.c.context, tasks.c.correlation_id, tasks.c.template_id
).where(tasks.c.id.in_(bindparam("ids", expanding=True)))
_START_TASKS = (
    update(tasks)
    .where(
        tasks.c.id.in_(bindparam("ids", expanding=True)), tasks.c.status == TaskState.PENDING.value
    )
    .values(
        status=TaskState.IN_PROGRESS.value, started_at=bindparam("now"), updated_at=bindparam("now")
    )
)
_ITEMS = select(steps.c.id, steps.c.item).where(steps.c.id.in_(bindparam("ids", expanding=True)))
#: A task's steps, less its fan-outs' instances (whose results their siblings do not read).
_TASK_STEPS = select(
    steps.c.task_id, steps.c.id, steps.c.name, steps.c.state, steps.c.results
).where(steps.c.task_id.in_(bindparam("ids", expanding=True)), steps.c.instance_of.is_(None))
#: The named steps of tasks of a wide template (`RelatedSteps`), as (task_id, name) pairs.
_NAMED_STEPS = select(
    steps.c.task_id, steps.c.id, steps.c.name, steps.c.state, steps.c.results
).where(
    tuple_(steps.c.task_id, steps.c.name).in_(bindparam("pairs", expanding=True)),
    steps.c.instance_of.is_(None),
)
#: PostgreSQL: the same with the pairs as two arrays, each pair a probe of the unique index on
#: (task_id, name) whatever the table's statistics say.
_NAMED_STEPS_PG = text(
    "SELECT s.task_id, s.id, s.name, s.state, s.results"
    " FROM unnest(CAST(:ids AS bigint[]), CAST(:names AS text[])) AS n(task_id, name)"
    " JOIN tasker_steps s ON s.task_id = n.task_id AND s.name = n.name"
    " WHERE s.instance_of IS NULL"
).columns(steps.c.task_id, steps.c.id, steps.c.name, steps.c.state, steps.c.results)

#: What a claim of a step reads of its task, given the task's template id and the step's name:
#: the names of the steps it needs (`TaskTemplate.related_steps`), or None for the whole task.
RelatedSteps = Callable[[int, str], frozenset[str] | None]


@dataclass
class KnownTask:
    """What a worker already knows of a task whose step it just completed: enough to run the next
    step without reading the task again. `parents_of` maps each step name to its parents' names."""

    context: dict[str, Any]
    correlation_id: str
    template_id: int
    results: dict[str, dict[str, Any]]
    step_ids: dict[str, int]
    parents_of: dict[str, list[str]]

    def covers(self, step: str) -> bool:
        """Whether this holds everything the step's handler needs: the results of all its
        parents (a fan-out's instance needs those of its fan-out step's parents)."""
        instance = parse_instance(step)
        base = instance[0] if instance else step
        return all(p in self.results for p in self.parents_of.get(base, ()))


def unknown_tasks(known: dict[int, KnownTask], claims: Iterable[Claim]) -> list[int]:
    """The tasks of these claims that must be read: not known, or known without some parent's
    results."""
    return sorted(
        {c.task_id for c in claims if c.task_id not in known or not known[c.task_id].covers(c.name)}
    )


@dataclass
class Claim:
    """A claimed row, before its task's context and results are attached."""

    step_id: int
    task_id: int
    name: str
    attempt: int
    retry_limit: int
    claim_token: int
    idempotency_key: str
    dependent_system: str
    from_state: StepState


def journal_claims(journal: Journal, claims: Iterable[Claim]) -> None:
    """Record each claim's transition to `in_progress` and its `step.started` event."""
    for c in claims:
        journal.step(c.step_id, c.task_id, c.from_state, StepState.IN_PROGRESS, c.attempt)
        if journal.collect:
            journal.event(
                "step.started",
                {"task_id": c.task_id, "step_id": c.step_id, "step": c.name, "attempt": c.attempt},
            )


def claimed_steps(
    claims: Sequence[Claim],
    known: dict[int, KnownTask],
    task_rows: Iterable[tuple[int, Any, str, int]] = (),
    step_rows: Iterable[tuple[int, int, str, str, Any]] = (),
) -> list[ClaimedStep]:
    """The claims with their tasks' context and results: from `known`, or from the rows read for
    the tasks it does not cover ((id, context, correlation_id, template_id) and (task_id, id, name,
    state, results), JSON decoded), in (task, step) order."""
    results: dict[int, dict[str, dict[str, Any]]] = {}
    step_ids: dict[int, dict[str, int]] = {}
    for t_id, s_id, name, state, step_results in step_rows:
        if is_instance(name) or is_undo(name):
            continue  # a fan-out's instance, or an undo: not a result the task's steps read
        step_ids.setdefault(t_id, {})[name] = s_id
        if state in WITH_RESULTS:
            results.setdefault(t_id, {})[name] = step_results or {}
    known = dict(known)
    for t_id, context, correlation_id, template_id in task_rows:
        known[t_id] = KnownTask(
            context, correlation_id, template_id, results.get(t_id, {}), step_ids.get(t_id, {}), {}
        )
    out = [
        ClaimedStep(
            step_id=c.step_id,
            task_id=c.task_id,
            name=c.name,
            template_id=known[c.task_id].template_id,
            attempt=c.attempt,
            retry_limit=c.retry_limit,
            claim_token=c.claim_token,
            idempotency_key=c.idempotency_key,
            dependent_system=c.dependent_system,
            context=known[c.task_id].context,
            correlation_id=known[c.task_id].correlation_id,
            results=known[c.task_id].results,
            from_state=c.from_state,
            step_ids=known[c.task_id].step_ids,
        )
        for c in claims
    ]
    out.sort(key=lambda c: (c.task_id, c.step_id))
    return out


def carries_item(name: str) -> bool:
    """Whether a claimed row's item is read with its claim: a fan-out instance's item, or the
    results of the step an undo row undoes."""
    return is_instance(name) or is_undo(name)


def item_claims(claimed: Iterable[ClaimedStep]) -> list[int]:
    """The ids of the claimed rows whose items are to be read (`carries_item`)."""
    return [c.step_id for c in claimed if carries_item(c.name)]


def attach_items(claimed: list[ClaimedStep], items: dict[int, Any]) -> None:
    """Give each claimed fan-out instance its item (`items` by step id) and index, and each undo
    row its item (the results of the step it undoes), in place."""
    for i, c in enumerate(claimed):
        instance = parse_instance(c.name)
        if instance is not None:
            claimed[i] = replace(c, item=items.get(c.step_id), index=instance[1])
        elif is_undo(c.name):
            claimed[i] = replace(c, item=items.get(c.step_id))


def read_items(conn: Connection, claimed: list[ClaimedStep]) -> None:
    """Read and attach the items of the claimed fan-out instances (one read, when there are)."""
    ids = item_claims(claimed)
    if ids:
        attach_items(claimed, {r.id: r.item for r in conn.execute(_ITEMS, {"ids": ids})})


def claim(
    conn: Connection,
    journal: Journal,
    *,
    worker: str,
    limit: int,
    lease_seconds: float,
    skip_locked: bool,
    namespaces: Sequence[str] | None = None,
    task_ids: Sequence[int] | None = None,
    plan: ClaimPlan | None = None,
    related: RelatedSteps | None = None,
) -> list[ClaimedStep]:
    """Claim up to `limit` steps whose run_at has come, oldest first, with everything needed to run
    them (of a wide template's task, the steps `related` names).

    With a `plan`, steps of blocked systems are left alone and in-flight limits are respected; the
    first step claimed for a half-open system becomes its probe.
    """
    if limit <= 0:
        return []
    params: dict[str, Any] = {"now": journal.now, "limit": limit}
    if namespaces:
        params["namespaces"] = list(namespaces)
    if task_ids is not None:
        params["scope_tasks"] = list(task_ids)
    key = (bool(namespaces), task_ids is not None, skip_locked)
    simple = plan is None or (plan.unrestricted and not plan.prioritized)
    if simple and conn.dialect.name == "postgresql":
        return _pick_and_take_pg(conn, journal, key, params, worker, lease_seconds, related)
    if simple or plan is None:
        picked = conn.execute(_CANDIDATES[key], params).all()
        if not picked:
            return []
        return _take(
            conn, journal, {r.id: r.state for r in picked}, worker, lease_seconds, {}, related
        )
    return _claim_planned(
        conn,
        journal,
        plan,
        key,
        params,
        worker=worker,
        lease_seconds=lease_seconds,
        limit=limit,
        related=related,
    )


def _claim_planned(
    conn: Connection,
    journal: Journal,
    plan: ClaimPlan,
    flags: tuple[bool, bool, bool],
    params: dict[str, Any],
    *,
    worker: str,
    lease_seconds: float,
    limit: int,
    related: RelatedSteps | None,
) -> list[ClaimedStep]:
    """The claim under limits, circuits, fair share or priorities: read candidates in claim order,
    admit each against the plan, defer those over a rate limit, take the rest."""
    restricted = not plan.unrestricted
    params["blocked"] = sorted(plan.blocked)
    if restricted:  # room is checked below, so look a little further
        params["limit"] = min(limit * 4, 1000)
    if not restricted:
        rows = _candidate_rows(conn, plan, flags, params, restricted)
        chosen = {r.id: r.state for r in rows[:limit]}
        return _take(conn, journal, chosen, worker, lease_seconds, {}, related) if chosen else []
    chosen = {}
    system_of: dict[int, str] = {}
    deferred: dict[str, list[int]] = {}
    seen: set[int] = set()
    for _ in range(_KEY_PASSES):
        full = plan.full_keys()
        rows = _candidate_rows(conn, plan, flags, params, restricted)
        keys_filled = False
        for r in rows:
            if len(chosen) >= limit:
                break
            if r.id in seen:
                continue
            seen.add(r.id)
            admission = plan.admit(r.dependent_system, r.namespace, r.concurrency_key)
            if admission == Admission.TAKE:
                chosen[r.id] = r.state
                system_of[r.id] = r.dependent_system
            elif admission == Admission.DEFER:
                deferred.setdefault(r.dependent_system, []).append(r.id)
            elif admission == Admission.WAIT_KEY:
                journal.key_waits[scope_of(r.concurrency_key)] += 1
                keys_filled = keys_filled or r.concurrency_key not in full
        # A key that filled up here may have hidden other keys' steps behind its own: look again
        # past the keys now full, while there is room and the window was full.
        if not keys_filled or len(chosen) >= limit or len(rows) < params["limit"]:
            break
    claimed = _take(conn, journal, chosen, worker, lease_seconds, {}, related) if chosen else []
    rate_now = plan.rate_now or journal.now
    for system, ids in sorted(deferred.items()):
        systems.defer(conn, journal, system, plan.rates[system], ids, rate_now)
        journal.deferred[system] += len(ids)
    systems.record_starts(
        conn,
        Counter(system_of[c.step_id] for c in claimed if system_of[c.step_id] in plan.rate_room),
        rate_now,
        plan.rates,
    )
    probe_steps: dict[str, int] = {}
    for i, c in enumerate(claimed):
        system = system_of[c.step_id]
        if system in plan.probes and system not in probe_steps:
            probe_steps[system] = c.step_id
            claimed[i] = replace(c, probe=True)
    systems.settle_probes(conn, plan, probe_steps, journal.now)
    return claimed


#: How many times a claim looks again past fair-share keys that filled up while it admitted steps.
_KEY_PASSES = 4


def _candidate_rows(
    conn: Connection,
    plan: ClaimPlan,
    flags: tuple[bool, bool, bool],
    params: dict[str, Any],
    restricted: bool,
) -> list[Any]:
    """The candidates in claim order: past the blocked systems and the full fair-share keys,
    with the prioritized queue merged in when there is one."""
    full = plan.full_keys()
    if full:
        params["full_keys"] = full
    rows = conn.execute(_queue(flags, restricted, bool(full), None), params).all()
    if plan.prioritized:
        dialect = conn.dialect.name
        rows = _merged(rows, conn.execute(_queue(flags, restricted, bool(full), dialect), params))
    return list(rows)


def _merged(plain: Sequence[Any], prioritized: Iterable[Any]) -> list[Any]:
    """The two queues' candidates as one, in claim order (`tasker.domain.priorities`).

    Exact because no step's claim key is later than its `run_at`: any step the first n of the
    merged order holds is among the first n of its own queue.
    """
    rows = {r.id: r for r in plain}
    rows.update((r.id, r) for r in prioritized)
    return in_claim_order((r.id, r.run_at, r.priority, r) for r in rows.values())


def _pick_and_take(flags: tuple[bool, bool, bool]) -> Any:
    """PostgreSQL: pick the candidates and take them in one statement (`UPDATE ... FROM` the locked
    candidates), returning each step's state before the claim for its transition."""
    picked = _CANDIDATES[flags].subquery("picked")
    return (
        update(steps)
        .where(steps.c.id == picked.c.id, steps.c.state.in_(CLAIMABLE))
        .values(_TAKE_VALUES)
        .returning(*_TAKE_RETURNING, picked.c.state.label("from_state"))
    )


_PICK_AND_TAKE = {f: _pick_and_take(f) for f in _FLAGS if f[2]}


def _pick_and_take_pg(
    conn: Connection,
    journal: Journal,
    flags: tuple[bool, bool, bool],
    params: dict[str, Any],
    worker: str,
    lease_seconds: float,
    related: RelatedSteps | None,
) -> list[ClaimedStep]:
    now = journal.now
    rows = conn.execute(
        _PICK_AND_TAKE[(flags[0], flags[1], True)],
        {**params, "worker": worker, "lease_until": now + timedelta(seconds=lease_seconds)},
    ).all()
    if not rows:
        return []
    return _claimed(conn, journal, rows, {r.id: r.from_state for r in rows}, {}, related)


def claim_readied(
    conn: Connection,
    journal: Journal,
    readied: Sequence[tuple[int, int, str]],
    known: dict[int, KnownTask],
    *,
    worker: str,
    limit: int,
    lease_seconds: float,
    related: RelatedSteps | None = None,
) -> list[ClaimedStep]:
    """Claim steps this transaction just made ready (a chain's next step) without waiting for a
    poll.

    This transaction holds their rows already, so no other worker can take them first.
    """
    chosen = list(readied)[: max(limit, 0)]
    if not chosen:
        return []
    return _take(
        conn,
        journal,
        {sid: StepState.READY.value for sid, _, _ in chosen},
        worker,
        lease_seconds,
        known,
        related,
    )


def _take(
    conn: Connection,
    journal: Journal,
    from_state: dict[int, str],
    worker: str,
    lease_seconds: float,
    known: dict[int, KnownTask],
    related: RelatedSteps | None = None,
) -> list[ClaimedStep]:
    now = journal.now
    claimed = conn.execute(
        _TAKE,
        {
            "ids": list(from_state),
            "worker": worker,
            "now": now,
            "lease_until": now + timedelta(seconds=lease_seconds),
        },
    ).all()
    if not claimed:
        return []
    return _claimed(conn, journal, claimed, from_state, known, related)


def _claimed(
    conn: Connection,
    journal: Journal,
    claimed: Sequence[Any],
    from_state: dict[int, str],
    known: dict[int, KnownTask],
    related: RelatedSteps | None = None,
) -> list[ClaimedStep]:
    """Journal the claims and gather what their handlers need (reading the tasks it does not know
    yet, and starting those that were pending)."""
    claims = [
        Claim(
            r.id,
            r.task_id,
            r.name,
            r.attempts,
            r.retry_limit,
            r.claim_token,
            r.idempotency_key,
            r.dependent_system,
            StepState(from_state[r.id]),
        )
        for r in claimed
    ]
    unknown = unknown_tasks(known, claims)
    task_rows: list[tuple[int, Any, str, int]] = []
    step_rows: list[tuple[int, int, str, str, Any]] = []
    if unknown:
        tasks_read = conn.execute(_TASKS, {"ids": unknown}).all()
        starting = [r.id for r in tasks_read if r.status == TaskState.PENDING]
        if starting:
            conn.execute(_START_TASKS, {"ids": starting, "now": journal.now})
            for i in starting:
                journal.task(i, TaskState.PENDING, TaskState.IN_PROGRESS)
                journal.event("task.started", {"task_id": i})
        task_rows = [(r.id, r.context, r.correlation_id, r.template_id) for r in tasks_read]
        template_of = {r.id: r.template_id for r in tasks_read}
        step_rows = read_steps(conn, claims, template_of, related)
    journal_claims(journal, claims)
    return claimed_steps(claims, known, task_rows, step_rows)


def read_steps(
    conn: Connection,
    claims: Sequence[Claim],
    template_of: dict[int, int],
    related: RelatedSteps | None,
) -> list[tuple[int, int, str, str, Any]]:
    """The step rows of the tasks in `template_of` (by task id) that their claims need: of a wide
    template's task, the steps `related` names for each claim (one read for all of them, by
    name), of the others, every step."""
    whole: set[int] = set()
    names: dict[int, set[str]] = {}
    for c in claims:
        if c.task_id not in template_of:
            continue
        wanted = related(template_of[c.task_id], c.name) if related else None
        if wanted is None:
            whole.add(c.task_id)
        else:
            names.setdefault(c.task_id, set()).update(wanted)
    rows: list[Any] = []
    if whole:
        rows += conn.execute(_TASK_STEPS, {"ids": sorted(whole)}).all()
    pairs = [(t, n) for t in sorted(set(names) - whole) for n in sorted(names[t])]
    if pairs:
        if conn.dialect.name == "postgresql":
            ids, named = zip(*pairs)
            rows += conn.execute(_NAMED_STEPS_PG, {"ids": list(ids), "names": list(named)}).all()
        else:
            rows += conn.execute(_NAMED_STEPS, {"pairs": pairs}).all()
    return [(r.task_id, r.id, r.name, r.state, r.results) for r in rows]


_EXTEND = (
    update(steps)
    .where(
        steps.c.id.in_(bindparam("ids", expanding=True)),
        steps.c.lease_owner == bindparam("worker"),
        steps.c.state == StepState.IN_PROGRESS.value,
    )
    .values(lease_expires_at=bindparam("lease_until"))
    .returning(steps.c.id)
)


def extend_leases(
    conn: Connection, *, worker: str, step_ids: Sequence[int], now: datetime, lease_seconds: float
) -> set[int]:
    """Extend this worker's leases; returns the ids it still holds (others were cancelled or
    reclaimed)."""
    if not step_ids:
        return set()
    rows = conn.execute(
        _EXTEND,
        {
            "ids": list(step_ids),
            "worker": worker,
            "lease_until": now + timedelta(seconds=lease_seconds),
        },
    )
    return set(rows.scalars())


def _expired(skip_locked: bool) -> Select[Any]:
    q = (
        select(
            steps.c.id,
            steps.c.task_id,
            steps.c.name,
            steps.c.attempts,
            steps.c.retry_limit,
            steps.c.retryable,
            steps.c.lease_owner,
        )
        .where(text(RUNNING_SQL), steps.c.lease_expires_at < bindparam("now"))
        .order_by(steps.c.lease_expires_at)
        .limit(bindparam("limit"))
    )
    return q.with_for_update(skip_locked=True) if skip_locked else q


_EXPIRED = {sl: _expired(sl) for sl in (False, True)}
_REAP = (
    update(steps)
    .where(
        steps.c.id == bindparam("step_id"),
        steps.c.state == StepState.IN_PROGRESS.value,
        steps.c.lease_expires_at < bindparam("now"),
    )
    .values(
        state=bindparam("target"),
        lease_owner=None,
        lease_expires_at=None,
        last_error=bindparam("error"),
        run_at=bindparam("run_at"),
        finished_at=bindparam("finished_at"),
        updated_at=bindparam("now"),
    )
)


def reclaim_expired(
    conn: Connection, journal: Journal, *, skip_locked: bool, limit: int = 500
) -> int:
    """Steps whose lease ran out (their worker died or stalled) count a retryable failure and run
    again.

    Those out of attempts go to `error`. Returns how many steps were reclaimed.
    """
    now = journal.now
    expired = conn.execute(_EXPIRED[skip_locked], {"now": now, "limit": limit}).all()
    if not expired:
        return 0
    reclaimed = 0
    failed_tasks = set()
    for r in expired:
        error: FailureRecord = {
            "class": "LeaseExpired",
            "message": f"worker {r.lease_owner} stopped heartbeating; the attempt is presumed lost",
            "retryable": True,
            "system_fault": False,
            "no_system_evidence": True,
        }
        retry = may_retry(
            retryable=bool(r.retryable), retry_limit=r.retry_limit, attempts=r.attempts
        )
        target = StepState.WAITING_RETRY if retry else StepState.ERROR
        done = conn.execute(
            _REAP,
            {
                "step_id": r.id,
                "now": now,
                "target": target.value,
                "error": error,
                "run_at": now if retry else None,
                "finished_at": None if retry else now,
            },
        ).rowcount
        if not done:
            continue
        reclaimed += 1
        journal.step(r.id, r.task_id, StepState.IN_PROGRESS, target, r.attempts, error)
        if retry:
            journal.readied.add(r.id)  # due at once: wake the other workers
        failed = "step.compensation_failed" if is_undo(r.name) else "step.failed"
        journal.event(
            "step.retry_scheduled" if retry else failed,
            {
                "task_id": r.task_id,
                "step_id": r.id,
                "step": r.name,
                "attempt": r.attempts,
                "error": error,
            },
        )
        if not retry:
            failed_tasks.add(r.task_id)
    settle_tasks(conn, failed_tasks, journal, lock=skip_locked)
    return reclaimed


_RELEASE = (
    update(steps)
    .where(
        steps.c.id == bindparam("step_id"),
        steps.c.claim_token == bindparam("token"),
        steps.c.state == StepState.IN_PROGRESS.value,
    )
    .values(
        state=StepState.READY.value,
        lease_owner=None,
        lease_expires_at=None,
        run_at=bindparam("now"),
        attempts=steps.c.attempts - 1,
        updated_at=bindparam("now"),
    )
    .returning(steps.c.attempts)
)


def release(conn: Connection, journal: Journal, held: Sequence[tuple[int, int, int]]) -> int:
    """Hand claimed steps back unspent (a worker shutting down): they are ready again at once.

    `held` is (step_id, task_id, claim_token) of each step to release.
    """
    released = 0
    for step_id, task_id, token in held:
        attempts = conn.execute(
            _RELEASE, {"step_id": step_id, "token": token, "now": journal.now}
        ).scalar()
        if attempts is not None:
            released += 1
            journal.step(step_id, task_id, StepState.IN_PROGRESS, StepState.READY, attempts)
    return released


def _scoped(
    q: Select[Any], namespaces: Sequence[str] | None, task_ids: Sequence[int] | None
) -> Select[Any]:
    if namespaces:
        q = q.where(steps.c.namespace.in_(list(namespaces)))
    if task_ids is not None:
        q = q.where(steps.c.task_id.in_(list(task_ids)))
    return q


def next_run_at(
    conn: Connection,
    *,
    namespaces: Sequence[str] | None = None,
    task_ids: Sequence[int] | None = None,
) -> datetime | None:
    """When the next claimable step comes due (None when nothing waits; a step parked without a
    `run_at` waits for something else)."""
    q = _scoped(
        select(steps.c.run_at).where(text(CLAIMABLE_SQL), steps.c.run_at.is_not(None)),
        namespaces,
        task_ids,
    )
    return conn.execute(q.order_by(steps.c.run_at).limit(1)).scalar()


def cancelled_among(conn: Connection, step_ids: set[int]) -> set[int]:
    """Which of these steps are `cancelled` now."""
    q = select(steps.c.id).where(
        steps.c.id.in_(sorted(step_ids)), steps.c.state == StepState.CANCELLED.value
    )
    return set(conn.execute(q).scalars())


def active_step_ids(
    conn: Connection,
    *,
    limit: int,
    namespaces: Sequence[str] | None = None,
    task_ids: Sequence[int] | None = None,
) -> list[int]:
    """Ids of up to `limit` steps that are ready, waiting to retry (not parked) or running."""
    q = _scoped(
        select(steps.c.id).where(steps.c.state.in_(ACTIVE), _WORKABLE), namespaces, task_ids
    )
    return list(conn.execute(q.order_by(steps.c.id).limit(limit)).scalars())


def active_count(
    conn: Connection,
    *,
    namespaces: Sequence[str] | None = None,
    task_ids: Sequence[int] | None = None,
) -> int:
    """Steps that are ready, waiting to retry or running: zero means there is nothing left to do
    (a step parked for its child task is not counted: only the child's settling moves it)."""
    q = _scoped(
        select(func.count()).select_from(steps).where(steps.c.state.in_(ACTIVE), _WORKABLE),
        namespaces,
        task_ids,
    )
    return int(conn.execute(q).scalar_one())
