"""Signals: tell a running task that something happened (a webhook, an approval).

`POST /tasks/{id}/signals/{name}` needs its own permission (`tasker.task:signal`), so that a
webhook's key can signal tasks and do nothing else.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Response

from tasker.api.auth import Permission, require
from tasker.api.deps import get_engine
from tasker.api.errors import error_responses
from tasker.api.schemas import NAME_PATTERN, SignalList, SignalOut, SignalSend, TaskId
from tasker.engine.tasker import Tasker

router = APIRouter(tags=["signals"])
Engine = Annotated[Tasker, Depends(get_engine)]
SignalName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        pattern=NAME_PATTERN,
        description="The signal's name, as a step's `wait_for:` or `signals:` declares it.",
        examples=["email_confirmed"],
    ),
]


@router.post(
    "/tasks/{task_id}/signals/{name}",
    status_code=201,
    response_model=SignalOut,
    summary="Send a signal to a task",
    dependencies=[Depends(require(Permission.TASK_SIGNAL))],
    responses={
        200: {"model": SignalOut, "description": "A repeated idempotency key: the first signal."},
        201: {"description": "The signal, stored; `woke` lists the steps it resumed."},
        **error_responses(400, 401, 403, 404, 409, 413, 422),
    },
)
def send_signal(
    task_id: TaskId,
    name: SignalName,
    response: Response,
    engine: Engine,
    body: Annotated[SignalSend | None, Body()] = None,
) -> SignalOut:
    """Send the signal `name` with a JSON `payload`: the task's steps waiting for it resume (a
    `wait_for` step completes with the payload). A signal no step waits for yet is kept for the
    step that will. A name the task's template does not declare answers 400; a finished task 409;
    a repeated `idempotency_key` 200 with the first signal."""
    body = body or SignalSend()
    signal = engine.signal(task_id, name, body.payload, idempotency_key=body.idempotency_key)
    if signal.deduplicated:
        response.status_code = 200
    return SignalOut.of(signal)


@router.get(
    "/tasks/{task_id}/signals",
    response_model=SignalList,
    summary="The signals a task received",
    dependencies=[Depends(require(Permission.TASK_SHOW))],
    responses=error_responses(401, 403, 404, 422),
)
def list_signals(task_id: TaskId, engine: Engine) -> SignalList:
    """Every signal sent to the task, oldest first."""
    return SignalList(
        task_id=task_id, signals=[SignalOut.of(s) for s in engine.signals.of_task(task_id)]
    )
