"""The public surface, pinned: a change to it must be deliberate, and made here too.

`tasker.__all__` is what users import; `Tasker`'s methods are the core verbs, and everything else is
on one of its parts (`engine.systems`, `engine.insight`, ...). Adding, removing or renaming any of
them fails this test until it is updated along with the docs (README, docs/handlers.md).
"""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import tasker
from tasker import Tasker
from tasker.engine.bulk import Bulk
from tasker.engine.history import History
from tasker.engine.insight import Insight
from tasker.engine.keys import ApiKeys
from tasker.engine.queries import TaskListing
from tasker.engine.retention import Retention
from tasker.engine.schedules import Schedules
from tasker.engine.signals import Signals
from tasker.engine.systems import Systems
from tasker.engine.templates import Templates

PUBLIC_NAMES = [
    # the engine
    "Tasker",
    "__version__",
    # templates
    "StepTemplate",
    "TaskTemplate",
    "RetryPolicy",
    # handlers
    "StepHandler",
    "StepContext",
    "TaskHandler",
    "ApiStepHandler",
    "AsyncApiStepHandler",
    "ApiRequest",
    "WaitRequest",
    # errors
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
    # events
    "Event",
    "EventBus",
    "Events",
    "Subscriber",
    # records and states
    "Task",
    "Step",
    "Signal",
    "TaskState",
    "StepState",
]

#: The core verbs; everything else lives on a part.
TASKER_METHODS = {
    "load_templates",
    "create_task",
    "create_tasks",
    "run",
    "arun",
    "work",
    "awork",
    "worker",
    "get_task",
    "get_tasks",
    "child_tasks",
    "list_tasks",
    "cancel_task",
    "compensate_task",
    "signal",
    "rerun_from",
    "retry_task",
    "retry_step",
    "resolve_step",
    "add_subscriber",
    "close",
}

#: Attribute of `Tasker` -> (its class, its public methods).
PARTS: dict[str, tuple[type, set[str]]] = {
    "templates": (Templates, {"register", "get", "versions", "of_task"}),
    "systems": (
        Systems,
        {
            "configure",
            "apply_templates",
            "set_namespace_limit",
            "report",
            "namespace_limits",
            "key_limits",
            "circuit_history",
            "reset_circuit",
            "workers",
        },
    ),
    "insight": (
        Insight,
        {"readiness", "status", "performance", "bottlenecks", "analytics", "overview"},
    ),
    "listing": (TaskListing, {"page", "count", "total"}),
    "history": (History, {"step_transitions", "task_transitions", "read_events", "events_tail"}),
    "keys": (ApiKeys, {"create", "all", "revoke", "authenticate"}),
    "signals": (Signals, {"send", "of_task"}),
    "bulk": (Bulk, {"filter", "count", "retry", "cancel", "purge", "run"}),
    "retention": (Retention, {"purge", "report"}),
    "schedules": (
        Schedules,
        {"add", "all", "get", "find", "pause", "resume", "trigger", "remove", "sync"},
    ),
}

#: Plain attributes of an engine (not methods): its settings, its store and registry, its parts.
TASKER_ATTRIBUTES = {
    "db",
    "registry",
    "resolver",
    "bus",
    "concurrency",
    "lease_seconds",
    "poll_interval",
    "backoff_scale",
    *PARTS,
}


def public_methods(cls: type) -> set[str]:
    return {
        name
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and callable(member)
    }


def test_the_package_exports_exactly_the_curated_names() -> None:
    assert tasker.__all__ == PUBLIC_NAMES
    assert set(PUBLIC_NAMES) <= set(dir(tasker))
    for name in PUBLIC_NAMES:
        assert getattr(tasker, name) is not None, name


def test_every_exported_name_comes_from_its_defining_module() -> None:
    for name in PUBLIC_NAMES:
        if name == "__version__":
            continue
        value = getattr(tasker, name)
        module = importlib.import_module(value.__module__)
        assert getattr(module, name) is value, name


def test_tasker_has_only_the_core_verbs() -> None:
    assert public_methods(Tasker) == TASKER_METHODS


def test_each_part_has_exactly_its_methods() -> None:
    for attribute, (cls, methods) in PARTS.items():
        assert public_methods(cls) == methods, attribute


def test_an_engine_exposes_its_parts_and_settings_only() -> None:
    engine = Tasker("sqlite://")
    try:
        attributes = {n for n in vars(engine) if not n.startswith("_")}
        assert attributes == TASKER_ATTRIBUTES
        for attribute, (cls, _) in PARTS.items():
            assert isinstance(getattr(engine, attribute), cls), attribute
    finally:
        engine.close()


def test_import_tasker_stays_lazy() -> None:
    """`import tasker` loads no engine, store or web framework (the CLI's start-up needs that)."""
    code = (
        "import sys, tasker; "
        "heavy = [m for m in ('tasker.engine.tasker', 'sqlalchemy', 'pydantic', 'fastapi') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
