"""Task and step templates: the parsed, validated form of a YAML workflow definition.

The models accept the YAML keys of the Ruby Tasker unchanged (docs/templates.md) plus the
additive `retry:` block. They are frozen: once loaded, a template is a value, and its JSON form is
the snapshot pinned to every task.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from tasker.domain import bounds
from tasker.domain.bounds import Range
from tasker.domain.control import (
    DEFAULT_MAX_ITEMS,
    JoinRule,
    StepControl,
    fanout_results,
    gated,
    parse_instance,
)
from tasker.domain.expressions import (
    Expression,
    ExpressionFailure,
    ExpressionSyntaxError,
    compile_expression,
)
from tasker.domain.fairness import key_scope, step_key
from tasker.domain.graph import GraphError, children_of, execution_order, mermaid, reachable
from tasker.domain.rates import RateLimit
from tasker.domain.retention import RetentionPolicy
from tasker.domain.retry import DEFAULT_RETRY_LIMIT, RetryPolicy
from tasker.domain.schedules import ScheduleSpec
from tasker.domain.waits import OnTimeout, duration_seconds, is_duration

SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$"
)
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_TASK_REF = re.compile(
    r"^([A-Za-z_][A-Za-z0-9_.\-]*/)?[A-Za-z_][A-Za-z0-9_.\-]*(@[0-9A-Za-z.+\-]+)?$"
)
DEFAULT_NAMESPACE = "default"
DEFAULT_VERSION = "0.1.0"
DEFAULT_DEPENDENT_SYSTEM = "default"
#: A template with more steps than this is *wide*: a claim reads only the steps related to the one
#: it claims (`TaskTemplate.related_steps`), not the whole task (docs/architecture.md).
WIDE_TEMPLATE_STEPS = 64


def canonical_json(value: Any) -> str:
    """One JSON text per value (sorted keys, no spaces), so equal data hashes equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def semver_key(version: str) -> tuple[int, int, int, int, str]:
    """Sort key for semantic versions: a release sorts after its pre-releases."""
    m = SEMVER.match(version)
    if not m:
        raise ValueError(f"'{version}' is not a semantic version like 1.2.3")
    major, minor, patch, pre = m.groups()
    return (int(major), int(minor), int(patch), 0 if pre else 1, _prerelease_key(pre or ""))


def _prerelease_key(pre: str) -> str:
    """Pre-release identifiers encoded so that string order is semver precedence (rc.2 < rc.10 <
    rc.x).

    A numeric identifier becomes '0' + its length + its digits (numbers compare by value, below any
    word); a word becomes '1' + itself; identifiers are joined by NUL, which sorts below every
    allowed character.
    """
    parts = []
    for ident in pre.split(".") if pre else []:
        if ident.isdigit():
            digits = str(int(ident))
            parts.append(f"0{len(digits):04d}{digits}")
        else:
            parts.append("1" + ident)
    return "\x00".join(parts)


def _within(limits: Range) -> BeforeValidator:
    """Check a number against its range in `tasker.domain.bounds` before pydantic coerces it.

    Pydantic's lax mode would take `true` as 1 and `.nan`/`.inf` as floats that pass every
    `ge`/`le`; the shared range refuses them, so a template, the CLI and the engine agree on what is
    valid.
    """
    return BeforeValidator(lambda v: v if v is None else limits.check(v))


RetryLimit = Annotated[int, _within(bounds.RETRY_LIMIT)]
BackoffSeconds = Annotated[float | None, _within(bounds.BACKOFF_SECONDS)]
Jitter = Annotated[float | None, _within(bounds.JITTER)]
ServerDelaySeconds = Annotated[float | None, _within(bounds.SERVER_DELAY_SECONDS)]
MaxInFlight = Annotated[int | None, _within(bounds.MAX_IN_FLIGHT)]
FailureThreshold = Annotated[int | None, _within(bounds.FAILURE_THRESHOLD)]
CooldownSeconds = Annotated[float | None, _within(bounds.COOLDOWN_SECONDS)]
MaxOutageSeconds = Annotated[float | None, _within(bounds.MAX_OUTAGE_SECONDS)]
IdentityWindow = Annotated[float | None, _within(bounds.IDENTITY_WINDOW_SECONDS)]
NamespaceMaxInFlight = Annotated[int | None, _within(bounds.NAMESPACE_MAX_IN_FLIGHT)]
MaxParallel = Annotated[int | None, _within(bounds.MAX_PARALLEL)]
Priority = Annotated[int, _within(bounds.PRIORITY)]
MaxInFlightPerKey = Annotated[int | None, _within(bounds.MAX_IN_FLIGHT_PER_KEY)]
MaxItems = Annotated[int | None, _within(bounds.MAX_ITEMS)]


def _duration(v: Any) -> Any:
    return v if v is None else duration_seconds(v)


#: A wait's timeout, a task's deadline: seconds, an ISO-8601 duration or `10m`, `2h`, `1d`.
WaitSeconds = Annotated[float | None, BeforeValidator(_duration)]


def _retention(v: Any) -> Any:
    """`retention: {complete: 30d, error: never}` as stored: seconds or `never` per finished state
    (`tasker.domain.retention`); an empty mapping declares nothing."""
    if v is None:
        return None
    if not isinstance(v, dict):
        raise ValueError(
            f"{type(v).__name__} is not a mapping; map finished states to durations, e.g."
            " {complete: 30d, error: never}"
        )
    return RetentionPolicy.parse(v).as_stored() or None


#: How long a template's finished tasks are kept, per state.
Retention = Annotated[dict[str, float | str] | None, BeforeValidator(_retention)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class RetrySettings(_Strict):
    """The additive `retry:` block, on a template (default for its steps) or on one step."""

    backoff_base_seconds: BackoffSeconds = None
    backoff_max_seconds: BackoffSeconds = None
    jitter: Jitter = None
    max_server_delay_seconds: ServerDelaySeconds = None

    def merged_over(self, base: RetrySettings | None) -> RetrySettings:
        if base is None:
            return self
        data = base.model_dump()
        data.update({k: v for k, v in self.model_dump().items() if v is not None})
        return RetrySettings(**data)


def _rate_spec(v: Any) -> Any:
    """`100/minute` or `{limit: 100, per: minute}`, checked (`tasker.domain.rates`)."""
    if v is None:
        return None
    rate = RateLimit.parse(v)
    return {"limit": rate.limit, "per": rate.per}


class RateLimitSpec(_Strict):
    """A `rate_limit:` of a dependent system: at most `limit` steps started per `per`."""

    limit: int
    per: Literal["second", "minute", "hour"] = "second"

    @property
    def rate(self) -> RateLimit:
        return RateLimit.parse({"limit": self.limit, "per": self.per})


class DependentSystemSettings(_Strict):
    """The `dependent_systems:` block: limits and circuit-breaker settings shared by all workers."""

    max_in_flight: MaxInFlight = None
    #: At most this many steps started per second, minute or hour (`tasker.domain.rates`).
    rate_limit: Annotated[RateLimitSpec | None, BeforeValidator(_rate_spec)] = None
    failure_threshold: FailureThreshold = None
    cooldown_seconds: CooldownSeconds = None
    max_cooldown_seconds: CooldownSeconds = None
    #: How long steps wait for a system that answers nothing before they give up (default an hour).
    max_outage_seconds: MaxOutageSeconds = None


class TaskIdentity(_Strict):
    """`identity:` opts a template in to keys derived from the context: requests whose values at
    these paths are equal are one task (within `window_seconds` of the first, or for as long as it
    is kept).

    `from: [customer_id, cart_items]` with `window_seconds: 60` makes "the same cart from the same
    customer within a minute" one order. Without `identity:` (and without an explicit idempotency
    key) every create makes a new task.
    """

    from_: list[str] = Field(alias="from", min_length=1, max_length=32)
    window_seconds: IdentityWindow = None

    @field_validator("from_")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        out = []
        for path in v:
            if not isinstance(path, str) or not path.strip():
                raise ValueError("each entry is a context path such as customer.id")
            clean = path.strip().removeprefix("$.")
            if any(not part for part in clean.split(".")):
                raise ValueError(f"'{path}' is not a context path such as customer.id")
            out.append(clean)
        return out

    def values(self, context: dict[str, Any]) -> list[Any]:
        """The context's value at each path (None where the path is absent)."""
        found: list[Any] = []
        for path in self.from_:
            value: Any = context
            for part in path.split("."):
                if isinstance(value, dict):
                    value = value.get(part)
                elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                    value = value[int(part)]
                else:
                    value = None
                    break
            found.append(value)
        return found


class CustomEvent(_Strict):
    name: str
    description: str = ""


def _events(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, list):
        return [{"name": v} if isinstance(v, str) else v for v in value]
    return value


class Compensation(_Strict):
    """How a step's work is undone when its task fails or is cancelled with compensation
    (`tasker.domain.compensation`): a step handler of its own, run as a step of its own."""

    handler_class: str = Field(min_length=1)
    #: None: the step's `default_retry_limit`.
    retry_limit: RetryLimit | None = None
    #: None: the step's `handler_config`.
    handler_config: dict[str, Any] | None = None
    #: None: the step's dependent system (a refund calls the gateway the charge called).
    dependent_system: str | None = None


class OnFailure(StrEnum):
    """What a task does when it ends in `error` with completed steps that declare a
    compensation."""

    COMPENSATE = "compensate"
    STOP = "stop"


T = TypeVar("T")


def _cached(model: BaseModel, name: str, compute: Callable[[], T]) -> T:
    """The private attribute `name` of `model`, computed once (while it is None) by `compute`.

    Read straight from pydantic's dict of private attributes: pydantic serves `self._x` through
    `__getattr__` after a failed lookup (a few microseconds, with a `hasattr` inside), and a worker
    asks a template for a step, its children, gated and fan-out steps and signals at every attempt:
    a dozen such reads per step, a tenth of a no-op step's handler path."""
    private = model.__pydantic_private__
    assert private is not None  # every model here declares private attributes
    found: T | None = private[name]
    if found is None:
        found = private[name] = compute()
    return found


class StepTemplate(_Strict):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    #: The step's code; None for a `task:` step, which runs another template's task instead.
    handler_class: str | None = Field(default=None, min_length=1)
    depends_on_step: str | None = None
    depends_on_steps: list[str] = Field(default_factory=list)
    default_retryable: bool = True
    default_retry_limit: RetryLimit = DEFAULT_RETRY_LIMIT
    skippable: bool = False
    dependent_system: str | None = None
    handler_config: dict[str, Any] = Field(default_factory=dict)
    custom_events: list[CustomEvent] = Field(default_factory=list)
    retry: RetrySettings | None = None
    #: Run a sync handler on the worker's own thread instead of handing it to a handler thread
    #: (None: as the template says). For handlers that take well under a millisecond and never
    #: block: see docs/handlers.md, "Inline handlers".
    run_inline: bool | None = None
    #: A CEL condition over `context` and the ancestors' `results`, decided when the parents are
    #: finished: false skips the step (`tasker.domain.control`).
    when: str | None = Field(default=None, max_length=4096)
    #: How a step meets its parents: `all` (None, the default: a skipped parent skips it) or `any`
    #: (it runs when at least one parent completed).
    join: JoinRule | None = None
    #: A CEL expression giving a list: the step runs once per item, as instances of its own
    #: (`ctx.item`, `ctx.index`); dependents wait for all and read the list of their results.
    foreach: str | None = Field(default=None, max_length=4096)
    #: At most this many instances of one task's fan-out run at once (None: no bound).
    max_parallel: MaxParallel = None
    #: A list longer than this fails the step (None: `DEFAULT_MAX_ITEMS`).
    max_items: MaxItems = None
    #: A sub-workflow: `ns/name` or `ns/name@version` of the template whose task this step
    #: creates and waits for (instead of a handler); it completes with that task's results.
    task: str | None = Field(default=None, min_length=1, max_length=300)
    #: The child task's context for a `task:` step: each string value a CEL expression over
    #: `context` and `results`, any other value taken as it is (None: the parent's context).
    context: dict[str, Any] | None = None
    #: How the step's work is undone when its task fails or is cancelled with compensation.
    compensation: Compensation | None = None
    #: `stop`: a failure of this step leaves its task in `error` instead of compensating it (a
    #: step past the point of no return, such as the confirmation of an order that exists).
    on_failure: OnFailure | None = None
    #: A durable sleep before the step completes (or before its handler runs): seconds, an
    #: ISO-8601 duration (`PT10M`) or a CEL expression over `context` and `results` giving either.
    #: The sleeping step holds no worker slot, lease or attempt (`tasker.domain.waits`).
    sleep: float | str | None = None
    #: Wait for this signal to the task (`Tasker.signal`); the step completes with its payload as
    #: its results (or, with a handler, runs it then, the payload in `ctx.signal(name)`).
    wait_for: str | None = Field(default=None, min_length=1, max_length=128)
    #: What a `wait_for` step does when `timeout_seconds` passes without its signal.
    on_timeout: OnTimeout | None = None
    #: How long a `wait_for` step waits; for a handler step, the attempt's time limit (as
    #: `handler_config.timeout_seconds`).
    step_timeout: WaitSeconds = Field(default=None, alias="timeout_seconds")
    #: Signals this step's handler may wait for with `ctx.wait_for_signal` (a signal of a name no
    #: step declares is refused when sent).
    signals: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("use letters, digits, '_', '-' or '.', starting with a letter or '_'")
        return v

    @field_validator("wait_for")
    @classmethod
    def _signal_name(cls, v: str | None) -> str | None:
        if v is not None and not NAME.match(v):
            raise ValueError(
                "a signal name uses letters, digits, '_', '-' or '.', starting with a letter or '_'"
            )
        return v

    @field_validator("signals", mode="before")
    @classmethod
    def _signal_names(cls, v: Any) -> Any:
        if v is None:
            return []
        names = [v] if isinstance(v, str) else v
        for name in names if isinstance(names, list) else []:
            if not isinstance(name, str) or not NAME.match(name):
                raise ValueError(
                    f"signal name {name!r} must use letters, digits, '_', '-' or '.', starting"
                    " with a letter or '_'"
                )
        return names

    @field_validator("sleep", mode="before")
    @classmethod
    def _sleep(cls, v: Any) -> Any:
        if v is None or (isinstance(v, str) and not is_duration(v)):
            return v  # an expression, compiled with the template's controls
        try:
            return duration_seconds(v)
        except ValueError as exc:
            raise ValueError(f"sleep: {exc}") from None

    @model_validator(mode="after")
    def _waits(self) -> StepTemplate:
        if self.sleep is not None and self.wait_for is not None:
            raise ValueError(
                "sleep and wait_for cannot go together on one step; put the sleep on a step"
                " before it"
            )
        waits = self.sleep is not None or self.wait_for is not None
        if waits and (self.task is not None or self.foreach is not None):
            raise ValueError(
                "sleep and wait_for cannot go with task: or foreach; wait on a step before it"
            )
        if self.on_timeout is not None and self.wait_for is None:
            raise ValueError("on_timeout says what a wait_for step does; add wait_for or remove it")
        handler_timeout = self.handler_config.get("timeout_seconds")
        if self.wait_for is None and self.step_timeout is not None and handler_timeout is not None:
            raise ValueError(
                "timeout_seconds is given twice (on the step and in handler_config); keep one"
            )
        if self.sleep is not None and self.step_timeout is not None and self.handler_class is None:
            raise ValueError("a sleep has no timeout; remove timeout_seconds")
        return self

    _declared_signals: frozenset[str] | None = PrivateAttr(default=None)

    @property
    def waits(self) -> bool:
        """Whether the step sleeps or waits for a signal before it completes."""
        return self.sleep is not None or self.wait_for is not None

    def declared_signals(self) -> frozenset[str]:
        """The signals the step may read or wait for (`wait_for`, `signals`), computed once: every
        attempt's context asks."""

        def compute() -> frozenset[str]:
            names = set(self.signals)
            if self.wait_for is not None:
                names.add(self.wait_for)
            return frozenset(names)

        return _cached(self, "_declared_signals", compute)

    def work(self) -> str:
        """What the step does, in a few words: its handler, its sub-workflow, or its wait (what
        the CLI's and the dashboard's step lists show)."""
        wait = ""
        if self.wait_for is not None:
            wait = f"wait_for: {self.wait_for}"
            if self.wait_timeout is not None:
                wait += (
                    f" (timeout {self.wait_timeout:g}s, on_timeout {self.on_timeout or 'error'})"
                )
        elif self.sleep is not None:
            wait = (
                f"sleep {self.sleep:g}s"
                if isinstance(self.sleep, float)
                else (f"sleep `{self.sleep}`")
            )
        if self.handler_class:
            return f"{self.handler_class}, after {wait}" if wait else self.handler_class
        if self.task:
            return f"task: {self.task}"
        return wait

    @field_validator("join", mode="before")
    @classmethod
    def _join(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() in ("all", "any"):
            v = v.strip().lower()
            return None if v == JoinRule.ALL else v
        if v is not None:
            raise ValueError("join is 'all' (the default) or 'any'")
        return v

    @model_validator(mode="after")
    def _handler_or_task(self) -> StepTemplate:
        if self.handler_class is None and self.task is None and self.waits:
            return self  # a step that only sleeps or waits for a signal
        if (self.handler_class is None) == (self.task is None):
            raise ValueError(
                "a step needs handler_class (its code) or task (a sub-workflow), not both"
                if self.task
                else "handler_class is required (or task: ns/name for a sub-workflow)"
            )
        if self.context is not None and self.task is None:
            raise ValueError("context sets a sub-workflow's context; it needs task: ns/name")
        if self.task is not None and self.foreach is not None:
            raise ValueError("a task: step cannot have a foreach; fan out a step before it")
        if self.task is not None and not _TASK_REF.match(self.task):
            raise ValueError(
                f"task '{self.task}' is not a template reference like payments/refund or"
                " payments/refund@2.1.0"
            )
        return self

    @model_validator(mode="after")
    def _fanout_keys_need_foreach(self) -> StepTemplate:
        if self.foreach is None and (self.max_parallel is not None or self.max_items is not None):
            raise ValueError(
                "max_parallel and max_items bound a foreach; add foreach or remove them"
            )
        return self

    @model_validator(mode="after")
    def _inline_has_no_timeout(self) -> StepTemplate:
        if self.run_inline and self.timeout_seconds is not None:
            raise ValueError(
                "run_inline and handler_config.timeout_seconds cannot go together: an inline"
                " handler runs on the worker's thread and cannot be interrupted; remove one"
            )
        return self

    @field_validator("custom_events", mode="before")
    @classmethod
    def _custom_events(cls, v: Any) -> Any:
        return _events(v)

    @field_validator("handler_config", mode="before")
    @classmethod
    def _handler_config(cls, v: Any) -> Any:
        return {} if v is None else v

    @field_validator("depends_on_steps", mode="before")
    @classmethod
    def _deps(cls, v: Any) -> Any:
        if v is None:
            return []
        if isinstance(v, str):
            return [v]
        return v

    @field_validator("handler_config")
    @classmethod
    def _timeout(cls, v: dict[str, Any]) -> dict[str, Any]:
        t = v.get("timeout_seconds")
        if t is not None:
            try:
                bounds.TIMEOUT_SECONDS.check(t)
            except ValueError as exc:
                raise ValueError(f"timeout_seconds: {exc}") from None
        return v

    @property
    def parents(self) -> list[str]:
        """Every step this one waits for, `depends_on_step` first, without repeats."""
        seen: list[str] = []
        for p in ([self.depends_on_step] if self.depends_on_step else []) + list(
            self.depends_on_steps
        ):
            if p not in seen:
                seen.append(p)
        return seen

    @property
    def timeout_seconds(self) -> float | None:
        """An attempt's time limit: `handler_config.timeout_seconds`, or the step's own
        `timeout_seconds` unless that is how long a `wait_for` step waits."""
        t = self.handler_config.get("timeout_seconds")
        if t is None and self.wait_for is None:
            t = self.step_timeout
        return float(t) if t is not None else None

    @property
    def wait_timeout(self) -> float | None:
        """How long a `wait_for` step waits for its signal (None: for ever)."""
        return self.step_timeout if self.wait_for is not None else None


class TaskTemplate(_Strict):
    name: str = Field(min_length=1, max_length=128)
    namespace_name: str = Field(default=DEFAULT_NAMESPACE, min_length=1, max_length=64)
    version: str = DEFAULT_VERSION
    description: str | None = None
    default_dependent_system: str = DEFAULT_DEPENDENT_SYSTEM
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    task_handler_class: str | None = None
    custom_events: list[CustomEvent] = Field(default_factory=list)
    step_templates: list[StepTemplate] = Field(min_length=1)
    retry: RetrySettings | None = None
    dependent_systems: dict[str, DependentSystemSettings] = Field(default_factory=dict)
    namespace_max_in_flight: NamespaceMaxInFlight = None
    identity: TaskIdentity | None = None
    #: The default of the steps' `run_inline` (see `StepTemplate.run_inline`).
    run_inline: bool = False
    #: A task that ends in `error`: undo its completed steps' work (`compensate`, the default
    #: when a step declares a `compensation`) or stay in `error` (`stop`: an operator may still
    #: compensate it by hand).
    on_failure: OnFailure | None = None
    #: A deadline for each task: seconds (or a duration) from its start (its `run_at`, else its
    #: creation); past it, its unfinished steps are cancelled and it ends in `error`
    #: (`deadline_exceeded`), compensating when it declares compensations.
    timeout_seconds: WaitSeconds = None
    #: Cron schedules that create tasks of this template (`tasker.engine.schedules`).
    schedules: list[ScheduleSpec] = Field(default_factory=list)
    #: How long its finished tasks are kept, per state, over the store's default (the newest
    #: version the store holds speaks for all versions: `tasker.domain.retention`).
    retention: Retention = None
    #: Its tasks' priority unless a create says otherwise (`tasker.domain.priorities`).
    priority: Priority = 0
    #: Fair share (`tasker.domain.fairness`): a CEL expression over the context whose value is a
    #: task's key, and the most steps in flight per key.
    concurrency_key: str | None = Field(default=None, max_length=4096)
    max_in_flight_per_key: MaxInFlightPerKey = None

    _source: str | None = PrivateAttr(default=None)
    _warnings: list[str] = PrivateAttr(default_factory=list)
    _digest: str | None = PrivateAttr(default=None)
    _controls: dict[str, StepControl] | None = PrivateAttr(default=None)
    _key_expression: Expression | None = PrivateAttr(default=None)
    _gated: frozenset[str] | None = PrivateAttr(default=None)
    _fanouts: frozenset[str] | None = PrivateAttr(default=None)
    _by_name: dict[str, StepTemplate] | None = PrivateAttr(default=None)
    _related: dict[str, frozenset[str]] = PrivateAttr(default_factory=dict)
    _children: dict[str, list[str]] | None = PrivateAttr(default=None)
    _policies: dict[str, RetryPolicy] | None = PrivateAttr(default=None)
    _positions: dict[str, int] | None = PrivateAttr(default=None)

    @field_validator("name", "namespace_name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("use letters, digits, '_', '-' or '.', starting with a letter or '_'")
        return v

    @field_validator("schedules", mode="before")
    @classmethod
    def _schedules(cls, v: Any) -> Any:
        return [] if v is None else v

    @field_validator("schedules")
    @classmethod
    def _unique_schedules(cls, v: list[ScheduleSpec]) -> list[ScheduleSpec]:
        seen: set[str] = set()
        for spec in v:
            if spec.name in seen:
                raise ValueError(f"two schedules are named '{spec.name}'; give each its own name")
            seen.add(spec.name)
        return v

    @field_validator("concurrency_key")
    @classmethod
    def _concurrency_key(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            expr = compile_expression(v)
        except ExpressionSyntaxError as exc:
            raise ValueError(
                f"{exc.message} at {exc.where()} of `{_one_line(v)}`; fix: write a CEL expression"
                " over context, such as context.tenant_id"
            ) from None
        if expr.references:
            raise ValueError(
                "a task's key is evaluated when it is created, before any step has results;"
                " fix: read only context"
            )
        return v

    @model_validator(mode="after")
    def _fair_share_pair(self) -> TaskTemplate:
        if (self.concurrency_key is None) != (self.max_in_flight_per_key is None):
            raise ValueError(
                "concurrency_key and max_in_flight_per_key go together: give both (the key over"
                " the context, and the most steps in flight per key) or neither"
            )
        return self

    @property
    def key_scope(self) -> str | None:
        """The scope of its fair-share keys, when it declares them (`tasker.domain.fairness`)."""
        if self.concurrency_key is None:
            return None
        return key_scope(self.namespace_name, self.name, self.version)

    def concurrency_key_of(self, context: dict[str, Any]) -> str | None:
        """A new task's fair-share key (None without `concurrency_key`); `ValueError` says why the
        expression gave none."""
        scope = self.key_scope
        if scope is None or self.concurrency_key is None:
            return None
        source = self.concurrency_key  # compiled once: it is evaluated at every creation
        expression = _cached(self, "_key_expression", lambda: compile_expression(source))
        try:
            value = expression.evaluate(context, {})
        except ExpressionFailure as exc:
            raise ValueError(
                f"concurrency_key `{_one_line(self.concurrency_key)}` failed over the context:"
                f" {exc}; fix: give the context what the key reads, or guard it with has()"
            ) from None
        if value is None or isinstance(value, (dict, list)):
            raise ValueError(
                f"concurrency_key `{_one_line(self.concurrency_key)}` gave {value!r}; fix: make it"
                " a string or a number"
            )
        return step_key(scope, value)

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> Any:
        v = str(v) if isinstance(v, (int, float)) else v
        if isinstance(v, str) and not SEMVER.match(v):
            raise ValueError(f"'{v}' is not a semantic version like 1.2.3")
        return v

    @field_validator("custom_events", mode="before")
    @classmethod
    def _custom_events(cls, v: Any) -> Any:
        return _events(v)

    @field_validator("default_dependent_system", mode="before")
    @classmethod
    def _dep_sys(cls, v: Any) -> Any:
        return DEFAULT_DEPENDENT_SYSTEM if v is None else v

    def __eq__(self, other: object) -> bool:
        """Templates are values: equal definitions are equal wherever they were loaded from.

        Pydantic's own equality also compares the private `_source` and `_warnings`, so a template
        restored from its snapshot never equalled the one it was taken from.
        """
        if not isinstance(other, TaskTemplate):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    @property
    def key(self) -> str:
        """The registry key, `namespace/name@version`."""
        return f"{self.namespace_name}/{self.name}@{self.version}"

    @property
    def context_schema(self) -> dict[str, Any] | None:
        return self.schema_

    @property
    def source(self) -> str | None:
        return self._source

    @property
    def warnings(self) -> list[str]:
        return list(self._warnings)

    def step(self, name: str) -> StepTemplate:
        """The step template named `name` (KeyError if none): indexed once, as a worker asks for
        every step it runs, and a template may have a thousand."""
        return _cached(self, "_by_name", lambda: {s.name: s for s in self.step_templates})[name]

    def dependent_system_of(self, step: StepTemplate) -> str:
        return step.dependent_system or self.default_dependent_system

    def runs_inline(self, step: StepTemplate) -> bool:
        """Whether a sync handler of this step runs on the worker's own thread: the step's
        `run_inline`, else the template's, which passes over steps with a timeout (only a handler
        thread can be abandoned when its time is up)."""
        if step.run_inline is not None:
            return step.run_inline
        return self.run_inline and step.timeout_seconds is None

    def retry_policy(self, step: StepTemplate) -> RetryPolicy:
        settings = (step.retry or RetrySettings()).merged_over(self.retry)
        extra = {k: v for k, v in settings.model_dump().items() if v is not None}
        return RetryPolicy(
            retry_limit=step.default_retry_limit, retryable=step.default_retryable, **extra
        )

    def retry_policies(self) -> dict[str, RetryPolicy]:
        """Each step's `retry_policy`, computed once: every new task's steps start with theirs."""
        return _cached(
            self, "_policies", lambda: {s.name: self.retry_policy(s) for s in self.step_templates}
        )

    def positions(self) -> dict[str, int]:
        """Each step's place in the execution order (a task's steps are listed in it), computed
        once."""

        def compute() -> dict[str, int]:
            order = execution_order([(s.name, s.parents) for s in self.step_templates])
            return {name: i for i, name in enumerate(order)}

        return _cached(self, "_positions", compute)

    def signal_names(self) -> frozenset[str]:
        """The signals this template's tasks accept: its steps' `wait_for` and `signals`."""
        names: set[str] = set()
        for s in self.step_templates:
            names.update(s.signals)
            if s.wait_for is not None:
                names.add(s.wait_for)
        return frozenset(names)

    def declared_events(self, step: StepTemplate | None = None) -> set[str]:
        names = {e.name for e in self.custom_events}
        if step is not None:
            names |= {e.name for e in step.custom_events}
        else:
            for s in self.step_templates:
                names |= {e.name for e in s.custom_events}
        return names

    def controls(self) -> dict[str, StepControl]:
        """Each step's control-flow rules (conditions compiled), computed once; raises
        `ControlError` naming the step for a condition that does not compile or reads a step that
        is not an ancestor."""
        return _cached(self, "_controls", lambda: build_controls(self.step_templates))

    def gated_steps(self) -> frozenset[str]:
        """The steps that need a control-flow decision before they run (`control.gated`)."""

        def compute() -> frozenset[str]:
            controls = self.controls()
            order = execution_order([(s.name, s.parents) for s in self.step_templates])
            return frozenset(gated([controls[n] for n in order]))

        return _cached(self, "_gated", compute)

    def fanout_steps(self) -> frozenset[str]:
        """The names of the steps with a `foreach`, computed once (every handler's context asks)."""
        return _cached(
            self,
            "_fanouts",
            lambda: frozenset(s.name for s in self.step_templates if s.foreach is not None),
        )

    @property
    def compensates_on_failure(self) -> bool:
        """Whether a failed task of this template undoes its completed steps by itself."""
        declared = any(st.compensation is not None for st in self.step_templates)
        return declared and self.on_failure != OnFailure.STOP

    def compensation_of(self, step: str) -> Compensation | None:
        """The compensation of a step (an instance's is its fan-out step's), or None."""
        instance = parse_instance(step)
        return self.step(instance[0] if instance else step).compensation

    @property
    def wide(self) -> bool:
        """Whether a claim of one of its steps reads only the steps related to it
        (`related_steps`) rather than the whole task: more steps than `WIDE_TEMPLATE_STEPS`."""
        return len(self.step_templates) > WIDE_TEMPLATE_STEPS

    def related_steps(self, name: str) -> frozenset[str]:
        """The steps a claim of `name` reads: its ancestors (their results are its handler's
        `ctx.results`) and its descendants (their ids let the worker run the next ones without
        reading the task again). Computed once per step; a fan-out's instance has its step's."""
        found = self._related.get(name)
        if found is None:
            up = {s.name: s.parents for s in self.step_templates}
            found = frozenset(reachable(name, up) | reachable(name, self.children()))
            self._related[name] = found
        return found

    def children(self) -> dict[str, list[str]]:
        """Each step's children by name, in template order, computed once."""
        return _cached(
            self, "_children", lambda: children_of({s.name: s.parents for s in self.step_templates})
        )

    def visible_results(self, results: dict[str, Any]) -> dict[str, Any]:
        """Stored results by step name as a handler or a sub-workflow's context reads them: a
        fan-out step's as the list of its instances' results (`control.fanout_results`)."""
        fanouts = self.fanout_steps()
        if not fanouts or not any(n in fanouts for n in results):
            return results
        return {n: fanout_results(r) if n in fanouts else r for n, r in results.items()}

    def mermaid(
        self, states: dict[str, str] | None = None, notes: dict[str, str] | None = None
    ) -> str:
        """The Mermaid flowchart of the steps (coloured by `states` when given, with `notes` under
        their names: a fan-out's `n/N done`), conditions on the edges into their steps, `join:
        any` steps as hexagons, `foreach` steps as stacks and `task:` steps as subroutines."""
        return mermaid(
            [(s.name, s.parents) for s in self.step_templates],
            states,
            notes=notes,
            foreach={s.name: s.foreach for s in self.step_templates if s.foreach},
            tasks={s.name: s.task for s in self.step_templates if s.task},
            when={s.name: s.when for s in self.step_templates if s.when},
            join_any={s.name for s in self.step_templates if s.join == JoinRule.ANY},
        )

    @property
    def retention_policy(self) -> RetentionPolicy:
        """The retention this template declares (empty: the store's default applies)."""
        return RetentionPolicy.from_stored(self.retention)

    def content_hash(self) -> str:
        """SHA-256 of the snapshot, computed once: identical definitions share one stored
        snapshot."""
        if self._digest is None:
            self._digest = hashlib.sha256(canonical_json(self.snapshot()).encode()).hexdigest()
        return self._digest

    def snapshot(self) -> dict[str, Any]:
        """The JSON form stored with each task, so a later deploy cannot change a running task."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> TaskTemplate:
        return cls.model_validate(data)


class ControlError(GraphError):
    """A step's condition or join that cannot work; `step` names it."""


def build_controls(steps: list[StepTemplate]) -> dict[str, StepControl]:
    """Compile each step's condition and fan-out and check what they read: only `context` and the
    results of the step's ancestors, so that every value they name is decided before they are
    evaluated."""
    parents = {s.name: s.parents for s in steps}
    out: dict[str, StepControl] = {}
    for s in steps:
        when = _compiled(s, "when", s.when, parents)
        foreach = _compiled(s, "foreach", s.foreach, parents)
        sleep = _compiled(s, "sleep", s.sleep, parents) if isinstance(s.sleep, str) else None
        max_items = DEFAULT_MAX_ITEMS if s.max_items is None else s.max_items
        if foreach is not None and foreach.constant:
            _check_constant_list(s.name, foreach, max_items)
        child_context = {
            key: _compiled(s, f"context.{key}", value, parents) if isinstance(value, str) else value
            for key, value in (s.context or {}).items()
        }
        if s.join == JoinRule.ANY and not s.parents:
            raise ControlError(
                s.name, "join: any on a step without parents; fix: remove it or add depends_on"
            )
        out[s.name] = StepControl(
            s.name,
            tuple(s.parents),
            s.join or JoinRule.ALL,
            when,
            foreach,
            s.max_parallel,
            max_items,
            child_context if s.context is not None else None,
            sleep,
            s.wait_for is not None and s.on_timeout == OnTimeout.SKIP,
        )
    return out


def _check_constant_list(step: str, foreach: Expression, max_items: int) -> None:
    """A `foreach` that reads nothing is known now: refuse it unless it is a list of at most
    `max_items` (a list built in the template cannot grow at run time)."""
    try:
        value = foreach.evaluate({}, {})
    except ExpressionFailure as exc:
        raise ControlError(step, f"foreach: `{_one_line(foreach.source)}` fails: {exc}") from None
    if not isinstance(value, list):
        raise ControlError(
            step,
            f"foreach: `{_one_line(foreach.source)}` gives a {type(value).__name__}, not a list",
        )
    if len(value) > max_items:
        raise ControlError(
            step,
            f"foreach gives {len(value):,} items, more than max_items {max_items:,}; fix: split"
            " the list or raise max_items (up to 100,000)",
        )


def _compiled(
    s: StepTemplate, key: str, source: str | None, parents: dict[str, list[str]]
) -> Expression | None:
    if source is None:
        return None
    try:
        expr = compile_expression(source)
    except ExpressionSyntaxError as exc:
        raise ControlError(
            s.name,
            f"{key}: {exc.message} at {exc.where()} of `{_one_line(source)}`; fix: write a CEL"
            " expression over context and results (docs/templates.md, Conditions)",
        ) from None
    ancestors = reachable(s.name, parents)
    for ref in expr.references:
        if ref.step not in ancestors:
            known = ", ".join(sorted(ancestors)) or "(none: it has no parents)"
            what = "is not a step" if ref.step not in parents else "is not an ancestor"
            raise ControlError(
                s.name,
                f"{key}: results.{ref.step} at line {ref.line}, column {ref.column} {what} of"
                f" '{s.name}'; fix: read the results of its ancestors only: {known}",
            )
    return expr


def _one_line(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
