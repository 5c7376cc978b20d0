"""HTTP-level hardening: HEAD, security headers, 414/431 (in-app and in the parser), local Swagger
UI that follows the auth setting, and JSON rendering of odd stored values."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from tasker import Tasker
from tasker.api.app import create_app
from tasker.api.middleware import CONTENT_SECURITY_POLICY, MAX_HEADER_BYTES, MAX_URL_BYTES
from tasker.api.protocol import MAX_REQUEST_HEAD_BYTES, uvicorn_options
from tasker.settings import Settings
from tasker.store.schema import steps, tasks
from tests.api.conftest import create, error_of
from tests.servers import serving

API = "/api/v1"
AUTH_ON = Settings(auth_enabled=True, jwt_secret="x" * 48)


# -- HEAD ------------------------------------------------------------------------------------------
def test_head_works_wherever_get_does(client: TestClient) -> None:
    task = create(client)
    for path in (
        f"{API}/tasks",
        f"{API}/tasks/{task['id']}",
        f"{API}/handlers",
        "/openapi.json",
        "/docs",
        "/docs/assets/swagger-ui.css",
        f"{API}/health/live",
    ):
        get, head = client.get(path), client.head(path)
        assert get.status_code == head.status_code == 200, (path, head.status_code)
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
        if "content-length" in get.headers:
            assert head.headers["content-length"] == get.headers["content-length"], path
    error_of(client.get(f"{API}/tasks/999999"), 404)
    assert client.head(f"{API}/tasks/999999").status_code == 404


def test_head_where_only_post_is_served_is_405_naming_head(client: TestClient) -> None:
    r = client.head(f"{API}/tasks/1/cancel")
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_head_on_an_event_stream_ends_at_once(tasker: Tasker) -> None:
    with serving(create_app(tasker, Settings())) as url, httpx.Client(timeout=5) as c:
        r = c.head(f"{url}{API}/events")  # no timeout_seconds: the GET would stream forever
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert c.get(f"{url}{API}/tasks").status_code == 200


# -- security headers ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [f"{API}/tasks", f"{API}/nothing", "/docs", "/docs/assets/swagger-ui.css", "/openapi.json"],
)
def test_security_headers_on_every_answer(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["x-frame-options"] == "DENY"
    csp = r.headers["content-security-policy"]
    assert csp == CONTENT_SECURITY_POLICY
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    assert (
        directives["script-src"] == "'self'"
    )  # no 'unsafe-inline', no 'unsafe-eval', no other host


def test_security_headers_on_errors_and_500s(
    app: Any, engine: Tasker, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(task_id: int) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "get_task", broken)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get(f"{API}/tasks/1")
    assert r.status_code == 500 and r.headers["x-frame-options"] == "DENY"


# -- /docs and /openapi.json -----------------------------------------------------------------------
def test_docs_load_only_local_assets(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<script>" not in html and "<style" not in html  # no inline script or style
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handler
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls and all(not urlparse(u).scheme and not u.startswith("//") for u in urls), urls
    assert not re.search(r"https?://", html)
    for u in urls:  # every asset is served, relative to /docs
        asset = client.get("/" + u.lstrip("/"))
        assert asset.status_code == 200 and asset.content, u
    js = client.get("/docs/assets/swagger-ui-bundle.js")
    assert "javascript" in js.headers["content-type"] and len(js.content) > 500_000
    init = client.get("/docs/assets/tasker-docs.js").text
    assert "SwaggerUIBundle(" in init and "openapi.json" in init
    assert client.get("/redoc").status_code == 404


def test_docs_and_spec_follow_the_auth_setting(make_client: Any, engine: Tasker) -> None:
    _, key = engine.keys.create("docs-reader", ["tasker.task:show"])  # any permission will do
    closed = make_client(AUTH_ON)
    for path in ("/docs", "/openapi.json"):
        error_of(closed.get(path), 401, "unauthorized")
        error_of(closed.get(path, headers={"X-API-Key": "tsk_wrong"}), 401)
        assert closed.get(path, headers={"X-API-Key": key}).status_code == 200
    assert closed.get("/docs/assets/swagger-ui.css").status_code == 200  # assets are public
    public = make_client(Settings(auth_enabled=True, jwt_secret="x" * 48, docs_public=True))
    assert public.get("/docs").status_code == 200
    assert public.get("/openapi.json").json()["info"]["title"] == "Tasker API"
    error_of(public.get(f"{API}/tasks"), 401)  # the API itself stays closed
    assert make_client(Settings()).get("/openapi.json").status_code == 200  # auth off: open


# -- 414 and 431 -----------------------------------------------------------------------------------
@pytest.fixture
def served_url(tasker: Tasker) -> Iterator[str]:
    with serving(create_app(tasker, Settings()), **uvicorn_options()) as url:
        yield url


def test_long_urls_are_414_and_large_headers_431_in_the_app(served_url: str) -> None:
    with httpx.Client(timeout=10) as c:
        assert c.get(f"{served_url}{API}/tasks", params={"namespace": "n" * 60}).status_code == 200
        for size in (MAX_URL_BYTES + 1, 60_000):  # httpx itself refuses URLs over 64 KiB
            r = c.get(f"{served_url}{API}/tasks", params={"namespace": "n" * size})
            body = error_of(r, 414, "uri_too_long")
            assert str(MAX_URL_BYTES) in body["message"]
        r = c.get(f"{served_url}{API}/tasks", headers={"X-Big": "h" * (MAX_HEADER_BYTES + 1)})
        error_of(r, 431, "headers_too_large")
        r = c.get(f"{served_url}{API}/tasks", headers={f"X-H{i}": "h" * 1000 for i in range(40)})
        error_of(r, 431, "headers_too_large")


def _raw(url: str, request: bytes) -> bytes:
    """Send raw bytes and read the whole answer (a reset would raise ConnectionResetError here)."""
    host, port = urlparse(url).hostname, urlparse(url).port
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_200_kb_url_gets_414_not_a_reset(served_url: str) -> None:
    answer = _raw(
        served_url,
        b"GET /api/v1/tasks?namespace=" + b"n" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 414 "), answer[:200]
    assert b"uri_too_long" in answer and b"nosniff" in answer


def test_beyond_the_parser_buffer_the_answer_is_still_414_or_431(served_url: str) -> None:
    huge = b"n" * (MAX_REQUEST_HEAD_BYTES + 10_000)
    answer = _raw(
        served_url, b"GET /api/v1/tasks?namespace=" + huge + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 414 "), answer[:200]
    assert b'"code":"uri_too_long"' in answer.replace(b" ", b"") and b"nosniff" in answer
    answer = _raw(
        served_url, b"GET /api/v1/tasks HTTP/1.1\r\nHost: x\r\nX-Big: " + huge + b"\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


# -- rendering what is stored ----------------------------------------------------------------------
def test_odd_stored_strings_and_numbers_never_make_a_500(
    client: TestClient, engine: Tasker, store_url: str
) -> None:
    if not store_url.startswith("sqlite"):
        pytest.skip(
            "PostgreSQL refuses lone surrogates and NaN in JSONB, so none can be stored there"
        )
    task = create(client)
    odd = {
        "text": "bad \ud800 surrogate",
        "\udfff key": 1,
        "nan": float("nan"),
        "inf": float("-inf"),
        "deep": [{"x": "\udc80"}],
    }
    with (
        engine.db.write() as conn
    ):  # as an older worker might have written it, bypassing today's checks
        conn.execute(update(tasks).where(tasks.c.id == task["id"]).values(context=odd))
        conn.execute(update(steps).where(steps.c.task_id == task["id"]).values(results=odd))
    r = client.get(f"{API}/tasks/{task['id']}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["context"]["text"] == "bad \ufffd surrogate"
    # pydantic replaces a key's surrogate byte by byte (three U+FFFD): readable, valid, never a 500
    assert [v for k, v in body["context"].items() if k.strip("\ufffd ") == "key"] == [1]
    assert body["context"]["nan"] is None and body["context"]["inf"] is None
    assert body["context"]["deep"] == [{"x": "\ufffd"}]
    r.content.decode("utf-8")  # strict UTF-8 throughout
    listed = client.get(f"{API}/tasks")
    assert listed.status_code == 200
    step_page = client.get(f"{API}/tasks/{task['id']}/steps")
    assert step_page.status_code == 200, step_page.text
    assert step_page.json()["steps"][0]["results"]["text"] == "bad \ufffd surrogate"
