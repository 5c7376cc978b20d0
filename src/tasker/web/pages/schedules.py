"""Schedules: every cron schedule with its next and last tick, and the operator's actions on it
(pause, resume, run now, remove), each needing the permission of the API route it mirrors.

Reads: the schedules table (one query). The page links each schedule's last task.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from tasker.api.auth import Permission
from tasker.domain.errors import TaskerError
from tasker.web.access import Pages, actor, page, read_form, redirect, viewer

pages = Pages()
BACK = "/schedules"


@pages.get("/schedules")
async def schedules(request: Request) -> Response:
    v = await viewer(request, Permission.SCHEDULE_INDEX)
    found = await run_in_threadpool(request.app.state.tasker.schedules.all)
    return page(
        request,
        v,
        "schedules.html",
        "Schedules",
        "schedules",
        schedules=found,
        can_update=v.can(Permission.SCHEDULE_UPDATE),
        can_trigger=v.can(Permission.SCHEDULE_TRIGGER),
        can_delete=v.can(Permission.SCHEDULE_DELETE),
    )


def _schedule_id(raw: str) -> int:
    return int(raw) if raw.isdigit() and len(raw) < 19 else 0


async def _act(
    request: Request, permission: str, action: str, done: Callable[[int, Any], str]
) -> Response:
    """Run `engine.schedules.<action>(id)` for the operator; `done` says what happened (from the
    id and what the action returned)."""
    form = await read_form(request)
    await actor(request, form, permission)
    schedule_id = _schedule_id(request.path_params["raw_id"])
    schedules = request.app.state.tasker.schedules
    try:
        result = await run_in_threadpool(partial(getattr(schedules, action), schedule_id))
    except TaskerError as exc:
        return redirect(request, BACK, "error", str(exc))
    return redirect(request, BACK, "ok", done(schedule_id, result))


@pages.post("/schedules/{raw_id}/pause")
async def pause(request: Request) -> Response:
    return await _act(
        request, Permission.SCHEDULE_UPDATE, "pause", lambda i, _: f"schedule {i} paused"
    )


@pages.post("/schedules/{raw_id}/resume")
async def resume(request: Request) -> Response:
    return await _act(
        request, Permission.SCHEDULE_UPDATE, "resume", lambda i, _: f"schedule {i} resumed"
    )


@pages.post("/schedules/{raw_id}/trigger")
async def trigger(request: Request) -> Response:
    return await _act(
        request,
        Permission.SCHEDULE_TRIGGER,
        "trigger",
        lambda i, task: f"schedule {i} ran now: task {task.id}",
    )


@pages.post("/schedules/{raw_id}/remove")
async def remove(request: Request) -> Response:
    return await _act(
        request, Permission.SCHEDULE_DELETE, "remove", lambda i, _: f"schedule {i} removed"
    )
