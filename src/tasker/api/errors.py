"""One JSON error body for every failure the API reports, and the handlers that produce it.

    {"error": {"status": 422, "code": "invalid_context", "message": "...",
               "details": [{"path": "$.user_info.email", "message": "'x' is not a 'email'"}]}}

Engine exceptions keep their one-line messages (they already say what is wrong and how to fix it);
request validation errors are rewritten with the path of each bad field; anything unexpected is
logged with its traceback and answered with a bare `internal_error`, so no response ever carries
server internals.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tasker.api.rendering import SafeJSONResponse
from tasker.domain.errors import (
    ContextValidationError,
    IdempotencyConflict,
    InvalidTransitionError,
    NotFoundError,
    OperationError,
    TaskerError,
    TaskerInputError,
    TemplateError,
    UnknownTemplateError,
)

log = logging.getLogger("tasker.api")
#: Set on the scope of a HEAD request that runs as GET (middleware.HeadAsGet), so messages name
#: HEAD.
HEAD_SCOPE_KEY = "tasker.head"


class ErrorDetail(BaseModel):
    path: str = Field(
        description="Where: a JSON path into the body (`$.context.email`), or `query.limit`."
    )
    message: str


class ErrorInfo(BaseModel):
    status: int
    code: str = Field(
        description="A stable machine-readable name, e.g. `not_found`, `invalid_context`."
    )
    message: str = Field(description="One line: what is wrong and how to fix it.")
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorBody(BaseModel):
    error: ErrorInfo


_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    431: "headers_too_large",
    500: "internal_error",
    503: "unavailable",
}
_DESCRIPTIONS = {
    400: "The request cannot be read (a body that is not UTF-8, a bad Content-Length).",
    401: "No credential, or a bad one (authentication is on).",
    403: "The credential lacks the permission this route needs.",
    404: "No such task, step, namespace or template.",
    409: (
        "The operation does not apply to the current state (e.g. retrying a task that is not in"
        " error)."
    ),
    413: "The body is larger than the server's limit (`max_body_bytes`).",
    422: (
        "The request is malformed (every bad field with its path) or the context violates the"
        " template's schema."
    ),
    429: (
        "Too many open event streams for this credential or in total; retry after `Retry-After`"
        " seconds."
    ),
}
#: The engine's messages point at CLI commands; an API client is told the matching route instead.
_HINTS = {
    "list tasks with 'tasker tasks list'": "list tasks with GET /api/v1/tasks",
    "pass --templates PATH or call load_templates()": "start the server with --templates PATH",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: each status it may answer with the error body, for the OpenAPI
    spec."""
    return {
        s: {"model": ErrorBody, "description": _DESCRIPTIONS.get(s, HTTPStatus(s).phrase)}
        for s in statuses
    }


def _clip(text: str, limit: int) -> str:
    """Messages may quote what the client sent (a failing value, a key): never echo a megabyte
    back."""
    return text if len(text) <= limit else text[: limit - 15] + "... (truncated)"


def error_body(
    status: int, code: str, message: str, details: Sequence[ErrorDetail] = ()
) -> dict[str, Any]:
    clipped = [ErrorDetail(path=_clip(d.path, 500), message=_clip(d.message, 500)) for d in details]
    info = ErrorInfo(status=status, code=code, message=_clip(message, 4000), details=clipped)
    return ErrorBody(error=info).model_dump()


def error_response(
    status: int,
    code: str,
    message: str,
    details: Sequence[ErrorDetail] = (),
    headers: dict[str, str] | None = None,
) -> SafeJSONResponse:
    return SafeJSONResponse(
        error_body(status, code, message, details), status_code=status, headers=headers
    )


def _api_message(exc: Exception) -> str:
    text = str(exc)
    for cli, api in _HINTS.items():
        text = text.replace(cli, api)
    return text


# -- engine exceptions -----------------------------------------------------------------------------
def _tasker_error(request: Request, exc: Exception) -> SafeJSONResponse:
    message = _api_message(exc)
    if isinstance(exc, ContextValidationError):
        details = [ErrorDetail(path=path, message=msg) for path, msg in exc.violations]
        return error_response(422, "invalid_context", message, details)
    if isinstance(exc, IdempotencyConflict):
        return error_response(409, "idempotency_conflict", message)
    if isinstance(exc, UnknownTemplateError):
        return error_response(404, "unknown_template", message)
    if isinstance(exc, NotFoundError):
        return error_response(404, "not_found", message)
    if isinstance(exc, OperationError | InvalidTransitionError):
        return error_response(409, "conflict", message)
    if isinstance(exc, TemplateError):
        return error_response(422, "invalid_template", message)
    if isinstance(exc, TaskerInputError):
        return error_response(422, "invalid_input", message)
    return _internal(request, exc)


def _internal(request: Request | Scope, exc: BaseException) -> SafeJSONResponse:
    scope = request.scope if isinstance(request, Request) else request
    log.error("unhandled error on %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
    return error_response(
        500, "internal_error", "the server failed to handle the request; the error is logged"
    )


# -- request validation ----------------------------------------------------------------------------
def field_path(loc: Sequence[str | int]) -> str:
    """`("body", "context", "items", 0)` -> `$.context.items[0]`; `("query", "limit")` ->
    `query.limit`."""
    if not loc:
        return "$"
    where, rest = loc[0], list(loc[1:])
    if where == "body":
        out = "$"
        for part in rest:
            out += f"[{part}]" if isinstance(part, int) else f".{part}"
        return out
    return ".".join(str(p) for p in [where, *rest])


def _validation_detail(err: dict[str, Any]) -> ErrorDetail:
    loc = tuple(err.get("loc") or ())
    kind = err.get("type")
    message = str(err.get("msg") or "invalid value").removeprefix("Value error, ")
    if kind == "json_invalid":
        reason = (err.get("ctx") or {}).get("error", "")
        position = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
        at = f" at character {position}" if position is not None else ""
        return ErrorDetail(
            path="$", message=f"the body is not valid JSON{at}: {reason}".rstrip(": ")
        )
    if loc == ("body",) and kind == "missing":
        return ErrorDetail(path="$", message="a JSON body is required")
    if loc == ("body",) and isinstance(err.get("input"), bytes | str):
        return ErrorDetail(
            path="$",
            message="the body must be a JSON object sent with Content-Type: application/json",
        )
    if kind == "extra_forbidden":
        message = "unknown field; fix: remove it (see the schema at /docs)"
    elif kind in ("dict_type", "model_type", "model_attributes_type"):
        message = "must be a JSON object"
    return ErrorDetail(path=field_path(loc), message=message)


def _request_validation(request: Request, exc: Exception) -> SafeJSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    details = [_validation_detail(dict(e)) for e in errors]
    if not details:
        details = [ErrorDetail(path="$", message="the request is invalid")]
    first = details[0]
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    message = f"invalid request: {first.path}: {first.message}{more}"
    return error_response(422, "validation_error", message, details)


# -- HTTP errors raised by Starlette, FastAPI or other routes --------------------------------------
def _http_error(request: Request, exc: Exception) -> SafeJSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    detail: Any = exc.detail
    headers = dict(exc.headers or {})
    code = _CODES.get(status, "error")
    message = detail if isinstance(detail, str) else _phrase(status)
    if isinstance(detail, dict) and isinstance(detail.get("error"), dict):  # already our shape
        detail = detail["error"]
    if isinstance(detail, dict):
        code = str(detail.get("code") or code)
        message = str(detail.get("message") or detail.get("detail") or _phrase(status))
    if status == 404 and detail == "Not Found":
        message = (
            f"no route {request.method} {request.url.path}; the API lives under /api/v1, see /docs"
        )
    elif status == 405 and detail == "Method Not Allowed":
        headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
        headers["Allow"] = allowed = _allowed_methods(request)
        method = "HEAD" if request.scope.get(HEAD_SCOPE_KEY) else request.method
        message = f"{method} is not allowed on {request.url.path}" + (
            f"; use {allowed}" if allowed else ""
        )
    elif status == 400 and detail == "There was an error parsing the body":
        message = _parse_failure(exc.__cause__)
    if status >= 500:
        log.error("HTTP %d on %s %s: %s", status, request.method, request.url.path, message)
    return error_response(status, code, message, headers=headers)


def _parse_failure(cause: BaseException | None) -> str:
    """Why the JSON parser gave up, when json_limits let the body through (it bounds depth and
    numbers)."""
    if isinstance(cause, UnicodeError):
        return "the body is not valid UTF-8 text; fix: send a UTF-8 JSON object"
    if isinstance(cause, RecursionError):
        return "the body nests too deeply to parse; fix: flatten the data"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "the body holds a number too long to parse; fix: send long numbers as strings"
    return "the body cannot be parsed as JSON; fix: send a UTF-8 JSON object"


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette's Allow names only the first route's).

    Asked of the routes themselves, through the matching interface every Starlette route implements.
    """
    allowed = []
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    if "GET" in allowed:  # HeadAsGet serves HEAD wherever GET is
        allowed.insert(allowed.index("GET") + 1, "HEAD")
    return ", ".join(allowed)


class CatchAll:
    """Outermost middleware: an exception no handler took becomes a logged 500 with the error body.

    Starlette's own last-resort handler re-raises after answering (the server logs it twice); this
    one answers once and keeps the traceback in the log, out of the response.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:  # a streamed response broke midway: nothing sensible can be sent any more
                raise
            await _internal(scope, exc)(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TaskerError, _tasker_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_error)
