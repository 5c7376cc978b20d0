"""Schedules: cron ticks that create tasks. Those a template declares come from its YAML; more
are added here, and any can be paused, resumed, triggered now or removed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from tasker.api.auth import Permission, require
from tasker.api.deps import get_engine
from tasker.api.errors import error_responses
from tasker.api.routes.tasks import task_detail
from tasker.api.schemas import (
    INT64_MAX,
    NAME_PATTERN,
    ScheduleCreate,
    ScheduleList,
    ScheduleOut,
    TaskDetail,
)
from tasker.engine.tasker import Tasker

router = APIRouter(tags=["schedules"])
Engine = Annotated[Tasker, Depends(get_engine)]
ScheduleId = Annotated[
    int, Path(ge=1, le=INT64_MAX, description="The schedule's id.", examples=[1])
]


@router.get(
    "/schedules",
    response_model=ScheduleList,
    summary="List schedules",
    dependencies=[Depends(require(Permission.SCHEDULE_INDEX))],
    responses=error_responses(401, 403, 422),
)
def list_schedules(
    engine: Engine,
    namespace: Annotated[str | None, Query(max_length=64, pattern=NAME_PATTERN)] = None,
) -> ScheduleList:
    """Every schedule (of one namespace) with its next and last tick."""
    return ScheduleList(schedules=[ScheduleOut.of(s) for s in engine.schedules.all(namespace)])


@router.post(
    "/schedules",
    status_code=201,
    response_model=ScheduleOut,
    summary="Add a schedule",
    dependencies=[Depends(require(Permission.SCHEDULE_CREATE))],
    responses=error_responses(400, 401, 403, 404, 413, 422),
)
def add_schedule(body: ScheduleCreate, response: Response, engine: Engine) -> ScheduleOut:
    """Add a cron schedule for a loaded template; its context is validated against the
    template's schema now, and a name the template already uses answers 400."""
    added = engine.schedules.add(
        body.template,
        body.name,
        body.cron,
        timezone=body.timezone,
        context=body.context,
        catch_up=body.catch_up,
        version=body.version,
        paused=body.paused,
    )
    response.headers["Location"] = f"/api/v1/schedules/{added.id}"
    return ScheduleOut.of(added)


@router.get(
    "/schedules/{schedule_id}",
    response_model=ScheduleOut,
    summary="Show a schedule",
    dependencies=[Depends(require(Permission.SCHEDULE_INDEX))],
    responses=error_responses(401, 403, 404, 422),
)
def show_schedule(schedule_id: ScheduleId, engine: Engine) -> ScheduleOut:
    return ScheduleOut.of(engine.schedules.get(schedule_id))


@router.post(
    "/schedules/{schedule_id}/pause",
    response_model=ScheduleOut,
    summary="Pause a schedule",
    dependencies=[Depends(require(Permission.SCHEDULE_UPDATE))],
    responses=error_responses(401, 403, 404, 422),
)
def pause_schedule(schedule_id: ScheduleId, engine: Engine) -> ScheduleOut:
    """No tick fires until it is resumed (a template's schedule stays paused across reloads)."""
    return ScheduleOut.of(engine.schedules.pause(schedule_id))


@router.post(
    "/schedules/{schedule_id}/resume",
    response_model=ScheduleOut,
    summary="Resume a schedule",
    dependencies=[Depends(require(Permission.SCHEDULE_UPDATE))],
    responses=error_responses(401, 403, 404, 422),
)
def resume_schedule(schedule_id: ScheduleId, engine: Engine) -> ScheduleOut:
    """Fire again from the next tick on; ticks missed while paused are not caught up."""
    return ScheduleOut.of(engine.schedules.resume(schedule_id))


@router.post(
    "/schedules/{schedule_id}/trigger",
    status_code=201,
    response_model=TaskDetail,
    summary="Run a schedule's task now",
    dependencies=[Depends(require(Permission.SCHEDULE_TRIGGER))],
    responses=error_responses(400, 401, 403, 404, 422),
)
def trigger_schedule(schedule_id: ScheduleId, engine: Engine) -> TaskDetail:
    """Create the schedule's task now, outside its ticks; its next tick stays as it was."""
    return task_detail(engine, engine.schedules.trigger(schedule_id), children=False)


@router.delete(
    "/schedules/{schedule_id}",
    status_code=204,
    summary="Remove a schedule",
    dependencies=[Depends(require(Permission.SCHEDULE_DELETE))],
    responses=error_responses(401, 403, 404, 422),
)
def remove_schedule(schedule_id: ScheduleId, engine: Engine) -> Response:
    """Delete a schedule (one a template declares comes back when the template is reloaded,
    unless it was taken out of the YAML)."""
    engine.schedules.remove(schedule_id)
    return Response(status_code=204)
