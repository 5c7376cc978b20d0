"""Live events: the durable event log as it happens, filtered by namespace, task and event name.

The page itself reads nothing: the dashboard script opens the API's SSE stream
(`GET /api/v1/events`) with the filters of the URL, so the page is exactly as live and as
permitted as the API (`tasker.events:index`).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tasker.api.auth import Permission
from tasker.domain.events import Events
from tasker.domain.states import StepState, TaskState
from tasker.domain.templates import TaskTemplate
from tasker.engine.tasker import Tasker
from tasker.web.access import Pages, page, viewer
from tasker.web.rendering import query

pages = Pages()
STREAM_URL = "/api/v1/events"
#: A `task:` step created its child task (tasker.store.completion.create_child); on the parent's
#: stream, so the parent's page links the child as soon as it exists.
CHILD_CREATED = "task.child_created"


def event_names(templates: list[TaskTemplate]) -> str:
    """Every event name the stream may send, space-separated, for the page script.

    A browser's EventSource hands named SSE messages only to listeners of that exact name, so the
    script must know them: the lifecycle events and the custom events the templates declare.
    """
    names = {v for k, v in vars(Events).items() if k.isupper() and isinstance(v, str)}
    names |= {f"step.{s.value}" for s in StepState} | {f"task.{s.value}" for s in TaskState}
    names.add(CHILD_CREATED)
    for t in templates:
        names |= t.declared_events()
    return " ".join(sorted(names))


@pages.get("/events")
async def events(request: Request) -> Response:
    v = await viewer(request, Permission.EVENTS_INDEX)
    params = request.query_params
    namespace = params.get("namespace", "").strip()[:64]
    task = params.get("task", "").strip()[:19]
    event = params.get("event", "").strip()[:128]
    error = None
    if task and not task.isdigit():
        error = f"task: '{task}' is not a task id"
    stream = (
        None
        if error
        else query(
            STREAM_URL,
            namespace=namespace,
            task_id=task,
            name=event,
            start="beginning" if task else "now",
        )
    )
    engine: Tasker = request.app.state.tasker
    return page(
        request,
        v,
        "events.html",
        "Live events",
        "events",
        status=422 if error else 200,
        namespace=namespace,
        task=task,
        event=event,
        error=error,
        stream=stream,
        event_names=event_names(engine.templates.versions()),
    )
