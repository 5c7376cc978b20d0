"""`GET /events`: the durable event log as Server-Sent Events, and as JSON pages for polling clients.

The stream reads the database, not an in-process bus, so a client sees the events of every worker
process. Each SSE message's `id` is a cursor: a reconnecting client sends it back as `Last-Event-ID` and
resumes right after the last event it received.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from tasker.api.auth import Permission, require
from tasker.api.deps import get_engine
from tasker.api.errors import error_responses
from tasker.engine.tasker import Tasker
from tasker.errors import TaskerInputError
from tasker.store.event_log import Cursor

router = APIRouter(tags=["events"])

#: How often the stream looks for new events, and how often it sends a keep-alive comment when idle.
POLL_SECONDS = 0.25
HEARTBEAT_SECONDS = 15.0

TaskIdQuery = Annotated[int | None, Query(ge=1, le=2**63 - 1, description="Only events of this task.")]
NamespaceQuery = Annotated[str | None, Query(min_length=1, max_length=64, description="Only this namespace.")]
NameQuery = Annotated[
    list[str] | None,
    Query(alias="name", max_length=20, description="Event names or glob patterns (`step.*`); repeatable."),
]
AfterQuery = Annotated[
    str | None,
    Query(max_length=100, pattern=r"^\d{1,18}-\d{1,18}-\d{1,18}-\d{1,18}$",
          description="Resume after this cursor (a page's `cursor` or an SSE message id)."),
]


class EventOut(BaseModel):
    id: str
    event: str
    at: datetime
    cursor: str
    task_id: int | None = None
    step_id: int | None = None
    step: str | None = None
    namespace: str | None = None
    template: str | None = None
    attempt: int | None = None
    worker: str | None = None
    data: dict[str, Any]


class EventPageOut(BaseModel):
    events: list[EventOut]
    cursor: str
    more: bool


def _check_names(names: list[str] | None) -> list[str] | None:
    if names:
        for n in names:
            if not 1 <= len(n) <= 128:
                raise TaskerInputError("each `name` filter must be 1 to 128 characters")
    return names


@router.get(
    "/events/page",
    response_model=EventPageOut,
    dependencies=[Depends(require(Permission.EVENTS_INDEX))],
    responses=error_responses(401, 403, 422),
    summary="A page of the event log (JSON), for clients that poll",
)
def events_page(
    engine: Annotated[Tasker, Depends(get_engine)],
    after: AfterQuery = None,
    task_id: TaskIdQuery = None,
    namespace: NamespaceQuery = None,
    name: NameQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventPageOut:
    page = engine.read_events(after, task_id=task_id, namespace=namespace, names=_check_names(name), limit=limit)
    return EventPageOut(events=[EventOut(**e) for e in page.events], cursor=page.cursor, more=page.more)


@router.get(
    "/events",
    dependencies=[Depends(require(Permission.EVENTS_INDEX))],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events, one per event."},
               **error_responses(401, 403, 422)},
    summary="Follow the event log as Server-Sent Events",
)
async def events_stream(
    request: Request,
    engine: Annotated[Tasker, Depends(get_engine)],
    after: AfterQuery = None,
    task_id: TaskIdQuery = None,
    namespace: NamespaceQuery = None,
    name: NameQuery = None,
    start: Annotated[
        Literal["now", "beginning"] | None,
        Query(description="Without a cursor: replay from the beginning or only follow what happens from now "
                          "(default: beginning when filtering by task, else now)."),
    ] = None,
    timeout_seconds: Annotated[
        float | None, Query(gt=0, le=86_400, description="End the stream after this long (default: never).")
    ] = None,
    last_event_id: Annotated[str | None, Header(max_length=100)] = None,
) -> StreamingResponse:
    names = _check_names(name)
    cursor = after or _valid_cursor(last_event_id)
    if cursor is None:
        origin = start or ("beginning" if task_id is not None else "now")
        cursor = await run_in_threadpool(engine.events_tail) if origin == "now" else None
    # Read once before streaming, so a bad filter is a 4xx answer rather than a broken stream.
    first = await run_in_threadpool(engine.read_events, cursor, task_id=task_id, namespace=namespace, names=names)
    stream = _follow(request, engine, first, task_id, namespace, names, timeout_seconds)
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _valid_cursor(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(Cursor.parse(value))
    except TaskerInputError:
        return None  # a stale or foreign Last-Event-ID: follow from the default origin instead


async def _follow(request: Request, engine: Tasker, page: Any, task_id: int | None, namespace: str | None,
                  names: list[str] | None, timeout: float | None) -> AsyncIterator[str]:
    deadline = None if timeout is None else time.monotonic() + timeout
    last_sent = time.monotonic()
    yield "retry: 1000\n\n"
    while True:
        for event in page.events:
            yield _message(event)
            last_sent = time.monotonic()
        if deadline is not None and time.monotonic() >= deadline:
            return
        if not page.more:
            if await request.is_disconnected():
                return
            if time.monotonic() - last_sent >= HEARTBEAT_SECONDS:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
            await asyncio.sleep(POLL_SECONDS)
        page = await run_in_threadpool(engine.read_events, page.cursor, task_id=task_id, namespace=namespace,
                                       names=names)


def _message(event: dict[str, Any]) -> str:
    data = json.dumps(event, default=_iso, separators=(",", ":"))
    return f"id: {event['cursor']}\nevent: {event['event']}\ndata: {data}\n\n"


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
