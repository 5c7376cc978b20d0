"""Jinja2 rendering of the dashboard's pages: the environment, filters, asset URLs, the response.

Why server-rendered HTML: every view is a URL that can be bookmarked, pages work without any
JavaScript build, and the few live parts (the DAG, the event lists) are a small script over the
existing JSON API and SSE stream. Autoescaping is on for every template.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from tasker.web.timeline import duration

HERE = Path(__file__).parent
STATIC = HERE / "static" / "dashboard"
STATIC_URL = "/static/dashboard"


@cache
def asset_version(name: str) -> str:
    """A short digest of an asset's bytes, appended to its URL so it can be cached for a year."""
    try:
        return hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:12]
    except OSError:
        return "0"


def asset(name: str) -> str:
    return f"{STATIC_URL}/{name}?v={asset_version(name)}"


def when(value: datetime | None) -> str:
    """UTC, to the second: operators compare these with logs."""
    if value is None:
        return "\u2013"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def iso(value: datetime | None) -> str:
    if value is None:
        return ""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def percent(value: float | None) -> str:
    return "\u2013" if value is None else f"{value * 100:.1f}%"


def number(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "\u2013"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.{digits}f}"


def query(base: str, **params: Any) -> str:
    """`base?params`, leaving out empty values; lists repeat the parameter."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        values = value if isinstance(value, list | tuple) else [value]
        pairs.extend((key, str(v)) for v in values if v not in (None, ""))
    return f"{base}?{urlencode(pairs)}" if pairs else base


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=when, iso=iso, pretty=pretty, percent=percent, number=number, duration=duration
    )
    env.globals.update(asset=asset, query=query)
    return env


ENV = _environment()


def render_html(name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    body = ENV.get_template(name).render(**context)
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


def current_path(request: Request) -> str:
    q = request.url.query
    return request.url.path + (f"?{q}" if q else "")
