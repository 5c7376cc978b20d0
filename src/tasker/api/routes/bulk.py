"""Bulk operations: `POST /tasks/bulk/retry`, `/bulk/cancel`, `/bulk/purge` with a filter body.

One permission, `tasker.task:bulk`, for the three: a request may touch thousands of tasks, so a key
that may retry one task is not thereby allowed to retry every failed task of a namespace. Each
request runs the bulk operation to its end (or to its `limit`) and answers the counts; running it
again changes nothing more (`tasker.engine.bulk`). A filter the engine cannot use answers 422 with
the field's path, like a body that fails the schema.

The router is included by the tasks router before its `/tasks/{task_id}/...` routes, so that
`bulk` is never read as a task id.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from tasker.api.auth import Permission, require
from tasker.api.deps import get_engine, get_settings
from tasker.api.errors import ErrorDetail, error_response, error_responses
from tasker.api.schemas import BulkCancel, BulkFilter, BulkPurge, BulkResult, BulkRetry
from tasker.domain.bulk import BulkAction, FilterError, TaskFilter
from tasker.engine.tasker import Tasker
from tasker.settings import Settings

router = APIRouter(tags=["tasks"])
Engine = Annotated[Tasker, Depends(get_engine)]
_PERMISSION = [Depends(require(Permission.TASK_BULK))]
_ERRORS = error_responses(400, 401, 403, 413, 422)


def _filter(engine: Tasker, body: BulkFilter) -> TaskFilter:
    return engine.bulk.filter(
        template=body.template,
        namespace=body.namespace,
        version=body.version,
        status=[s.value for s in body.status],
        since=body.since,
        until=body.until,
        error_class=body.error_class,
        step=body.step,
        step_state=[s.value for s in body.step_state],
        key=body.key,
        ids=body.ids,
    )


def _invalid(exc: FilterError) -> JSONResponse:
    """A filter the engine refused, as FastAPI's own 422: the field's path and the problem."""
    path = "$" if exc.field == "filter" else f"$.{exc.field}"
    detail = ErrorDetail(path=path, message=exc.problem)
    return error_response(
        422, "validation_error", f"invalid request: {path}: {exc.problem}", [detail]
    )


def _run(
    engine: Tasker,
    action: BulkAction,
    body: BulkFilter,
    *,
    reason: str | None = None,
    compensate: bool = False,
    archive: str | None = None,
) -> BulkResult | JSONResponse:
    try:
        picked = _filter(engine, body)
        report = engine.bulk.run(
            action,
            picked,
            reason=reason,
            compensate=compensate,
            archive=archive,
            dry_run=body.dry_run,
            chunk=body.chunk,
            after=body.after,
            limit=body.limit,
        )
    except FilterError as exc:
        return _invalid(exc)
    return BulkResult.of(report, picked)


@router.post(
    "/tasks/bulk/retry",
    summary="Retry every task in error a filter picks",
    response_model=BulkResult,
    dependencies=_PERMISSION,
    responses=_ERRORS,
)
def bulk_retry(body: BulkRetry, engine: Engine) -> BulkResult | JSONResponse:
    """Re-arm the failed steps of every task in `error` the filter picks, in chunks, as
    `POST /tasks/{id}/retry` does; each transition carries `bulk retry: <reason>`. A task that
    stopped matching before its chunk ran, or that the retry refuses, is counted in `skipped`."""
    return _run(engine, BulkAction.RETRY, body, reason=body.reason)


@router.post(
    "/tasks/bulk/cancel",
    summary="Cancel every task a filter picks",
    response_model=BulkResult,
    dependencies=_PERMISSION,
    responses=_ERRORS,
)
def bulk_cancel(body: BulkCancel, engine: Engine) -> BulkResult | JSONResponse:
    """Cancel every unfinished or failed task the filter picks, in chunks, as
    `POST /tasks/{id}/cancel` does; with `compensate`, each then undoes what its completed steps
    did where its template declares compensations."""
    return _run(engine, BulkAction.CANCEL, body, reason=body.reason, compensate=body.compensate)


@router.post(
    "/tasks/bulk/purge",
    summary="Delete every finished task a filter picks",
    response_model=BulkResult,
    dependencies=_PERMISSION,
    responses=_ERRORS,
)
def bulk_purge(
    body: BulkPurge, engine: Engine, settings: Annotated[Settings, Depends(get_settings)]
) -> BulkResult | JSONResponse:
    """Delete every finished task the filter picks with all its rows (steps, transitions,
    events, signals), in chunks, writing each to the server's archive first when its `archive`
    setting names one (`archived` counts them). Running tasks are never touched."""
    return _run(engine, BulkAction.PURGE, body, archive=settings.archive)
