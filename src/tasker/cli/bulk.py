"""The filter options of `tasker tasks retry|cancel|purge` and how their bulk form reports.

Each of the three commands takes either one TASK_ID (the per-task operation, as before) or filter
options (a bulk run over every task they pick, `tasker.engine.bulk`); `choose` refuses both and
neither with one line. A filter problem is reported with the option's own name (`--since: ...`),
not the engine's field name, so the user knows what to retype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from tasker.domain.errors import TaskerInputError
from tasker.domain.states import (
    FINISHED_TASK_STATES,
    TASK_TRANSITIONS,
    StepState,
    TaskState,
)

if TYPE_CHECKING:
    from tasker.domain.bulk import BulkReport, TaskFilter
    from tasker.engine.tasker import Tasker

#: The option of each filter field (`FilterError.field`), to name it in messages.
OPTION_OF = {
    "template": "--template",
    "namespace": "--namespace",
    "version": "--version",
    "status": "--status",
    "since": "--since",
    "until": "--until",
    "error_class": "--error-class",
    "step": "--step",
    "step_state": "--step-state",
    "key": "--key",
    "chunk": "--chunk",
    "reason": "--reason",
    "archive": "--archive",
    "filter": "the filter options",
}
#: The keyword arguments the filter options give a command.
FILTER_KEYS = (
    "template",
    "namespace",
    "version",
    "statuses",
    "since",
    "until",
    "error_class",
    "step",
    "step_states",
    "key",
)
#: The states each action's `--status` offers (those `tasker.domain.bulk.BulkAction` applies to).
STATES = {
    "retry": [TaskState.ERROR.value],
    "cancel": [s.value for s in TaskState if TaskState.CANCELLED in TASK_TRANSITIONS[s]],
    "purge": sorted(s.value for s in FINISHED_TASK_STATES),
}


def filter_options(action: str, *, skip: tuple[str, ...] = ()) -> Callable[[Any], Any]:
    """Add the filter options (and `--dry-run`, `--chunk`, `--json`) to a command; `skip` leaves
    out those the command declares itself (`purge` has its own --status and --namespace)."""
    options: list[tuple[str, Callable[[Any], Any]]] = [
        (
            "template",
            click.option(
                "--template",
                metavar="NS/NAME[@VERSION]",
                default=None,
                help="Filter: tasks of this template (a bare name: in any namespace).",
            ),
        ),
        (
            "namespace",
            click.option("--namespace", default=None, help="Filter: tasks of this namespace."),
        ),
        ("version", click.option("--version", default=None, help="Filter: of this version.")),
        (
            "statuses",
            click.option(
                "--status",
                "statuses",
                multiple=True,
                type=click.Choice(STATES[action]),
                help=f"Filter: tasks in this state (repeat for several; default: every state a"
                f" {action} applies to).",
            ),
        ),
        (
            "since",
            click.option(
                "--since",
                metavar="WHEN",
                default=None,
                help="Filter: created at or after WHEN: a duration back from now (2h, 7d) or an"
                " ISO time.",
            ),
        ),
        (
            "until",
            click.option(
                "--until",
                metavar="WHEN",
                default=None,
                help="Filter: created before WHEN (a duration back from now, or an ISO time).",
            ),
        ),
        (
            "error_class",
            click.option(
                "--error-class",
                metavar="CLASS",
                default=None,
                help="Filter: a step failed with this error class (PermanentError, TimeoutError).",
            ),
        ),
        (
            "step",
            click.option(
                "--step",
                metavar="NAME",
                default=None,
                help="Filter: the step of this name is in error (or in --step-state).",
            ),
        ),
        (
            "step_states",
            click.option(
                "--step-state",
                "step_states",
                multiple=True,
                type=click.Choice([s.value for s in StepState]),
                help="Filter: a step (the --step) is in this state (repeatable).",
            ),
        ),
        (
            "key",
            click.option(
                "--key", default=None, help="Filter: exact idempotency key or correlation id."
            ),
        ),
        (
            "dry_run",
            click.option(
                "--dry-run", is_flag=True, help="Count the tasks it would change; change nothing."
            ),
        ),
        (
            "chunk",
            click.option(
                "--chunk",
                type=click.IntRange(1, 10_000),
                default=500,
                show_default=True,
                help="Tasks per transaction of a bulk run.",
            ),
        ),
        (
            "as_json",
            click.option(
                "--json",
                "as_json",
                is_flag=True,
                help="Print JSON instead of text (stable keys).",
            ),
        ),
    ]

    def decorate(f: Any) -> Any:
        for name, option in reversed(options):
            if name not in skip:
                f = option(f)
        return f

    return decorate


def given(filters: dict[str, Any]) -> bool:
    """Whether any filter option was given."""
    return any(filters.get(k) not in (None, (), "", False) for k in FILTER_KEYS)


def choose(task_id: int | None, filters: dict[str, Any], action: str, example: str) -> bool:
    """True for the bulk form (filter options), False for one task (TASK_ID); refuses both and
    neither."""
    bulk = given(filters)
    if task_id is not None and bulk:
        raise TaskerInputError(
            f"give a TASK_ID or filter options, not both; fix: drop the id to {action} every task"
            " the filter picks, or drop the filter options"
        )
    if task_id is None and not bulk:
        raise TaskerInputError(
            f"nothing to {action}; fix: give a TASK_ID, or filter options to {action} in bulk"
            f" (e.g. {example})"
        )
    return bulk


def build(engine: Tasker, filters: dict[str, Any]) -> TaskFilter:
    """The `TaskFilter` of the options given; a bad value names its option."""
    from tasker.domain.bulk import FilterError

    try:
        return engine.bulk.filter(
            template=filters.get("template"),
            namespace=filters.get("namespace"),
            version=filters.get("version"),
            status=tuple(filters.get("statuses") or ()),
            since=filters.get("since"),
            until=filters.get("until"),
            error_class=filters.get("error_class"),
            step=filters.get("step"),
            step_state=tuple(filters.get("step_states") or ()),
            key=filters.get("key"),
        )
    except FilterError as exc:
        raise TaskerInputError(f"{OPTION_OF.get(exc.field, exc.field)}: {exc.problem}") from None


def run(engine: Tasker, action: str, task_filter: TaskFilter, **options: Any) -> BulkReport:
    """Run the bulk action; a bad value names its option."""
    from tasker.domain.bulk import FilterError

    try:
        return engine.bulk.run(action, task_filter, **options)
    except FilterError as exc:
        raise TaskerInputError(f"{OPTION_OF.get(exc.field, exc.field)}: {exc.problem}") from None


def report_json(report: BulkReport, task_filter: TaskFilter) -> dict[str, Any]:
    """A bulk run as the JSON of `--json` (the REST API's `BulkResult`, plus the filter in
    words)."""
    return {
        "action": report.action.value,
        "filter": task_filter.describe(),
        "matched": report.matched,
        "changed": report.changed,
        "skipped": report.skipped,
        "dry_run": report.dry_run,
        "refusals": list(report.refusals),
        "last_id": report.last_id,
        "more": report.more,
        "archived": report.archived,
    }


def show(report: BulkReport, task_filter: TaskFilter, as_json: bool, after: str = "") -> None:
    """Print a bulk run: JSON, or its summary, the filter in words and the first refusals."""
    from tasker.cli.common import console, echo_json

    if as_json:
        echo_json(report_json(report, task_filter))
        return
    console.print(f"{report.summary()}: {task_filter.describe()}", highlight=False, soft_wrap=True)
    for line in report.refusals[:5]:
        console.print(f"  refused {line}", highlight=False, soft_wrap=True)
    if len(report.refusals) > 5:
        console.print(f"  ... and {len(report.refusals) - 5} more refusals", highlight=False)
    if after and report.changed and not report.dry_run:
        console.print(after, highlight=False, soft_wrap=True)
