"""`GET /events`: the durable event log as Server-Sent Events, and as JSON pages for polling
clients.

The stream reads the database, not an in-process bus, so a client sees the events of every worker
process. Each SSE message's `id` is a cursor: a reconnecting client sends it back as `Last-Event-ID`
and resumes right after the last event it received.

Streams must not starve ordinary requests: 500 streams each polling the database four times a
second on the server's shared thread pool slowed `GET /tasks/1` from 16 ms to 4.7 s. So
(`StreamHub`):

- one watcher per server reads the end of the event log every `POLL_SECONDS` and wakes the streams
  only when it moved; a stream then reads its own filtered page (and once per heartbeat when idle);
- every database read of a stream runs on the hub's own small executor (`STREAM_DB_THREADS`
  threads), never on the thread pool that serves the other routes;
- open streams are counted per credential (API key, JWT subject, or client address when auth is
  off) and in total; one more than `sse_max_streams_per_client` / `sse_max_streams` is answered 429
  with `Retry-After`. A stream's slot is released when it ends for any reason, and an idle stream
  sends a keep-alive comment every `sse_heartbeat_seconds`, so a client that vanished is noticed
  when the write fails and its slot freed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from tasker.api.auth import Permission, Principal, require
from tasker.api.deps import get_engine
from tasker.api.errors import error_response, error_responses
from tasker.api.rendering import dumps
from tasker.domain.errors import TaskerInputError
from tasker.domain.history import EventRecord
from tasker.engine.tasker import Tasker
from tasker.settings import Settings
from tasker.store.event_log import Cursor, EventPage

router = APIRouter(tags=["events"])

#: How often the hub's watcher reads the end of the event log to wake the streams.
POLL_SECONDS = 0.25
#: Threads that run the streams' database reads, apart from the pool serving the other routes.
STREAM_DB_THREADS = 4
#: What a 429 asks the client to wait before opening another stream.
RETRY_AFTER_SECONDS = 5
log = logging.getLogger("tasker.api.events")
T = TypeVar("T")

TaskIdQuery = Annotated[
    int | None, Query(ge=1, le=2**63 - 1, description="Only events of this task.")
]
NamespaceQuery = Annotated[
    str | None, Query(min_length=1, max_length=64, description="Only this namespace.")
]
NameQuery = Annotated[
    list[str] | None,
    Query(
        alias="name",
        max_length=20,
        description="Event names or glob patterns (`step.*`); repeatable.",
    ),
]
AfterQuery = Annotated[
    str | None,
    Query(
        max_length=100,
        pattern=r"^\d{1,18}-\d{1,18}-\d{1,18}-\d{1,18}$",
        description="Resume after this cursor (a page's `cursor` or an SSE message id).",
    ),
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
    page = engine.history.read_events(
        after, task_id=task_id, namespace=namespace, names=_check_names(name), limit=limit
    )
    return EventPageOut(
        events=[EventOut(**e) for e in page.events], cursor=page.cursor, more=page.more
    )


class StreamHub:
    """The open event streams of one app: their slots, their database executor, the log watcher."""

    def __init__(self, engine: Tasker, settings: Settings) -> None:
        self.engine = engine
        self.per_client = settings.sse_max_streams_per_client
        self.total = settings.sse_max_streams
        self.heartbeat = settings.sse_heartbeat_seconds
        self.open: Counter[str] = Counter()
        self._executor: ThreadPoolExecutor | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._moved = asyncio.Event()
        #: Bumped whenever the watcher sees the log's end move; streams compare it to what they
        #: read.
        self.version = 0

    # -- slots ----------------------------------------------------------------------------------
    def refusal(self, client: str) -> str | None:
        """Why one more stream for `client` is refused, or None when there is room."""
        if self.open[client] >= self.per_client:
            return (
                f"this client already has {self.open[client]} open event streams, the limit "
                "(sse_max_streams_per_client); fix: close one, or follow several tasks on one "
                "stream with filters"
            )
        if sum(self.open.values()) >= self.total:
            return (
                f"the server has {self.total} open event streams, its limit (sse_max_streams); "
                "fix: retry later, or poll GET /api/v1/events/page"
            )
        return None

    def acquire(self, client: str) -> None:
        self.open[client] += 1
        if self._watcher is None or self._watcher.done():
            self._moved = asyncio.Event()
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def release(self, client: str) -> None:
        self.open[client] -= 1
        if self.open[client] <= 0:
            del self.open[client]
        if not self.open and self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    # -- database reads ---------------------------------------------------------------------------
    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on the streams' own executor (created on first use)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(STREAM_DB_THREADS, thread_name_prefix="tasker-sse")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def _watch(self) -> None:
        """Read the end of the log every POLL_SECONDS; wake every stream when it moved."""
        last: str | None = None
        while True:
            try:
                tail = await self.run(self.engine.history.events_tail)
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is away: streams keep their heartbeat, we try again
                log.warning("event streams: cannot read the end of the event log", exc_info=True)
                await asyncio.sleep(min(5.0, self.heartbeat))
                continue
            if tail != last:  # the first read also wakes streams that read before the watcher ran
                self.version += 1
                moved, self._moved = self._moved, asyncio.Event()
                moved.set()
            last = tail
            await asyncio.sleep(POLL_SECONDS)

    async def wait(self, seen: int, timeout: float) -> None:
        """Return when the log moved since `version` was `seen`, or after `timeout` seconds."""
        if self.version != seen or timeout <= 0:
            return
        try:
            await asyncio.wait_for(self._moved.wait(), timeout)
        except TimeoutError:
            pass


def client_of(request: Request, principal: Principal) -> str:
    """Whose slots a stream counts against: the credential, or the client address with auth off."""
    if principal.kind != "anonymous":
        return f"{principal.kind}:{principal.name}"
    host = request.client.host if request.client else "unknown"
    return f"address:{host}"


class _SlotStream(StreamingResponse):
    """A stream that gives its slot back however it ends: finished, client gone, or an error."""

    def __init__(self, content: AsyncIterator[str], hub: StreamHub, client: str) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self.hub = hub
        self.client = client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.hub.release(self.client)


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Server-Sent Events, one per event.",
        },
        **error_responses(401, 403, 422, 429),
    },
    summary="Follow the event log as Server-Sent Events",
)
async def events_stream(
    request: Request,
    engine: Annotated[Tasker, Depends(get_engine)],
    principal: Annotated[Principal, Depends(require(Permission.EVENTS_INDEX))],
    after: AfterQuery = None,
    task_id: TaskIdQuery = None,
    namespace: NamespaceQuery = None,
    name: NameQuery = None,
    start: Annotated[
        Literal["now", "beginning"] | None,
        Query(
            description=(
                "Without a cursor: replay from the beginning or only follow what happens from now "
                "(default: beginning when filtering by task, else now)."
            )
        ),
    ] = None,
    timeout_seconds: Annotated[
        float | None,
        Query(gt=0, le=86_400, description="End the stream after this long (default: never)."),
    ] = None,
    last_event_id: Annotated[str | None, Header(max_length=100)] = None,
) -> Response:
    """Each message's `id` is a cursor to resume from (`Last-Event-ID`); idle streams get pings.

    Streams are limited per credential and in total (429 with `Retry-After` beyond).
    """
    names = _check_names(name)
    hub: StreamHub = request.app.state.streams
    client = client_of(request, principal)
    refused = hub.refusal(client)
    if refused is not None:
        log.info("refused an event stream for %s: %s", client, refused)
        return error_response(
            429, "too_many_streams", refused, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        )
    hub.acquire(client)
    seen = hub.version
    try:
        cursor = after or _valid_cursor(last_event_id)
        if cursor is None:
            origin = start or ("beginning" if task_id is not None else "now")
            cursor = await hub.run(engine.history.events_tail) if origin == "now" else None
        # Read once before streaming, so a bad filter is a 4xx answer rather than a broken stream.
        first = await hub.run(
            engine.history.read_events, cursor, task_id=task_id, namespace=namespace, names=names
        )
    except BaseException:
        hub.release(client)
        raise
    stream = _follow(request, hub, first, seen, task_id, namespace, names, timeout_seconds)
    return _SlotStream(stream, hub, client)


def _valid_cursor(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(Cursor.parse(value))
    except TaskerInputError:
        return None  # a stale or foreign Last-Event-ID: follow from the default origin instead


async def _follow(
    request: Request,
    hub: StreamHub,
    page: EventPage,
    seen: int,
    task_id: int | None,
    namespace: str | None,
    names: list[str] | None,
    timeout: float | None,
) -> AsyncIterator[str]:
    """Yield the page's events, wait for the log to move (or a heartbeat), read on.

    `seen` is the hub's version taken before `page` was read, so an event written since is never
    waited past.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    last_sent = time.monotonic()
    yield "retry: 1000\n\n"
    while True:
        for event in page.events:
            yield _message(event)
            last_sent = time.monotonic()
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return
        if not page.more:
            if await request.is_disconnected():
                return
            if now - last_sent >= hub.heartbeat:
                yield ": keep-alive\n\n"
                last_sent = now
            wait = hub.heartbeat - (now - last_sent)
            if deadline is not None:
                wait = min(wait, deadline - now)
            await hub.wait(seen, wait)
            if deadline is not None and time.monotonic() >= deadline:
                return
        seen = hub.version
        page = await hub.run(
            hub.engine.history.read_events,
            page.cursor,
            task_id=task_id,
            namespace=namespace,
            names=names,
        )


def _message(event: EventRecord) -> str:
    data = dumps(event, default=_iso)
    return f"id: {event['cursor']}\nevent: {event['event']}\ndata: {data}\n\n"


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
