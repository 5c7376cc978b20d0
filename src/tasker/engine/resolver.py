"""From a claimed step to the code that runs it: the pinned template snapshot and the handler class.

Snapshots are immutable, so each is parsed once per process. A handler class comes from the template
this process loaded from disk when it has the same key, else from the snapshot's import path.
"""

from __future__ import annotations

import threading
from typing import Any

from tasker.domain.compensation import is_undo, undone_by
from tasker.domain.control import parse_instance
from tasker.domain.errors import TemplateError
from tasker.domain.retry import RetryPolicy
from tasker.domain.templates import StepTemplate, TaskTemplate
from tasker.registry import TemplateRegistry
from tasker.templates.loader import resolve_step_handler, resolve_task_handler


class Resolver:
    def __init__(self, registry: TemplateRegistry):
        self.registry = registry
        self._templates: dict[int, TaskTemplate] = {}
        self._handlers: dict[str, type] = {}
        self._policies: dict[tuple[int, str], RetryPolicy] = {}
        self._parents: dict[int, dict[str, list[str]]] = {}
        self._undos: dict[tuple[int, str], StepTemplate] = {}
        self._lock = threading.Lock()

    def known(self, template_id: int) -> bool:
        return template_id in self._templates

    def add_snapshot(self, template_id: int, definition: dict[str, Any]) -> TaskTemplate:
        with self._lock:
            t = self._templates.get(template_id)
            if t is None:
                t = TaskTemplate.from_snapshot(definition)
                self._templates[template_id] = t
            return t

    def template(self, template_id: int) -> TaskTemplate:
        return self._templates[template_id]

    def step(self, template_id: int, name: str) -> StepTemplate:
        if is_undo(name):
            return self.undo_step(template_id, name)
        return self._templates[template_id].step(name)

    def policy(self, template_id: int, name: str) -> RetryPolicy:
        key = (template_id, name)
        p = self._policies.get(key)
        if p is None:
            t = self._templates[template_id]
            p = self._policies[key] = t.retry_policy(self.step(template_id, name))
        return p

    def parents_of(self, template_id: int) -> dict[str, list[str]]:
        """Each step's parents by name, for the template of a claimed step."""
        found = self._parents.get(template_id)
        if found is None:
            steps = self._templates[template_id].step_templates
            found = self._parents[template_id] = {s.name: s.parents for s in steps}
        return found

    def related_steps(self, template_id: int, step: str) -> frozenset[str] | None:
        """The steps a claim of `step` reads of its task (`TaskTemplate.related_steps`; an
        instance, its fan-out step's), or None for the whole task: a template not loaded here
        yet, one that is not wide, or a step related to more than a quarter of its steps (one
        read of every row costs less than picking most of them by name)."""
        t = self._templates.get(template_id)
        if t is None or not t.wide:
            return None
        instance = parse_instance(step)
        found = t.related_steps(instance[0] if instance else step)
        return found if len(found) * 4 <= len(t.step_templates) else None

    def undo_step(self, template_id: int, name: str) -> StepTemplate:
        """The step an undo row (`undo:<step>`) runs: its step's template with the compensation's
        handler, config, retry limit and system in place of the step's own (computed once)."""
        key = (template_id, name)
        found = self._undos.get(key)
        if found is None:
            t = self._templates[template_id]
            forward = undone_by(name)
            if forward is None:
                raise TemplateError(f"'{name}' is not an undo row")
            instance = parse_instance(forward)
            step = t.step(instance[0] if instance else forward)
            comp = step.compensation
            if comp is None:
                raise TemplateError(f"step '{step.name}' of {t.key} declares no compensation")
            found = step.model_copy(
                update={
                    "name": name,
                    "handler_class": comp.handler_class,
                    "handler_config": (
                        comp.handler_config
                        if comp.handler_config is not None
                        else step.handler_config
                    ),
                    "default_retry_limit": comp.retry_limit or step.default_retry_limit,
                    "dependent_system": comp.dependent_system or step.dependent_system,
                    "custom_events": [],
                    "foreach": None,
                    "task": None,
                    "compensation": None,
                }
            )
            with self._lock:
                self._undos[key] = found
        return found

    def children_of(self, template_id: int, name: str) -> list[str]:
        return self._templates[template_id].children()[name]

    def handler_class(self, template_id: int, name: str) -> type:
        """The handler class of a step (of an undo row: its compensation's)."""
        step = self.step(template_id, name)
        path = step.handler_class
        if path is None:
            raise TemplateError(f"step '{name}' has no handler_class: it runs task {step.task}")
        cls = self._handlers.get(path)
        if cls is None:
            cls = resolve_step_handler(path, where=f"step '{name}'")
            self._handlers[path] = cls
        return cls

    def task_handler(self, template_id: int) -> Any | None:
        t = self._templates.get(template_id)
        if t is None or not t.task_handler_class:
            return None
        cls = self._handlers.get(t.task_handler_class)
        if cls is None:
            cls = resolve_task_handler(t.task_handler_class, where=f"{t.key}: task_handler_class")
            self._handlers[t.task_handler_class] = cls
        return cls()
