"""Transition rows: every state change of a task or step is appended here in the same transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert

from tasker.store.schema import step_transitions, task_transitions


def step_row(
    step_id: int,
    task_id: int,
    src: str | None,
    dst: str,
    attempt: int,
    at: datetime,
    worker: str | None = None,
    error: dict[str, Any] | None = None,
    duration_ms: float | None = None,
) -> dict[str, Any]:
    return {
        "step_id": step_id,
        "task_id": task_id,
        "from_state": src,
        "to_state": dst,
        "attempt": attempt,
        "at": at,
        "worker": worker,
        "error_class": (error or {}).get("class"),
        "error_message": ((error or {}).get("message") or None),
        "duration_ms": duration_ms,
    }


def task_row(task_id: int, src: str | None, dst: str, at: datetime, worker: str | None = None,
             reason: str | None = None) -> dict[str, Any]:
    return {"task_id": task_id, "from_state": src, "to_state": dst, "at": at, "worker": worker, "reason": reason}


def record_steps(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(insert(step_transitions), rows)


def record_tasks(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(insert(task_transitions), rows)
