"""Steps of a task: list and show (state, attempts, results, last error, timings, transitions),
resolve by hand with a result, retry one step."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends

from tasker.api.auth import Permission, require
from tasker.api.deps import get_engine
from tasker.api.errors import error_responses
from tasker.api.routes.tasks import task_detail
from tasker.api.schemas import (
    StepDetail,
    StepList,
    StepName,
    StepResolve,
    TaskDetail,
    TaskId,
    parents_by_step,
)
from tasker.domain.errors import NotFoundError
from tasker.domain.records import Step, Task
from tasker.engine.tasker import Tasker

router = APIRouter(tags=["steps"])
Engine = Annotated[Tasker, Depends(get_engine)]


def _step(task: Task, name: str) -> Step:
    for s in task.steps:
        if s.name == name:
            return s
    raise NotFoundError(
        f"task {task.id} has no step '{name}'; steps: {', '.join(s.name for s in task.steps)}"
    )


@router.get(
    "/tasks/{task_id}/steps",
    response_model=StepList,
    summary="List the steps of a task",
    dependencies=[Depends(require(Permission.STEP_INDEX))],
    responses=error_responses(401, 403, 404, 422),
)
def list_steps(task_id: TaskId, engine: Engine) -> StepList:
    """Every step in execution order, each with its transitions."""
    task = engine.get_task(task_id)
    parents = parents_by_step(engine.templates.of_task(task_id))
    transitions = engine.history.step_transitions(task_id)
    return StepList(
        task_id=task.id,
        steps=[StepDetail.detail(s, parents.get(s.name, []), transitions) for s in task.steps],
    )


@router.get(
    "/tasks/{task_id}/steps/{step_name}",
    response_model=StepDetail,
    summary="Show one step of a task",
    dependencies=[Depends(require(Permission.STEP_SHOW))],
    responses=error_responses(401, 403, 404, 422),
)
def get_step(task_id: TaskId, step_name: StepName, engine: Engine) -> StepDetail:
    step = _step(engine.get_task(task_id), step_name)
    parents = parents_by_step(engine.templates.of_task(task_id))
    return StepDetail.detail(
        step, parents.get(step.name, []), engine.history.step_transitions(task_id)
    )


@router.post(
    "/tasks/{task_id}/steps/{step_name}/resolve",
    response_model=TaskDetail,
    summary="Resolve a step by hand",
    dependencies=[Depends(require(Permission.STEP_UPDATE))],
    responses=error_responses(400, 401, 403, 404, 409, 413, 422),
)
def resolve_step(
    task_id: TaskId,
    step_name: StepName,
    engine: Engine,
    body: Annotated[StepResolve | None, Body()] = None,
) -> TaskDetail:
    """Complete a step that has not completed with `result`; its dependents proceed as if it had
    run.

    Answers the task, since its state may change too; a complete or cancelled step answers 409.
    """
    task = engine.resolve_step(task_id, step_name, body.result if body else {})
    return task_detail(engine, task)


@router.post(
    "/tasks/{task_id}/steps/{step_name}/retry",
    response_model=TaskDetail,
    summary="Retry one failed step",
    dependencies=[Depends(require(Permission.STEP_RETRY))],
    responses=error_responses(401, 403, 404, 409, 422),
)
def retry_step(task_id: TaskId, step_name: StepName, engine: Engine) -> TaskDetail:
    """Re-arm a step in `error` with fresh attempts; any other state answers 409."""
    return task_detail(engine, engine.retry_step(task_id, step_name))
