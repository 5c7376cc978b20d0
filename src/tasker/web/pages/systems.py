"""Dependent systems: circuit state, consecutive failures, in flight against the limit, namespace
limits; one system's circuit history as a timeline; reset a circuit.

Viewing needs `tasker.health_status:index` (circuits are part of `GET /api/v1/health/status`).
Resetting a circuit changes how every worker treats a system, an operator's write with no API route
of its own: it needs `tasker.task:update`, the permission of the API's other operator writes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from tasker.api.auth import Permission
from tasker.domain.errors import NotFoundError
from tasker.domain.history import SystemReport
from tasker.engine.tasker import Tasker
from tasker.web.access import Pages, actor, page, read_form, redirect, viewer
from tasker.web.charts import state_band

pages = Pages()
RESET_PERMISSION = Permission.TASK_UPDATE
#: The circuit history page shows the latest transitions of one system.
HISTORY_ROWS = 200


def _gather(engine: Tasker) -> tuple[list[SystemReport], dict[str, int]]:
    return engine.systems.report(), engine.systems.namespace_limits()


@pages.get("/systems")
async def systems(request: Request) -> Response:
    v = await viewer(request, Permission.HEALTH_STATUS)
    found, limits = await run_in_threadpool(_gather, request.app.state.tasker)
    return page(
        request,
        v,
        "systems.html",
        "Dependent systems",
        "systems",
        systems=found,
        limits=limits,
        can_reset=v.can(RESET_PERMISSION),
    )


@pages.get("/systems/{name}")
async def system(request: Request) -> Response:
    name = request.path_params["name"]
    v = await viewer(request, Permission.HEALTH_STATUS)
    engine: Tasker = request.app.state.tasker
    found, limits = await run_in_threadpool(_gather, engine)
    row = next((s for s in found if s["name"] == name), None)
    if row is None:
        raise NotFoundError(
            f"no dependent system '{name[:128]}'; fix: pick one from the systems page"
        )
    history = await run_in_threadpool(
        partial(engine.systems.circuit_history, name, last=HISTORY_ROWS)
    )
    band = state_band(history, datetime.now(UTC))
    return page(
        request,
        v,
        "system.html",
        f"System {name}",
        "systems",
        system=row,
        history=history[::-1],
        band=band,
        limits=limits,
        can_reset=v.can(RESET_PERMISSION),
    )


@pages.post("/systems/{name}/reset")
async def reset(request: Request) -> Response:
    name = request.path_params["name"]
    form = await read_form(request)
    await actor(request, form, RESET_PERMISSION)
    found = await run_in_threadpool(request.app.state.tasker.systems.reset_circuit, name)
    back = "/systems"
    if not found:
        return redirect(request, back, "error", f"no dependent system '{name[:128]}' to reset")
    return redirect(request, back, "ok", f"the circuit of '{name}' is closed")
