"""One task: its DAG coloured by state, the attempts waterfall, each step, the context, live events,
and the operator's actions (cancel, retry the task, retry a step, resolve a step with JSON results).

Reads: the task with its steps, its template snapshot and its step transitions (three queries by
task id). A step's control flow (its condition, `join: any`, the decision that skipped it or let it
run) comes from the template snapshot and the step record. The page then follows the task live
with the API's SSE stream and JSON reads (static/dashboard/dashboard.js). Each action needs the
permission of the API route it mirrors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from tasker.api.auth import Permission
from tasker.domain.control import CONDITION_ERROR, JoinRule
from tasker.domain.errors import TaskerInputError
from tasker.domain.history import StepTransition
from tasker.domain.records import Step, Task
from tasker.domain.states import (
    FINISHED_TASK_STATES,
    STEP_TRANSITIONS,
    TERMINAL_TASK_STATES,
    StepState,
    TaskState,
)
from tasker.domain.templates import TaskTemplate
from tasker.engine.tasker import Tasker
from tasker.web.access import Pages, Viewer, actor, field_of, page, read_form, redirect, viewer
from tasker.web.dag import template_layout
from tasker.web.pages.events import event_names
from tasker.web.timeline import waterfall

pages = Pages()
MAX_ID = 2**63 - 1
#: The step states an operator may resolve from (the page shows the resolve form in those).
RESOLVABLE = " ".join(
    sorted(s.value for s in StepState if StepState.RESOLVED_MANUALLY in STEP_TRANSITIONS[s])
)


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
class StepView:
    step: Step
    parents: list[str]
    attempts: list[Attempt]
    handler: str
    can_resolve: bool
    when: str | None = None
    join_any: bool = False
    decision: DecisionNote | None = None


def attempts_of(step_id: int, transitions: list[StepTransition]) -> list[Attempt]:
    """The attempts of one step: each `in_progress` transition and the one that ended it."""
    rows = [t for t in transitions if t["step_id"] == step_id]
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
    if step.last_error is not None and step.last_error["class"] == CONDITION_ERROR:
        return None
    return DecisionNote("held", code_spans(step.decision))


def resolvable(task: Task, step: Step) -> bool:
    if task.status in FINISHED_TASK_STATES - {TaskState.ERROR}:
        return False
    try:
        return StepState.RESOLVED_MANUALLY in STEP_TRANSITIONS[StepState(step.status)]
    except ValueError:
        return False


def _read(engine: Tasker, task_id: int) -> tuple[Task, TaskTemplate, list[StepTransition]]:
    return (
        engine.get_task(task_id),
        engine.templates.of_task(task_id),
        engine.history.step_transitions(task_id),
    )


def _task_id(raw: str) -> int:
    if not raw.isdigit() or len(raw) > 19 or not 1 <= int(raw) <= MAX_ID:
        raise TaskerInputError(
            f"'{raw[:30]}' is not a task id; fix: use a number from the tasks list"
        )
    return int(raw)


async def render_task(
    request: Request,
    v: Viewer,
    task_id: int,
    *,
    status: int = 200,
    form_errors: dict[str, str] | None = None,
    form_values: dict[str, str] | None = None,
) -> Response:
    task, template, transitions = await run_in_threadpool(_read, request.app.state.tasker, task_id)
    dag = template_layout(template, {s.name: s.status for s in task.steps})
    declared = {s.name: s for s in template.step_templates}
    steps = []
    for s in task.steps:
        st = declared.get(s.name)
        steps.append(
            StepView(
                s,
                st.parents if st else [],
                attempts_of(s.id, transitions),
                st.handler_class if st else "",
                resolvable(task, s),
                st.when if st else None,
                st is not None and st.join == JoinRule.ANY,
                decision_note(s),
            )
        )
    chart = waterfall([(s.id, s.name) for s in task.steps], transitions, datetime.now(UTC))
    return page(
        request,
        v,
        "task.html",
        f"Task {task.id}",
        "tasks",
        status=status,
        task=task,
        template=template,
        dag=dag,
        steps=steps,
        chart=chart,
        form_errors=form_errors or {},
        form_values=form_values or {},
        can_cancel=v.can(Permission.TASK_CANCEL) and task.status not in TERMINAL_TASK_STATES,
        can_retry=v.can(Permission.TASK_RETRY) and task.status == TaskState.ERROR,
        can_retry_step=v.can(Permission.STEP_RETRY),
        can_resolve=v.can(Permission.STEP_UPDATE),
        live=v.can(Permission.EVENTS_INDEX),
        resolvable_states=RESOLVABLE,
        event_names=event_names([template]),
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
    try:
        await run_in_threadpool(
            request.app.state.tasker.cancel_task, task_id, "cancelled from the dashboard"
        )
    except TaskerInputError as exc:
        return redirect(request, _back(task_id), "error", str(exc))
    return redirect(request, _back(task_id), "ok", f"task {task_id} cancelled")


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


def parse_results(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """The results typed in the resolve form, or why they are refused (shown next to the field)."""
    if not text.strip():
        return {}, None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
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
