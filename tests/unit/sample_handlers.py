"""Handler classes the template tests reference by import path (`tests.unit.sample_handlers:Ok`)."""

from __future__ import annotations

from typing import Any

from tasker.handlers import StepContext, StepHandler, TaskHandler


class Ok(StepHandler):
    """A step handler that succeeds with a fixed result."""

    def process(self, ctx: StepContext) -> dict[str, Any] | None:
        return {"ok": True}


class NotAHandler:
    """A class that is importable but is not a StepHandler."""

    def process(self, ctx: Any) -> dict[str, Any]:
        return {}


class Workflow(TaskHandler):
    """A task handler for `task_handler_class`."""


NOT_A_CLASS = 42
