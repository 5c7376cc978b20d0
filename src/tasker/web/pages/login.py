"""Sign in with an API key or a JWT, once; sign out.

The credential is checked with the API's own code (`tasker.api.auth.verify_credential`) and kept,
encrypted, in the session cookie (`tasker.web.session`). Signing in starts a new session (a new
nonce), so a session planted before sign-in is worthless afterwards.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from tasker.api.auth import AuthConfigError, CredentialError, verify_credential
from tasker.store.api_keys import looks_like_key
from tasker.web.access import (
    Pages,
    base_context,
    codec_of,
    field_of,
    forbidden,
    read_form,
    set_session_cookie,
    settings_of,
)
from tasker.web.rendering import render_html
from tasker.web.session import FLASH_COOKIE, SESSION_COOKIE, new_session

pages = Pages()
MAX_CREDENTIAL_CHARS = 8192


def safe_next(target: str | None) -> str:
    """Only a path on this server: never `//evil.example` or `https://...` (an open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _login_page(request: Request, target: str, error: str | None, status: int) -> Response:
    codec = codec_of(request)
    session = codec.open(request.cookies.get(SESSION_COOKIE))
    sealed = None
    if session is None:
        session = new_session()
        sealed = codec.seal(session)
    flash = codec.open_flash(request.cookies.get(FLASH_COOKIE))
    ctx = {
        **base_context(request, None, "Sign in"),
        "csrf": codec.csrf_token(session),
        "next": target,
        "error": error or (flash[1] if flash else None),
    }
    response = render_html("login.html", ctx, status)
    if sealed is not None:
        set_session_cookie(request, response, sealed)
    if flash is not None:
        response.delete_cookie(FLASH_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@pages.get("/login")
async def login_form(request: Request) -> Response:
    next = request.query_params.get("next")
    if not settings_of(request).auth_enabled:
        return RedirectResponse(safe_next(next), status_code=303)
    return _login_page(request, safe_next(next), None, 200)


@pages.post("/login")
async def login(request: Request) -> Response:
    form = await read_form(request)
    target = safe_next(field_of(form, "next"))
    codec = codec_of(request)
    if not codec.csrf_ok(
        codec.open(request.cookies.get(SESSION_COOKIE)), field_of(form, "csrf_token")
    ):
        return forbidden(
            request, "the form's CSRF token is missing or stale; reload the page and try again"
        )
    if not settings_of(request).auth_enabled:
        return RedirectResponse(target, status_code=303)
    credential = field_of(form, "credential").strip()
    if not credential:
        return _login_page(request, target, "enter an API key or a JWT", 422)
    if len(credential) > MAX_CREDENTIAL_CHARS:
        return _login_page(
            request, target, f"that is longer than {MAX_CREDENTIAL_CHARS} characters", 422
        )
    kind = "api_key" if looks_like_key(credential) else "jwt"
    try:
        await verify_credential(request, kind, credential)
    except CredentialError as exc:
        return _login_page(request, target, exc.message, 401)
    except AuthConfigError:
        return _login_page(
            request, target, "the server's JWT configuration is invalid; see its log", 500
        )
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(request, response, codec.seal(new_session(kind, credential)))
    return response


@pages.post("/logout")
async def logout(request: Request) -> Response:
    form = await read_form(request)
    codec = codec_of(request)
    if not codec.csrf_ok(
        codec.open(request.cookies.get(SESSION_COOKIE)), field_of(form, "csrf_token")
    ):
        return forbidden(
            request, "the form's CSRF token is missing or stale; reload the page and try again"
        )
    target = "/login" if settings_of(request).auth_enabled else "/"
    response = RedirectResponse(target, status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
