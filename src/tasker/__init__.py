"""Tasker for Python: reliable, observable multi-step workflows.

The public API. Everything not re-exported here is private to its module.

Every name is imported on first use (`__getattr__`), so `import tasker` costs almost nothing and the
CLI's `--help` and `--version` start fast; `from tasker import Tasker` loads the engine as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasker.domain.errors import (
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
    from tasker.domain.events import Events
    from tasker.domain.records import Signal, Step, Task
    from tasker.domain.retry import RetryPolicy
    from tasker.domain.states import StepState, TaskState
    from tasker.domain.templates import StepTemplate, TaskTemplate
    from tasker.engine.tasker import Tasker
    from tasker.events.bus import Event, EventBus
    from tasker.events.subscriber import Subscriber
    from tasker.handlers.api import ApiRequest, ApiStepHandler, AsyncApiStepHandler
    from tasker.handlers.base import (
        StepContext,
        StepHandler,
        TaskHandler,
        UndeclaredEventError,
        UndeclaredSignalError,
        WaitRequest,
    )

__version__ = "0.1.0"

#: The public API, grouped by what a user does with it (so not sorted), pinned by
#: tests/unit/test_public_api.py.
__all__ = [  # noqa: RUF022
    # -- the engine: open a store, load templates, create and run tasks
    "Tasker",
    "__version__",
    # -- templates: what a workflow is (loaded from YAML by `Tasker.load_templates`)
    "StepTemplate",
    "TaskTemplate",
    "RetryPolicy",
    # -- handlers: the user code a step or a task runs
    "StepHandler",
    "StepContext",
    "TaskHandler",
    "ApiStepHandler",
    "AsyncApiStepHandler",
    "ApiRequest",
    "WaitRequest",
    # -- errors: what handlers raise to steer retries, and what the engine raises to callers
    "TaskerError",
    "TaskerInputError",
    "RetryableError",
    "PermanentError",
    "StepTimeoutError",
    "TemplateError",
    "UnknownTemplateError",
    "ContextValidationError",
    "IdempotencyConflict",
    "NotFoundError",
    "OperationError",
    "UndeclaredEventError",
    "UndeclaredSignalError",
    # -- events: live events of this process, and subscribers to them
    "Event",
    "EventBus",
    "Events",
    "Subscriber",
    # -- records and states: what the engine hands back
    "Task",
    "Step",
    "Signal",
    "TaskState",
    "StepState",
]

_ERRORS = (
    "ContextValidationError",
    "IdempotencyConflict",
    "NotFoundError",
    "OperationError",
    "PermanentError",
    "RetryableError",
    "StepTimeoutError",
    "TaskerError",
    "TaskerInputError",
    "TemplateError",
    "UnknownTemplateError",
)

#: Public name -> the module that defines it.
_SOURCES: dict[str, str] = {
    **dict.fromkeys(_ERRORS, "tasker.domain.errors"),
    **dict.fromkeys(("ApiRequest", "ApiStepHandler", "AsyncApiStepHandler"), "tasker.handlers.api"),
    **dict.fromkeys(
        (
            "StepContext",
            "StepHandler",
            "TaskHandler",
            "UndeclaredEventError",
            "UndeclaredSignalError",
            "WaitRequest",
        ),
        "tasker.handlers.base",
    ),
    **dict.fromkeys(("Signal", "Step", "Task"), "tasker.domain.records"),
    **dict.fromkeys(("Event", "EventBus"), "tasker.events.bus"),
    **dict.fromkeys(("StepState", "TaskState"), "tasker.domain.states"),
    **dict.fromkeys(("StepTemplate", "TaskTemplate"), "tasker.domain.templates"),
    "Tasker": "tasker.engine.tasker",
    "Events": "tasker.domain.events",
    "Subscriber": "tasker.events.subscriber",
    "RetryPolicy": "tasker.domain.retry",
}


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use, and keep it here for the next one."""
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
