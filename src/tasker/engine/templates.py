"""Templates loaded in this process and the snapshots tasks were created with: `engine.templates`.

`Tasker.load_templates` reads YAML into the registry; this part registers built templates, looks
them up, lists every loaded version, and reads the snapshot a task is pinned to (which may be a
version no longer loaded).
"""

from __future__ import annotations

from tasker.domain.errors import NotFoundError
from tasker.domain.templates import TaskTemplate, semver_key
from tasker.registry import TemplateRegistry
from tasker.store import tasks as task_store
from tasker.store.database import Database


class Templates:
    """The template registry of an engine, and the template snapshots of its store."""

    def __init__(self, registry: TemplateRegistry, db: Database):
        self.registry = registry
        self.db = db

    def register(self, template: TaskTemplate) -> None:
        """Add a template built in code (YAML files go through `Tasker.load_templates`)."""
        self.registry.register(template)

    def get(self, ref: str, version: str | None = None) -> TaskTemplate:
        """A loaded template by `namespace/name` (or `name@version`); the latest without a
        version."""
        return self.registry.get(ref, version)

    def versions(self) -> list[TaskTemplate]:
        """Every loaded template, all versions, by namespace, name and semantic version."""
        return sorted(
            self.registry.all(), key=lambda t: (t.namespace_name, t.name, semver_key(t.version))
        )

    def of_task(self, task_id: int) -> TaskTemplate:
        """The template snapshot a task was created with (not necessarily the latest loaded one)."""
        definition = task_store.snapshot_of(self.db, task_id)
        if definition is None:
            raise NotFoundError(f"no task with id {task_id}")
        return TaskTemplate.from_snapshot(definition)
