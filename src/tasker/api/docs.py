"""`/docs` (Swagger UI) and `/openapi.json`, served from the package and following the auth setting.

FastAPI's built-in pages load Swagger UI from a CDN and start it with an inline script: the browser
of an operator would fetch code from a third party, and the Content-Security-Policy could not forbid
inline scripts. Here the page, its assets (swagger-ui-dist, see static/swagger/README.md) and its
start-up script all come from this server.

With authentication on, the page and the spec need a valid credential (any permission: the spec
tells how to call the API, not what is in it), unless `docs_public` makes them public. The assets
are the same for every installation and stay public. Redoc is not served.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

from tasker.api.auth import PermissionCheck
from tasker.api.rendering import SafeJSONResponse
from tasker.settings import Settings

ASSETS = Path(__file__).parent / "static" / "swagger"
DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
OPENAPI_PATH = "/openapi.json"
_CREDENTIAL = PermissionCheck(None)


async def _check_access(request: Request) -> None:
    """Raise the API's 401 unless auth is off, the docs are public, or a credential is sent."""
    settings: Settings = request.app.state.settings
    if settings.auth_enabled and not settings.docs_public:
        await _CREDENTIAL(request)


async def openapi_spec(request: Request) -> Response:
    await _check_access(request)
    return SafeJSONResponse(request.app.openapi())


async def docs_page(request: Request) -> Response:
    await _check_access(request)
    return FileResponse(
        ASSETS / "docs.html",
        media_type="text/html; charset=utf-8",
        headers={"Cache-Control": "no-cache"},
    )


def install_docs(app: FastAPI) -> None:
    """Serve the spec, the page and its assets (plain routes: not operations of the API)."""
    app.add_route(OPENAPI_PATH, openapi_spec, methods=["GET"], include_in_schema=False)
    app.add_route(DOCS_PATH, docs_page, methods=["GET"], include_in_schema=False)
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS), name="docs-assets")
