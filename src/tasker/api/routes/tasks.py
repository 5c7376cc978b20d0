"""Tasks: create (idempotent), list with filters and pagination, show one with its steps, cancel
(with or without compensation), compensate, retry; and, from `routes/bulk.py`, the bulk retry,
cancel and purge of every task a filter picks.

Routes are thin: parse, call the engine, serialise. The engine blocks (SQLAlchemy), so they are
plain `def` functions that FastAPI runs in its thread pool.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Query, Response

from tasker.api.auth import Permission, require
from tasker.api.deps import get_engine
from tasker.api.errors import error_responses
from tasker.api.routes import bulk as bulk_routes
from tasker.api.schemas import (
    INT64_MAX,
    NAME_PATTERN,
    SEMVER_PATTERN,
    TaskCancel,
    TaskCreate,
    TaskDetail,
    TaskId,
    TaskPage,
    TaskRerun,
    TaskSummary,
)
from tasker.domain.errors import TaskerInputError
from tasker.domain.listing import TOTAL_CAP, TaskQuery
from tasker.domain.records import Task
from tasker.domain.states import TaskState
from tasker.engine.tasker import Tasker

router = APIRouter(tags=["tasks"])
# Before the routes below: `/tasks/bulk/retry` must never be read as `/tasks/{task_id}/retry`.
router.include_router(bulk_routes.router)
Engine = Annotated[Tasker, Depends(get_engine)]
MAX_PAGE = 500
#: Cursors are opaque base64url text (tasker.engine.queries).
CURSOR_PATTERN = r"^[A-Za-z0-9_-]+$"
CURSOR_MAX = 64


def task_detail(engine: Tasker, task: Task, *, children: bool = True) -> TaskDetail:
    """One task as every single-task route answers it: with its steps, its transitions and its
    child tasks (one indexed read, skipped for a task just created, which has none; the list
    pages leave the children out)."""
    return TaskDetail.detail(
        task,
        engine.templates.of_task(task.id),
        engine.history.task_transitions(task.id),
        engine.child_tasks(task.id) if children else [],
    )


@router.post(
    "/tasks",
    status_code=201,
    response_model=TaskDetail,
    summary="Create a task",
    dependencies=[Depends(require(Permission.TASK_CREATE))],
    responses={
        200: {
            "model": TaskDetail,
            "description": "The existing task for a repeated idempotency key.",
        },
        201: {
            "description": "The new task.",
            "headers": {
                "Location": {"description": "The task's URL.", "schema": {"type": "string"}}
            },
        },
        **error_responses(400, 401, 403, 404, 409, 413, 422),
    },
)
def create_task(body: TaskCreate, response: Response, engine: Engine) -> TaskDetail:
    """Create a task of a loaded template; its context is validated against the template's schema.

    A repeated `idempotency_key` (or, without one, the same template and context) answers 200 with
    the task created the first time; a new task answers 201 with a `Location` header. The same key
    with a different context or pinned version answers 409 `idempotency_conflict`, naming what
    differs.
    """
    task = engine.create_task(
        body.template,
        body.context,
        version=body.version,
        idempotency_key=body.idempotency_key,
        correlation_id=body.correlation_id,
        run_at=body.run_at,
        delay=body.delay,
        deadline=body.deadline,
        priority=body.priority,
    )
    if task.deduplicated:
        response.status_code = 200
    else:
        response.headers["Location"] = f"/api/v1/tasks/{task.id}"
    return task_detail(engine, task, children=task.deduplicated)


def _utc(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:
        raise TaskerInputError(
            f"query.{name}: {value.isoformat()} is out of range in UTC"
        ) from None


@router.get(
    "/tasks",
    response_model=TaskPage,
    summary="List tasks",
    dependencies=[Depends(require(Permission.TASK_INDEX))],
    responses=error_responses(401, 403, 422),
)
def list_tasks(
    engine: Engine,
    namespace: Annotated[str | None, Query(max_length=64, pattern=NAME_PATTERN)] = None,
    name: Annotated[str | None, Query(max_length=128, pattern=NAME_PATTERN)] = None,
    version: Annotated[str | None, Query(max_length=64, pattern=SEMVER_PATTERN)] = None,
    status: Annotated[
        list[TaskState] | None,
        Query(max_length=len(TaskState), description="Repeat for several states (any of them)."),
    ] = None,
    created_after: Annotated[
        datetime | None, Query(description="Created at or after (ISO 8601; UTC if naive).")
    ] = None,
    created_before: Annotated[
        datetime | None, Query(description="Created before (ISO 8601; UTC if naive).")
    ] = None,
    key: Annotated[
        str | None,
        Query(min_length=1, max_length=255, description="Exact idempotency key or correlation id."),
    ] = None,
    after: Annotated[
        str | None,
        Query(
            max_length=CURSOR_MAX,
            pattern=CURSOR_PATTERN,
            description="`next_cursor` of a page: the older tasks.",
        ),
    ] = None,
    before: Annotated[
        str | None,
        Query(
            max_length=CURSOR_MAX,
            pattern=CURSOR_PATTERN,
            description="`prev_cursor` of a page: the newer tasks.",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[
        int, Query(ge=0, le=INT64_MAX, description="Legacy paging; prefer the cursors.")
    ] = 0,
    include_total: Annotated[
        bool,
        Query(description=(f"Count the matches (up to {TOTAL_CAP:,}) when no cursor is given.")),
    ] = True,
    min_priority: Annotated[
        int | None, Query(ge=0, le=1000, description="Only tasks of at least this priority.")
    ] = None,
    sort: Annotated[
        Literal["created", "priority"],
        Query(
            description="`created`: newest first, paged by cursor; `priority`: highest first"
            " (then newest), paged by `offset`."
        ),
    ] = "created",
) -> TaskPage:
    """Tasks newest first, without their steps or `children` (a child task still names its
    `parent_task_id`), with cursors to the older and newer pages.

    Cursor pages (`after`, `before`) never count and stay fast at any depth; without a cursor the
    answer also carries the `total` of matches unless `include_total=false`.
    """
    query = TaskQuery(
        namespace=namespace,
        name=name,
        version=version,
        statuses=tuple(s.value for s in status or ()),
        created_from=_utc(created_after, "created_after"),
        created_to=_utc(created_before, "created_before"),
        key=key,
        min_priority=min_priority,
        by_priority=sort == "priority",
    )
    page = engine.listing.page(query, limit=limit, after=after, before=before, offset=offset)
    cursor = after is not None or before is not None
    total = engine.listing.total(query) if include_total and not cursor else None
    return TaskPage(
        tasks=[TaskSummary.of(t) for t in page.tasks],
        total=total.count if total else None,
        total_capped=total.capped if total else None,
        limit=limit,
        offset=offset,
        next_cursor=page.next_cursor,
        prev_cursor=page.prev_cursor,
    )


@router.get(
    "/tasks/{task_id}",
    response_model=TaskDetail,
    summary="Show a task with its steps",
    dependencies=[Depends(require(Permission.TASK_SHOW))],
    responses=error_responses(401, 403, 404, 422),
)
def get_task(task_id: TaskId, engine: Engine) -> TaskDetail:
    """The task with its steps, its transitions and the ids of its child tasks (`children`: the
    tasks its `task:` steps created). A child task names its parent task and step
    (`parent_task_id`, `parent_step_id`) and keeps the parent's `correlation_id`."""
    return task_detail(engine, engine.get_task(task_id))


@router.post(
    "/tasks/{task_id}/cancel",
    response_model=TaskDetail,
    summary="Cancel a task",
    dependencies=[Depends(require(Permission.TASK_CANCEL))],
    responses=error_responses(400, 401, 403, 404, 409, 413, 422),
)
def cancel_task(
    task_id: TaskId, engine: Engine, body: Annotated[TaskCancel | None, Body()] = None
) -> TaskDetail:
    """Unstarted steps never run and late results are discarded; a finished task answers 409.
    With `compensate`, the task then undoes what its completed steps did."""
    return task_detail(
        engine,
        engine.cancel_task(
            task_id,
            reason=body.reason if body else None,
            compensate=body.compensate if body else False,
        ),
    )


@router.post(
    "/tasks/{task_id}/compensate",
    response_model=TaskDetail,
    summary="Compensate a task in error",
    dependencies=[Depends(require(Permission.TASK_RETRY))],
    responses=error_responses(401, 403, 404, 409, 422),
)
def compensate_task(task_id: TaskId, engine: Engine) -> TaskDetail:
    """Undo what the completed steps of a task in `error` did (each step that declares a
    compensation, newest first); a task not in `error`, or with nothing to undo, answers 409."""
    return task_detail(engine, engine.compensate_task(task_id))


@router.post(
    "/tasks/{task_id}/retry",
    response_model=TaskDetail,
    summary="Retry a task in error",
    dependencies=[Depends(require(Permission.TASK_RETRY))],
    responses=error_responses(401, 403, 404, 409, 422),
)
def retry_task(task_id: TaskId, engine: Engine) -> TaskDetail:
    """Re-arm every failed step with fresh attempts; a task that is not in `error` answers 409."""
    return task_detail(engine, engine.retry_task(task_id))


@router.post(
    "/tasks/{task_id}/rerun",
    response_model=TaskDetail,
    summary="Re-run a task in error from one of its steps",
    dependencies=[Depends(require(Permission.TASK_RETRY))],
    responses=error_responses(401, 403, 404, 409, 422),
)
def rerun_task(task_id: TaskId, body: TaskRerun, engine: Engine) -> TaskDetail:
    """The step `from_step` and every step downstream of it start over with fresh attempts;
    everything upstream keeps its results (deploy the fix, then re-run from the failed step). A
    task that is running or finished answers 409, an unknown step 404."""
    return task_detail(engine, engine.rerun_from(task_id, body.from_step, body.reason))
