"""Step and task handler base classes."""

from tasker.handlers.base import StepContext, StepHandler, TaskHandler, UndeclaredEventError

__all__ = ["StepContext", "StepHandler", "TaskHandler", "UndeclaredEventError"]
