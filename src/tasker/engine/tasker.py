"""`Tasker`: the engine object users hold. Opens a store, loads templates, creates and runs tasks.

The core verbs (create, run, read, cancel, retry, resolve) are methods of `Tasker`; everything else
is a part reachable from it, each a small class in its own module that holds what it needs:

- `engine.templates` (`tasker.engine.templates`): register, look up, list versions, a task's
  snapshot;
- `engine.systems` (`tasker.engine.systems`): dependent systems' circuits and limits, namespace
  limits, workers;
- `engine.insight` (`tasker.engine.insight`): readiness, status, overview, performance,
  bottlenecks;
- `engine.listing` (`tasker.engine.queries`): keyset pages of tasks and counts;
- `engine.history` (`tasker.engine.history`): transitions and the durable event log;
- `engine.keys` (`tasker.engine.keys`): API keys;
- `engine.bulk` (`tasker.engine.bulk`): retry, cancel and purge the tasks a filter picks, in
  chunks;
- `engine.bus`: this process's live events (`engine.bus.subscribe(listener, "step.*")`).

Every method is a thin use case over the store and the worker, so the CLI, the API and tests all
drive the same code paths.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from tasker.context_schema import validate_context
from tasker.domain import bounds
from tasker.domain.deadlines import TimingError, task_times
from tasker.domain.errors import (
    IdempotencyConflict,
    NotFoundError,
    StoreConflict,
    TaskerInputError,
)
from tasker.domain.listing import TOTAL_CAP, TaskQuery
from tasker.domain.records import Signal, Task
from tasker.domain.templates import TaskTemplate
from tasker.engine import clock
from tasker.engine.bulk import Bulk
from tasker.engine.handler_threads import HandlerThreads
from tasker.engine.history import History
from tasker.engine.insight import Insight
from tasker.engine.keys import ApiKeys
from tasker.engine.queries import TaskListing
from tasker.engine.resolver import Resolver
from tasker.engine.retention import Retention
from tasker.engine.running import RunningWorkers
from tasker.engine.schedules import Schedules
from tasker.engine.signals import Signals
from tasker.engine.systems import Systems
from tasker.engine.templates import Templates
from tasker.engine.thread_loops import ThreadLoops
from tasker.engine.worker import Worker, WorkerOptions
from tasker.events.bus import EventBus
from tasker.events.subscriber import Subscriber
from tasker.observability.hooks import default_hooks
from tasker.registry import TemplateRegistry
from tasker.store import operations, rerun
from tasker.store import tasks as task_store
from tasker.store.database import Database
from tasker.store.journal import Journal
from tasker.store.transactions import journaled
from tasker.templates.loader import load_path, resolve_task_handler

log = logging.getLogger("tasker")
T = TypeVar("T")


def utcnow() -> datetime:
    return clock.now()


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
        self._running = RunningWorkers()
        self._lock = threading.Lock()
        self._runner: _Runner | None = None
        self._loops = ThreadLoops()  # `run()`'s loop in each calling thread
        self._port = _WorkerPort(self)
        #: The parts: everything beyond the core verbs (see the module's docstring).
        self.templates = Templates(self.registry, self.db)
        self.systems = Systems(self.db, self.bus, self._running)
        self.insight = Insight(self.db)
        self.listing = TaskListing(self.db)
        self.history = History(self.db)
        self.keys = ApiKeys(self.db)
        self.signals = Signals(self.db, self.bus, self._running)
        self.schedules = Schedules(self.db, self.registry, self._port)
        self.retention = Retention(self.db, bus=self.bus)
        self.bulk = Bulk(self.db, self.bus, self._running, self.retention)
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
        self.systems.apply_templates(loaded)
        for name in {(t.namespace_name, t.name): t for t in loaded}.values():
            self.schedules.sync(name)
        return loaded

    # -- tasks -------------------------------------------------------------------------------------
    def create_task(
        self,
        template: str,
        context: dict[str, Any] | None = None,
        *,
        version: str | None = None,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        run_at: datetime | None = None,
        delay: float | timedelta | str | None = None,
        deadline: datetime | float | timedelta | str | None = None,
        priority: int | None = None,
    ) -> Task:
        """Create a task (validated, defaults applied, template pinned); idempotent by intent.

        `priority` (0 to 1,000, default the template's `priority`, else 0) puts its steps ahead of
        lower-priority work that came due up to one minute per level earlier
        (`tasker.domain.priorities`, docs/operations.md).

        `run_at` (a timezone-aware time) or `delay` (seconds, a `timedelta`, `PT10M` or `10m`)
        starts it later: it is `pending` until then, and can be cancelled meanwhile. `deadline`
        (a time, or a duration from its start) overrides the template's `timeout_seconds`: past
        it the task ends in `error` with reason `deadline_exceeded`.

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
        starts_at, deadline_at = _times(tmpl, journal.now, run_at, delay, deadline)
        identity = None if idempotency_key else task_store.identity_keys(tmpl, ctx, journal.now)
        key = idempotency_key or (identity.key if identity else task_store.fresh_idempotency_key())
        if identity is not None and identity.previous is not None:
            earlier = self._find_recent(tmpl, identity)
            if earlier is not None:
                return _dedup(self.get_task(earlier))
        try:
            # Optimistic: a duplicate is rare, and the unique index decides races between creators.
            new = task_store.NewTask(
                ctx,
                key,
                corr,
                starts_at=starts_at,
                deadline_at=deadline_at,
                priority=_priority(tmpl, priority),
                concurrency_key=_concurrency_key(tmpl, ctx),
            )
            task = task_store.create_tasks(self.db, journal, tmpl, [new])[0]
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
        self._running.notify()
        return task

    def create_tasks(
        self,
        template: str,
        contexts: Sequence[dict[str, Any]],
        *,
        version: str | None = None,
        chunk_size: int = 500,
        run_at: datetime | None = None,
        delay: float | timedelta | str | None = None,
        priority: int | None = None,
    ) -> list[int]:
        """Create many tasks of one template with multi-row inserts; returns their ids in input
        order.

        Each context is validated like `create_task`'s, and the whole batch is refused if any is
        invalid. Every context is a new task, unless the template declares `identity:`: then equal
        identities are one task, as with `create_task`. `run_at` / `delay` start them all later.
        """
        tmpl = self.registry.get(template, version)
        starts_at, deadline_at = _times(tmpl, utcnow(), run_at, delay, None)
        level = _priority(tmpl, priority)
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
                task_store.NewTask(
                    ctx,
                    task_store.fresh_idempotency_key(),
                    _correlation_id(ctx),
                    starts_at=starts_at,
                    deadline_at=deadline_at,
                    priority=level,
                    concurrency_key=_concurrency_key(tmpl, ctx),
                )
            )
        if tmpl.identity is not None:
            found = [
                self.create_task(
                    template, it.context, version=tmpl.version, run_at=starts_at, priority=level
                ).id
                for it in items
            ]
            self._running.notify()
            return found
        ids: list[int] = []
        for start in range(0, len(items), max(1, chunk_size)):
            chunk = items[start : start + chunk_size]
            journal = Journal(utcnow())
            try:
                created = task_store.create_tasks(self.db, journal, tmpl, chunk)
            except StoreConflict:  # a key already exists: fall back to one by one (deduplicates)
                ids.extend(
                    self.create_task(
                        template, it.context, version=tmpl.version, run_at=starts_at
                    ).id
                    for it in chunk
                )
                continue
            ids.extend(t.id for t in created)
            self._publish(journal.events)
        self._running.notify()
        return ids

    def _find_recent(self, tmpl: TaskTemplate, identity: task_store.IdentityKeys) -> int | None:
        """A task of the previous identity window still within the window of this request."""
        assert identity.previous is not None and identity.window_seconds is not None
        since = utcnow() - timedelta(seconds=identity.window_seconds)
        return task_store.find_recent_id(
            self.db, tmpl.namespace_name, tmpl.name, identity.previous, since
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
        return task_store.find_id(self.db, tmpl.namespace_name, tmpl.name, key)

    def get_task(self, task_id: int) -> Task:
        task = task_store.read_task(self.db, _task_id(task_id))
        if task is None:
            raise NotFoundError(
                f"no task with id {task_id}; fix: list tasks with 'tasker tasks list'"
            )
        return task

    def child_tasks(self, task_id: int) -> list[int]:
        """The ids of the child tasks a task's `task:` steps created, oldest first (each child's
        `parent_task_id` and `parent_step_id` point back)."""
        return task_store.child_ids(self.db, _task_id(task_id))

    def get_tasks(self, task_ids: Sequence[int]) -> list[Task]:
        """Several tasks with their steps, by id (ids that do not exist are left out)."""
        return task_store.read_tasks(self.db, list(task_ids))

    def list_tasks(
        self,
        *,
        namespace: str | None = None,
        name: str | None = None,
        version: str | None = None,
        status: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
        count_cap: int = TOTAL_CAP,
    ) -> tuple[list[Task], int]:
        """A page of tasks (newest first, without steps) and how many match, up to `count_cap`.

        A total equal to `count_cap` means "at least that many": counting stops there so the call
        stays a short index read on a store with millions of tasks. `engine.listing.count(query)`
        counts exactly; `engine.listing.page(query, after=cursor)` pages by cursor at any depth.
        """
        query = TaskQuery(
            namespace=namespace,
            name=name,
            version=version,
            statuses=(status,) if status else (),
            created_from=created_after,
            created_to=created_before,
        )
        found = self.listing.page(query, limit=limit, offset=offset)
        return found.tasks, self.listing.total(query, cap=count_cap).count

    # -- operations --------------------------------------------------------------------------------
    def cancel_task(
        self, task_id: int, reason: str | None = None, *, compensate: bool = False
    ) -> Task:
        """Cancel every unfinished step now; a running attempt's result is discarded. With
        `compensate`, then undo what the completed steps did (the task goes `compensating`, then
        `compensated`), when any of them declares a compensation."""
        self._operate(operations.cancel_task, task_id, reason=reason, compensate=compensate)
        if compensate:
            self._running.notify()
        return self.get_task(task_id)

    def compensate_task(self, task_id: int) -> Task:
        """Undo what the completed steps of a task in `error` did (its template said
        `on_failure: stop`); the task goes `compensating`, then `compensated`."""
        self._operate(operations.compensate_task, task_id)
        self._running.notify()
        return self.get_task(task_id)

    def retry_task(self, task_id: int) -> Task:
        """Re-arm the failed steps of a task in `error` with fresh attempts."""
        self._operate(operations.retry_task, task_id)
        self._running.notify()
        return self.get_task(task_id)

    def retry_step(self, task_id: int, step_name: str) -> Task:
        """Re-arm one failed step with fresh attempts."""
        self._operate(operations.retry_step, task_id, step_name)
        self._running.notify()
        return self.get_task(task_id)

    def rerun_from(self, task_id: int, step_name: str, reason: str | None = None) -> Task:
        """Run a task in error again from one of its steps: that step and every step downstream
        of it start over with fresh attempts, everything upstream keeps its results (deploy the
        fix, then re-run from the failed step). Refused for a running or finished task."""
        self._operate(rerun.rerun_from, task_id, step_name, reason=reason)
        self._running.notify()
        return self.get_task(task_id)

    def resolve_step(
        self, task_id: int, step_name: str, results: dict[str, Any] | None = None
    ) -> Task:
        """Complete a step by hand with `results`; its dependents proceed as if it had run."""
        if results is not None and not isinstance(results, dict):
            raise TaskerInputError("the result of a resolved step must be a JSON object")
        self._operate(operations.resolve_step, task_id, step_name, results or {})
        self._running.notify()
        return self.get_task(task_id)

    def signal(
        self,
        task_id: int,
        name: str,
        payload: Any = None,
        *,
        idempotency_key: str | None = None,
    ) -> Signal:
        """Send the signal `name` (with a JSON `payload`) to a task: its steps waiting for it
        (`wait_for: name`, `ctx.wait_for_signal(name)`) resume. Kept if no step waits yet; a
        repeated `idempotency_key` is the same signal. Refused for a finished task or a name the
        task's template does not declare."""
        return self.signals.send(task_id, name, payload, idempotency_key=idempotency_key)

    def _operate(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # An operator action locks the task, then its steps; a worker claiming a pending task's
        # first step locks the step, then the task. On PostgreSQL the two can deadlock: the server
        # aborts one of them, and the action, which changed nothing, is simply run again.
        lock = self.db.is_postgres

        def action(conn: Any, journal: Journal) -> T:
            return fn(conn, journal, *args, lock=lock, **kwargs)

        out, events = journaled(self.db, action, clock=clock.now)
        self._publish(events)
        return out

    # -- running -----------------------------------------------------------------------------------
    def worker(self, **overrides: Any) -> Worker:
        """A worker on this engine's store; options as `WorkerOptions`, defaults from the engine."""
        shared = overrides.pop("_shared", None)
        inline_db = overrides.pop("_inline_db", False)
        hooks = overrides.pop("hooks", None)  # worker hooks; default: logs, metrics, traces
        hooks = default_hooks() if hooks is None else hooks
        opts = WorkerOptions(
            concurrency=overrides.pop("concurrency", None) or self.concurrency,
            lease_seconds=overrides.pop("lease_seconds", None) or self.lease_seconds,
            poll_interval=overrides.pop("poll_interval", None) or self.poll_interval,
            backoff_scale=overrides.pop("backoff_scale", None) or self.backoff_scale,
            **overrides,
        )
        threads = {}
        if shared is not None:
            threads = {
                "db_executor": shared.db_executor,
                "handler_pool": shared.handler_pool,
                "handler_threads": shared.handler_threads,
            }
        return Worker(
            self.db,
            self.resolver,
            self.bus,
            opts,
            tasks=self._port,
            hooks=hooks,
            views=self.systems.views,
            inline_db=inline_db,
            **threads,
        )

    async def arun(self, task_id: int, *, concurrency: int | None = None) -> Task:
        """Run one task to the end in this process (async form of `run`)."""
        task_id = _task_id(task_id)
        await self._drive(self.worker(concurrency=concurrency, task_id=task_id), until_idle=True)
        return self.get_task(task_id)

    def run(self, task_id: int, *, concurrency: int | None = None) -> Task:
        """Run one task to completion in this process, retries and backoff included; returns its
        final state.

        No read comes first: a task that is already finished (or does not exist) leaves the worker
        nothing to claim, and the read at the end returns it (or raises `NotFoundError`)."""
        task_id = _task_id(task_id)
        runner = self._get_runner()
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # the usual case: drive the task from this thread
            w = self.worker(
                concurrency=concurrency, task_id=task_id, _shared=runner, _inline_db=True
            )
            self._loops.run(self._drive(w, until_idle=True))
        else:  # called from a running event loop: it must not be blocked by our own loop
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
        """Process ready steps (async form of `work`); returns the step attempts it ran."""
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
        return runner.call(self.awork(until_idle=until_idle, worker=w))

    def _get_runner(self) -> _Runner:
        with self._lock:
            if self._runner is None:
                self._runner = _Runner()
            return self._runner

    async def _drive(self, worker: Worker, *, until_idle: bool) -> None:
        self._running.add(worker)
        try:
            await worker.run(until_idle=until_idle)
        finally:
            self._running.discard(worker)

    # -- events ------------------------------------------------------------------------------------
    def add_subscriber(self, subscriber: Subscriber) -> Callable[[], None]:
        """Attach a `Subscriber` (after handing it this engine with `bind`); returns a function that
        detaches it."""
        subscriber.bind(self)
        return subscriber.attach(self.bus)

    def _publish(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        for name, payload in events:
            self.bus.publish(name, payload)

    def close(self) -> None:
        """Stop the background runner of `run`/`work` and close the store's connections."""
        with self._lock:
            runner, self._runner = self._runner, None
        if runner is not None:
            runner.close()
        self._loops.close()
        self.db.dispose()

    def __enter__(self) -> Tasker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _priority(template: TaskTemplate, priority: int | None) -> int:
    """A new task's priority: the one asked for (checked), else its template's."""
    if priority is None:
        return template.priority
    try:
        return int(bounds.PRIORITY.check(priority))
    except ValueError as exc:
        raise TaskerInputError(f"priority: {exc}") from None


def _concurrency_key(template: TaskTemplate, context: dict[str, Any]) -> str | None:
    """A new task's fair-share key, or a one-line refusal naming the expression."""
    try:
        return template.concurrency_key_of(context)
    except ValueError as exc:
        raise TaskerInputError(f"{template.key}: {exc}") from None


def _times(
    tmpl: TaskTemplate,
    now: datetime,
    run_at: datetime | None,
    delay: float | timedelta | str | None,
    deadline: datetime | float | timedelta | str | None,
) -> tuple[datetime | None, datetime | None]:
    try:
        return task_times(now, tmpl.timeout_seconds, run_at, delay, deadline)
    except TimingError as exc:
        raise TaskerInputError(str(exc)) from None


def _correlation_id(context: dict[str, Any]) -> str:
    given = context.get("correlation_id")
    if isinstance(given, str) and given:
        return given[:128]
    return f"corr-{uuid.uuid4().hex[:16]}"


def _dedup(task: Task) -> Task:
    return replace(task, deduplicated=True)


class _WorkerPort:
    """What an engine's workers reach of it (`TaskPort`): the task operations handlers perform,
    `ctx.create_task` and `ctx.get_task`, and nothing else of the `Tasker`."""

    def __init__(self, engine: Tasker):
        self._engine = engine

    def create_task(
        self,
        template: str,
        context: dict[str, Any],
        *,
        version: str | None,
        idempotency_key: str,
        correlation_id: str,
    ) -> Task:
        return self._engine.create_task(
            template,
            context,
            version=version,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
        )

    def get_task(self, task_id: int) -> Task:
        return self._engine.get_task(task_id)


def _task_id(value: object) -> int:
    """A task id as given by a caller: an int (or a digit string), not the `Task` itself."""
    if isinstance(value, Task):
        raise TaskerInputError(f"pass the task's id, not the task: use {value.id} (task.id)")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TaskerInputError(f"a task id is an integer, not {type(value).__name__}")
    try:
        return int(value)
    except ValueError:
        raise TaskerInputError(f"a task id is an integer, not {value!r}") from None


class _Runner:
    """A background event loop with long-lived executors that the blocking `run`/`work` calls reuse.

    Starting an event loop and thread pools for every call would cost more than running a short
    task.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.db_executor = ThreadPoolExecutor(1, thread_name_prefix="tasker-db")
        self.handler_pool = ThreadPoolExecutor(8, thread_name_prefix="tasker-hooks")
        self.handler_threads = HandlerThreads(256)
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="tasker-runner", daemon=True
        )
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
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
