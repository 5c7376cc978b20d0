"""Step and task handler base classes."""

from tasker.handlers.api import ApiRequest, ApiStepHandler, AsyncApiStepHandler
from tasker.handlers.base import StepContext, StepHandler, TaskHandler, UndeclaredEventError

__all__ = [
    "ApiRequest", "ApiStepHandler", "AsyncApiStepHandler", "StepContext", "StepHandler", "TaskHandler",
    "UndeclaredEventError",
]
