"""Who is looking at a page, what they may do, and the checks every page and action passes.

Pages and actions check the very permissions of the API routes that do the same thing
(`tasker.api.auth.Permission`), with the API's own credential verification, so the dashboard can
never grant more than the API would. With auth off everyone is the anonymous principal (allowed
everything) and a banner says so; actions still need the CSRF token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from tasker.api.auth import (
    ANONYMOUS,
    AuthConfigError,
    CredentialError,
    Principal,
    verify_credential,
)
from tasker.api.deps import get_settings
from tasker.domain.errors import NotFoundError, TaskerInputError
from tasker.web.rendering import current_path, render_html
from tasker.web.session import (
    FLASH_COOKIE,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Session,
    SessionCodec,
    new_session,
)

Handler = Callable[[Request], Awaitable[Response]]
#: The most form fields (or `ids`) a dashboard POST may carry.
MAX_FORM_FIELDS = 1000


class PageExit(Exception):
    """Stop handling a page and answer `response` (a redirect to sign in, a 403 page, ...)."""

    def __init__(self, response: Response) -> None:
        super().__init__("page exit")
        self.response = response


@dataclass
class Viewer:
    """The person behind a request: their principal, session, CSRF token and what to send back."""

    principal: Principal
    session: Session
    csrf: str
    auth_enabled: bool
    set_session: str | None = None  # a sealed session to set as the cookie on the answer
    flash: tuple[str, str] | None = None
    clear_flash: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def can(self, permission: str) -> bool:
        return self.principal.can(permission)

    @property
    def signed_in(self) -> bool:
        return self.auth_enabled and self.session.signed_in


def codec_of(request: Request) -> SessionCodec:
    codec: SessionCodec = request.app.state.web_sessions
    return codec


#: The server's settings: the same lookup the API's routes use.
settings_of = get_settings


def _session(request: Request) -> tuple[Session, str | None]:
    """The request's session, or a new anonymous one (sealed, to be set as the cookie)."""
    codec = codec_of(request)
    found = codec.open(request.cookies.get(SESSION_COOKIE))
    if found is not None:
        return found, None
    fresh = new_session()
    return fresh, codec.seal(fresh)


async def viewer(request: Request, permission: str | None = None, *, page: bool = True) -> Viewer:
    """The viewer of a page: no session goes to /login, a missing permission is 403."""
    settings = settings_of(request)
    codec = codec_of(request)
    session, sealed = _session(request)
    flash = codec.open_flash(request.cookies.get(FLASH_COOKIE))
    principal = ANONYMOUS
    if settings.auth_enabled:
        if not session.signed_in:
            raise PageExit(to_login(request, None) if page else forbidden(request, "sign in first"))
        try:
            principal = await verify_credential(
                request, session.kind or "", session.credential or ""
            )
        except CredentialError as exc:
            raise PageExit(
                to_login(request, f"your session ended: {exc.message}", clear=True)
            ) from None
        except AuthConfigError:
            raise PageExit(
                forbidden(request, "the server's JWT configuration is invalid; see its log")
            ) from None
    v = Viewer(
        principal,
        session,
        codec.csrf_token(session),
        settings.auth_enabled,
        sealed,
        flash,
        clear_flash=FLASH_COOKIE in request.cookies,
    )
    request.state.viewer = v
    if permission is not None and not principal.can(permission):
        raise PageExit(
            forbidden(request, f"{principal.describe()} lacks the permission {permission}")
        )
    return v


async def read_form(request: Request) -> dict[str, list[str]]:
    """The fields of a url-encoded POST body (a dashboard form); anything else reads as empty."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return {}
    body = (await request.body()).decode("utf-8", "replace")
    try:
        return parse_qs(body, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        return {}


def field_of(form: dict[str, list[str]], name: str, default: str = "") -> str:
    values = form.get(name)
    return values[0] if values else default


async def actor(request: Request, form: dict[str, list[str]], permission: str | None) -> Viewer:
    """The viewer of an action: a valid CSRF token, then the permission; 403 without either."""
    codec = codec_of(request)
    session = codec.open(request.cookies.get(SESSION_COOKIE))
    if not codec.csrf_ok(session, field_of(form, "csrf_token")):
        raise PageExit(
            forbidden(
                request, "the form's CSRF token is missing or stale; reload the page and try again"
            )
        )
    return await viewer(request, permission, page=False)


# -- answers ------------------------------------------------------------------------------------
def base_context(request: Request, v: Viewer | None, title: str, nav: str = "") -> dict[str, Any]:
    return {
        "request": request,
        "viewer": v,
        "title": title,
        "nav": nav,
        "auth_enabled": settings_of(request).auth_enabled,
        "path": current_path(request),
    }


def finish(request: Request, v: Viewer | None, response: Response) -> Response:
    """Set the new session cookie and drop a shown flash message on the answer."""
    if v is not None and v.set_session is not None:
        set_session_cookie(request, response, v.set_session)
    if v is not None and v.clear_flash:
        response.delete_cookie(FLASH_COOKIE, path="/", httponly=True, samesite="strict")
    return response


def page(
    request: Request,
    v: Viewer,
    template: str,
    title: str,
    nav: str,
    /,
    status: int = 200,
    **context: Any,
) -> Response:
    """Render a page for `v`; `context` may use any name (`template`, `title`...) but `status`."""
    ctx = {**base_context(request, v, title, nav), **context}
    return finish(request, v, render_html(template, ctx, status))


def set_session_cookie(request: Request, response: Response, sealed: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        sealed,
        max_age=SESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def forbidden(request: Request, message: str) -> Response:
    return error_page(request, 403, "Forbidden", message)


def error_page(request: Request, status: int, title: str, message: str) -> Response:
    v = getattr(request.state, "viewer", None)
    ctx = {**base_context(request, v, title), "message": message, "status": status}
    return finish(request, v, render_html("error.html", ctx, status))


def to_login(request: Request, message: str | None, *, clear: bool = False) -> Response:
    target = "/login?next=" + quote(current_path(request), safe="")
    response = RedirectResponse(target, status_code=303)
    if message:
        response.set_cookie(
            FLASH_COOKIE,
            codec_of(request).seal_flash("error", message),
            max_age=60,
            path="/",
            httponly=True,
            samesite="strict",
        )
    if clear:
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


def redirect(request: Request, url: str, kind: str, message: str) -> Response:
    """303 back to a page, with a flash message it shows once."""
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(
        FLASH_COOKIE,
        codec_of(request).seal_flash(kind, message),
        max_age=60,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


class Pages:
    """The routes of one area of the dashboard, as plain Starlette routes.

    Pages are not operations of the API: they stay out of the OpenAPI spec and out of the API's
    per-route permission dependencies; each page checks the API's permission itself (`viewer`,
    `actor`). Expected exits (sign in, 403, an unknown id, bad input) are answered as HTML pages,
    never with the API's JSON errors.
    """

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def get(self, path: str) -> Callable[[Handler], Handler]:
        return self._add(path, "GET")

    def post(self, path: str) -> Callable[[Handler], Handler]:
        return self._add(path, "POST")

    def _add(self, path: str, method: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes.append(Route(path, _guarded(handler), methods=[method]))
            return handler

        return register


def _guarded(handler: Handler) -> Handler:
    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except PageExit as exc:
            return exc.response
        except NotFoundError as exc:
            return error_page(request, 404, "Not found", str(exc))
        except TaskerInputError as exc:
            return error_page(request, 422, "Invalid request", str(exc))

    return guarded
