"""The shapes the REST API accepts and returns (pydantic), and how engine objects are turned into
them.

Every request body forbids unknown fields and bounds its sizes, and every free-form JSON value a
client sends (a task context, a step result) is checked for what Python's JSON parser lets through
but a store cannot keep: NaN and Infinity, NUL characters and lone surrogates (PostgreSQL refuses
them), and nesting deep enough to exhaust the recursion limit of a validator. Response models are
declared precisely because the OpenAPI spec is generated from them and a schemathesis run holds
every response to it.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasker.domain.bulk import BulkReport, TaskFilter
from tasker.domain.graph import execution_levels, execution_order
from tasker.domain.history import StepTransition as StepTransitionRecord
from tasker.domain.history import TaskTransition as TaskTransitionRecord
from tasker.domain.listing import TOTAL_CAP
from tasker.domain.records import FailureRecord, Signal, Step, Task
from tasker.domain.schedules import Schedule
from tasker.domain.states import StepState, TaskState
from tasker.domain.templates import TaskTemplate, semver_key

INT64_MAX = 2**63 - 1
#: How deep a context or result may nest; business data rarely passes 10 levels.
MAX_JSON_DEPTH = 32
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.\-]*$"
SEMVER_PATTERN = (
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.\-]+)?(\+[0-9A-Za-z.\-]+)?$"
)
REF_PATTERN = r"^([A-Za-z_][A-Za-z0-9_.\-]*/)?[A-Za-z_][A-Za-z0-9_.\-]*(@[0-9A-Za-z.+\-]+)?$"
#: Printable text on one line: idempotency keys, correlation ids.
TOKEN_PATTERN = r"^[^\x00-\x1f\x7f]+$"

# -- path and query parameters ---------------------------------------------------------------------
TaskId = Annotated[int, Path(ge=1, le=INT64_MAX, description="The task's id.", examples=[1])]
StepName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        pattern=NAME_PATTERN,
        description="The step's name in its template.",
        examples=["validate_cart"],
    ),
]
Namespace = Annotated[
    str, Path(min_length=1, max_length=64, pattern=NAME_PATTERN, examples=["ecommerce"])
]
TemplateName = Annotated[
    str, Path(min_length=1, max_length=128, pattern=NAME_PATTERN, examples=["process_order"])
]
VersionQuery = Annotated[
    str | None,
    Query(
        max_length=64,
        pattern=SEMVER_PATTERN,
        description="A semantic version; the latest when left out.",
    ),
]
DiagramFormat = Annotated[
    Literal["json", "text"] | None,
    Query(
        description=(
            "`json` (the default) or `text` (the bare Mermaid source); `Accept: text/plain` also"
            " asks for text."
        )
    ),
]


# -- JSON values from clients ----------------------------------------------------------------------
def _bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode)"
    return None


def check_json(value: Any, root: str) -> Any:
    """Return `value` if a store can keep it, else raise ValueError naming the JSON path of the
    problem.

    Iterative, so a hostile document cannot exhaust the stack of the check itself.
    """
    stack: list[tuple[Any, str, int]] = [(value, root, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(
                f"{path} nests deeper than {MAX_JSON_DEPTH} levels; fix: flatten the data"
            )
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(
                f"{path} is {item}, which is not a JSON number; fix: send a finite number or null"
            )
        if isinstance(item, str):
            problem = _bad_text(item)
            if problem:
                raise ValueError(f"{path} {problem}; fix: remove it")
        elif isinstance(item, dict):
            for k, v in item.items():
                problem = _bad_text(str(k))
                if problem:
                    raise ValueError(f"a key of {path} {problem}; fix: remove it")
                stack.append((v, f"{path}.{k}", depth + 1))
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
    return value


def _check_text(value: str | None) -> str | None:
    if value is not None:
        problem = _bad_text(value)
        if problem:
            raise ValueError(f"the text {problem}; fix: remove it")
    return value


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- request bodies --------------------------------------------------------------------------------
class TaskCreate(_Body):
    """A request for a task of a template the server loaded (never a handler class or an import
    path)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "template": "ecommerce/process_order",
                    "context": {
                        "cart_items": [{"product_id": 1, "quantity": 2, "price": 29.99}],
                        "payment_info": {
                            "method": "credit_card",
                            "token": "tok_visa",
                            "amount": 59.98,
                        },
                        "customer_info": {
                            "id": 7,
                            "email": "ada@example.com",
                            "name": "Ada Lovelace",
                        },
                    },
                    "idempotency_key": "checkout-8842",
                }
            ]
        },
    )

    template: str = Field(
        min_length=1,
        max_length=300,
        pattern=REF_PATTERN,
        description="`namespace/name`, optionally `@version`.",
        examples=["ecommerce/process_order"],
    )
    version: str | None = Field(
        default=None,
        max_length=64,
        pattern=SEMVER_PATTERN,
        description="Pin a version; the latest loaded one when left out.",
    )
    context: dict[str, Any] = Field(
        default_factory=dict,
        description="The task's input, validated against the template's JSON Schema.",
    )
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        pattern=TOKEN_PATTERN,
        description="A repeated key returns the first task (200), not a new one.",
    )
    correlation_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=TOKEN_PATTERN,
        description="Carried by every log line and event of the task.",
    )
    run_at: datetime | None = Field(
        default=None,
        description="Start the task at this time (ISO 8601 with a time zone); it stays"
        " `pending` until then and can be cancelled meanwhile.",
        examples=["2026-12-24T07:00:00+01:00"],
    )
    delay: float | str | None = Field(
        default=None,
        description="Start the task this long from now: seconds, an ISO-8601 duration (`PT10M`)"
        " or `90s`, `10m`, `2h`, `1d`. Not with `run_at`.",
        examples=["10m"],
    )
    deadline: datetime | float | str | None = Field(
        default=None,
        description="End the task in `error` (`deadline_exceeded`) if it has not finished by"
        " then: a time, or a duration from its start. Overrides the template's"
        " `timeout_seconds`.",
        examples=["2h"],
    )
    priority: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="0 to 1000, higher first: its steps go ahead of lower-priority work that"
        " came due up to one minute per level earlier. Default: the template's `priority`, else 0.",
    )

    @field_validator("context")
    @classmethod
    def _context(cls, v: dict[str, Any]) -> dict[str, Any]:
        return dict(check_json(v, "$.context"))

    @field_validator("idempotency_key", "correlation_id")
    @classmethod
    def _token(cls, v: str | None) -> str | None:
        return _check_text(v)


class SignalSend(_Body):
    """A signal to a task: its steps waiting for it (`wait_for`, `ctx.wait_for_signal`) resume."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "payload": {"confirmed_at": "2026-12-06T09:12:00Z"},
                    "idempotency_key": "mail-evt-81",
                }
            ]
        },
    )

    payload: Any = Field(
        default=None,
        description="Any JSON: a `wait_for` step completes with it as its results (an object as"
        ' it is, anything else as `{"payload": value}`).',
    )
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        pattern=TOKEN_PATTERN,
        description="A repeated key is the same signal (200 with `deduplicated: true`).",
    )

    @field_validator("payload")
    @classmethod
    def _payload(cls, v: Any) -> Any:
        return check_json(v, "$.payload")

    @field_validator("idempotency_key")
    @classmethod
    def _token(cls, v: str | None) -> str | None:
        return _check_text(v)


class SignalOut(BaseModel):
    id: int
    task_id: int
    name: str
    payload: Any
    idempotency_key: str | None
    created_at: datetime
    deduplicated: bool = Field(
        default=False, description="True when a repeated idempotency key returned this signal."
    )
    woke: list[int] = Field(
        default_factory=list, description="The ids of the waiting steps this signal woke."
    )

    @classmethod
    def of(cls, signal: Signal) -> SignalOut:
        return cls(
            id=signal.id,
            task_id=signal.task_id,
            name=signal.name,
            payload=signal.payload,
            idempotency_key=signal.idempotency_key,
            created_at=signal.created_at,
            deduplicated=signal.deduplicated,
            woke=list(signal.woke),
        )


class SignalList(BaseModel):
    task_id: int
    signals: list[SignalOut]


class ScheduleCreate(_Body):
    """A cron schedule for a loaded template: each tick creates one task."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "template": "data_pipeline/customer_analytics",
                    "name": "morning",
                    "cron": "0 7 * * *",
                    "timezone": "Europe/Berlin",
                    "context": {
                        "date_range": {"start_date": "2026-12-01", "end_date": "2026-12-01"}
                    },
                    "catch_up": "once",
                }
            ]
        },
    )

    template: str = Field(min_length=1, max_length=300, pattern=REF_PATTERN)
    version: str | None = Field(default=None, max_length=64, pattern=SEMVER_PATTERN)
    name: str = Field(min_length=1, max_length=128, pattern=NAME_PATTERN)
    cron: str = Field(min_length=1, max_length=255, description="Five fields: `0 7 * * *`.")
    timezone: str = Field(default="UTC", max_length=64, description="An IANA time zone.")
    context: dict[str, Any] = Field(default_factory=dict)
    catch_up: str = Field(
        default="once",
        pattern="^(skip|once|all)$",
        description="Ticks missed while no worker ran: `skip` them, run `once`, or run `all`"
        " (at most 100).",
    )
    paused: bool = False

    @field_validator("context")
    @classmethod
    def _context(cls, v: dict[str, Any]) -> dict[str, Any]:
        return dict(check_json(v, "$.context"))


class ScheduleOut(BaseModel):
    id: int
    template: str = Field(description="`namespace/name`, or `@version` when pinned.")
    name: str
    cron: str
    timezone: str
    context: dict[str, Any]
    catch_up: str
    paused: bool
    origin: str = Field(description="`template` (declared in its YAML) or `api`.")
    next_at: datetime = Field(description="The next tick (when not paused).")
    last_at: datetime | None = Field(description="The last tick that fired.")
    last_task_id: int | None = Field(description="The task the last tick created.")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Schedule) -> ScheduleOut:
        return cls(
            id=row.id,
            template=row.template,
            name=row.name,
            cron=row.cron,
            timezone=row.timezone,
            context=row.context,
            catch_up=row.catch_up.value,
            paused=row.paused,
            origin=row.origin,
            next_at=row.next_at,
            last_at=row.last_at,
            last_task_id=row.last_task_id,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class ScheduleList(BaseModel):
    schedules: list[ScheduleOut]


class TaskRerun(_Body):
    from_step: str = Field(
        min_length=1,
        max_length=128,
        pattern=NAME_PATTERN,
        description="The step to run again from; it and every step downstream start over.",
    )
    reason: str | None = Field(
        default=None, max_length=1000, description="Recorded with the re-run's transitions."
    )

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str | None) -> str | None:
        return _check_text(v)


class TaskCancel(_Body):
    reason: str | None = Field(
        default=None, max_length=1000, description="Recorded with the cancellation."
    )
    compensate: bool = Field(
        default=False,
        description="Then undo what the completed steps did (those that declare a compensation):"
        " the task goes `compensating`, then `compensated`.",
    )

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str | None) -> str | None:
        return _check_text(v)


# -- bulk operations -------------------------------------------------------------------------------
#: A bulk body may list this many ids (`tasker.domain.bulk.MAX_IDS`).
MAX_BULK_IDS = 10_000
BulkTaskId = Annotated[int, Field(ge=1, le=INT64_MAX)]


class BulkFilter(_Body):
    """Which tasks a bulk operation picks: every field given must hold (AND), a list of states any
    of them; at least one field is required. `dry_run` counts and changes nothing."""

    template: str | None = Field(
        default=None,
        max_length=256,
        pattern=REF_PATTERN,
        description="`namespace/name[@version]`, or a bare template name (in any namespace).",
        examples=["payments/process_refund"],
    )
    namespace: str | None = Field(default=None, max_length=64, pattern=NAME_PATTERN)
    version: str | None = Field(default=None, max_length=64, pattern=SEMVER_PATTERN)
    status: list[TaskState] = Field(
        default_factory=list,
        max_length=len(TaskState),
        description="Task states (any of them); by default every state the action applies to."
        " A state it never applies to answers 422.",
    )
    since: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=TOKEN_PATTERN,
        description="Created at or after: a duration back from now (`2h`, `7d`, `PT30M`) or an"
        " ISO-8601 time (UTC without a zone).",
        examples=["2h"],
    )
    until: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=TOKEN_PATTERN,
        description="Created before: a duration back from now or an ISO-8601 time.",
    )
    error_class: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        pattern=TOKEN_PATTERN,
        description="A step (the `step`, when given) whose last failure is of this class, in"
        " error or waiting to retry (or in `step_state`).",
        examples=["PermanentError"],
    )
    step: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=TOKEN_PATTERN,
        description="A step of this name in error (or in `step_state`).",
    )
    step_state: list[StepState] = Field(
        default_factory=list,
        max_length=len(StepState),
        description="The states the step must be in (any of them).",
    )
    key: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        pattern=TOKEN_PATTERN,
        description="Exact idempotency key or correlation id.",
    )
    ids: list[BulkTaskId] = Field(
        default_factory=list,
        max_length=MAX_BULK_IDS,
        description="Only these tasks (a selection), still subject to the other fields.",
    )
    dry_run: bool = Field(
        default=False, description="Count the tasks the operation would pick; change nothing."
    )
    chunk: int = Field(default=500, ge=1, le=10_000, description="Tasks per transaction.")
    after: int = Field(
        default=0,
        ge=0,
        le=INT64_MAX,
        description="Start after this task id: the `last_id` of a run that stopped at `limit`.",
    )
    limit: int | None = Field(
        default=None,
        ge=1,
        le=INT64_MAX,
        description="Stop after this many tasks (`more` then says whether others are left).",
    )


class BulkRetry(BulkFilter):
    reason: str | None = Field(
        default=None,
        max_length=1000,
        description="Recorded with every transition the run makes (`bulk retry: <reason>`).",
    )

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str | None) -> str | None:
        return _check_text(v)


class BulkCancel(BulkRetry):
    compensate: bool = Field(
        default=False,
        description="Then undo what each task's completed steps did, where its template declares"
        " compensations.",
    )


class BulkPurge(BulkFilter):
    pass


class BulkResult(BaseModel):
    """What a bulk run found and did; a dry run's `matched` is how many it would change."""

    action: Literal["retry", "cancel", "purge"]
    filter: str = Field(description="The filter in words.")
    matched: int = Field(description="Tasks the filter picked (in a dry run: would change).")
    changed: int = Field(description="Tasks the operation changed.")
    skipped: int = Field(
        description="Tasks that stopped matching before their chunk ran, or that the operation"
        " refused."
    )
    dry_run: bool
    refusals: list[str] = Field(description="Why the operation refused tasks (the first 20).")
    last_id: int | None = Field(description="The last task id examined (None: none matched).")
    more: bool = Field(
        description="The run stopped at `limit` with tasks left: send again with `after`."
    )
    archived: int = Field(
        default=0,
        description="Purged tasks written to the server's archive first (its `archive` setting).",
    )

    @classmethod
    def of(cls, report: BulkReport, task_filter: TaskFilter) -> BulkResult:
        return cls(
            action=report.action.value,
            filter=task_filter.describe(),
            matched=report.matched,
            changed=report.changed,
            skipped=report.skipped,
            dry_run=report.dry_run,
            refusals=list(report.refusals),
            last_id=report.last_id,
            more=report.more,
            archived=report.archived,
        )


class StepResolve(_Body):
    result: dict[str, Any] = Field(
        default_factory=dict, description="The step's result, as if its handler had returned it."
    )

    @field_validator("result")
    @classmethod
    def _result(cls, v: dict[str, Any]) -> dict[str, Any]:
        return dict(check_json(v, "$.result"))


# -- tasks and steps -------------------------------------------------------------------------------
class StepError(BaseModel):
    """Why the last attempt failed. A handler's traceback stays in the store: it names server
    paths."""

    error_class: str
    message: str
    retryable: bool | None = None
    error_code: str | None = None
    context: dict[str, Any] | None = None

    @classmethod
    def of(cls, raw: FailureRecord | None) -> StepError | None:
        if not raw:
            return None
        code, context = raw.get("error_code"), raw.get("context")
        retryable = raw.get("retryable")
        return cls(
            error_class=str(raw.get("class") or "Error"),
            message=str(raw.get("message") or ""),
            retryable=retryable if isinstance(retryable, bool) else None,
            error_code=str(code) if code is not None else None,
            context=context if isinstance(context, dict) else None,
        )


class StepTransition(BaseModel):
    from_state: str | None
    to_state: str
    attempt: int
    at: datetime
    worker: str | None
    error_class: str | None
    error_message: str | None
    duration_ms: float | None
    #: Why the step moved when no attempt moved it (a skip's condition and its value).
    reason: str | None = None


class TaskTransition(BaseModel):
    from_state: str | None
    to_state: str
    at: datetime
    worker: str | None
    reason: str | None


class StepOut(BaseModel):
    id: int
    task_id: int
    name: str
    status: str
    attempts: int
    retry_limit: int
    retryable: bool
    dependent_system: str
    parents: list[str] = Field(
        description="Every step this one waits for (depends_on_step and depends_on_steps)."
    )
    results: dict[str, Any] | None
    last_error: StepError | None
    decision: str | None = Field(
        default=None,
        description="Why a condition or join skipped the step, or that its `when` held; what a"
        " waiting step waits for (`sleeping until ...`, `waiting for signal 'x'`) and how its"
        " wait ended.",
    )
    instance_of: int | None = Field(
        default=None, description="A fan-out's instance: the id of its fan-out step."
    )
    item_index: int | None = Field(
        default=None, description="A fan-out's instance: its item's index in the list."
    )
    fanout: int | None = Field(
        default=None, description="A fan-out step: how many instances it expanded into."
    )
    compensates: int | None = Field(
        default=None,
        description="An undo row (`undo:<step>`, written when its task compensates): the id of"
        " the step it undoes.",
    )
    run_at: datetime | None = Field(
        description="When the step is (or was) due to run; retries move it forward."
    )
    wait: dict[str, Any] | None = Field(
        default=None,
        description="A durable wait: `kind` (`sleep` or `signal`), `until` (its end or timeout),"
        " `signal`, `since`, and `over` once the step's own wait ended; null for a step that"
        " never waited.",
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None

    @classmethod
    def of(cls, step: Step, parents: list[str]) -> StepOut:
        return cls(
            id=step.id,
            task_id=step.task_id,
            name=step.name,
            status=step.status,
            attempts=step.attempts,
            retry_limit=step.retry_limit,
            retryable=step.retryable,
            dependent_system=step.dependent_system,
            parents=parents,
            results=step.results,
            last_error=StepError.of(step.last_error),
            decision=step.decision,
            instance_of=step.instance_of,
            item_index=step.item_index,
            fanout=step.fanout,
            compensates=step.compensates,
            run_at=step.run_at,
            wait=_public_wait(step.wait),
            created_at=step.created_at,
            started_at=step.started_at,
            finished_at=step.finished_at,
            duration_seconds=step.duration_seconds,
        )


def _public_wait(wait: dict[str, Any] | None) -> dict[str, Any] | None:
    """A step's wait as the API shows it: without the state a handler keeps in it (its own
    data, which may be large or private)."""
    if wait is None:
        return None
    return {k: v for k, v in wait.items() if k != "state"}


class StepDetail(StepOut):
    transitions: list[StepTransition]

    @classmethod
    def detail(
        cls, step: Step, parents: list[str], transitions: list[StepTransitionRecord]
    ) -> StepDetail:
        rows = [
            StepTransition.model_validate(t) for t in transitions if t.get("step_id") == step.id
        ]
        return cls(**StepOut.of(step, parents).__dict__, transitions=rows)


class StepList(BaseModel):
    task_id: int
    steps: list[StepDetail]


class TaskSummary(BaseModel):
    id: int
    namespace: str
    name: str
    version: str
    template: str = Field(
        description="`namespace/name@version` of the template the task was created with."
    )
    status: TaskState
    context: dict[str, Any]
    idempotency_key: str
    correlation_id: str
    annotations: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    parent_task_id: int | None = Field(
        default=None,
        description=(
            "A child task: the task whose `task:` step created it (a sub-workflow); null for"
            " other tasks. A child keeps its parent's `correlation_id`."
        ),
    )
    parent_step_id: int | None = Field(
        default=None,
        description="A child task: the id of the parent's `task:` step that waits for it.",
    )
    starts_at: datetime | None = Field(
        default=None, description="A delayed start: when its first steps become due."
    )
    deadline_at: datetime | None = Field(
        default=None,
        description="Past this time an unfinished task ends in `error` (`deadline_exceeded`).",
    )
    priority: int = Field(
        default=0, description="Claims take its steps ahead of lower-priority work (0 to 1000)."
    )
    concurrency_key: str | None = Field(
        default=None,
        description="Its fair-share key (`<template>:<value>`): at most the template's"
        " `max_in_flight_per_key` steps of one key run at once.",
    )

    @classmethod
    def fields_of(cls, task: Task) -> dict[str, Any]:
        return {
            "id": task.id,
            "namespace": task.namespace,
            "name": task.name,
            "version": task.version,
            "template": task.template_key,
            "status": task.status,
            "context": task.context,
            "idempotency_key": task.idempotency_key,
            "correlation_id": task.correlation_id,
            "annotations": task.annotations,
            "created_at": task.created_at,
            "updated_at": task.updated_at,
            "started_at": task.started_at,
            "finished_at": task.finished_at,
            "duration_seconds": task.duration_seconds,
            "parent_task_id": task.parent_task_id,
            "parent_step_id": task.parent_step_id,
            "starts_at": task.starts_at,
            "deadline_at": task.deadline_at,
            "priority": task.priority,
            "concurrency_key": task.concurrency_key,
        }

    @classmethod
    def of(cls, task: Task) -> TaskSummary:
        return cls(**cls.fields_of(task))


class TaskDetail(TaskSummary):
    deduplicated: bool = Field(
        description="True when a repeated idempotency key returned this existing task."
    )
    step_counts: dict[str, int] = Field(description="How many steps are in each state.")
    children: list[int] = Field(
        default_factory=list,
        description=(
            "The ids of the child tasks this task's `task:` steps created (sub-workflows), oldest"
            " first; each one's `parent_task_id` is this task. Only on single-task answers: the"
            " list pages leave it out."
        ),
    )
    steps: list[StepOut]
    transitions: list[TaskTransition]

    @classmethod
    def detail(
        cls,
        task: Task,
        template: TaskTemplate,
        transitions: list[TaskTransitionRecord],
        children: list[int] | None = None,
    ) -> TaskDetail:
        parents = parents_by_step(template)
        counts: dict[str, int] = {}
        for s in task.steps:
            counts[s.status] = counts.get(s.status, 0) + 1
        return cls(
            **cls.fields_of(task),
            deduplicated=task.deduplicated,
            step_counts=counts,
            children=children or [],
            steps=[StepOut.of(s, parents.get(s.name, [])) for s in task.steps],
            transitions=[TaskTransition.model_validate(t) for t in transitions],
        )


class TaskPage(BaseModel):
    tasks: list[TaskSummary]
    total: int | None = Field(
        description=(
            f"How many tasks match the filters, across all pages, counted up to {TOTAL_CAP:,} "
            "(see `total_capped`); null on cursor pages and with `include_total=false`."
        )
    )
    total_capped: bool | None = Field(
        None,
        description=(
            f"True when more than {TOTAL_CAP:,} tasks match: counting stopped there, so `total` "
            "means at least that many. Null when `total` is."
        ),
    )
    limit: int
    offset: int
    next_cursor: str | None = Field(
        None, description="Older tasks: pass as `after`; null on the last page."
    )
    prev_cursor: str | None = Field(
        None, description="Newer tasks: pass as `before`; null on the first page."
    )


def parents_by_step(template: TaskTemplate) -> dict[str, list[str]]:
    return {s.name: s.parents for s in template.step_templates}


# -- handler discovery -----------------------------------------------------------------------------
class NamespaceOut(BaseModel):
    name: str
    handler_count: int = Field(description="Templates (by name) in the namespace.")
    version_count: int = Field(description="Template versions in the namespace.")


class NamespaceList(BaseModel):
    namespaces: list[NamespaceOut]
    total_namespaces: int


class HandlerSummary(BaseModel):
    namespace: str
    name: str
    description: str | None
    versions: list[str] = Field(description="Loaded versions, oldest first.")
    latest_version: str


class NamespaceDetail(BaseModel):
    namespace: str
    handlers: list[HandlerSummary]
    total_handlers: int


class StepTemplateOut(BaseModel):
    """A step of a template. `handler_config` values are not shown: `${VAR}` may have put secrets
    there."""

    name: str
    description: str | None
    handler_class: str | None = Field(
        description="The step's code; null for a `task:` step, which runs a template instead."
    )
    task: str | None = Field(
        default=None,
        description=(
            "A sub-workflow: `namespace/name` (or `@version`) of the template whose task this step"
            " creates and waits for, completing with its steps' results; null for other steps."
        ),
    )
    depends_on_step: str | None
    depends_on_steps: list[str]
    dependencies: list[str] = Field(
        description="Every parent: depends_on_step and depends_on_steps together."
    )
    dependent_system: str
    default_retryable: bool
    default_retry_limit: int
    skippable: bool
    timeout_seconds: float | None
    handler_config_keys: list[str]
    custom_events: list[str]


class GraphNode(BaseModel):
    id: str
    name: str
    handler_class: str | None = Field(description="Null for a `task:` step (a sub-workflow).")
    task: str | None = Field(
        default=None, description="The template a `task:` step runs; null for other steps."
    )
    dependent_system: str


class GraphEdge(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from", description="The parent step.")
    to: str = Field(description="The step that waits for it.")


class DependencyGraph(BaseModel):
    nodes: list[GraphNode]
    edges: list[GraphEdge]


class TemplateVersion(BaseModel):
    namespace: str
    name: str
    version: str
    key: str = Field(description="`namespace/name@version`.")
    description: str | None
    default_dependent_system: str
    task_handler_class: str | None
    context_schema: dict[str, Any] | None = Field(
        description="The JSON Schema a task's context must satisfy."
    )
    custom_events: list[str]
    step_templates: list[StepTemplateOut]
    dependency_graph: DependencyGraph
    execution_order: list[str] = Field(description="A topological order of the steps.")
    execution_levels: list[list[str]] = Field(
        description="Steps grouped by depth; a level's steps run in parallel."
    )

    @classmethod
    def of(cls, t: TaskTemplate) -> TemplateVersion:
        pairs = [(s.name, s.parents) for s in t.step_templates]
        steps = [
            StepTemplateOut(
                name=s.name,
                description=s.description,
                handler_class=s.handler_class,
                task=s.task,
                depends_on_step=s.depends_on_step,
                depends_on_steps=list(s.depends_on_steps),
                dependencies=s.parents,
                dependent_system=t.dependent_system_of(s),
                default_retryable=s.default_retryable,
                default_retry_limit=s.default_retry_limit,
                skippable=s.skippable,
                timeout_seconds=s.timeout_seconds,
                handler_config_keys=sorted(s.handler_config),
                custom_events=[e.name for e in s.custom_events],
            )
            for s in t.step_templates
        ]
        graph = DependencyGraph(
            nodes=[
                GraphNode(
                    id=s.name,
                    name=s.name,
                    handler_class=s.handler_class,
                    task=s.task,
                    dependent_system=t.dependent_system_of(s),
                )
                for s in t.step_templates
            ],
            edges=[GraphEdge(from_=p, to=s.name) for s in t.step_templates for p in s.parents],
        )
        return cls(
            namespace=t.namespace_name,
            name=t.name,
            version=t.version,
            key=t.key,
            description=t.description,
            default_dependent_system=t.default_dependent_system,
            task_handler_class=t.task_handler_class,
            context_schema=t.context_schema,
            custom_events=[e.name for e in t.custom_events],
            step_templates=steps,
            dependency_graph=graph,
            execution_order=execution_order(pairs),
            execution_levels=execution_levels(pairs),
        )


class HandlerDetail(BaseModel):
    namespace: str
    name: str
    latest_version: str
    versions: list[TemplateVersion] = Field(
        description="Every loaded version, oldest first, or the one asked for."
    )


def latest(versions: list[str]) -> str:
    return max(versions, key=semver_key)


# -- diagrams --------------------------------------------------------------------------------------
class Diagram(BaseModel):
    template: str = Field(description="`namespace/name@version` the diagram was drawn from.")
    task_id: int | None = Field(
        description="The task whose step states colour the diagram, if any."
    )
    mermaid: str = Field(description="A Mermaid flowchart (`graph TD`).")
