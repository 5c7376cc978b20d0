"""Step and task handler base classes."""

from typing import TYPE_CHECKING, Any

from tasker.handlers.base import StepContext, StepHandler, TaskHandler, UndeclaredEventError

if TYPE_CHECKING:
    from tasker.handlers.api import ApiRequest, ApiStepHandler, AsyncApiStepHandler

__all__ = [
    "ApiRequest",
    "ApiStepHandler",
    "AsyncApiStepHandler",
    "StepContext",
    "StepHandler",
    "TaskHandler",
    "UndeclaredEventError",
]


_LAZY = {"ApiRequest", "ApiStepHandler", "AsyncApiStepHandler"}


def __getattr__(name: str) -> Any:
    """The HTTP handlers import httpx: load them on first use, so plain engines start without it."""
    if name in _LAZY:
        from tasker.handlers import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
