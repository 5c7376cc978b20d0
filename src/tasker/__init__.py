"""Tasker for Python: reliable, observable multi-step workflows.

The public API. Everything not re-exported here is private to its module.
"""

from typing import TYPE_CHECKING, Any

from tasker.engine.model import Step, Task
from tasker.engine.tasker import Tasker
from tasker.errors import (
    ContextValidationError,
    IdempotencyConflict,
    NotFoundError,
    OperationError,
    PermanentError,
    RetryableError,
    StepTimeoutError,
    TaskerError,
    TaskerInputError,
    TemplateError,
    UnknownTemplateError,
)
from tasker.events.bus import Event, EventBus
from tasker.events.catalog import Events
from tasker.events.subscriber import Subscriber
from tasker.handlers.base import StepContext, StepHandler, TaskHandler, UndeclaredEventError
from tasker.retry import RetryPolicy
from tasker.states import StepState, TaskState
from tasker.templates.model import StepTemplate, TaskTemplate

if TYPE_CHECKING:
    from tasker.handlers.api import ApiRequest, ApiStepHandler, AsyncApiStepHandler

__version__ = "0.1.0"

__all__ = [
    "ApiRequest",
    "ApiStepHandler",
    "AsyncApiStepHandler",
    "ContextValidationError",
    "Event",
    "EventBus",
    "Events",
    "IdempotencyConflict",
    "NotFoundError",
    "OperationError",
    "PermanentError",
    "RetryPolicy",
    "RetryableError",
    "Step",
    "StepContext",
    "StepHandler",
    "StepState",
    "StepTemplate",
    "StepTimeoutError",
    "Subscriber",
    "Task",
    "TaskHandler",
    "TaskState",
    "TaskTemplate",
    "Tasker",
    "TaskerError",
    "TaskerInputError",
    "TemplateError",
    "UndeclaredEventError",
    "UnknownTemplateError",
    "__version__",
]


_LAZY = {"ApiRequest", "ApiStepHandler", "AsyncApiStepHandler"}


def __getattr__(name: str) -> Any:
    """The HTTP handlers import httpx: load them on first use, so plain engines start without it."""
    if name in _LAZY:
        from tasker.handlers import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
