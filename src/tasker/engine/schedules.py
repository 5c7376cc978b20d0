"""Cron schedules of templates: `engine.schedules`.

A template may declare `schedules:` in its YAML (synced into the store whenever the template is
loaded: added, changed, or removed with it; a pause survives); more can be added, listed, paused,
resumed, triggered now and removed at run time. Each tick creates one task, fired by whichever
worker holds the timers job (`tasker.engine.timers`); after downtime, the schedule's `catch_up`
says what happens to the ticks missed (`tasker.domain.schedules`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ValidationError

from tasker.context_schema import validate_context
from tasker.domain.errors import NotFoundError, TaskerInputError
from tasker.domain.records import Task
from tasker.domain.schedules import CatchUp, Schedule, ScheduleSpec, first_tick
from tasker.domain.templates import TaskTemplate
from tasker.engine import clock
from tasker.handlers.base import TaskPort
from tasker.registry import TemplateRegistry
from tasker.store import schedules as schedule_store
from tasker.store.database import Database

#: `origin` of a schedule declared in a template's YAML, and of one added at run time.
FROM_TEMPLATE = "template"
FROM_API = "api"


def _spec(**fields: Any) -> ScheduleSpec:
    """A schedule's settings checked as a template's are; the first problem as one line."""
    try:
        return ScheduleSpec(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "schedule"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise TaskerInputError(f"schedule {where}: {message}") from None


class Schedules:
    """The schedules of an engine's store."""

    def __init__(self, db: Database, registry: TemplateRegistry, tasks: TaskPort):
        self.db = db
        self.registry = registry
        self._tasks = tasks

    def add(
        self,
        template: str,
        name: str,
        cron: str,
        *,
        timezone: str = "UTC",
        context: dict[str, Any] | None = None,
        catch_up: CatchUp | str = CatchUp.ONCE,
        version: str | None = None,
        paused: bool = False,
    ) -> Schedule:
        """Add a schedule for a loaded template (`ns/name`, or `ns/name@version` to pin one);
        its context is checked against the template's schema now."""
        spec = _spec(
            name=name, cron=cron, timezone=timezone, context=context or {}, catch_up=catch_up
        )
        tmpl = self.registry.get(template, version)
        pinned = tmpl.version if version is not None or "@" in template else None
        validate_context(tmpl.key, tmpl.context_schema, dict(spec.context))
        now = clock.now()
        with self.db.write() as conn:
            if schedule_store.find(conn, tmpl.namespace_name, tmpl.name, spec.name) is not None:
                raise TaskerInputError(
                    f"{tmpl.namespace_name}/{tmpl.name} already has a schedule named"
                    f" '{spec.name}'; pick another name or remove it first"
                )
            return schedule_store.add(conn, self._values(tmpl, spec, pinned, FROM_API, now, paused))

    def all(self, namespace: str | None = None) -> list[Schedule]:
        """Every schedule (of one namespace), by template and name."""
        with self.db.read() as conn:
            return schedule_store.all_schedules(conn, namespace)

    def get(self, schedule_id: int) -> Schedule:
        with self.db.read() as conn:
            return schedule_store.get(conn, schedule_id)

    def find(self, template: str, name: str) -> Schedule:
        """A schedule by its template (`ns/name`) and its name."""
        namespace, _, task_name = template.partition("@")[0].partition("/")
        with self.db.read() as conn:
            found = schedule_store.find(conn, namespace, task_name, name)
        if found is None:
            raise NotFoundError(
                f"{template} has no schedule named '{name}'; fix: list them with 'tasker"
                " schedules list'"
            )
        return found

    def pause(self, schedule_id: int) -> Schedule:
        """Stop firing until resumed (a template's schedule stays paused across reloads)."""
        with self.db.write() as conn:
            schedule_store.get(conn, schedule_id)
            return schedule_store.change(conn, schedule_id, clock.now(), paused=True)

    def resume(self, schedule_id: int) -> Schedule:
        """Fire again from the next tick on (the ticks missed while paused are not caught up)."""
        now = clock.now()
        with self.db.write() as conn:
            found = schedule_store.get(conn, schedule_id)
            return schedule_store.change(
                conn,
                schedule_id,
                now,
                paused=False,
                next_at=first_tick(found.cron, found.timezone, now),
            )

    def trigger(self, schedule_id: int, context: dict[str, Any] | None = None) -> Task:
        """Create the schedule's task now, outside its ticks (its next tick stays as it was);
        `context` overrides keys of the schedule's."""
        found = self.get(schedule_id)
        now = clock.now()
        return self._tasks.create_task(
            f"{found.namespace}/{found.task_name}",
            {**found.context, **(context or {})},
            version=found.version,
            idempotency_key=f"schedule:{found.id}:now:{now.isoformat()}",
            correlation_id=f"schedule-{found.id}-now",
        )

    def remove(self, schedule_id: int) -> None:
        """Delete a schedule (a template's comes back when the template is loaded again, unless
        it was removed from the YAML)."""
        with self.db.write() as conn:
            if not schedule_store.remove(conn, schedule_id):
                raise NotFoundError(
                    f"no schedule with id {schedule_id}; fix: list them with 'tasker schedules"
                    " list'"
                )

    def sync(self, template: TaskTemplate) -> None:
        """Make the store's schedules of a template's name those its newest loaded version
        declares: add new ones, update changed ones (a new cron or zone starts from the next
        tick; a pause stays), remove those no longer declared."""
        newest = self.registry.get(f"{template.namespace_name}/{template.name}")
        declared = {s.name: s for s in newest.schedules}
        now = clock.now()
        with self.db.write() as conn:
            stored = {
                s.name: s
                for s in schedule_store.template_schedules(conn, newest.namespace_name, newest.name)
            }
            for name, old in stored.items():
                if name not in declared:
                    schedule_store.remove(conn, old.id)
            for name, spec in declared.items():
                row = stored.get(name)
                if row is None:
                    if schedule_store.find(conn, newest.namespace_name, newest.name, name):
                        continue  # added at run time under the same name: that one stays
                    schedule_store.add(conn, self._values(newest, spec, None, FROM_TEMPLATE, now))
                    continue
                changes: dict[str, Any] = {}
                if (row.cron, row.timezone) != (spec.cron, spec.timezone):
                    changes.update(
                        cron=spec.cron,
                        timezone=spec.timezone,
                        next_at=first_tick(spec.cron, spec.timezone, now),
                    )
                if row.context != spec.context or row.catch_up != spec.catch_up:
                    changes.update(context=dict(spec.context), catch_up=spec.catch_up.value)
                if changes:
                    schedule_store.change(conn, row.id, now, **changes)

    @staticmethod
    def _values(
        tmpl: TaskTemplate,
        spec: ScheduleSpec,
        version: str | None,
        origin: str,
        now: datetime,
        paused: bool = False,
    ) -> dict[str, Any]:
        return {
            "namespace": tmpl.namespace_name,
            "task_name": tmpl.name,
            "version": version,
            "name": spec.name,
            "cron": spec.cron,
            "timezone": spec.timezone,
            "context": dict(spec.context),
            "catch_up": spec.catch_up.value,
            "paused": paused,
            "origin": origin,
            "next_at": first_tick(spec.cron, spec.timezone, now),
            "created_at": now,
            "updated_at": now,
        }
