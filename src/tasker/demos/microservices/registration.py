"""`UserRegistrationHandler`: the workflow-level logic of `blog_examples/user_registration` (the
"ConfiguredTask").

The steps know only their own service. What concerns the whole registration is summarised here when
the task ends, as annotations stored with the task: how long each service took, how much the
parallel billing/preferences branches saved, and the outcome; or, on failure, which service stopped
it and what state the user was left in, so whoever looks at it knows what `tasker tasks retry` will
resume.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tasker import Step, StepState, Task, TaskHandler
from tasker.demos.microservices import payloads

PARALLEL = ("setup_billing_profile", "initialize_preferences")


class UserRegistrationHandler(TaskHandler):
    def on_complete(self, task: Task) -> dict[str, Any]:
        user = _results(task, "create_user_account")
        billing = _results(task, "setup_billing_profile")
        saved = parallel_saving_ms(task)
        context = task.context
        info = context.get("user_info") or {}
        total = task.duration_seconds
        return {
            "service_performance": {
                "service_timings": service_timings(task),
                "total_duration_ms": round(total * 1000, 1) if total is not None else None,
                "parallel_execution_saved_ms": saved,
                "summary": f"parallel execution saved {saved:.0f} ms",
            },
            "registration_outcome": {
                "user_id": user.get("user_id"),
                "plan": billing.get("plan") or info.get("plan"),
                "source": info.get("source"),
                "completed_at": task.finished_at.isoformat() if task.finished_at else None,
            },
            "plan_type": info.get("plan"),
            "registration_source": info.get("source"),
            "correlation_id": task.correlation_id,
        }

    def on_error(self, task: Task) -> dict[str, Any]:
        failed = next((s for s in task.steps if s.status == StepState.ERROR), None)
        error: dict[str, Any] = dict(failed.last_error or {}) if failed else {}
        done = [
            s.name
            for s in task.steps
            if s.status in (StepState.COMPLETE, StepState.RESOLVED_MANUALLY)
        ]
        return {
            "failed_step": failed.name if failed else None,
            "failed_service": failed.dependent_system if failed else None,
            "error_code": error.get("error_code"),
            "error": error.get("message"),
            "completed_steps": done,
            "resume": (
                f"once {failed.dependent_system} is healthy: tasker tasks retry {task.id}"
                if failed
                else None
            ),
            "correlation_id": task.correlation_id,
        }


def service_timings(task: Task) -> dict[str, dict[str, Any]]:
    """Per step that calls a service: its service, the successful call's response time, the
    attempt's duration, attempts used (the wait for the user's confirmation is no service call)."""
    out = {}
    for step in task.steps:
        results = step.results or {}
        if step.name not in payloads.STEPS and "response_time_ms" not in results:
            continue
        out[step.name] = {
            "service": step.dependent_system,
            "response_time_ms": results.get("response_time_ms"),
            "duration_ms": _ms(step.duration_seconds),
            "attempts": step.attempts,
        }
    return out


def parallel_saving_ms(task: Task) -> float:
    """What running billing and preferences side by side saved: their summed durations minus their
    span.

    Zero when they did not overlap (for instance when billing was down and finished long after).
    """
    steps = [s for s in task.steps if s.name in PARALLEL]
    timed = [s for s in steps if s.started_at and s.finished_at]
    if len(timed) != len(PARALLEL):
        return 0.0
    summed = sum(_ms(s.duration_seconds) or 0.0 for s in timed)
    span = (max(_end(s) for s in timed) - min(_start(s) for s in timed)).total_seconds() * 1000
    return round(max(0.0, summed - span), 1)


def _start(step: Step) -> datetime:
    assert step.started_at is not None
    return step.started_at


def _end(step: Step) -> datetime:
    assert step.finished_at is not None
    return step.finished_at


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 1) if seconds is not None else None


def _results(task: Task, step: str) -> dict[str, Any]:
    for s in task.steps:
        if s.name == step:
            return s.results or {}
    return {}
