"""`Tasker`: the engine object users hold. Opens a store, loads templates, creates and runs tasks.

Every method is a thin use case over the store and the worker, so the CLI, the API and tests all
drive the same code paths.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from tasker.context_schema import validate_context
from tasker.domain.errors import (
    IdempotencyConflict,
    NotFoundError,
    StoreConflict,
    StoreContention,
    StoreError,
    TaskerInputError,
)
from tasker.domain.records import Task
from tasker.domain.states import FINISHED_TASK_STATES
from tasker.engine import queries
from tasker.engine.handler_threads import HandlerThreads
from tasker.engine.queries import Overview, TaskPage, TaskQuery
from tasker.engine.resolver import Resolver
from tasker.engine.worker import Worker, WorkerOptions
from tasker.events.bus import Event, EventBus
from tasker.events.subscriber import Subscriber
from tasker.registry import TemplateRegistry
from tasker.store import api_keys as key_store
from tasker.store import event_log, operations, systems
from tasker.store import tasks as task_store
from tasker.store import workers as workers_store
from tasker.store.database import Database
from tasker.store.journal import Journal
from tasker.store.schema import tasks as tasks_table
from tasker.templates.loader import load_path, resolve_task_handler
from tasker.templates.model import TaskTemplate, semver_key

log = logging.getLogger("tasker")

#: PostgreSQL deadlock_detected and serialization_failure: the transaction may simply be run again.
_OPERATION_ATTEMPTS = 5


def utcnow() -> datetime:
    return datetime.now(UTC)


class Tasker:
    """The workflow engine on one store.

    >>> engine = Tasker()                       # ./tasker.db, or TASKER_DATABASE_URL
    >>> engine.load_templates("templates/")
    >>> task = engine.create_task("ecommerce/process_order", {...})
    >>> engine.run(task.id).status
    'complete'
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        templates: str | Path | Sequence[str | Path] | None = None,
        concurrency: int = 10,
        lease_seconds: float = 30.0,
        poll_interval: float = 0.5,
        backoff_scale: float = 1.0,
        migrate: bool | None = None,
    ):
        if concurrency < 1:
            raise TaskerInputError("concurrency must be at least 1")
        if lease_seconds <= 0:
            raise TaskerInputError("lease_seconds must be greater than 0")
        self.db = Database(database_url, migrate=migrate)
        self.registry = TemplateRegistry()
        self.resolver = Resolver(self.registry)
        self.bus = EventBus()
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.backoff_scale = backoff_scale
        self._workers: set[Worker] = set()
        self._lock = threading.Lock()
        self._runner: _Runner | None = None
        self._final_counts = queries.FinalCounts()  # the overview's settled counts (queries.py)
        if templates is not None:
            for p in [templates] if isinstance(templates, (str, Path)) else templates:
                self.load_templates(p)

    # -- templates ---------------------------------------------------------------------------------
    def load_templates(self, path: str | Path) -> list[TaskTemplate]:
        """Load and register every template in a YAML file or directory; bad files raise
        `TemplateError`."""
        loaded = load_path(path)
        for t in loaded:
            self.registry.register(t)
            for w in t.warnings:
                log.warning(w)
        self._apply_limits(loaded)
        return loaded

    def _apply_limits(self, loaded: Sequence[TaskTemplate]) -> None:
        """Store the limits and breaker settings templates declare, so every worker honours them."""
        declared = [t for t in loaded if t.dependent_systems or t.namespace_max_in_flight]
        if not declared:
            return
        now = utcnow()
        with self.db.write() as conn:
            for t in declared:
                for name, cfg in t.dependent_systems.items():
                    systems.configure(conn, name, now, **cfg.model_dump(exclude_none=True))
                if t.namespace_max_in_flight:
                    systems.set_namespace_limit(
                        conn, t.namespace_name, t.namespace_max_in_flight, now
                    )

    # -- dependent systems -------------------------------------------------------------------------
    def configure_system(self, name: str, **settings: Any) -> None:
        """Set `max_in_flight`, `failure_threshold`, `cooldown_seconds`, `max_cooldown_seconds` of a
        system.

        Values outside the ranges of `tasker.domain.bounds` (NaN, infinity, booleans, absurd sizes)
        are refused with `TaskerInputError` before anything is written.
        """
        try:
            with self.db.write() as conn:
                systems.configure(conn, name, utcnow(), **settings)
        except ValueError as exc:
            raise TaskerInputError(f"dependent system '{name}': {exc}") from None

    def set_namespace_limit(self, namespace: str, max_in_flight: int | None) -> None:
        """Cap the steps of a namespace running at once across all workers (None removes the
        cap)."""
        with self.db.write() as conn:
            systems.set_namespace_limit(conn, namespace, max_in_flight, utcnow())

    def systems(self) -> list[dict[str, Any]]:
        """Each dependent system: circuit state, consecutive failures, in flight, waiting,
        limits."""
        with self.db.read() as conn:
            return systems.report(conn)

    def workers(
        self, within_seconds: float = workers_store.ALIVE_WITHIN_SECONDS
    ) -> list[dict[str, Any]]:
        """Long-running workers heard from within `within_seconds` (any process, any machine)."""
        with self.db.read() as conn:
            return workers_store.recent(conn, utcnow(), within_seconds)

    def namespace_limits(self) -> dict[str, int]:
        with self.db.read() as conn:
            return systems.namespace_limit_rows(conn)

    def circuit_history(
        self, system: str | None = None, *, last: int | None = None
    ) -> list[dict[str, Any]]:
        """Circuit changes, oldest first (with `last`: only the newest `last`)."""
        with self.db.read() as conn:
            return systems.circuit_history(conn, system, last=last)

    def reset_circuit(self, system: str) -> bool:
        """Close a system's circuit by hand (an operator knows it is healthy again)."""
        journal = Journal(utcnow())
        with self.db.write() as conn:
            found = systems.reset(conn, journal, system)
        self._publish(journal.events)
        self._notify_workers()
        return found

    def register_template(self, template: TaskTemplate) -> None:
        self.registry.register(template)

    def get_template(self, ref: str, version: str | None = None) -> TaskTemplate:
        return self.registry.get(ref, version)

    # -- tasks -------------------------------------------------------------------------------------
    def create_task(
        self,
        template: str,
        context: dict[str, Any] | None = None,
        *,
        version: str | None = None,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
    ) -> Task:
        """Create a task (validated, defaults applied, template pinned); idempotent by intent.

        With an explicit `idempotency_key`, a repeated request returns the first task (for as long
        as it is kept) with `deduplicated=True`; the same key with another payload raises
        `IdempotencyConflict`. A template with `identity: {from: [...], window_seconds: N}` derives
        the key from those context paths, so equal requests within the window are one task. Without
        either, every call creates a new task.
        """
        tmpl = self.registry.get(template, version)
        ctx = validate_context(
            tmpl.key, tmpl.context_schema, context if context is not None else {}
        )
        if tmpl.task_handler_class:
            handler = resolve_task_handler(
                tmpl.task_handler_class, where=f"{tmpl.key}: task_handler_class"
            )()
            ctx = handler.prepare_context(ctx)
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 255
        ):
            raise TaskerInputError("idempotency_key must be a string of 1 to 255 characters")
        corr = correlation_id or _correlation_id(ctx)
        journal = Journal(utcnow())
        identity = None if idempotency_key else task_store.identity_keys(tmpl, ctx, journal.now)
        key = idempotency_key or (identity.key if identity else task_store.fresh_idempotency_key())
        if identity is not None and identity.previous is not None:
            earlier = self._find_recent(tmpl, identity)
            if earlier is not None:
                return _dedup(self.get_task(earlier))
        try:
            # Optimistic: a duplicate is rare, and the unique index decides races between creators.
            with self.db.write() as conn:
                task = task_store.insert_task(conn, journal, tmpl, ctx, key, corr)
                journal.flush(conn)
        except StoreConflict:
            existing = self._find(tmpl, key)
            if existing is None:
                raise
            found = self.get_task(existing)
            if idempotency_key is not None:
                pinned = version is not None or "@" in template
                self._check_same_payload(found, tmpl, ctx, context or {}, pinned=pinned)
            return _dedup(found)
        self._publish(journal.events)
        self._notify_workers()
        return task

    def create_tasks(
        self,
        template: str,
        contexts: Sequence[dict[str, Any]],
        *,
        version: str | None = None,
        chunk_size: int = 500,
    ) -> list[int]:
        """Create many tasks of one template with multi-row inserts; returns their ids in input
        order.

        Each context is validated like `create_task`'s, and the whole batch is refused if any is
        invalid. Every context is a new task, unless the template declares `identity:`: then equal
        identities are one task, as with `create_task`.
        """
        tmpl = self.registry.get(template, version)
        handler = None
        if tmpl.task_handler_class:
            handler = resolve_task_handler(
                tmpl.task_handler_class, where=f"{tmpl.key}: task_handler_class"
            )()
        items = []
        for ctx in contexts:
            ctx = validate_context(tmpl.key, tmpl.context_schema, ctx)
            if handler is not None:
                ctx = handler.prepare_context(ctx)
            if (
                tmpl.identity is not None
            ):  # derived keys: one by one, which finds earlier windows too
                items.append(task_store.NewTask(ctx, "", _correlation_id(ctx)))
                continue
            items.append(
                task_store.NewTask(ctx, task_store.fresh_idempotency_key(), _correlation_id(ctx))
            )
        if tmpl.identity is not None:
            found = [
                self.create_task(template, it.context, version=tmpl.version).id for it in items
            ]
            self._notify_workers()
            return found
        ids: list[int] = []
        for start in range(0, len(items), max(1, chunk_size)):
            chunk = items[start : start + chunk_size]
            journal = Journal(utcnow())
            try:
                with self.db.write() as conn:
                    created = task_store.insert_tasks(conn, journal, tmpl, chunk)
                    journal.flush(conn)
            except StoreConflict:  # a key already exists: fall back to one by one (deduplicates)
                ids.extend(
                    self.create_task(template, it.context, version=tmpl.version).id for it in chunk
                )
                continue
            ids.extend(t.id for t in created)
            self._publish(journal.events)
        self._notify_workers()
        return ids

    def _find_recent(self, tmpl: TaskTemplate, identity: task_store.IdentityKeys) -> int | None:
        """A task of the previous identity window still within the window of this request."""
        assert identity.previous is not None and identity.window_seconds is not None
        since = utcnow() - timedelta(seconds=identity.window_seconds)
        with self.db.read() as conn:
            return task_store.find_recent_task_id(
                conn, tmpl.namespace_name, tmpl.name, identity.previous, since
            )

    def _check_same_payload(
        self,
        found: Task,
        tmpl: TaskTemplate,
        ctx: dict[str, Any],
        raw: dict[str, Any],
        *,
        pinned: bool,
    ) -> None:
        """Refuse an explicit idempotency key reused with another version or context
        (`IdempotencyConflict`).

        An unpinned retry that lands after a deploy of a newer version is the same request: its
        context is compared as the first task's version would have prepared it, when that version is
        still loaded.
        """
        differences: list[str] = []
        if found.version != tmpl.version:
            if pinned:
                differences.append(
                    f"template version {tmpl.version} != {found.version} of the first request"
                )
            else:
                try:
                    first = self.registry.get(f"{found.namespace}/{found.name}", found.version)
                    ctx = self._prepared_context(first, raw)
                except (
                    TaskerInputError
                ):  # that version is gone, or refuses this context: compare as sent
                    pass
        differences += [f"context {p}" for p in task_store.context_differences(found.context, ctx)]
        if differences:
            raise IdempotencyConflict(
                found.idempotency_key, found.id, found.template_key, differences
            )

    def _prepared_context(self, tmpl: TaskTemplate, context: dict[str, Any]) -> dict[str, Any]:
        ctx = validate_context(tmpl.key, tmpl.context_schema, context)
        if tmpl.task_handler_class:
            handler = resolve_task_handler(
                tmpl.task_handler_class, where=f"{tmpl.key}: task_handler_class"
            )()
            ctx = handler.prepare_context(ctx)
        return ctx

    def _find(self, tmpl: TaskTemplate, key: str) -> int | None:
        with self.db.read() as conn:
            return task_store.find_task_id(conn, tmpl.namespace_name, tmpl.name, key)

    def get_task(self, task_id: int) -> Task:
        with self.db.read() as conn:
            task = task_store.get_task(conn, int(task_id))
        if task is None:
            raise NotFoundError(
                f"no task with id {task_id}; fix: list tasks with 'tasker tasks list'"
            )
        return task

    def _status(self, task_id: int) -> str:
        with self.db.read() as conn:
            status = conn.execute(
                select(tasks_table.c.status).where(tasks_table.c.id == task_id)
            ).scalar()
        if status is None:
            raise NotFoundError(
                f"no task with id {task_id}; fix: list tasks with 'tasker tasks list'"
            )
        return str(status)

    def get_tasks(self, task_ids: Sequence[int]) -> list[Task]:
        with self.db.read() as conn:
            return task_store.get_tasks(conn, list(task_ids))

    def list_tasks(
        self, *, limit: int = 50, offset: int = 0, **filters: Any
    ) -> tuple[list[Task], int]:
        with self.db.read() as conn:
            return task_store.list_tasks(conn, limit=limit, offset=offset, **filters)

    def page_tasks(
        self,
        query: TaskQuery | None = None,
        *,
        limit: int = 50,
        after: str | None = None,
        before: str | None = None,
        offset: int = 0,
    ) -> TaskPage:
        """A keyset page of tasks, newest first, without steps: `after`/`before` are the cursors of
        a page.

        Fast at any depth and any table size (an index walk from the cursor, no OFFSET, no COUNT);
        `offset` is only for the API's older clients.
        """
        return queries.page_tasks(
            self.db, query or TaskQuery(), limit=limit, after=after, before=before, offset=offset
        )

    def count_tasks(self, query: TaskQuery | None = None) -> int:
        """How many tasks match `query`; reads every match, so listings do not call it."""
        return queries.count_tasks(self.db, query or TaskQuery())

    def overview(self) -> Overview:
        """Tasks by status, retries waiting, recent outcomes, attempts per minute, latest
        failures."""
        return queries.overview(self.db, self._final_counts)

    def template_versions(self) -> list[TaskTemplate]:
        """Every loaded template, all versions, by namespace, name and semantic version."""
        return sorted(
            self.registry.all(), key=lambda t: (t.namespace_name, t.name, semver_key(t.version))
        )

    def step_transitions(self, task_id: int) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            return [dict(r._mapping) for r in task_store.step_history(conn, task_id)]

    def task_transitions(self, task_id: int) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            return [dict(r._mapping) for r in task_store.task_history(conn, task_id)]

    def task_template(self, task_id: int) -> TaskTemplate:
        """The template snapshot a task was created with (not necessarily the latest loaded one)."""
        with self.db.read() as conn:
            definition = task_store.task_template_definition(conn, task_id)
        if definition is None:
            raise NotFoundError(f"no task with id {task_id}")
        return TaskTemplate.from_snapshot(definition)

    # -- operations --------------------------------------------------------------------------------
    def cancel_task(self, task_id: int, reason: str | None = None) -> Task:
        self._operate(operations.cancel_task, task_id, reason=reason)
        return self.get_task(task_id)

    def retry_task(self, task_id: int) -> Task:
        """Re-arm the failed steps of a task in `error` with fresh attempts."""
        self._operate(operations.retry_task, task_id)
        self._notify_workers()
        return self.get_task(task_id)

    def retry_step(self, task_id: int, step_name: str) -> Task:
        self._operate(operations.retry_step, task_id, step_name)
        self._notify_workers()
        return self.get_task(task_id)

    def resolve_step(
        self, task_id: int, step_name: str, results: dict[str, Any] | None = None
    ) -> Task:
        """Complete a step by hand with `results`; its dependents proceed as if it had run."""
        if results is not None and not isinstance(results, dict):
            raise TaskerInputError("the result of a resolved step must be a JSON object")
        self._operate(operations.resolve_step, task_id, step_name, results or {})
        self._notify_workers()
        return self.get_task(task_id)

    def _operate(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # An operator action locks the task, then its steps; a worker claiming a pending task's
        # first step locks the step, then the task. On PostgreSQL the two can deadlock: the server
        # aborts one of them, and the action, which changed nothing, is simply run again.
        for attempt in range(1, _OPERATION_ATTEMPTS + 1):
            try:
                with self.db.write() as conn:
                    journal = Journal(
                        utcnow()
                    )  # stamped once the write lock is held, in commit order
                    out = fn(conn, journal, *args, lock=self.db.is_postgres, **kwargs)
                    journal.flush(conn)
            except StoreContention:
                if attempt == _OPERATION_ATTEMPTS:
                    raise
                time.sleep(0.02 * attempt)
                continue
            self._publish(journal.events)
            return out
        raise AssertionError("unreachable")  # pragma: no cover

    def annotate(self, task_id: int, annotations: dict[str, Any]) -> None:
        """Merge annotations into the task's record (what task handlers' hooks return)."""
        current = self.get_task(task_id).annotations or {}
        with self.db.write() as conn:
            conn.execute(
                update(tasks_table)
                .where(tasks_table.c.id == task_id)
                .values(annotations={**current, **annotations})
            )

    # -- running -----------------------------------------------------------------------------------
    def worker(self, **overrides: Any) -> Worker:
        """A worker on this engine's store; options as `WorkerOptions`, defaults from the engine."""
        shared = overrides.pop("_shared", None)
        opts = WorkerOptions(
            concurrency=overrides.pop("concurrency", None) or self.concurrency,
            lease_seconds=overrides.pop("lease_seconds", None) or self.lease_seconds,
            poll_interval=overrides.pop("poll_interval", None) or self.poll_interval,
            backoff_scale=overrides.pop("backoff_scale", None) or self.backoff_scale,
            **overrides,
        )
        if shared is not None:
            return Worker(
                self.db,
                self.resolver,
                self.bus,
                opts,
                on_settled=self._on_settled,
                db_executor=shared.db_executor,
                handler_pool=shared.handler_pool,
                handler_threads=shared.handler_threads,
                tasks=self,
            )
        return Worker(
            self.db, self.resolver, self.bus, opts, on_settled=self._on_settled, tasks=self
        )

    async def arun(self, task_id: int, *, concurrency: int | None = None) -> Task:
        """Run one task to the end in this process (async form of `run`)."""
        if self._status(task_id) not in FINISHED_TASK_STATES:
            await self._drive(
                self.worker(concurrency=concurrency, task_id=task_id), until_idle=True
            )
        return self.get_task(task_id)

    def run(self, task_id: int, *, concurrency: int | None = None) -> Task:
        """Run one task to completion in this process, retries and backoff included; returns its
        final state."""
        if self._status(task_id) in FINISHED_TASK_STATES:
            return self.get_task(task_id)
        runner = self._get_runner()
        w = self.worker(concurrency=concurrency, task_id=task_id, _shared=runner)
        runner.call(self._drive(w, until_idle=True))
        return self.get_task(task_id)

    async def awork(
        self,
        *,
        concurrency: int | None = None,
        until_idle: bool = True,
        namespaces: Sequence[str] | None = None,
        worker: Worker | None = None,
    ) -> int:
        w = worker or self.worker(concurrency=concurrency, namespaces=namespaces)
        await self._drive(w, until_idle=until_idle)
        return w.steps_run

    def work(
        self,
        *,
        concurrency: int | None = None,
        until_idle: bool = True,
        namespaces: Sequence[str] | None = None,
        worker: Worker | None = None,
    ) -> int:
        """Process ready steps; with `until_idle`, return once nothing is left to run (retries
        included).

        Returns the number of step attempts this call ran.
        """
        runner = self._get_runner()
        w = worker or self.worker(concurrency=concurrency, namespaces=namespaces, _shared=runner)
        return int(runner.call(self.awork(until_idle=until_idle, worker=w)))

    def _get_runner(self) -> _Runner:
        with self._lock:
            if self._runner is None:
                self._runner = _Runner()
            return self._runner

    async def _drive(self, worker: Worker, *, until_idle: bool) -> None:
        with self._lock:
            self._workers.add(worker)
        try:
            await worker.run(until_idle=until_idle)
        finally:
            with self._lock:
                self._workers.discard(worker)

    def _notify_workers(self) -> None:
        with self._lock:
            workers = list(self._workers)
        for w in workers:
            w.notify()

    def _on_settled(self, settled: list[tuple[int, str]]) -> None:
        """Call task handlers' completion hooks and store the annotations they return."""
        for task_id, status in settled:
            try:
                definition_task = self.task_template(task_id)
                if not definition_task.task_handler_class:
                    continue
                handler = resolve_task_handler(
                    definition_task.task_handler_class, where=definition_task.key
                )()
                task = self.get_task(task_id)
                if status in ("complete", "resolved_manually"):
                    hook = handler.on_complete
                elif status in ("error", "cancelled"):
                    hook = handler.on_error
                else:
                    continue  # reopened (pending) or running: not an ending
                notes = hook(task)
                if notes:
                    self.annotate(task_id, notes)
            except Exception:
                log.exception(
                    "task handler hook failed for task %s; the task is not affected", task_id
                )

    # -- API keys ----------------------------------------------------------------------------------
    def create_api_key(
        self, name: str, permissions: Sequence[str] | str
    ) -> tuple[key_store.ApiKey, str]:
        """Store a new API key; returns its record and the key itself, which exists nowhere else.

        Only a digest is stored, so a lost key cannot be shown again: revoke it and create another.
        """
        key_store.check_name(name)
        grants = key_store.check_permissions(
            permissions.split(",") if isinstance(permissions, str) else permissions
        )
        taken = TaskerInputError(
            f"an API key named '{name}' already exists (names of revoked keys stay taken); "
            "fix: choose another name"
        )
        secret, prefix = key_store.generate_key()
        try:
            with self.db.write() as conn:
                if key_store.name_taken(conn, name):
                    raise taken
                record = key_store.insert_key(
                    conn,
                    name=name,
                    prefix=prefix,
                    key_hash=key_store.digest(secret),
                    permissions=grants,
                    now=utcnow(),
                )
        except StoreConflict:  # a concurrent create took the name
            raise taken from None
        return record, secret

    def list_api_keys(self) -> list[key_store.ApiKey]:
        """Every key, revoked ones included, by name (never the secrets)."""
        with self.db.read() as conn:
            return key_store.list_keys(conn)

    def revoke_api_key(self, name: str) -> key_store.ApiKey:
        """Refuse a key from now on; revoking twice keeps the first date."""
        with self.db.write() as conn:
            record = key_store.revoke_key(conn, name, utcnow())
        if record is None:
            raise NotFoundError(
                f"no API key named '{name}'; fix: list keys with 'tasker keys list'"
            )
        return record

    def authenticate_api_key(self, key: str) -> key_store.ApiKey | None:
        """The active key matching `key`, or None (unknown, malformed or revoked); records when it
        was used."""
        if not isinstance(key, str) or not key_store.looks_like_key(key):
            return None
        with self.db.read() as conn:
            record = key_store.find_by_key(conn, key)
        if record is None or record.revoked:
            return None
        now = utcnow()
        if record.last_used_at is None or now - record.last_used_at >= key_store.TOUCH_EVERY:
            try:
                with self.db.write() as conn:
                    key_store.touch(conn, record.id, now)
            except StoreError:  # bookkeeping only: a busy store must not refuse a valid key
                log.warning("could not record the use of API key %s", record.prefix, exc_info=True)
        return record

    # -- health, status and analytics (tasker.engine.insight) --------------------------------------
    def readiness(self, *, timeout: float = 5.0) -> dict[str, Any]:
        """Whether the database answers within `timeout` seconds and is migrated to the latest
        revision."""
        from tasker.engine import insight

        return insight.readiness(self.db, timeout=timeout)

    def status(self, *, window_hours: int = 24) -> dict[str, Any]:
        """Tasks and steps by state, backlog, workers seen recently, circuits, and a health
        verdict."""
        from tasker.engine import insight

        return insight.status(self.db, window_hours=window_hours)

    def performance(
        self,
        period_hours: int = 24,
        *,
        namespace: str | None = None,
        name: str | None = None,
        version: str | None = None,
    ) -> dict[str, Any]:
        """Per template over the period: started, completed, failed, completion rate, p50/p95
        durations."""
        from tasker.engine import insight

        return insight.performance(
            self.db, period_hours, namespace=namespace, name=name, version=version
        )

    def analytics(
        self,
        period_hours: int = 24,
        *,
        namespace: str | None = None,
        name: str | None = None,
        version: str | None = None,
        limit: int = 10,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """`performance` and `bottlenecks` of one scope from one read (what a dashboard shows at
        once)."""
        from tasker.engine import insight

        return insight.reports(
            self.db, period_hours, namespace=namespace, name=name, version=version, limit=limit
        )

    def bottlenecks(
        self,
        period_hours: int = 24,
        *,
        namespace: str | None = None,
        name: str | None = None,
        version: str | None = None,
        limit: int = 10,
    ) -> dict[str, Any]:
        """Slowest and most retried steps, error rates per step and dependent system,
        recommendations."""
        from tasker.engine import insight

        return insight.bottlenecks(
            self.db, period_hours, namespace=namespace, name=name, version=version, limit=limit
        )

    # -- events ------------------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[Event], None], *patterns: str) -> Callable[[], None]:
        """Call `listener` for events whose names match the glob patterns (all when none)."""
        return self.bus.subscribe(listener, *patterns)

    def read_events(
        self,
        after: str | None = None,
        *,
        task_id: int | None = None,
        namespace: str | None = None,
        names: Sequence[str] | None = None,
        limit: int = 1000,
    ) -> event_log.EventPage:
        """Events from the durable log (every worker process's), oldest first, after the cursor
        `after`.

        Pass the page's `cursor` back as `after` to continue; `names` takes glob patterns
        (`step.*`).
        """
        with self.db.read() as conn:
            return event_log.read(
                conn,
                after,
                task_id=task_id,
                namespace=namespace,
                names=names,
                limit=limit,
                now=utcnow(),
            )

    def events_tail(self) -> str:
        """A cursor at the end of the event log, to follow only what happens from now on."""
        with self.db.read() as conn:
            return event_log.tail(conn)

    def add_subscriber(self, subscriber: Subscriber) -> Callable[[], None]:
        """Attach a `Subscriber` (after handing it this engine with `bind`); returns a function that
        detaches it."""
        subscriber.bind(self)
        return subscriber.attach(self.bus)

    def _publish(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        for name, payload in events:
            self.bus.publish(name, payload)

    def close(self) -> None:
        with self._lock:
            runner, self._runner = self._runner, None
        if runner is not None:
            runner.close()
        self.db.dispose()

    def __enter__(self) -> Tasker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _correlation_id(context: dict[str, Any]) -> str:
    given = context.get("correlation_id")
    if isinstance(given, str) and given:
        return given[:128]
    return f"corr-{uuid.uuid4().hex[:16]}"


def _dedup(task: Task) -> Task:
    from dataclasses import replace

    return replace(task, deduplicated=True)


class _Runner:
    """A background event loop with long-lived executors that the blocking `run`/`work` calls reuse.

    Starting an event loop and thread pools for every call would cost more than running a short
    task.
    """

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.loop = asyncio.new_event_loop()
        self.db_executor = ThreadPoolExecutor(1, thread_name_prefix="tasker-db")
        self.handler_pool = ThreadPoolExecutor(8, thread_name_prefix="tasker-hooks")
        self.handler_threads = HandlerThreads(256)
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="tasker-runner", daemon=True
        )
        self.thread.start()

    def call(self, coro: Any) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.db_executor.shutdown(wait=True)
        self.handler_pool.shutdown(wait=False, cancel_futures=True)
        self.handler_threads.shutdown()
        if not self.loop.is_running():
            self.loop.close()
