"""Authentication (API keys, JWT bearer tokens) and permission checks for the REST API.

PLACEHOLDER: the auth work replaces this module; `Permission` and `require` are the contract routes use:

    @router.post("/tasks", dependencies=[Depends(require(Permission.TASK_CREATE))])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Permission:
    TASK_INDEX = "tasker.task:index"
    TASK_SHOW = "tasker.task:show"
    TASK_CREATE = "tasker.task:create"
    TASK_UPDATE = "tasker.task:update"
    TASK_CANCEL = "tasker.task:cancel"
    TASK_RETRY = "tasker.task:retry"
    STEP_INDEX = "tasker.workflow_step:index"
    STEP_SHOW = "tasker.workflow_step:show"
    STEP_UPDATE = "tasker.workflow_step:update"
    STEP_RETRY = "tasker.workflow_step:retry"
    HANDLER_INDEX = "tasker.handler:index"
    HANDLER_SHOW = "tasker.handler:show"
    HEALTH_STATUS = "tasker.health_status:index"
    METRICS_INDEX = "tasker.metrics:index"
    ANALYTICS_INDEX = "tasker.analytics:index"
    EVENTS_INDEX = "tasker.events:index"


def require(permission: str) -> Callable[..., Any]:
    """A FastAPI dependency that lets the request through only with `permission` (placeholder: always)."""

    async def dependency() -> None:
        return None

    return dependency
