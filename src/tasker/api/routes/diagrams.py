"""Mermaid diagrams of a template's DAG, and of a task with each step coloured by its state.

JSON (`{"mermaid": "graph TD ..."}`) by default, so the answer fits the rest of the API; the bare
Mermaid source with `?format=text` or `Accept: text/plain`, for piping into a renderer.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header
from fastapi.responses import PlainTextResponse

from tasker.api.auth import Permission, require
from tasker.api.deps import get_engine
from tasker.api.errors import error_responses
from tasker.api.schemas import Diagram, DiagramFormat, Namespace, TaskId, TemplateName, VersionQuery
from tasker.engine.tasker import Tasker

router = APIRouter(tags=["diagrams"])
Engine = Annotated[Tasker, Depends(get_engine)]
Accept = Annotated[str | None, Header(include_in_schema=False)]
_TEXT: dict[int | str, dict[str, Any]] = {
    200: {"description": "The diagram.", "content": {"text/plain": {"schema": {"type": "string"}}}},
}


def wants_text(fmt: str | None, accept: str | None) -> bool:
    """`?format=` decides; otherwise text only when the client accepts text/plain and not JSON."""
    if fmt is not None:
        return fmt == "text"
    types = {part.split(";")[0].strip().lower() for part in (accept or "").split(",")}
    return "text/plain" in types and "application/json" not in types


def _answer(diagram: Diagram, fmt: str | None, accept: str | None) -> Diagram | PlainTextResponse:
    if wants_text(fmt, accept):
        return PlainTextResponse(diagram.mermaid)
    return diagram


@router.get(
    "/handlers/{namespace}/{name}/diagram",
    response_model=Diagram,
    summary="Diagram of a template",
    dependencies=[Depends(require(Permission.HANDLER_SHOW))],
    responses={**_TEXT, **error_responses(401, 403, 404, 422)},
)
def template_diagram(
    namespace: Namespace,
    name: TemplateName,
    engine: Engine,
    version: VersionQuery = None,
    format: DiagramFormat = None,
    accept: Accept = None,
) -> Diagram | PlainTextResponse:
    template = engine.templates.get(f"{namespace}/{name}", version)
    return _answer(
        Diagram(template=template.key, task_id=None, mermaid=template.mermaid()), format, accept
    )


@router.get(
    "/tasks/{task_id}/diagram",
    response_model=Diagram,
    summary="Diagram of a task, steps coloured by state",
    dependencies=[Depends(require(Permission.TASK_SHOW))],
    responses={**_TEXT, **error_responses(401, 403, 404, 422)},
)
def task_diagram(
    task_id: TaskId, engine: Engine, format: DiagramFormat = None, accept: Accept = None
) -> Diagram | PlainTextResponse:
    task = engine.get_task(task_id)
    template = engine.templates.of_task(task_id)
    return _answer(
        Diagram(
            template=template.key, task_id=task.id, mermaid=template.mermaid(*task.diagram_states())
        ),
        format,
        accept,
    )
