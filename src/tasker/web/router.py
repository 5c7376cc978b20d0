"""`install_dashboard`: mount the pages at "/" and their assets at /static/dashboard on the API app.

Assets are served from the package with a year-long cache: their URLs carry a digest of their
content (`rendering.asset`), so a new release is fetched at once and an unchanged one never again.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from tasker.settings import Settings
from tasker.web.pages import (
    analytics,
    events,
    login,
    overview,
    schedules,
    systems,
    task,
    tasks,
    templates,
)
from tasker.web.rendering import STATIC, STATIC_URL
from tasker.web.session import SessionCodec, session_secret

CACHE_FOREVER = b"public, max-age=31536000, immutable"


class CachedStatic(StaticFiles):
    """Static files with a long `Cache-Control`: their URLs change when their content does."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def cached(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    h for h in message.get("headers", []) if h[0].lower() != b"cache-control"
                ]
                headers.append((b"cache-control", CACHE_FOREVER))
                message = {**message, "headers": headers}
            await send(message)

        await super().__call__(scope, receive, cached)


def install_dashboard(app: FastAPI, settings: Settings) -> None:
    app.state.web_sessions = SessionCodec(session_secret(settings.session_secret))
    for module in (
        login,
        overview,
        tasks,
        task,
        templates,
        schedules,
        systems,
        analytics,
        events,
    ):
        app.router.routes.extend(module.pages.routes)
    app.mount(STATIC_URL, CachedStatic(directory=STATIC), name="dashboard-assets")
