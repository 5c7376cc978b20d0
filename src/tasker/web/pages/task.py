"""One task: its DAG coloured by state, the attempts waterfall, each step, the context, live events,
and the operator's actions (cancel, retry the task, re-run it from a step, retry a step, resolve a
step with JSON results).

Reads: the task with its steps, its template snapshot and its step transitions (three queries by
task id). A step's control flow (its condition, `join: any`, the decision that skipped it or let it
run) comes from the template snapshot and the step record. The page then follows the task live
with the API's SSE stream and JSON reads (static/dashboard/dashboard.js). Each action needs the
permission of the API route it mirrors.

A fan-out (`foreach`) is one step on the page however many instances it expanded into (up to
10,000): its node shows `n/N done`, and its entry a table of at most INSTANCE_ROWS instances, the
failed and running first, with a line counting the others by state. So the page costs a few passes
over the steps and the transitions, and HTML for the listed instances only (each with the item its
step record carries).

A sub-workflow (`task:` step) links to the child task it created, with the child's status, from
its entry and from its node's badge; a child task's page says whose child it is and links back.
That costs two more reads for a task whose template has `task:` steps (its children's ids, then
the children), and one or two for a child task (its parent's template snapshot; its parent's steps
only when that template has several `task:` steps running the child's template).
"""

from __future__ import annotations

import heapq
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from tasker.api.auth import Permission
from tasker.domain.compensation import undone_by
from tasker.domain.control import CONDITION_ERROR, JoinRule
from tasker.domain.errors import NotFoundError, TaskerInputError
from tasker.domain.history import StepTransition
from tasker.domain.records import Signal, Step, Task
from tasker.domain.states import (
    FINISHED_TASK_STATES,
    STEP_TRANSITIONS,
    TERMINAL_STEP_STATES,
    TERMINAL_TASK_STATES,
    StepState,
    TaskState,
)
from tasker.domain.templates import StepTemplate, TaskTemplate
from tasker.engine.tasker import Tasker
from tasker.registry import parse_ref
from tasker.web.access import Pages, Viewer, actor, field_of, page, read_form, redirect, viewer
from tasker.web.dag import ChildRef, Layout, Progress, template_layout
from tasker.web.pages.events import event_names
from tasker.web.timeline import Waterfall, waterfall

pages = Pages()
MAX_ID = 2**63 - 1
#: The step states an operator may resolve from (the page shows the resolve form in those).
RESOLVABLE = " ".join(
    sorted(s.value for s in StepState if StepState.RESOLVED_MANUALLY in STEP_TRANSITIONS[s])
)
#: The instance states a fan-out's progress counts as done (those of `Task.fanout_progress`);
#: dashboard.js counts the same ones, read from the page.
DONE_STATES = " ".join(s.value for s in StepState if s in TERMINAL_STEP_STATES)
#: The order states are counted in, in the line under a fan-out's instances.
STATE_ORDER = " ".join(s.value for s in StepState)
#: A fan-out's entry lists at most this many instances: the failed, retrying and running first
#: (in that order), then by index.
INSTANCE_ROWS = 50
_FIRST = {StepState.ERROR: 0, StepState.WAITING_RETRY: 1, StepState.IN_PROGRESS: 2}
#: A fan-out in these states may still expand; in any other it did not, and will not unless it is
#: retried.
_UNDECIDED = frozenset({StepState.PENDING, StepState.READY})
#: An instance's item is shown on one line, cut to this many characters.
ITEM_CHARS = 60
#: An instance's error message is cut to this many characters (the whole one is its tooltip).
ERROR_CHARS = 160
#: The timeline draws at most this many instances of each fan-out (the first ones of its table).
TIMELINE_INSTANCES = 10
#: A fan-out's results on the page: its count and the first few of its list (the API has all).
RESULTS_PREVIEW = 20
#: What a `task:` step's entry says before it created its child, and after it ended without one
#: (dashboard.js says it the same way).
CHILD_NOT_YET = "created when the step runs"
CHILD_NONE = "none"
_BEFORE_CHILD = frozenset({StepState.PENDING, StepState.READY, StepState.IN_PROGRESS})
#: The task states a signal can be sent in.
UNFINISHED = frozenset({TaskState.PENDING, TaskState.IN_PROGRESS})


@dataclass(frozen=True)
class Attempt:
    number: int
    started_at: datetime
    outcome: str
    duration_ms: float | None
    error: str | None
    worker: str | None


@dataclass(frozen=True)
class DecisionNote:
    """A step's control-flow decision as the page shows it: `skipped` in place of the last error,
    `held` (its condition was true) as a small note. `parts` are the reason's text, each with
    whether it is a `quoted` condition, shown as code."""

    kind: str
    parts: list[tuple[str, bool]]


@dataclass(frozen=True)
class InstanceRow:
    """One instance in its fan-out's table: the step, its item summarised (None when the item
    cannot be told), its last error on one line, and the whole message for the tooltip."""

    step: Step
    item: str | None
    error: str
    error_title: str


@dataclass(frozen=True)
class FanOutView:
    """A fan-out step's entry: its `foreach`, its progress once expanded, the instances listed
    and how many others there are, by state (in STATE_ORDER)."""

    foreach: str
    max_parallel: int | None
    max_items: int | None
    progress: Progress | None
    rows: list[InstanceRow]
    hidden: list[tuple[str, int]]

    status: str = ""

    @property
    def line(self) -> str:
        """The progress next to the step's name: `n/N done` (and the failures), or that it has
        not expanded (dashboard.js says it the same way)."""
        if self.progress is not None:
            return self.progress.line
        return "not expanded yet" if self.status in _UNDECIDED else "not expanded"

    @property
    def more(self) -> str:
        """The line under the table: `and 9,950 more (9,950 complete)` (dashboard.js says it the
        same way)."""
        total = sum(n for _, n in self.hidden)
        if not total:
            return ""
        states = ", ".join(f"{n:,} {state.replace('_', ' ')}" for state, n in self.hidden)
        lead = f"and {total:,} more" if self.rows else f"{total:,} instances"
        return f"{lead} ({states})"


@dataclass(frozen=True)
class StepView:
    step: Step
    parents: list[str]
    attempts: list[Attempt]
    handler: str
    can_resolve: bool
    when: str | None = None
    join_any: bool = False
    decision: DecisionNote | None = None
    fanout: FanOutView | None = None
    #: The results as the page shows them (a fan-out's list cut to RESULTS_PREVIEW), and a note
    #: saying what was left out.
    results: Any = None
    results_note: str = ""
    #: A `task:` step: the template it runs, and the child task it created (once it did).
    task: str | None = None
    child: ChildRef | None = None
    #: Once the task compensates: the row that undoes this step (None for other steps), and, for
    #: an undo row, the step it undoes.
    undo: Step | None = None
    undoes: str | None = None

    @property
    def no_child(self) -> str:
        """What a `task:` step's entry says while it has no child task."""
        return CHILD_NOT_YET if self.step.status in _BEFORE_CHILD else CHILD_NONE


@dataclass(frozen=True)
class ParentRef:
    """A child task's parent: the task, and the name of its `task:` step that created the child
    (None when the parent can no longer be read)."""

    task_id: int
    step: str | None


def attempts_of(step_id: int, transitions: list[StepTransition]) -> list[Attempt]:
    """The attempts of one step: each `in_progress` transition and the one that ended it."""
    return attempts_in([t for t in transitions if t["step_id"] == step_id])


def attempts_in(rows: Sequence[StepTransition]) -> list[Attempt]:
    """The attempts in one step's transitions (oldest first)."""
    out: list[Attempt] = []
    for i, t in enumerate(rows):
        if t["to_state"] != StepState.IN_PROGRESS:
            continue
        end = rows[i + 1] if i + 1 < len(rows) else None
        error = None
        if end is not None and end.get("error_class"):
            error = f"{end['error_class']}: {end.get('error_message') or ''}".strip()
        out.append(
            Attempt(
                int(t["attempt"]),
                t["at"],
                str(end["to_state"]) if end else "running",
                end.get("duration_ms") if end else None,
                error,
                t.get("worker"),
            )
        )
    return out


def code_spans(text: str) -> list[tuple[str, bool]]:
    """`text` split at its backticks, each part with whether it was quoted (a condition); text
    with an unmatched backtick stays one plain part, so no quote is ever lost."""
    parts = text.split("`")
    if len(parts) % 2 == 0:
        return [(text, False)]
    return [(part, i % 2 == 1) for i, part in enumerate(parts) if part]


def decision_note(step: Step) -> DecisionNote | None:
    """What the page adds for a step's decision: why it was skipped, or that its condition held.
    None without a decision, and for a condition that failed: its `ConditionError` is the step's
    last error, shown like any other."""
    if not step.decision:
        return None
    if step.status == StepState.SKIPPED:
        return DecisionNote("skipped", code_spans(step.decision))
    if step.wait is not None:
        return DecisionNote("wait", code_spans(step.decision))
    if step.last_error is not None and step.last_error["class"] == CONDITION_ERROR:
        return None
    return DecisionNote("held", code_spans(step.decision))


def summary(value: Any, limit: int) -> str:
    """`value` as compact JSON on one line (a string as itself), cut to `limit` characters."""
    text = value if isinstance(value, str) else _compact(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _compact(value: Any) -> str:
    return json.dumps(
        value, sort_keys=True, default=str, ensure_ascii=False, separators=(", ", ": ")
    )


def instance_rows(
    instances: Sequence[Step], limit: int = INSTANCE_ROWS
) -> tuple[list[InstanceRow], list[tuple[str, int]]]:
    """The instances a fan-out's entry lists (at most `limit`: the failed, retrying and running
    first, then by index) and how many others are in each state, in STATE_ORDER. Only the listed
    ones are summarised: the rest are counted."""
    shown = heapq.nsmallest(
        limit, instances, key=lambda s: (_FIRST.get(s.status, 3), s.item_index or 0, s.id)
    )
    counts = Counter(str(s.status) for s in instances)
    counts.subtract(str(s.status) for s in shown)
    hidden = [(state, counts[state]) for state in STATE_ORDER.split() if counts[state] > 0]
    rows = []
    for s in shown:
        item = summary(s.item, ITEM_CHARS) if s.item is not None else None
        error = title = ""
        if s.last_error is not None:
            title = f"{s.last_error['class']}: {s.last_error['message']}"
            error = summary(title, ERROR_CHARS)
        rows.append(InstanceRow(s, item, error, title))
    return rows, hidden


def fanout_view(
    task: Task,
    template: TaskTemplate,
    step: Step,
    declared: StepTemplate | None,
    instances: Sequence[Step],
) -> FanOutView | None:
    """A fan-out step's entry (None for any other step); `declared` is its step template."""
    if declared is None or declared.foreach is None:
        return None
    progress = None
    if step.fanout is not None:
        done = sum(1 for s in instances if s.status in TERMINAL_STEP_STATES)
        failed = sum(1 for s in instances if s.status == StepState.ERROR)
        progress = Progress(done, step.fanout, failed)
    rows, hidden = instance_rows(instances)
    return FanOutView(
        declared.foreach,
        declared.max_parallel,
        declared.max_items,
        progress,
        rows,
        hidden,
        str(step.status),
    )


def results_shown(step: Step) -> tuple[Any, str]:
    """A step's results as its entry shows them: a fan-out's list of results cut to its first
    RESULTS_PREVIEW, with a note saying so (dashboard.js cuts the same way)."""
    results = step.results
    if step.fanout is None or not isinstance(results, dict):
        return results, ""
    listed = results.get("results")
    if not isinstance(listed, list) or len(listed) <= RESULTS_PREVIEW:
        return results, ""
    note = f"the first {RESULTS_PREVIEW} of {len(listed):,} results; the API has them all"
    return {**results, "results": listed[:RESULTS_PREVIEW]}, note


def resolvable(task: Task, step: Step) -> bool:
    if task.status in FINISHED_TASK_STATES - {TaskState.ERROR}:
        return False
    try:
        return StepState.RESOLVED_MANUALLY in STEP_TRANSITIONS[StepState(step.status)]
    except ValueError:
        return False


def child_refs(engine: Tasker, task: Task, template: TaskTemplate) -> dict[str, ChildRef]:
    """The child tasks of a task's `task:` steps, by step name (no read for a template without
    any `task:` step)."""
    if not any(s.task is not None for s in template.step_templates):
        return {}
    ids = engine.child_tasks(task.id)
    if not ids:
        return {}
    names = {s.id: s.name for s in task.steps if s.instance_of is None}
    out: dict[str, ChildRef] = {}
    for child in sorted(engine.get_tasks(ids), key=lambda t: t.id):
        name = names.get(child.parent_step_id) if child.parent_step_id is not None else None
        if name is not None:
            out[name] = ChildRef(child.id, child.template_key, str(child.status))
    return out


def _runs(ref: str, task: Task) -> bool:
    """Whether a `task:` reference names the template `task` was created from."""
    try:
        r = parse_ref(ref)
    except TaskerInputError:
        return False
    return (r.namespace, r.name) == (task.namespace, task.name) and r.version in (
        None,
        task.version,
    )


def parent_ref(engine: Tasker, task: Task) -> ParentRef | None:
    """A child task's parent and the step that created it (None for any other task). The step is
    read off the parent's template snapshot when a single `task:` step there runs this task's
    template, else off the parent's steps."""
    parent_id = task.parent_task_id
    if parent_id is None:
        return None
    try:
        template = engine.templates.of_task(parent_id)
        steps = [s.name for s in template.step_templates if s.task and _runs(s.task, task)]
        if len(steps) == 1:
            return ParentRef(parent_id, steps[0])
        parent = engine.get_task(parent_id)
    except NotFoundError:
        return ParentRef(parent_id, None)
    return ParentRef(
        parent_id, next((s.name for s in parent.steps if s.id == task.parent_step_id), None)
    )


def _read(
    engine: Tasker, task_id: int
) -> tuple[Task, TaskTemplate, list[StepTransition], list[Signal]]:
    template = engine.templates.of_task(task_id)
    return (
        engine.get_task(task_id),
        template,
        engine.history.step_transitions(task_id),
        engine.signals.of_task(task_id) if template.signal_names() else [],
    )


def parked_for(task: Task, template: TaskTemplate) -> dict[int, str]:
    """What each step that may park waits for, as its timeline bar says it."""
    out: dict[int, str] = {}
    for s in task.steps:
        wait = s.wait or {}
        if wait.get("kind") == "sleep":
            out[s.id] = "sleeping"
        elif wait.get("kind") == "signal":
            out[s.id] = f"waiting for signal '{wait.get('signal')}'"
    return out


def _task_id(raw: str) -> int:
    if not raw.isdigit() or len(raw) > 19 or not 1 <= int(raw) <= MAX_ID:
        raise TaskerInputError(
            f"'{raw[:30]}' is not a task id; fix: use a number from the tasks list"
        )
    return int(raw)


@dataclass(frozen=True)
class TaskView:
    """Everything the page draws of a task, built off the event loop (a fan-out's task may have
    10,000 steps)."""

    task: Task
    template: TaskTemplate
    steps: list[StepView]
    dag: Layout
    chart: Waterfall
    #: Fan-outs whose instances the timeline does not all draw: (step, drawn, of).
    undrawn: list[tuple[str, int, int]]
    #: A child task's parent (None for other tasks).
    parent: ParentRef | None = None
    #: The signals the task received, oldest first.
    signals: list[Signal] = field(default_factory=list)


def task_view(engine: Tasker, task_id: int) -> TaskView:
    task, template, transitions, signals = _read(engine, task_id)
    children = child_refs(engine, task, template)
    declared = {s.name: s for s in template.step_templates}
    by_step: dict[int, list[StepTransition]] = defaultdict(list)
    for t in transitions:
        by_step[int(t["step_id"])].append(t)
    instances: dict[int, list[Step]] = defaultdict(list)
    top: list[Step] = []
    for s in task.steps:
        if s.instance_of is None:
            top.append(s)
        else:
            instances[s.instance_of].append(s)
    steps: list[StepView] = []
    undos = {s.compensates: s for s in task.steps if s.compensates is not None}
    progress: dict[str, Progress] = {}
    timeline: list[tuple[int, str]] = []
    undrawn: list[tuple[str, int, int]] = []
    for s in top:
        st = declared.get(s.name)
        fanout = fanout_view(task, template, s, st, instances.get(s.id, []))
        results, note = results_shown(s)
        child = children.get(s.name)
        steps.append(
            StepView(
                s,
                st.parents if st else [],
                attempts_in(by_step.get(s.id, [])),
                st.work() if st else "",
                resolvable(task, s),
                st.when if st else None,
                st is not None and st.join == JoinRule.ANY,
                # A `task:` step's decision says it waits for its child: the child's line says it.
                decision_note(s) if child is None else None,
                fanout,
                results,
                note,
                st.task if st else None,
                child,
                undos.get(s.id),
                undone_by(s.name),
            )
        )
        timeline.append((s.id, s.name))
        if fanout is not None:
            if fanout.progress is not None:
                progress[s.name] = fanout.progress
            drawn = fanout.rows[:TIMELINE_INSTANCES]
            timeline.extend((r.step.id, r.step.name) for r in drawn)
            count = len(instances.get(s.id, []))
            if count > len(drawn):
                undrawn.append((s.name, len(drawn), count))
    dag = template_layout(template, {s.name: s.status for s in top}, progress, children)
    chart = waterfall(
        timeline,
        transitions,
        datetime.now(UTC),
        [(sig.created_at, sig.name) for sig in signals],
        parked_for(task, template),
    )
    return TaskView(task, template, steps, dag, chart, undrawn, parent_ref(engine, task), signals)


async def render_task(
    request: Request,
    v: Viewer,
    task_id: int,
    *,
    status: int = 200,
    form_errors: dict[str, str] | None = None,
    form_values: dict[str, str] | None = None,
) -> Response:
    view = await run_in_threadpool(task_view, request.app.state.tasker, task_id)
    task, template = view.task, view.template
    return page(
        request,
        v,
        "task.html",
        f"Task {task.id}",
        "tasks",
        status=status,
        task=task,
        template=template,
        dag=view.dag,
        steps=view.steps,
        chart=view.chart,
        undrawn=view.undrawn,
        parent=view.parent,
        child_not_yet=CHILD_NOT_YET,
        child_none=CHILD_NONE,
        form_errors=form_errors or {},
        form_values=form_values or {},
        can_cancel=v.can(Permission.TASK_CANCEL) and task.status not in TERMINAL_TASK_STATES,
        can_retry=v.can(Permission.TASK_RETRY) and task.status == TaskState.ERROR,
        # Undo what completed (docs/templates.md, "Compensation"): for a template that declares
        # compensations, a task in error not compensated yet, or a cancel that undoes.
        compensable=any(st.compensation is not None for st in template.step_templates),
        can_compensate=v.can(Permission.TASK_RETRY)
        and task.status == TaskState.ERROR
        and not any(s.compensates is not None for s in task.steps)
        and any(st.compensation is not None for st in template.step_templates),
        can_retry_step=v.can(Permission.STEP_RETRY),
        can_resolve=v.can(Permission.STEP_UPDATE),
        live=v.can(Permission.EVENTS_INDEX),
        resolvable_states=RESOLVABLE,
        done_states=DONE_STATES,
        state_order=STATE_ORDER,
        condition_error=CONDITION_ERROR,
        results_preview=RESULTS_PREVIEW,
        event_names=event_names([template]),
        signals=view.signals,
        signal_names=sorted(template.signal_names()),
        can_signal=v.can(Permission.TASK_SIGNAL) and task.status in UNFINISHED,
        rerun_steps=[sv.step.name for sv in view.steps if sv.undoes is None],
        rerun_default=rerun_default(task),
    )


@pages.get("/tasks/{raw_id}")
async def task_page(request: Request) -> Response:
    raw_id = request.path_params["raw_id"]
    v = await viewer(request, Permission.TASK_SHOW)
    return await render_task(request, v, _task_id(raw_id))


def _back(task_id: int) -> str:
    return f"/tasks/{task_id}"


@pages.post("/tasks/{raw_id}/cancel")
async def cancel(request: Request) -> Response:
    raw_id = request.path_params["raw_id"]
    form = await read_form(request)
    await actor(request, form, Permission.TASK_CANCEL)
    task_id = _task_id(raw_id)
    compensate = field_of(form, "compensate") == "1"
    try:
        task = await run_in_threadpool(
            partial(
                request.app.state.tasker.cancel_task,
                task_id,
                "cancelled from the dashboard",
                compensate=compensate,
            )
        )
    except TaskerInputError as exc:
        return redirect(request, _back(task_id), "error", str(exc))
    if task.status == TaskState.COMPENSATING:
        return redirect(request, _back(task_id), "ok", f"task {task_id} cancelled; undoing")
    return redirect(request, _back(task_id), "ok", f"task {task_id} cancelled")


@pages.post("/tasks/{raw_id}/compensate")
async def compensate(request: Request) -> Response:
    raw_id = request.path_params["raw_id"]
    form = await read_form(request)
    await actor(request, form, Permission.TASK_RETRY)
    task_id = _task_id(raw_id)
    try:
        await run_in_threadpool(request.app.state.tasker.compensate_task, task_id)
    except TaskerInputError as exc:
        return redirect(request, _back(task_id), "error", str(exc))
    return redirect(request, _back(task_id), "ok", f"task {task_id} is undoing its steps")


@pages.post("/tasks/{raw_id}/retry")
async def retry(request: Request) -> Response:
    raw_id = request.path_params["raw_id"]
    form = await read_form(request)
    await actor(request, form, Permission.TASK_RETRY)
    task_id = _task_id(raw_id)
    try:
        await run_in_threadpool(request.app.state.tasker.retry_task, task_id)
    except TaskerInputError as exc:
        return redirect(request, _back(task_id), "error", str(exc))
    return redirect(request, _back(task_id), "ok", f"task {task_id} is being retried")


def rerun_default(task: Task) -> str | None:
    """The step the re-run form offers first: the first step in error (the one the fix is for)."""
    return next(
        (
            s.name
            for s in task.steps
            if s.status == StepState.ERROR and s.instance_of is None and s.compensates is None
        ),
        None,
    )


@pages.post("/tasks/{raw_id}/rerun")
async def rerun(request: Request) -> Response:
    """Re-run a task in error from a step (`engine.rerun_from`); a refusal (a running task, a
    fan-out step, parents that did not complete) comes back as the flash message, saying why."""
    raw_id = request.path_params["raw_id"]
    form = await read_form(request)
    await actor(request, form, Permission.TASK_RETRY)
    task_id = _task_id(raw_id)
    step = field_of(form, "step").strip()
    reason = field_of(form, "reason").strip()[:1000] or None
    if not step:
        return redirect(request, _back(task_id), "error", "choose the step to re-run from")
    try:
        await run_in_threadpool(request.app.state.tasker.rerun_from, task_id, step, reason)
    except TaskerInputError as exc:
        return redirect(request, _back(task_id), "error", str(exc))
    return redirect(
        request, _back(task_id), "ok", f"task {task_id} is re-running from step '{step}'"
    )


@pages.post("/tasks/{raw_id}/steps/{step}/retry")
async def retry_step(request: Request) -> Response:
    raw_id, step = request.path_params["raw_id"], request.path_params["step"]
    form = await read_form(request)
    await actor(request, form, Permission.STEP_RETRY)
    task_id = _task_id(raw_id)
    try:
        await run_in_threadpool(request.app.state.tasker.retry_step, task_id, step)
    except TaskerInputError as exc:
        return redirect(request, _back(task_id), "error", str(exc))
    return redirect(request, _back(task_id), "ok", f"step '{step}' is being retried")


def parse_json(text: str) -> tuple[Any, str | None]:
    """JSON typed in a form (None for an empty field), or why it is refused (shown next to the
    field)."""
    if not text.strip():
        return None, None
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"


def parse_results(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """The results typed in the resolve form, or why they are refused (shown next to the field)."""
    value, error = parse_json(text)
    if error is not None:
        return None, error
    if value is None:
        return {}, None
    if not isinstance(value, dict):
        return None, f"the results must be a JSON object ({{...}}), not {type(value).__name__}"
    return value, None


@pages.post("/tasks/{raw_id}/steps/{step}/resolve")
async def resolve_step(request: Request) -> Response:
    raw_id, step = request.path_params["raw_id"], request.path_params["step"]
    form = await read_form(request)
    v = await actor(request, form, Permission.STEP_UPDATE)
    task_id = _task_id(raw_id)
    text = field_of(form, "results")
    results, error = parse_results(text)
    if results is not None:
        try:
            await run_in_threadpool(request.app.state.tasker.resolve_step, task_id, step, results)
        except TaskerInputError as exc:
            error = str(exc)
    if error is not None:
        return await render_task(
            request, v, task_id, status=422, form_errors={step: error}, form_values={step: text}
        )
    return redirect(request, _back(task_id), "ok", f"step '{step}' resolved")


@pages.post("/tasks/{raw_id}/signals")
async def send_signal(request: Request) -> Response:
    raw_id = request.path_params["raw_id"]
    form = await read_form(request)
    v = await actor(request, form, Permission.TASK_SIGNAL)
    task_id = _task_id(raw_id)
    name = field_of(form, "name")
    text = field_of(form, "payload")
    payload, error = parse_json(text)
    if error is not None:
        return await render_task(
            request,
            v,
            task_id,
            status=422,
            form_errors={"payload": error},
            form_values={"payload": text},
        )
    try:
        sent = await run_in_threadpool(request.app.state.tasker.signal, task_id, name, payload)
    except TaskerInputError as exc:  # an unknown name, a finished task (OperationError)
        return redirect(request, _back(task_id), "error", str(exc))
    woke = f"; it woke {len(sent.woke)} step(s)" if sent.woke else "; no step waits for it yet"
    return redirect(request, _back(task_id), "ok", f"signal '{name}' sent{woke}")
