"""Handler discovery: the namespaces, the templates of a namespace, and one template in full.

Unlike the Ruby engine, the dependency graph and execution order count every dependency, those
declared with `depends_on_steps` as well as `depends_on_step`, and every listed namespace can be
opened.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from tasker.api.auth import Permission, require
from tasker.api.deps import get_engine
from tasker.api.errors import error_responses
from tasker.api.schemas import (
    HandlerDetail,
    HandlerSummary,
    Namespace,
    NamespaceDetail,
    NamespaceList,
    NamespaceOut,
    TemplateName,
    TemplateVersion,
    VersionQuery,
    latest,
)
from tasker.domain.errors import NotFoundError
from tasker.domain.templates import TaskTemplate
from tasker.engine.tasker import Tasker

router = APIRouter(tags=["handlers"])
Engine = Annotated[Tasker, Depends(get_engine)]


def _by_name(engine: Tasker) -> dict[tuple[str, str], list[TaskTemplate]]:
    out: dict[tuple[str, str], list[TaskTemplate]] = {}
    for t in engine.registry.all():
        out.setdefault((t.namespace_name, t.name), []).append(t)
    return out


@router.get(
    "/handlers",
    response_model=NamespaceList,
    summary="List namespaces",
    dependencies=[Depends(require(Permission.HANDLER_INDEX))],
    responses=error_responses(401, 403),
)
def list_namespaces(engine: Engine) -> NamespaceList:
    """Every namespace of the loaded templates, with how many templates and versions it holds."""
    counts: dict[str, NamespaceOut] = {}
    for (ns, _), versions in sorted(_by_name(engine).items()):
        entry = counts.setdefault(ns, NamespaceOut(name=ns, handler_count=0, version_count=0))
        entry.handler_count += 1
        entry.version_count += len(versions)
    return NamespaceList(namespaces=list(counts.values()), total_namespaces=len(counts))


@router.get(
    "/handlers/{namespace}",
    response_model=NamespaceDetail,
    summary="List the templates of a namespace",
    dependencies=[Depends(require(Permission.HANDLER_INDEX))],
    responses=error_responses(401, 403, 404, 422),
)
def show_namespace(namespace: Namespace, engine: Engine) -> NamespaceDetail:
    handlers = []
    for (ns, name), versions in sorted(_by_name(engine).items()):
        if ns != namespace:
            continue
        numbers = [t.version for t in versions]
        newest = latest(numbers)
        description = next(t.description for t in versions if t.version == newest)
        handlers.append(
            HandlerSummary(
                namespace=ns,
                name=name,
                description=description,
                versions=numbers,
                latest_version=newest,
            )
        )
    if not handlers:
        known = (
            ", ".join(engine.registry.namespaces())
            or "none (start the server with --templates PATH)"
        )
        raise NotFoundError(f"no templates in namespace '{namespace}'; namespaces: {known}")
    return NamespaceDetail(namespace=namespace, handlers=handlers, total_handlers=len(handlers))


@router.get(
    "/handlers/{namespace}/{name}",
    response_model=HandlerDetail,
    summary="Show a template",
    dependencies=[Depends(require(Permission.HANDLER_SHOW))],
    responses=error_responses(401, 403, 404, 422),
)
def show_handler(
    namespace: Namespace, name: TemplateName, engine: Engine, version: VersionQuery = None
) -> HandlerDetail:
    """Every loaded version (or the one `?version=` names) with step templates, graph and execution
    order."""
    ref = f"{namespace}/{name}"
    newest = engine.templates.get(
        ref
    )  # raises UnknownTemplateError naming the templates that exist
    chosen = (
        [engine.templates.get(ref, version)]
        if version
        else engine.registry.versions(namespace, name)
    )
    return HandlerDetail(
        namespace=namespace,
        name=name,
        latest_version=newest.version,
        versions=[TemplateVersion.of(t) for t in chosen],
    )
