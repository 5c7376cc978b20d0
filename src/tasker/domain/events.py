"""Event names, one constant each, and which transition emits which."""

from __future__ import annotations


class Events:
    TASK_CREATED = "task.created"
    TASK_STARTED = "task.started"
    TASK_COMPLETED = "task.completed"
    TASK_FAILED = "task.failed"
    TASK_CANCELLED = "task.cancelled"
    TASK_RETRIED = "task.retried"
    TASK_RESOLVED = "task.resolved"
    TASK_COMPENSATING = "task.compensating"
    TASK_COMPENSATED = "task.compensated"
    STEP_READY = "step.ready"
    STEP_STARTED = "step.started"
    STEP_COMPLETED = "step.completed"
    STEP_FAILED = "step.failed"
    STEP_RETRY_SCHEDULED = "step.retry_scheduled"
    STEP_CANCELLED = "step.cancelled"
    STEP_RESOLVED = "step.resolved"
    STEP_SKIPPED = "step.skipped"
    #: An undo row (`undo:<step>`) completed, or failed for good.
    STEP_COMPENSATED = "step.compensated"
    STEP_COMPENSATION_FAILED = "step.compensation_failed"
    #: A step parked for a sleep or a signal (no worker slot, lease or attempt meanwhile).
    STEP_WAITING = "step.waiting"
    #: A signal was sent to a task (it is also in the durable event log).
    SIGNAL_RECEIVED = "signal.received"
    #: A schedule's tick created a task.
    SCHEDULE_FIRED = "schedule.fired"
    #: The housekeeping job deleted finished tasks past their retention (in-process, on the
    #: worker that holds the job: counts per status, not the tasks).
    TASKS_PURGED = "tasks.purged"
    #: Due steps over their system's rate limit were moved to a later slot (no attempt spent).
    STEPS_DEFERRED = "steps.deferred"
    CIRCUIT_OPENED = "circuit.opened"
    CIRCUIT_CLOSED = "circuit.closed"
    CIRCUIT_HALF_OPEN = "circuit.half_open"


TASK_EVENT_FOR_STATE = {
    "in_progress": Events.TASK_STARTED,
    "complete": Events.TASK_COMPLETED,
    "error": Events.TASK_FAILED,
    "cancelled": Events.TASK_CANCELLED,
    "resolved_manually": Events.TASK_RESOLVED,
    "compensating": Events.TASK_COMPENSATING,
    "compensated": Events.TASK_COMPENSATED,
}

STEP_EVENT_FOR_STATE = {
    "ready": Events.STEP_READY,
    "in_progress": Events.STEP_STARTED,
    "complete": Events.STEP_COMPLETED,
    "error": Events.STEP_FAILED,
    "waiting_retry": Events.STEP_RETRY_SCHEDULED,
    "cancelled": Events.STEP_CANCELLED,
    "resolved_manually": Events.STEP_RESOLVED,
    "skipped": Events.STEP_SKIPPED,
}
