"""Error types a user meets: the two that classify a handler failure, and the ones the engine
raises.

Handlers raise `PermanentError` or `RetryableError` to tell the engine what a failure means; every
other exception is treated as retryable because a bug-free handler only fails for reasons outside
its control. Errors the user causes with bad input (`TaskerInputError` and its children) carry a
one-line message that names where the problem is and how to fix it, so the CLI and API can show them
without a traceback.
"""

from __future__ import annotations

from typing import Any


class TaskerError(Exception):
    """Base of every error the engine raises on purpose."""


class StepFailure(Exception):
    """Base of the two errors a step handler raises to classify its own failure."""

    def __init__(
        self, message: str, *, error_code: str | None = None, context: dict[str, Any] | None = None
    ):
        super().__init__(message)
        self.message = message
        self.error_code = error_code
        self.context = dict(context or {})


class PermanentError(StepFailure):
    """The step cannot succeed by trying again (a declined card, a missing record): it goes to
    `error` now."""


class RetryableError(StepFailure):
    """A transient failure: the step is tried again after `retry_after` seconds, or after engine
    backoff.

    `system_fault=False` says the step's dependent system is healthy and the step is simply not done
    yet (a child task still running, a report not generated): it is retried the same way but does
    not count towards opening the system's circuit breaker.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        error_code: str | None = None,
        context: dict[str, Any] | None = None,
        system_fault: bool = True,
    ):
        super().__init__(message, error_code=error_code, context=context)
        if retry_after is not None and retry_after < 0:
            raise ValueError("retry_after must be >= 0 seconds")
        self.retry_after = retry_after
        self.system_fault = system_fault


class StepTimeoutError(RetryableError):
    """The attempt ran past `handler_config.timeout_seconds`; its late result, if any, is
    discarded."""


class TaskerInputError(TaskerError):
    """Bad input from a user: a template, a context, an identifier. The message is one line and says
    the fix."""


class TemplateError(TaskerInputError):
    """A task template file that cannot be loaded as it is."""


class ContextValidationError(TaskerInputError):
    """A task context that violates the template's JSON Schema; `violations` lists every one with
    its path."""

    def __init__(self, template: str, violations: list[tuple[str, str]]):
        self.template = template
        self.violations = violations
        listed = "; ".join(f"{path}: {msg}" for path, msg in violations)
        super().__init__(
            f"context for {template} is invalid ({len(violations)} violation"
            f"{'s' if len(violations) != 1 else ''}): {listed}"
        )


class UnknownTemplateError(TaskerInputError):
    """A task was requested for a template that is not registered; the message names those that
    are."""

    def __init__(self, requested: str, known: list[str]):
        self.requested = requested
        self.known = known
        hint = (
            ", ".join(known)
            if known
            else "none are loaded: pass --templates PATH or call load_templates()"
        )
        super().__init__(f"unknown template '{requested}'; known templates: {hint}")


class NotFoundError(TaskerInputError):
    """A task or step id that does not exist."""


class InvalidTransitionError(TaskerError):
    """A state change the state machine forbids; raised instead of silently corrupting a task."""


class OperationError(TaskerInputError):
    """An operation that makes no sense for the current state (retrying a complete task, say)."""


class IdempotencyConflict(TaskerInputError):
    """An idempotency key reused with a different request: a different template version or context.

    Returning the first task would silently drop the second request's data, so the reuse is refused;
    `differences` names what differs (`version: 1.0.0 != 1.1.0`, `context $.amount`).
    """

    def __init__(self, key: str, task_id: int, template: str, differences: list[str]):
        self.key = key
        self.task_id = task_id
        self.template = template
        self.differences = differences
        more = f" (and {len(differences) - 10} more)" if len(differences) > 10 else ""
        shown = "; ".join(differences[:10]) + more
        super().__init__(
            f"idempotency key {key[:80]!r} of {template} was used for task {task_id} with a"
            f" different payload: {shown}; fix: send the same payload to get task {task_id} back,"
            " or use a new key for a new task"
        )


class StoreError(TaskerError):
    """The database refused or failed a transaction. The driver's own error is the `__cause__`.

    Only `tasker.store` speaks to the database; it turns driver errors into these so that the layers
    above decide what to do (retry, pause, report) without knowing SQLAlchemy or the driver.
    """


class StoreUnavailable(StoreError):
    """The transaction failed for a reason that passes (a lost connection, a server restarting, a
    busy SQLite file, a deadlock): it changed nothing and may be run again later."""


class StoreContention(StoreUnavailable):
    """PostgreSQL aborted the transaction to break a deadlock or a serialization conflict; running
    it again at once is the fix."""


class StoreConflict(StoreError):
    """A unique constraint refused the write: someone else created the same row first."""
