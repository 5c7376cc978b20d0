"""Templates: every namespace, name and version loaded; a template's diagram, steps, schema, and
a form that creates a task from it, prefilled with the schema's defaults. Each step's condition
(`when:`), join and fan-out (`foreach:`, `max_parallel`) show on the diagram and next to its
dependencies; a sub-workflow (`task:`) shows the template it runs where a handler class would be,
linked when that template is loaded, with the context it passes (`context:`).

Reads the registry only (`engine.templates.versions`, `.get`): no database. Listing needs
`tasker.handler:index`, a template `tasker.handler:show`, creating a task `tasker.task:create`, the
permissions of `/api/v1/handlers` and `POST /api/v1/tasks`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from tasker.api.auth import Permission
from tasker.context_schema import apply_defaults
from tasker.domain.errors import ContextValidationError, TaskerInputError
from tasker.domain.templates import TaskTemplate
from tasker.engine.tasker import Tasker
from tasker.registry import parse_ref
from tasker.web.access import Pages, Viewer, actor, field_of, page, read_form, redirect, viewer
from tasker.web.dag import template_layout
from tasker.web.rendering import query

pages = Pages()


@pages.get("/templates")
async def templates(request: Request) -> Response:
    v = await viewer(request, Permission.HANDLER_INDEX)
    engine: Tasker = request.app.state.tasker
    found = engine.templates.versions()
    return page(
        request,
        v,
        "templates.html",
        "Templates",
        "templates",
        templates=found,
        namespaces=sorted({t.namespace_name for t in found}),
    )


def prefill(template: TaskTemplate) -> str:
    """The create form's first text: the schema's defaults, as an object to edit."""
    return json.dumps(apply_defaults(template.context_schema, {}) or {}, indent=2, sort_keys=True)


def policy(template: TaskTemplate) -> dict[str, Any]:
    """Each step's retry policy, dependent system and timeout, ready to show."""
    out: dict[str, Any] = {}
    for s in template.step_templates:
        p = template.retry_policy(s)
        out[s.name] = {
            "policy": p,
            "system": template.dependent_system_of(s),
            "timeout": s.timeout_seconds,
        }
    return out


@dataclass(frozen=True)
class Subflow:
    """A `task:` step as the steps table shows it: the template it runs, that template's page
    (None when it is not loaded here), and the child's context as (key, expression or JSON
    value) pairs (None: the child gets the parent's context)."""

    task: str
    href: str | None
    context: list[tuple[str, str]] | None


def subflows(engine: Tasker, template: TaskTemplate) -> dict[str, Subflow]:
    """The template's `task:` steps, by name (the registry only: no database)."""
    out: dict[str, Subflow] = {}
    for s in template.step_templates:
        if s.task is None:
            continue
        href = None
        try:
            ref = parse_ref(s.task)
            engine.templates.get(f"{ref.namespace}/{ref.name}", ref.version)
            href = query(f"/templates/{ref.namespace}/{ref.name}", version=ref.version)
        except TaskerInputError:
            pass  # not loaded in this process: named, not linked
        context = None
        if s.context is not None:
            context = [
                (key, value if isinstance(value, str) else json.dumps(value, sort_keys=True))
                for key, value in s.context.items()
            ]
        out[s.name] = Subflow(s.task, href, context)
    return out


async def render_template(
    request: Request,
    v: Viewer,
    namespace: str,
    name: str,
    version: str | None,
    *,
    status: int = 200,
    context_text: str | None = None,
    errors: list[tuple[str, str]] | None = None,
) -> Response:
    engine: Tasker = request.app.state.tasker
    template = engine.templates.get(f"{namespace}/{name}", version or None)
    versions = [
        t.version
        for t in engine.templates.versions()
        if t.namespace_name == namespace and t.name == name
    ]
    return page(
        request,
        v,
        "template.html",
        f"{template.namespace_name}/{template.name}",
        "templates",
        status=status,
        template=template,
        versions=versions,
        dag=template_layout(template),
        controlled=any(s.when or s.join or s.foreach for s in template.step_templates),
        steps=policy(template),
        subflows=subflows(engine, template),
        schema=template.context_schema,
        context_text=prefill(template) if context_text is None else context_text,
        errors=errors or [],
        can_create=v.can(Permission.TASK_CREATE),
    )


@pages.get("/templates/{namespace}/{name}")
async def template_page(request: Request) -> Response:
    namespace, name = request.path_params["namespace"], request.path_params["name"]
    version = request.query_params.get("version") or None
    v = await viewer(request, Permission.HANDLER_SHOW)
    return await render_template(request, v, namespace, name, version)


def parse_context(text: str) -> tuple[Any, list[tuple[str, str]]]:
    try:
        return json.loads(text or "{}"), []
    except json.JSONDecodeError as exc:
        return None, [("$", f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}")]


@pages.post("/templates/{namespace}/{name}/tasks")
async def create_task(request: Request) -> Response:
    namespace, name = request.path_params["namespace"], request.path_params["name"]
    form = await read_form(request)
    v = await actor(request, form, Permission.TASK_CREATE)
    version = field_of(form, "version") or None
    text = field_of(form, "context", "{}")
    context, errors = parse_context(text)
    if not errors:
        engine: Tasker = request.app.state.tasker
        try:
            task = await run_in_threadpool(
                engine.create_task, f"{namespace}/{name}", context, version=version
            )
        except ContextValidationError as exc:
            errors = list(exc.violations)
        except TaskerInputError as exc:
            errors = [("$", str(exc))]
        else:
            verb = "found (same idempotency key)" if task.deduplicated else "created"
            return redirect(request, f"/tasks/{task.id}", "ok", f"task {task.id} {verb}")
    return await render_template(
        request, v, namespace, name, version, status=422, context_text=text, errors=errors
    )
