"""The worker's execute part: each claimed step runs as its own asyncio task, to an outcome.

It holds what runs (`running`) and what finished since the last cycle took it (`finished`), and
stops attempts when the worker lost their leases or gave up on them. What an attempt comes to is
decided in `tasker.engine.outcomes`; this module only says which case it is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from tasker.domain.compensation import is_undo
from tasker.domain.control import parse_instance
from tasker.domain.errors import TaskerError
from tasker.domain.records import ClaimedStep, Outcome
from tasker.domain.states import StepState
from tasker.domain.storable import storable_text
from tasker.domain.templates import StepTemplate, TaskTemplate
from tasker.engine import clock, outcomes, subtasks, waits
from tasker.engine.executor import Runtime, execute
from tasker.engine.resolver import Resolver

log = logging.getLogger("tasker.worker")

Finished = list[tuple[Outcome, ClaimedStep]]


class Attempts:
    """The attempts of one worker."""

    def __init__(
        self,
        worker_id: str,
        resolver: Resolver,
        rt: Runtime,
        on_finished: Callable[[], None],
        find_child: subtasks.FindChild | None = None,
        find_wait: waits.FindWait | None = None,
    ):
        self.worker_id = worker_id
        self.resolver = resolver
        self.rt = rt
        self._on_finished = on_finished
        #: Reads the child task of a `task:` step (None: such steps fail, saying why).
        self._find_child = find_child
        #: Reads what a step that may wait needs (its stored wait, its task's signals).
        self._find_wait = find_wait
        self.running: dict[int, tuple[asyncio.Task[None], ClaimedStep]] = {}
        self.finished: Finished = []
        self.steps_run = 0
        #: The template of each task this worker ran a step of, until the task settles.
        self._templates: dict[int, int] = {}
        #: Handlers this worker could not import (logged once each), and the steps it handed back
        #: so.
        self._unloadable_handlers: set[str] = set()
        self.unloadable_steps: set[int] = set()

    # -- the cycle's side --------------------------------------------------------------------------
    def take(self) -> Finished:
        """The outcomes finished since the last call, for a cycle to store."""
        done, self.finished = self.finished, []
        return done

    def put_back(self, done: Finished) -> None:
        """Outcomes a cycle could not store (an outage): the next cycle stores them first."""
        self.finished = done + self.finished

    def template_of(self, task_id: int) -> int | None:
        """The template of a task that settled, if this worker ran one of its steps (forgotten
        now)."""
        return self._templates.pop(task_id, None)

    # -- running -----------------------------------------------------------------------------------
    def start(self, claimed: ClaimedStep) -> None:
        self._templates[claimed.task_id] = claimed.template_id
        task = asyncio.get_running_loop().create_task(self._run(claimed))
        self.running[claimed.step_id] = (task, claimed)

    async def _run(self, claimed: ClaimedStep) -> None:
        try:
            outcome = await self._attempt(claimed)
        except asyncio.CancelledError:
            self.running.pop(claimed.step_id, None)
            raise
        self.running.pop(claimed.step_id, None)
        self.steps_run += 1
        self.finished.append((outcome, claimed))
        self._on_finished()

    async def _attempt(self, claimed: ClaimedStep) -> Outcome:
        """Run one attempt; whatever goes wrong, even in the engine's own code, ends as an
        outcome."""
        try:
            template = self.resolver.template(claimed.template_id)
            if is_undo(claimed.name):
                # An undo runs its step's compensation; the undos it releases only the edges know.
                undo = self.resolver.undo_step(claimed.template_id, claimed.name)
                undone = await self._handle(claimed, template, undo, claimed.name)
                return outcomes.finish(undone, claimed, None)
            instance = parse_instance(claimed.name)
            name = instance[0] if instance else claimed.name  # an instance runs its step's code
            step = template.step(name)
            if step.foreach is not None and instance is None:
                gated = template.gated_steps()
                return outcomes.finish(
                    outcomes.fan_in(claimed), claimed, self._children(claimed), gated
                )
            if step.task is not None and self._find_child is not None:
                outcome = await asyncio.to_thread(
                    subtasks.run,
                    claimed,
                    template,
                    step,
                    self.resolver.registry,
                    self._find_child,
                )
                return outcomes.finish(
                    outcome, claimed, self._children(claimed, outcome), template.gated_steps()
                )
            resumption = None
            if waits.needs_lookup(step, claimed):
                decided = await self._before_handler(claimed, template, step)
                if isinstance(decided, Outcome):
                    return outcomes.finish(
                        decided, claimed, self._children(claimed, decided), template.gated_steps()
                    )
                resumption = decided
            outcome = await self._handle(claimed, template, step, name, resumption)
            if instance is not None:
                # An instance's only children are its fan-out step (no longer gated: it waits
                # for its instances) and, under max_parallel, the next instance of its chain,
                # which only the edges know.
                children = None if step.max_parallel is not None else [instance[0]]
                return outcomes.finish(outcome, claimed, children)
            return outcomes.finish(
                outcome, claimed, self._children(claimed, outcome), template.gated_steps()
            )
        except asyncio.CancelledError:
            raise
        except (
            Exception
        ) as exc:  # a bug of the engine's: the step fails visibly, the worker goes on
            log.exception(
                "worker %s: running step %d (%s) failed in the engine",
                self.worker_id,
                claimed.step_id,
                claimed.name,
            )
            return outcomes.finish(outcomes.engine_fault(claimed, exc), claimed, None)

    async def _before_handler(
        self, claimed: ClaimedStep, template: TaskTemplate, step: StepTemplate
    ) -> Outcome | waits.Resumption:
        """A step that waits or may have waited: read its wait and signals, then decide."""
        if self._find_wait is None:
            raise TaskerError("this worker cannot read durable waits (no store given)")
        found = await asyncio.to_thread(
            self._find_wait, claimed.task_id, claimed.step_id, step.declared_signals()
        )
        return waits.before_handler(claimed, template, step, found, clock.now())

    async def _handle(
        self,
        claimed: ClaimedStep,
        template: TaskTemplate,
        step: StepTemplate,
        name: str,
        resumption: waits.Resumption | None = None,
    ) -> Outcome:
        """Run `step`'s handler (`name`: the step whose handler and retry policy apply), or, when
        this worker cannot load it, the outcome that leaves the step to workers that can. Either
        is only complete (and releases children) when the handler ran and succeeded."""
        try:
            handler_cls = self.resolver.handler_class(claimed.template_id, name)
        except TaskerError as exc:
            return self._unloadable(claimed, step.handler_class or "", exc)
        policy = self.resolver.policy(claimed.template_id, name)
        return await execute(claimed, template, step, handler_cls, policy, self.rt, resumption)

    def _children(self, claimed: ClaimedStep, outcome: Outcome | None = None) -> list[str] | None:
        if outcome is not None and outcome.state not in (StepState.COMPLETE, StepState.SKIPPED):
            return None
        try:
            return self.resolver.children_of(claimed.template_id, claimed.name)  # not an instance
        except Exception:
            return None

    def _unloadable(self, claimed: ClaimedStep, handler: str, exc: Exception) -> Outcome:
        if handler not in self._unloadable_handlers:
            self._unloadable_handlers.add(handler)
            log.error(
                "worker %s cannot load handler %s for step %s of task %d: %s; leaving such steps "
                "for workers that can",
                self.worker_id,
                handler,
                claimed.name,
                claimed.task_id,
                storable_text(exc, 1000),
            )
        self.unloadable_steps.add(claimed.step_id)
        return outcomes.unloadable(
            claimed,
            handler,
            exc,
            worker_id=self.worker_id,
            backoff_scale=self.rt.backoff_scale,
        )

    # -- stopping ----------------------------------------------------------------------------------
    def drop_lost(self, held: set[int], cancelled: set[int]) -> None:
        """Stop running steps whose lease this worker lost (cancelled task, or reclaimed after a
        stall)."""
        for step_id, (task, claimed) in list(self.running.items()):
            if step_id in held:
                continue
            if step_id in cancelled:
                log.info(
                    "worker %s: step %d (%s) of task %d was cancelled; stopping it",
                    self.worker_id,
                    step_id,
                    claimed.name,
                    claimed.task_id,
                )
            else:
                log.warning(
                    "worker %s lost step %d (%s) of task %d; stopping it",
                    self.worker_id,
                    step_id,
                    claimed.name,
                    claimed.task_id,
                )
            task.cancel()
            self.running.pop(step_id, None)

    def cancel_all(self) -> list[tuple[int, int, int]]:
        """Stop every running attempt; returns their claims as (step id, task id, claim token)."""
        held = [(c.step_id, c.task_id, c.claim_token) for _, c in self.running.values()]
        for task, _ in list(self.running.values()):
            task.cancel()
        self.running.clear()
        return held
