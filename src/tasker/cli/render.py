"""Rich renderings of tasks and templates, shared by `tasks show`, `run` and `templates show`."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from tasker.domain.control import JoinRule
from tasker.domain.graph import execution_levels
from tasker.domain.history import CircuitChange, StepTransition
from tasker.domain.listing import Total
from tasker.domain.records import Signal, Step, Task
from tasker.domain.schedules import Schedule
from tasker.domain.states import (
    CLAIMABLE_STEP_STATES,
    TERMINAL_STEP_STATES,
    StepState,
    TaskState,
)
from tasker.domain.templates import StepTemplate, TaskTemplate

#: Colours of step and task states (a task's states are step states too).
STATE_COLOURS: dict[str, str] = {
    StepState.COMPLETE: "green",
    StepState.RESOLVED_MANUALLY: "blue",
    StepState.ERROR: "red",
    StepState.CANCELLED: "bright_black",
    StepState.IN_PROGRESS: "yellow",
    StepState.WAITING_RETRY: "dark_orange",
    StepState.READY: "cyan",
    StepState.PENDING: "white",
    StepState.SKIPPED: "bright_black",
}


def coloured(state: str) -> str:
    return f"[{STATE_COLOURS.get(state, 'white')}]{state}[/]"


def _time(t: datetime | None) -> str:
    return t.strftime("%H:%M:%S.%f")[:-3] if t else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def task_header(task: Task) -> str:
    times = ""
    if task.starts_at is not None:
        times += f"  starts {task.starts_at:%Y-%m-%d %H:%M:%S}Z"
    if task.deadline_at is not None:
        times += f"  deadline {task.deadline_at:%Y-%m-%d %H:%M:%S}Z"
    return (
        f"Task {task.id}  {task.template_key}  {coloured(task.status)}  "
        f"created {task.created_at:%Y-%m-%d %H:%M:%S}Z{times}  correlation {task.correlation_id}"
        f"  duration {_duration(task.duration_seconds)}"
    )


def task_status_cell(t: Task) -> str:
    """A task's state, with when it starts if it waits for a delayed start."""
    if t.status == TaskState.PENDING and t.starts_at is not None and t.started_at is None:
        return f"{coloured(t.status)} (starts {t.starts_at:%Y-%m-%d %H:%M}Z)"
    return coloured(t.status)


#: A fan-out's instances listed one by one up to this many; beyond, those that completed are
#: counted on their fan-out step's row and only the others are listed.
LISTED_INSTANCES = 10


def shown_steps(task: Task) -> list[Step]:
    """The steps a table lists: every step, except the completed instances of a fan-out with
    more than `LISTED_INSTANCES` (its row says how many are done)."""
    counts = Counter(s.instance_of for s in task.steps if s.instance_of is not None)
    return [
        s
        for s in task.steps
        if s.instance_of is None
        or counts[s.instance_of] <= LISTED_INSTANCES
        or s.status != StepState.COMPLETE
    ]


def _label(task: Task, s: Step) -> str:
    """A step's name as tables show it: instances indented under their fan-out step."""
    return f"  {s.name}" if s.instance_of is not None else s.name


def task_links(task: Task, children: Sequence[int], parent: Task | None = None) -> list[str]:
    """A task's parent (with the step that created it) and child tasks, as `tasks show` prints
    them under its header."""
    lines = []
    if task.parent_task_id is not None:
        by_id = {s.id: s.name for s in parent.steps} if parent else {}
        step = by_id.get(task.parent_step_id or 0, f"id {task.parent_step_id}")
        lines.append(
            f"child of task {task.parent_task_id}, step '{step}':"
            f" tasker tasks show {task.parent_task_id}"
        )
    if children:
        lines.append("child tasks: " + ", ".join(str(c) for c in children))
    return lines


def steps_table(task: Task) -> Table:
    """A task's steps; once it compensates, an `undo` column gives each step's undo state beside
    its own (the undo rows follow their steps, with their attempts and errors)."""
    table = Table(show_lines=False, expand=False)
    undos = {s.compensates: s for s in task.steps if s.compensates is not None}
    for col in ("step", "state", *(("undo",) if undos else ()), "attempts", "started"):
        table.add_column(col, no_wrap=True)
    for col in ("finished", "duration"):
        table.add_column(col, no_wrap=True)
    table.add_column("last error", overflow="fold")
    for s in shown_steps(task):
        err = ""
        if s.last_error:
            err = f"{s.last_error.get('class', '')}: {s.last_error.get('message', '')}"
        elif s.status == StepState.SKIPPED and s.decision:
            err = f"skipped: {s.decision}"
        elif s.wait is not None and s.decision:
            err = s.decision  # sleeping until ..., waiting for signal '...', how the wait ended
        elif s.fanout is not None:
            err = task.fanout_progress(s)
        undo = undos.get(s.id)
        table.add_row(
            _label(task, s),
            coloured(s.status),
            *((coloured(undo.status) if undo else "",) if undos else ()),
            f"{s.attempts}/{s.retry_limit}",
            _time(s.started_at),
            _time(s.finished_at),
            _duration(s.duration_seconds),
            err[:200],
        )
    return table


def tasks_table(tasks: list[Task], total: Total) -> Table:
    more = "+" if total.capped else ""
    table = Table(title=f"{len(tasks)} of {total.count:,}{more} tasks")
    for col in ("id", "template", "status", "priority", "created", "duration", "correlation id"):
        table.add_column(col, justify="right" if col == "priority" else "left")
    for t in tasks:
        table.add_row(
            str(t.id),
            t.template_key,
            task_status_cell(t),
            str(t.priority),
            f"{t.created_at:%Y-%m-%d %H:%M:%S}",
            _duration(t.duration_seconds),
            t.correlation_id,
        )
    return table


def template_steps_table(t: TaskTemplate) -> Table:
    table = Table(title=f"{t.key}" + (f" — {t.description}" if t.description else ""))
    columns = ["step", "depends on", "handler", "retry", "backoff", "timeout", "system"]
    controlled = any(s.when or s.join or s.foreach for s in t.step_templates)
    if controlled:
        columns.insert(2, "condition")
    for col in columns:
        table.add_column(col, overflow="fold")
    for s in t.step_templates:
        p = t.retry_policy(s)
        retry = f"{p.retry_limit} attempts" if p.retryable else "never retried"
        backoff = f"{p.backoff_base_seconds:g}s x2 ≤ {p.backoff_max_seconds:g}s ±{p.jitter:.0%}"
        timeout = f"{s.timeout_seconds:g}s" if s.timeout_seconds else "-"
        cells = [
            s.name,
            ", ".join(s.parents) or "-",
            s.work(),
            retry,
            backoff,
            timeout,
            t.dependent_system_of(s),
        ]
        if controlled:
            cells.insert(2, runs_when(s))
        table.add_row(*cells)
    return table


def runs_when(s: StepTemplate) -> str:
    """A step's join, condition and fan-out, as `tasker templates show` lists them."""
    parts = ["join: any" if s.join == JoinRule.ANY else "", f"when: {s.when}" if s.when else ""]
    if s.foreach:
        parts.append(f"foreach: {s.foreach}")
        if s.max_parallel:
            parts.append(f"max_parallel: {s.max_parallel}")
    return "; ".join(p for p in parts if p) or "-"


def template_order(t: TaskTemplate) -> str:
    levels = execution_levels([(s.name, s.parents) for s in t.step_templates])
    return "  →  ".join(" ∥ ".join(level) for level in levels)


def template_mermaid(t: TaskTemplate) -> str:
    return t.mermaid()


def task_mermaid(t: TaskTemplate, task: Task) -> str:
    return t.mermaid(*task.diagram_states())


# -- `tasker run`: why a step waits, and what each step cost ------------------------------------
#: Step states after which a step does no more work (its clock stops).
FINISHED_STEPS = TERMINAL_STEP_STATES | {StepState.ERROR}
#: A ready step not claimed this long after its run_at is being held back (a namespace limit).
OVERDUE_SECONDS = 1.0


def _clock(t: datetime) -> str:
    """A wall-clock time in the reader's own time zone, to compare with the clock they look at."""
    return f"{t.astimezone():%H:%M:%S}"


def waiting_reason(
    step: Step,
    system: Mapping[str, Any] | None,
    namespace: str,
    namespace_limit: int | None,
    now: datetime,
) -> str | None:
    """Why a claimable step is not running, in the words of the engine's rules; None if not held.

    The circuit comes first (an open circuit defers steps whatever their retry time), then the
    outage hold (a step out of attempts waiting for a system that answers nothing), the step's own
    retry schedule, then the in-flight limits of its system and of its namespace.
    """
    if step.status not in CLAIMABLE_STEP_STATES:
        return None
    info = system or {}
    name = step.dependent_system
    if info.get("circuit_state") == "open":
        until = info.get("open_until")
        probe = f", next probe {_clock(until)}" if until else ""
        return f"circuit '{name}' open{probe}"
    if info.get("circuit_state") == "half_open":
        return f"circuit '{name}' half-open, a probe decides"
    wait = step.wait or {}
    if step.status == StepState.WAITING_RETRY and wait and not wait.get("over"):
        return step.decision or "waiting"  # a durable wait: sleeping until ..., or for a signal
    if step.status == StepState.WAITING_RETRY and step.run_at and step.run_at > now:
        # the outage hold: no attempt spent
        if step.last_error and step.last_error.get("waiting_for_system"):
            return f"'{name}' answers nothing, next try {_clock(step.run_at)} (attempts not spent)"
        return f"retry {step.attempts + 1}/{step.retry_limit} at {_clock(step.run_at)}"
    limit = info.get("max_in_flight")
    if limit and info.get("in_flight", 0) >= limit:
        return f"limit of '{name}' reached ({limit} in flight)"
    overdue = step.run_at is not None and (now - step.run_at).total_seconds() > OVERDUE_SECONDS
    if namespace_limit and overdue:
        return f"limit of namespace '{namespace}' reached ({namespace_limit} in flight)"
    return None


def waiting_line(
    task: Task,
    systems: Sequence[Mapping[str, Any]],
    namespace_limits: Mapping[str, int],
    now: datetime | None = None,
) -> str:
    """The live line: "waiting: circuit 'mailer' open, next probe 23:55:41 (send_mail)", or "".

    Steps held for the same reason are named together after it, so a fan-out behind one open
    circuit reads as one reason rather than one per step.
    """
    now = now or datetime.now(UTC)
    by_name = {str(s["name"]): s for s in systems}
    limit = namespace_limits.get(task.namespace)
    reasons: dict[str, list[str]] = {}
    for step in task.steps:
        system = by_name.get(step.dependent_system)
        reason = waiting_reason(step, system, task.namespace, limit, now)
        if reason:
            reasons.setdefault(reason, []).append(step.name)
    if not reasons:
        return ""
    return "waiting: " + "; ".join(f"{r} ({', '.join(names)})" for r, names in reasons.items())


@dataclass(frozen=True)
class StepCost:
    """What one step cost, from its transition rows: attempts, probes, time overall and waiting."""

    attempts: int
    probes: int
    total_seconds: float | None
    waited_seconds: float | None
    last_error: str


def step_cost(
    step: Step,
    rows: Sequence[Mapping[str, Any]],
    probe_times: Iterable[datetime],
    now: datetime | None = None,
) -> StepCost:
    """Read a step's story from its transitions (oldest first).

    The clock starts when the step could first run (its move to `ready`, or its first claim) and
    stops at its last transition once it is finished; time not spent inside an attempt is time
    waited (for a retry's backoff, an open circuit or a limit). An attempt that began when its
    system's circuit turned half-open (`probe_times`: the same transaction, so the same instant)
    was that circuit's probe. The last error is kept even when a later attempt completed: it says
    what the retries absorbed.
    """
    now = now or datetime.now(UTC)
    probes_at = set(probe_times)
    start: datetime | None = None
    running = 0.0
    probes = 0
    last_error = ""
    for i, row in enumerate(rows):
        at: datetime = row["at"]
        if start is None and row["to_state"] in (StepState.READY, StepState.IN_PROGRESS):
            start = at
        if row["to_state"] == StepState.IN_PROGRESS:
            end = rows[i + 1]["at"] if i + 1 < len(rows) else now
            running += max(0.0, (end - at).total_seconds())
            probes += at in probes_at
        if row.get("error_class"):
            message = f"{row['error_class']}: {row.get('error_message') or ''}".rstrip(": ")
            last_error = f"attempt {row['attempt']}: {message}"
    if not last_error and step.last_error:
        last_error = f"{step.last_error.get('class', '')}: {step.last_error.get('message', '')}"
    if not last_error and step.status == StepState.SKIPPED and step.decision:
        last_error = f"skipped: {step.decision}"
    if start is None:
        return StepCost(step.attempts, probes, None, None, last_error)
    finish = rows[-1]["at"] if step.status in FINISHED_STEPS and rows else now
    total = max(0.0, (finish - start).total_seconds())
    return StepCost(step.attempts, probes, total, max(0.0, total - running), last_error)


def run_steps_table(
    task: Task,
    transitions: Sequence[StepTransition],
    circuit_history: Sequence[CircuitChange],
    now: datetime | None = None,
) -> Table:
    """The final table of `tasker run`: per step its attempts, probes, total and waiting time and
    last error.

    `transitions` are the task's step transition rows (every attempt, failed ones included) and
    `circuit_history` the circuit transitions of the task's dependent systems.
    """
    by_step: dict[int, list[StepTransition]] = {}
    for row in transitions:
        by_step.setdefault(int(row["step_id"]), []).append(row)
    probe_times: dict[str, list[datetime]] = {}
    for change in circuit_history:
        if change["to_state"] == "half_open":
            probe_times.setdefault(str(change["system"]), []).append(change["at"])
    table = Table(show_lines=False, expand=False)
    for col in ("step", "state", "attempts", "probes", "total", "waited"):
        right = col in ("probes", "total", "waited")
        table.add_column(col, no_wrap=True, justify="right" if right else "left")
    table.add_column("last error", overflow="fold")
    for s in shown_steps(task):
        cost = step_cost(s, by_step.get(s.id, []), probe_times.get(s.dependent_system, []), now)
        note = cost.last_error or task.fanout_progress(s)
        table.add_row(
            _label(task, s),
            coloured(s.status),
            f"{cost.attempts}/{s.retry_limit}",
            str(cost.probes or ""),
            _duration(cost.total_seconds),
            _duration(cost.waited_seconds),
            note[:200],
        )
    return table


def signals_table(task_id: int, found: list[Signal]) -> Table:
    table = Table(title=f"{len(found)} signal(s) of task {task_id}")
    for col in ("id", "name", "received", "key", "payload"):
        table.add_column(col, overflow="fold")
    for sig in found:
        table.add_row(
            str(sig.id),
            sig.name,
            f"{sig.created_at:%Y-%m-%d %H:%M:%S}Z",
            sig.idempotency_key or "-",
            json.dumps(sig.payload, default=str)[:200],
        )
    return table


def schedules_table(found: list[Schedule]) -> Table:
    table = Table(title=f"{len(found)} schedule(s)")
    for col in ("id", "template", "name", "cron", "zone", "catch up", "next", "last", "state"):
        table.add_column(col, overflow="fold")
    for s in found:
        last = f"{s.last_at:%Y-%m-%d %H:%M}Z" if s.last_at else "-"
        if s.last_task_id is not None:
            last += f" (task {s.last_task_id})"
        table.add_row(
            str(s.id),
            s.template,
            s.name,
            s.cron,
            s.timezone,
            s.catch_up.value,
            "-" if s.paused else f"{s.next_at:%Y-%m-%d %H:%M}Z",
            last,
            ("paused" if s.paused else "active") + ("" if s.origin == "api" else " (yaml)"),
        )
    return table
