"""Rich renderings of tasks and templates, shared by `tasks show`, `run` and `templates show`."""

from __future__ import annotations

from datetime import datetime

from rich.table import Table

from tasker.engine.model import Task
from tasker.templates.graph import execution_levels, mermaid
from tasker.templates.model import TaskTemplate

STATE_COLOURS = {
    "complete": "green", "resolved_manually": "blue", "error": "red", "cancelled": "bright_black",
    "in_progress": "yellow", "waiting_retry": "dark_orange", "ready": "cyan", "pending": "white",
    "skipped": "bright_black",
}


def coloured(state: str) -> str:
    return f"[{STATE_COLOURS.get(state, 'white')}]{state}[/]"


def _time(t: datetime | None) -> str:
    return t.strftime("%H:%M:%S.%f")[:-3] if t else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def task_header(task: Task) -> str:
    return (f"Task {task.id}  {task.template_key}  {coloured(task.status)}  "
            f"created {task.created_at:%Y-%m-%d %H:%M:%S}Z  correlation {task.correlation_id}  "
            f"duration {_duration(task.duration_seconds)}")


def steps_table(task: Task) -> Table:
    table = Table(show_lines=False, expand=False)
    for col in ("step", "state", "attempts", "started", "finished", "duration"):
        table.add_column(col, no_wrap=True)
    table.add_column("last error", overflow="fold")
    for s in task.steps:
        err = ""
        if s.last_error:
            err = f"{s.last_error.get('class', '')}: {s.last_error.get('message', '')}"
        table.add_row(s.name, coloured(s.status), f"{s.attempts}/{s.retry_limit}", _time(s.started_at),
                      _time(s.finished_at), _duration(s.duration_seconds), err[:200])
    return table


def tasks_table(tasks: list[Task], total: int) -> Table:
    table = Table(title=f"{len(tasks)} of {total} tasks")
    for col in ("id", "template", "status", "created", "duration", "correlation id"):
        table.add_column(col)
    for t in tasks:
        table.add_row(str(t.id), t.template_key, coloured(t.status), f"{t.created_at:%Y-%m-%d %H:%M:%S}",
                      _duration(t.duration_seconds), t.correlation_id)
    return table


def template_steps_table(t: TaskTemplate) -> Table:
    table = Table(title=f"{t.key}" + (f" — {t.description}" if t.description else ""))
    for col in ("step", "depends on", "handler", "retry", "backoff", "timeout", "system"):
        table.add_column(col, overflow="fold")
    for s in t.step_templates:
        p = t.retry_policy(s)
        retry = f"{p.retry_limit} attempts" if p.retryable else "never retried"
        backoff = f"{p.backoff_base_seconds:g}s x2 ≤ {p.backoff_max_seconds:g}s ±{p.jitter:.0%}"
        timeout = f"{s.timeout_seconds:g}s" if s.timeout_seconds else "-"
        table.add_row(s.name, ", ".join(s.parents) or "-", s.handler_class, retry, backoff, timeout,
                      t.dependent_system_of(s))
    return table


def template_order(t: TaskTemplate) -> str:
    levels = execution_levels([(s.name, s.parents) for s in t.step_templates])
    return "  →  ".join(" ∥ ".join(level) for level in levels)


def template_mermaid(t: TaskTemplate) -> str:
    return mermaid([(s.name, s.parents) for s in t.step_templates])


def task_mermaid(t: TaskTemplate, task: Task) -> str:
    return mermaid([(s.name, s.parents) for s in t.step_templates], {s.name: s.status for s in task.steps})
