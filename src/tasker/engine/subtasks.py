"""`task:` steps: a sub-workflow runs as a child task that the step creates, then waits for.

The step's first attempt builds the child (the template from this worker's registry, the context
from the step's `context:` expressions, validated against the child's schema) and parks: the
child is inserted in the same transaction as the step's move to `waiting_retry` with no `run_at`
(`tasker.store.completion`), so the step holds no worker slot, lease or attempt while it waits and
a crash leaves either both or neither. When the child settles, the same transaction gives the step
a `run_at` (`tasker.store.readiness`, `pg_cycle`, `sqlite_cycle`); the next claim reads the child
and completes the step with its results, or fails it with the child's error. Nothing polls.
"""

from __future__ import annotations

from collections.abc import Callable

from tasker.context_schema import validate_context
from tasker.domain.control import child_context
from tasker.domain.errors import TaskerError
from tasker.domain.expressions import ExpressionFailure
from tasker.domain.records import ChildTask, ClaimedStep, Outcome, Task
from tasker.domain.states import StepState, TaskState
from tasker.domain.templates import StepTemplate, TaskTemplate
from tasker.engine.outcomes import given_up, outcome_of
from tasker.registry import TemplateRegistry
from tasker.templates.loader import resolve_task_handler

#: The class of the failure of a `task:` step: its child failed, or could not be created.
CHILD_FAILED = "ChildTaskFailed"
_DONE = (TaskState.COMPLETE, TaskState.RESOLVED_MANUALLY)
_FAILED = (TaskState.ERROR, TaskState.CANCELLED)

FindChild = Callable[[int, int], Task | None]
#: `task: ns/name@latest` is `ns/name`: the newest version loaded (so a `${VAR:-latest}` can pin).
LATEST = "latest"


def child_key(claimed: ClaimedStep) -> str:
    """The child's idempotency key: the step's own, so that one step has one child."""
    return f"child:{claimed.idempotency_key}"


def run(
    claimed: ClaimedStep,
    template: TaskTemplate,
    step: StepTemplate,
    registry: TemplateRegistry,
    find_child: FindChild,
) -> Outcome:
    """One attempt of a `task:` step (blocking: run it on a thread)."""
    child = find_child(claimed.task_id, claimed.step_id)
    if child is None:
        return _spawn(claimed, template, step, registry)
    if child.status in _DONE:
        results = {s.name: s.results or {} for s in child.steps if s.instance_of is None}
        return outcome_of(claimed, StepState.COMPLETE, results=results)
    if child.status in _FAILED:
        return _failed(claimed, f"child task {child.id} ({child.template_key}) {_why(child)}")
    return _park(claimed, None)  # woken early (an operator's retry): wait again


def _spawn(
    claimed: ClaimedStep, template: TaskTemplate, step: StepTemplate, registry: TemplateRegistry
) -> Outcome:
    assert step.task is not None
    try:
        child_template = registry.get(step.task.removesuffix(f"@{LATEST}"))
    except TaskerError as exc:
        return _failed(
            claimed,
            f"task: {step.task} cannot be started: {exc}; fix: load that template in the workers"
            " (--templates)",
        )
    control = template.controls()[step.name]
    try:
        context = child_context(control, claimed.context, template.visible_results(claimed.results))
    except ExpressionFailure as exc:
        return _failed(claimed, f"task: {step.task}: {exc}")
    try:
        context = validate_context(child_template.key, child_template.context_schema, context)
        if child_template.task_handler_class:
            handler = resolve_task_handler(
                child_template.task_handler_class, where=f"{child_template.key}: task_handler_class"
            )()
            context = handler.prepare_context(context)
        concurrency_key = child_template.concurrency_key_of(context)
    except (TaskerError, ValueError) as exc:
        return _failed(claimed, f"task: {step.task}: the child's context is refused: {exc}")
    child = ChildTask(
        child_template,
        context,
        child_key(claimed),
        claimed.correlation_id,
        child_template.priority,
        concurrency_key,
    )
    return _park(claimed, child)


def _why(child: Task) -> str:
    """How a failed child ended, naming its failed step."""
    if child.status == TaskState.CANCELLED:
        return "was cancelled"
    for s in child.steps:
        if s.status == StepState.ERROR and s.last_error:
            return f"failed: step '{s.name}': {s.last_error.get('message', '')}"
    return f"ended {child.status}"


def _park(claimed: ClaimedStep, child: ChildTask | None) -> Outcome:
    outcome = outcome_of(claimed, StepState.WAITING_RETRY)
    outcome.refund_attempt = True  # waiting is no attempt
    outcome.parks = True
    outcome.child = child
    return outcome


def _failed(claimed: ClaimedStep, message: str) -> Outcome:
    return given_up(claimed, CHILD_FAILED, message)
