"""Bulk operations on tasks: which tasks a filter picks (`TaskFilter`), what an action may touch
(`BulkAction`), and what a run did (`BulkReport`).

Pure: the store turns a filter into SQL (`tasker.store.bulk`), the engine runs the action in
chunks (`tasker.engine.bulk`), and the CLI, the API and the dashboard build the filter from what
their user typed with `parse_filter`. Everything a user can get wrong raises `FilterError`, which
names the field and says how to fix it, so each delivery layer can point at its own spelling of the
field (`--since`, `$.since`, the form's input).

`TaskFilter.matches` says in Python what the store's query says in SQL; the tests hold the two to
each other, so the documentation of one is the documentation of both.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from tasker.domain.errors import TaskerInputError
from tasker.domain.records import Task
from tasker.domain.retention import MAX_RETENTION_SECONDS
from tasker.domain.states import (
    FINISHED_TASK_STATES,
    TASK_TRANSITIONS,
    StepState,
    TaskState,
)
from tasker.domain.templates import NAME, SEMVER
from tasker.domain.waits import duration_seconds

#: Ids one filter may list (the dashboard's selection, an API client's list).
MAX_IDS = 10_000
#: The largest id a store holds (a signed 64-bit integer).
MAX_ID = 2**63 - 1
#: Printable text on one line, as error classes and keys are.
_TEXT = re.compile(r"^[^\x00-\x1f\x7f]+$")
#: When an error class is asked for without step states: a step that failed for good, or that
#: failed and waits to try again (a running task's).
FAILED_STEP_STATES = (StepState.ERROR, StepState.WAITING_RETRY)
E = TypeVar("E", TaskState, StepState)


class FilterError(TaskerInputError):
    """A filter field that cannot be used: `field` names it as the API spells it (`since`,
    `status`), `problem` says what is wrong and how to fix it."""

    def __init__(self, field_name: str, problem: str):
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name
        self.problem = problem


class BulkAction(StrEnum):
    """What a bulk run does to each task it picks, and the task states it applies to: a filter's
    statuses are narrowed to those, and a status outside them is refused rather than ignored."""

    RETRY = "retry"
    CANCEL = "cancel"
    PURGE = "purge"

    @property
    def states(self) -> tuple[TaskState, ...]:
        return _ACTION_STATES[self]

    @property
    def past(self) -> str:
        """The verb in the past tense, for reports ("12 tasks retried")."""
        return {"retry": "retried", "cancel": "cancelled", "purge": "purged"}[self.value]


_ACTION_STATES: dict[BulkAction, tuple[TaskState, ...]] = {
    # Only a task in error is retried (a compensated one is refused: its undos would be redone).
    BulkAction.RETRY: (TaskState.ERROR,),
    # Whatever may still go to `cancelled`: unfinished tasks, failed ones, an undo in progress.
    BulkAction.CANCEL: tuple(s for s in TaskState if TaskState.CANCELLED in TASK_TRANSITIONS[s]),
    # Finished tasks only: a running task's rows are never deleted under its workers.
    BulkAction.PURGE: tuple(s for s in TaskState if s in FINISHED_TASK_STATES),
}


@dataclass(frozen=True)
class TaskFilter:
    """Which tasks a bulk operation picks; every field left empty matches every task.

    Fields combine with AND; a tuple of states matches any of them. The step fields ask for a task
    having one step that meets all of them: `step` (a step of that name), `step_states` (in one of
    these states; by default `error`, or `error`/`waiting_retry` with an `error_class`) and
    `error_class` (whose last failure is of that class, e.g. `PermanentError`, `TimeoutError`).
    """

    namespace: str | None = None
    name: str | None = None  # the template's name
    version: str | None = None
    statuses: tuple[TaskState, ...] = ()
    created_since: datetime | None = None  # inclusive
    created_until: datetime | None = None  # exclusive
    error_class: str | None = None
    step: str | None = None
    step_states: tuple[StepState, ...] = ()
    key: str | None = None  # exact idempotency key or correlation id
    ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # Frozen, yet normalised once here, so that code building a filter by hand is checked as
        # strictly as a parsed one: the store never sees a state name it does not know.
        _set(self, "statuses", _states(self.statuses, TaskState, "status"))
        _set(self, "step_states", _states(self.step_states, StepState, "step_state"))
        _set(self, "ids", _ids(self.ids))
        _check_name(self.namespace, "namespace", 64)
        _check_name(self.name, "template", 128)
        if self.version is not None and not SEMVER.match(self.version):
            raise FilterError("version", f"'{self.version}' is not a semantic version like 1.2.0")
        _check_text(self.error_class, "error_class", 255, "PermanentError")
        _check_text(self.step, "step", 128, "charge_card")
        _check_text(self.key, "key", 255, "order-8842")
        for name in ("created_since", "created_until"):
            value = getattr(self, name)
            if value is not None:
                _set(self, name, _aware(value, name.removeprefix("created_")))
        if (
            self.created_since is not None
            and self.created_until is not None
            and self.created_since >= self.created_until
        ):
            raise FilterError(
                "until",
                f"{_iso(self.created_until)} is not after since ({_iso(self.created_since)});"
                " fix: swap them or widen the window",
            )

    @property
    def is_empty(self) -> bool:
        """True when nothing narrows the filter: every task matches."""
        return self == TaskFilter()

    @property
    def has_step_condition(self) -> bool:
        return bool(self.step or self.error_class or self.step_states)

    @property
    def wanted_step_states(self) -> tuple[StepState, ...]:
        """The states the filter's step must be in (empty: no step condition)."""
        if self.step_states:
            return self.step_states
        if self.error_class:
            return FAILED_STEP_STATES
        if self.step:
            return (StepState.ERROR,)
        return ()

    def statuses_for(self, action: BulkAction) -> tuple[TaskState, ...]:
        """The task states `action` picks under this filter: the filter's statuses, which must all
        be states the action applies to, or all of those."""
        if not self.statuses:
            return action.states
        wrong = [s.value for s in self.statuses if s not in action.states]
        if wrong:
            raise FilterError(
                "status",
                f"a bulk {action.value} never applies to tasks that are {', '.join(wrong)}; it"
                f" picks tasks that are {', '.join(s.value for s in action.states)}; fix: drop"
                " the other states",
            )
        return self.statuses

    def describe(self) -> str:
        """The filter in a few words, for a confirmation or a report ("every task" when empty)."""
        parts: list[str] = []
        if self.name:
            parts.append("template " + "/".join(p for p in (self.namespace, self.name) if p))
        elif self.namespace:
            parts.append(f"namespace {self.namespace}")
        if self.version:
            parts.append(f"version {self.version}")
        if self.statuses:
            parts.append("status " + " or ".join(s.value for s in self.statuses))
        if self.created_since:
            parts.append(f"created since {_iso(self.created_since)}")
        if self.created_until:
            parts.append(f"created before {_iso(self.created_until)}")
        if self.has_step_condition:
            states = " or ".join(s.value for s in self.wanted_step_states)
            what = f"step {self.step}" if self.step else "a step"
            of = f" with error class {self.error_class}" if self.error_class else ""
            parts.append(f"{what} in {states}{of}")
        if self.key:
            parts.append(f"key {self.key}")
        if self.ids:
            parts.append(f"{len(self.ids)} selected task(s)")
        return ", ".join(parts) if parts else "every task"

    def matches(self, task: Task, statuses: Sequence[TaskState] | None = None) -> bool:
        """Whether `task` (with its steps) is picked, among `statuses` (default: the filter's own,
        or any): what `tasker.store.bulk` asks of the database, said in Python."""
        allowed = statuses if statuses is not None else self.statuses
        checks = (
            not allowed or task.status in allowed,
            self.namespace is None or task.namespace == self.namespace,
            self.name is None or task.name == self.name,
            self.version is None or task.version == self.version,
            self.created_since is None or task.created_at >= self.created_since,
            self.created_until is None or task.created_at < self.created_until,
            self.key is None or self.key in (task.idempotency_key, task.correlation_id),
            not self.ids or task.id in self.ids,
        )
        if not all(checks):
            return False
        if not self.has_step_condition:
            return True
        wanted = self.wanted_step_states
        return any(
            (self.step is None or s.name == self.step)
            and s.status in wanted
            and (
                self.error_class is None
                or (s.last_error is not None and s.last_error.get("class") == self.error_class)
            )
            for s in task.steps
        )


@dataclass(frozen=True)
class BulkReport:
    """What a bulk run found and did.

    `matched` counts the tasks the filter picked (in a dry run: how many would change), `changed`
    those the action changed, `skipped` the others: they stopped matching before their chunk ran
    (retried by someone else meanwhile, say) or the action refused them (`refusals` keeps the first
    messages); `archived` the purged tasks written to the archive first. `last_id` is the last
    task id examined: with `more` (the run stopped at its `limit`) pass it as `after` to go on
    where it stopped.
    """

    action: BulkAction
    matched: int
    changed: int
    skipped: int
    dry_run: bool
    refusals: tuple[str, ...] = field(default_factory=tuple)
    last_id: int | None = None
    more: bool = False
    #: Purged tasks written to the archive first (`archive` of a purge).
    archived: int = 0

    def summary(self) -> str:
        """One line for a person: what happened, or would."""
        noun = "task" if self.matched == 1 else "tasks"
        if self.dry_run:
            would = f"{self.matched:,} {noun} would be {self.action.past}"
            return would + " (dry run: nothing changed)"
        line = f"{self.changed:,} of {self.matched:,} matching {noun} {self.action.past}"
        if self.skipped:
            line += f"; {self.skipped:,} skipped (no longer matching, or refused)"
        if self.archived:
            line += f"; {self.archived:,} archived first"
        if self.more:
            line += f"; stopped at the limit: go on with after={self.last_id}"
        return line


def parse_filter(
    *,
    now: datetime,
    template: str | None = None,
    namespace: str | None = None,
    name: str | None = None,
    version: str | None = None,
    statuses: Iterable[str | TaskState] = (),
    since: str | datetime | timedelta | None = None,
    until: str | datetime | timedelta | None = None,
    error_class: str | None = None,
    step: str | None = None,
    step_states: Iterable[str | StepState] = (),
    key: str | None = None,
    ids: Iterable[int] = (),
) -> TaskFilter:
    """A filter from what a person typed: `template` as `namespace/name[@version]` or a bare name
    (any namespace); `since` and `until` as a duration back from `now` (`2h`, `P1D`, seconds) or
    an ISO-8601 time (UTC when it has no zone). Empty strings count as not given."""
    ns, nm, ver = _template(template)
    return TaskFilter(
        namespace=_merge("namespace", _blank(namespace), ns),
        name=_merge("template", _blank(name), nm),
        version=_merge("version", _blank(version), ver),
        statuses=_states([s for s in statuses if s], TaskState, "status"),
        created_since=moment(since, now, "since"),
        created_until=moment(until, now, "until"),
        error_class=_blank(error_class),
        step=_blank(step),
        step_states=_states([s for s in step_states if s], StepState, "step_state"),
        key=_blank(key),
        ids=tuple(ids),
    )


def moment(value: str | datetime | timedelta | None, now: datetime, name: str) -> datetime | None:
    """A point in time given as a time, or as a duration back from `now` (`2h` is two hours ago):
    None for nothing given. A time without a zone is UTC."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, datetime):
        return _aware(value, name)
    if isinstance(value, timedelta):
        return now - value
    text = value.strip()
    try:
        return now - timedelta(seconds=duration_seconds(text, MAX_RETENTION_SECONDS))
    except ValueError:
        pass
    try:
        return _aware(datetime.fromisoformat(text.replace("Z", "+00:00")), name)
    except ValueError:
        raise FilterError(
            name,
            f"'{text[:40]}' is neither a duration nor a time; fix: write a duration back from now"
            " (30m, 2h, 7d, P1D) or an ISO-8601 time (2026-01-31T14:00:00Z)",
        ) from None


def _template(ref: str | None) -> tuple[str | None, str | None, str | None]:
    text = _blank(ref)
    if text is None:
        return None, None, None
    body, sep, version = text.partition("@")
    namespace, slash, name = body.rpartition("/")
    if (slash and not namespace) or not name or (sep and not version) or "/" in namespace:
        raise FilterError(
            "template",
            f"'{text[:80]}' is not a template; fix: write namespace/name, namespace/name@1.0.0 or"
            " just the name",
        )
    return namespace or None, name, version or None


def _merge(name: str, given: str | None, from_template: str | None) -> str | None:
    if given is not None and from_template is not None and given != from_template:
        raise FilterError(
            name,
            f"'{given}' contradicts the template's '{from_template}'; fix: give it once",
        )
    return given if given is not None else from_template


def _blank(value: str | None) -> str | None:
    if value is None:
        return None
    stripped = value.strip()
    return stripped or None


def _set(obj: TaskFilter, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


def _states(values: Iterable[str | E], kind: type[E], name: str) -> tuple[E, ...]:
    if isinstance(values, str):
        values = (values,)
    out: list[E] = []
    for v in values:
        try:
            state = kind(v)
        except ValueError:
            known = ", ".join(s.value for s in kind)
            raise FilterError(name, f"unknown state '{str(v)[:40]}'; use one of {known}") from None
        if state not in out:
            out.append(state)
    return tuple(out)


def _ids(values: Iterable[Any]) -> tuple[int, ...]:
    out: dict[int, None] = {}
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_ID:
            raise FilterError("ids", f"{str(v)[:30]!r} is not a task id (a positive integer)")
        out[v] = None
    if len(out) > MAX_IDS:
        raise FilterError(
            "ids", f"{len(out):,} ids is more than {MAX_IDS:,}; fix: filter instead of listing"
        )
    return tuple(sorted(out))


def _check_name(value: str | None, name: str, limit: int) -> None:
    if value is not None and (len(value) > limit or not NAME.match(value)):
        raise FilterError(
            name,
            f"'{value[:80]}' is not a name: letters, digits, _ . - and at most {limit} characters",
        )


def _check_text(value: str | None, name: str, limit: int, example: str) -> None:
    if value is not None and (len(value) > limit or not _TEXT.match(value)):
        raise FilterError(
            name, f"must be 1 to {limit} printable characters on one line, like {example}"
        )


def _aware(value: datetime, name: str) -> datetime:
    try:
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    except (OverflowError, ValueError):
        raise FilterError(name, f"{value.isoformat()} is out of range in UTC") from None


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
