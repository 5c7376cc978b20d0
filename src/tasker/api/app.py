"""`create_app`: the FastAPI application over one `Tasker` engine.

Every router is mounted under one prefix, `/api/v1`; the OpenAPI spec is served at `/openapi.json`
and Swagger UI at `/docs`, from the package's own assets and behind the auth setting (`docs.py`).
The spec declares both credentials the API accepts (an `X-API-Key` header and a JWT bearer token)
and marks every route that answers 401 as needing one of them, so generated clients and Swagger's
"Authorize" button know what to send; and it documents every 422 with the API's own error body,
which is what `errors.py` answers instead of FastAPI's default.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from tasker import __version__
from tasker.api.docs import install_docs
from tasker.api.errors import CatchAll, ErrorBody, install_error_handlers
from tasker.api.json_limits import JsonBodyLimits
from tasker.api.limits import BodySizeLimit
from tasker.api.middleware import HeadAsGet, RequestSizeLimits, SecurityHeaders
from tasker.api.rendering import SafeJSONResponse
from tasker.api.routes import (
    diagrams,
    events,
    handlers,
    monitoring,
    schedules,
    signals,
    steps,
    tasks,
)
from tasker.api.routes.events import StreamHub
from tasker.engine.tasker import Tasker
from tasker.settings import Settings
from tasker.web.router import install_dashboard

API_PREFIX = "/api/v1"
API_KEY_HEADER = "X-API-Key"

_DESCRIPTION = (
    "Drive the Tasker workflow engine: create tasks from the templates the server loaded, follow"
    " their steps,\n"
    "cancel, retry and resolve them, discover templates and draw their diagrams.\n"
    "\n"
    'Every error answers one JSON shape: `{"error": {"status", "code", "message", "details":'
    ' [{"path", "message"}]}}`.\n'
)


def create_app(engine: Tasker, settings: Settings | None = None) -> FastAPI:
    """The API app over `engine`; `settings` defaults to `Settings()` (auth off, 1 MiB body
    limit)."""
    settings = settings or Settings()
    app = FastAPI(
        title="Tasker API",
        version=__version__,
        description=_DESCRIPTION,
        docs_url=None,
        openapi_url=None,
        redoc_url=None,
        default_response_class=SafeJSONResponse,
    )
    app.state.tasker = engine
    app.state.settings = settings
    app.state.streams = StreamHub(engine, settings)
    for module in (tasks, steps, signals, schedules, diagrams, handlers, monitoring, events):
        app.include_router(module.router, prefix=API_PREFIX)
    install_docs(app)
    install_dashboard(app, settings)  # the web dashboard at "/", its assets at /static/dashboard
    install_error_handlers(app)
    # The last added runs first. From the outside in: security headers on every answer; CatchAll;
    # URL and header sizes; HEAD served as GET; the body size limit; the JSON shape limits; the
    # routes.
    app.add_middleware(JsonBodyLimits)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HeadAsGet)
    app.add_middleware(RequestSizeLimits)
    app.add_middleware(CatchAll)
    app.add_middleware(SecurityHeaders)
    _finish_spec(app)
    return app


#: Every 422 carries the API's error body (errors.py rewrites FastAPI's), whoever wrote the route.
_VALIDATION_ERROR = {
    "description": "The request is malformed: every bad field with its path.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
}


def _error_schemas() -> dict[str, Any]:
    defs = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    return {**defs.pop("$defs", {}), "ErrorBody": defs}


def _finish_spec(app: FastAPI) -> None:
    """Declare the credentials, and document every 422 with the API's error body."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = generate()
        schemes: dict[str, Any] = spec.setdefault("components", {}).setdefault(
            "securitySchemes", {}
        )
        # Auth dependencies built on fastapi.security declare their own schemes: reuse those, add
        # the rest.
        api_key = next(
            (
                n
                for n, s in schemes.items()
                if s.get("type") == "apiKey"
                and s.get("in") == "header"
                and str(s.get("name", "")).lower() == API_KEY_HEADER.lower()
            ),
            None,
        )
        if api_key is None:
            api_key = "ApiKeyAuth"
            schemes[api_key] = {
                "type": "apiKey",
                "in": "header",
                "name": API_KEY_HEADER,
                "description": "An API key created with `tasker keys create`.",
            }
        bearer = next(
            (
                n
                for n, s in schemes.items()
                if s.get("type") == "http" and str(s.get("scheme", "")).lower() == "bearer"
            ),
            None,
        )
        if bearer is None:
            bearer = "BearerAuth"
            schemes[bearer] = {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "A JWT signed with the server's HS256 secret or RS256 key.",
            }
        for item in spec.get("paths", {}).values():
            for operation in item.values():
                if not isinstance(operation, dict):
                    continue
                responses = operation.get("responses", {})
                if "401" in responses:
                    operation.setdefault("security", [{api_key: []}, {bearer: []}])
                if "422" in responses and "HTTPValidationError" in str(responses["422"]):
                    responses["422"] = _VALIDATION_ERROR
        components = spec.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for name, schema in _error_schemas().items():
            schemas.setdefault(name, schema)
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
