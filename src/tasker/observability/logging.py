"""Structured logs: one pipeline for stdlib `logging` records and structlog loggers, as JSON or
console lines.

The engine and most handler code log through the standard library, so structlog is wired in as the
*formatter* of one root handler (`ProcessorFormatter`) rather than as a replacement logger: every
record, from `logging.getLogger(__name__)` in a user module as much as from
`structlog.get_logger()`, goes through the same processors and gets the same fields.

Step fields reach every line through `structlog.contextvars`: the worker hook `LoggingHooks` binds
them around an attempt (`bind_step_context`), asyncio tasks inherit them, and the executor runs sync
handlers with `contextvars.copy_context().run` so that the thread-pool thread sees them too
(`run_in_executor` alone does not carry context variables). Being structlog's own context variables,
they reach any structlog setup that merges context variables (structlog's default does), not only
ours. They are set directly on the variables structlog registered for them:
`bind_contextvars(**fields)` rebuilds the names and a dict of tokens on every call, several
microseconds more per step on a path that runs for every step.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, TextIO

import structlog
from structlog.contextvars import bind_contextvars, reset_contextvars
from structlog.typing import EventDict, Processor, WrappedLogger

from tasker.domain.errors import TaskerInputError
from tasker.domain.hooks import WorkerHooks

if TYPE_CHECKING:
    from tasker.domain.records import ClaimedStep, Outcome

#: The fields every line emitted while a step attempt runs carries.
STEP_FIELDS = ("task_id", "template", "step", "attempt", "correlation_id")
FORMATS = ("json", "console")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_HANDLER_NAME = "tasker.observability"


def _structlog_vars() -> tuple[ContextVar[Any], ...]:
    """structlog's context variables for the step fields, in `STEP_FIELDS` order (registered by
    binding once)."""
    tokens = bind_contextvars(**dict.fromkeys(STEP_FIELDS, ...))
    reset_contextvars(**tokens)
    return tuple(tokens[name].var for name in STEP_FIELDS)


_VARS = _structlog_vars()
_TASK_ID, _TEMPLATE, _STEP_NAME, _ATTEMPT, _CORRELATION_ID = _VARS


class bind_step_context:  # lower case: used like a function, `with bind_step_context(...)`
    """A context manager binding the step fields to the current context (this asyncio task, or this
    thread).

    The previous values are restored on exit, so nested bindings (a step that runs another engine
    in-process, say) get the outer fields back. A class rather than a generator, and the five
    variables set one by one rather than in a loop: this runs for every step.
    """

    __slots__ = ("_fields", "_tokens")

    def __init__(
        self, *, task_id: int, template: str, step: str, attempt: int, correlation_id: str
    ):
        self._fields = (task_id, template, step, attempt, correlation_id)
        self._tokens: tuple[Token[Any], ...] = ()

    def __enter__(self) -> None:
        task_id, template, step, attempt, correlation_id = self._fields
        self._tokens = (
            _TASK_ID.set(task_id),
            _TEMPLATE.set(template),
            _STEP_NAME.set(step),
            _ATTEMPT.set(attempt),
            _CORRELATION_ID.set(correlation_id),
        )

    def finished(self, outcome: Outcome) -> None:
        """Nothing to add once the attempt is over (an attempt scope of `LoggingHooks`)."""

    def __exit__(self, *exc: object) -> None:
        if self._tokens:
            t0, t1, t2, t3, t4 = self._tokens
            _CORRELATION_ID.reset(t4)
            _ATTEMPT.reset(t3)
            _STEP_NAME.reset(t2)
            _TEMPLATE.reset(t1)
            _TASK_ID.reset(t0)


class LoggingHooks(WorkerHooks):
    """The worker hook that puts the step fields on every log line an attempt causes (the
    executor's own, the handler's, any library's it calls)."""

    def attempt_scope(self, claimed: ClaimedStep, template: str) -> bind_step_context:
        return bind_step_context(
            task_id=claimed.task_id,
            template=template,
            step=claimed.name,
            attempt=claimed.attempt,
            correlation_id=claimed.correlation_id,
        )


def step_fields() -> dict[str, Any]:
    """The step fields bound in the current context; empty outside a step attempt."""
    found = {name: var.get(...) for name, var in zip(STEP_FIELDS, _VARS)}
    return {k: v for k, v in found.items() if v is not ...}


class StepLoggerAdapter(logging.LoggerAdapter[logging.Logger]):
    """`ctx.logger`: the step fields as record attributes, merged with (not replacing) a call's own
    `extra`.

    The fields are also in the context variables while the step runs; carrying them on the record as
    well keeps them for a handler that logs from a thread it started itself, or with a plain
    `logging` setup.
    """

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        given = kwargs.get("extra")
        kwargs["extra"] = {**(self.extra or {}), **given} if given else self.extra
        return msg, kwargs


def step_logger(name: str, fields: Mapping[str, Any]) -> StepLoggerAdapter:
    return StepLoggerAdapter(logging.getLogger(name), dict(fields))


def _add_trace_ids(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """Join logs to traces: the current span's ids, when OpenTelemetry is in use and a span is
    active."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is not None:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            event_dict.setdefault("trace_id", format(ctx.trace_id, "032x"))
            event_dict.setdefault("span_id", format(ctx.span_id, "016x"))
    return event_dict


def _pre_chain() -> list[Processor]:
    """What both kinds of records go through before rendering."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_ids,
    ]


_FIRST = ("timestamp", "level", "logger", "message", *STEP_FIELDS)


def _lead_with_basics(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """Time, level, logger, message and the step fields first, always in that order, then the rest:
    easier to read in a terminal or a log viewer."""
    ordered = {k: event_dict.pop(k) for k in _FIRST if k in event_dict}
    ordered.update(event_dict)
    return ordered


def _renderers(fmt: str) -> list[Processor]:
    if fmt == "json":
        return [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("message"),
            _lead_with_basics,
            structlog.processors.JSONRenderer(sort_keys=False),
        ]
    return [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        structlog.dev.ConsoleRenderer(colors=False),
    ]


def _check(fmt: str, level: str) -> str:
    if fmt not in FORMATS:
        raise TaskerInputError(
            f"log format {fmt!r} is not supported; fix: use one of {', '.join(FORMATS)}"
        )
    upper = str(level).upper()
    if upper not in LEVELS:
        raise TaskerInputError(
            f"log level {level!r} is not supported; fix: use one of {', '.join(LEVELS)}"
        )
    return upper


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at each record, not the one there was at configuration
    time, so a harness that swaps standard error (click's CliRunner, pytest) never leaves us writing
    to a closed file.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure_logging(
    format: str = "console", level: str = "INFO", *, stream: TextIO | None = None
) -> None:
    """Route stdlib and structlog logs through one root handler rendering JSON lines or console
    lines.

    Idempotent: calling it again replaces the handler it installed before (other handlers, such as a
    test runner's capture, are left alone), so a command can set the format early and the level
    later. `stream` defaults to standard error.
    """
    upper = _check(format, level)
    structlog.configure(
        processors=[*_pre_chain(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_pre_chain(), structlog.stdlib.ExtraAdder()],
        processors=_renderers(format),
    )
    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    )
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(upper)
    # Alembic announces its dialect at INFO each time a store is opened: noise unless debugging.
    logging.getLogger("alembic").setLevel(logging.NOTSET if upper == "DEBUG" else logging.WARNING)


def set_level(level: str) -> None:
    """Change the threshold of every logger that does not set its own (the root level)."""
    upper = _check("json", level)
    logging.getLogger().setLevel(upper)
    logging.getLogger("alembic").setLevel(logging.NOTSET if upper == "DEBUG" else logging.WARNING)
