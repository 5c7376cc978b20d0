"""Malformed and hostile requests: never a 500, never a traceback, always the one error body."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient

from tasker import Tasker
from tasker.api.limits import BodySizeLimit
from tasker.settings import Settings
from tests.api.conftest import create, error_of

API = "/api/v1"
ORDER = '{"template": "apitest/order", "context": {"email": "a@example.com", "note": %s}}'


def post_raw(
    client: TestClient, body: bytes | str, content_type: str | None = "application/json"
) -> Any:
    headers = {"Content-Type": content_type} if content_type else {}
    return client.post(f"{API}/tasks", content=body, headers=headers)


def test_unknown_routes_and_wrong_methods(client: TestClient) -> None:
    assert "/docs" in error_of(client.get(f"{API}/nothing/here"), 404, "not_found")["message"]
    error_of(
        client.get("/nothing/here"), 404, "not_found"
    )  # outside the prefix (/tasks is the dashboard)
    r = client.delete(f"{API}/tasks")
    error_of(r, 405, "method_not_allowed")
    assert (
        r.headers["allow"] == "GET, HEAD, POST"
    )  # every route at the path, not only the first one's
    error_of(client.put(f"{API}/tasks/1"), 405)
    error_of(client.get(f"{API}/tasks/1/cancel"), 405)


def test_bodies_that_are_not_json_objects(client: TestClient) -> None:
    for body in (
        "{",
        '{"template": "apitest/order",}',
        "",
        "null",
        "[]",
        '"text"',
        "{'single': 'quotes'}",
    ):
        error = error_of(post_raw(client, body), 422, "validation_error")
        assert error["details"][0]["path"] == "$", (body, error)
    assert "not valid JSON" in error_of(post_raw(client, "{"), 422)["message"]
    error = error_of(
        post_raw(client, '{"template": "apitest/order"}', "application/x-www-form-urlencoded"), 422
    )
    assert "Content-Type: application/json" in error["message"]
    error_of(post_raw(client, '{"template": "apitest/order"}', None), 422)
    error = error_of(
        post_raw(client, b'{"template": "apitest/order", "context": {"a": "\xff\xfe"}}'),
        400,
        "bad_request",
    )
    assert "UTF-8" in error["message"]


def test_numbers_that_are_not_json(client: TestClient) -> None:
    for literal in ("NaN", "Infinity", "-Infinity", "1e400"):
        error = error_of(post_raw(client, ORDER % literal), 422, "validation_error")
        assert "$.context.note" in error["message"] and "finite" in error["message"], literal
    edges = {
        "email": "a@example.com",
        "amount": 1e308,
        "note": "x",
        "max": 2**63 - 1,
        "min": -(2**63),
    }
    big = create(client, context=edges)
    assert {k: big["context"][k] for k in edges} == edges


@pytest.mark.parametrize(
    "literal",
    [
        "9223372036854775808",
        "-9223372036854775809",
        str(10**30),
        "1" * 4000,
        "1" * 5000,
        "-" + "7" * 5000,
    ],
)
def test_integers_outside_64_bits_are_422_with_their_path(client: TestClient, literal: str) -> None:
    error = error_of(post_raw(client, ORDER % literal), 422, "validation_error")
    assert error["details"][0]["path"] == "$.context.note", error
    assert (
        "outside the 64-bit range" in error["message"]
        and "fix: send it as a string" in error["message"]
    )
    assert len(error["message"]) < 300  # the number is not echoed whole


def test_overlong_and_overflowing_numbers_are_422(client: TestClient) -> None:
    error = error_of(
        post_raw(client, '{"template": "apitest/order", "context": {"a": [1, {"b": 1e999}]}}'), 422
    )
    assert error["details"][0]["path"] == "$.context.a[1].b" and "finite" in error["message"]
    error = error_of(post_raw(client, ORDER % ("0." + "3" * 5000)), 422)
    assert "longer than 40 characters" in error["message"]
    # every body is bounded, not only task creation
    error = error_of(
        client.post(
            f"{API}/tasks/1/cancel",
            content='{"reason": ' + "1" * 5000 + "}",
            headers={"Content-Type": "application/json"},
        ),
        422,
    )
    assert error["details"][0]["path"] == "$.reason"


def test_text_a_store_cannot_keep_is_refused_with_its_path(client: TestClient) -> None:
    for literal, where in (
        ('"nul\\u0000byte"', "$.context.note"),
        ('"\\ud800"', "$.context.note"),
        ('{"k\\u0000": 1}', "a key of $.context.note"),
    ):
        error = error_of(post_raw(client, ORDER % literal), 422, "validation_error")
        assert where in error["message"], (literal, error)
    error_of(client.post(f"{API}/tasks", json={"template": "apitest/order\x00"}), 422)
    error_of(
        client.post(f"{API}/tasks", json={"template": "apitest/order", "idempotency_key": "k\x00"}),
        422,
    )


def test_nesting(client: TestClient) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    error = error_of(post_raw(client, ORDER % deep), 422, "validation_error")
    assert "nests deeper than 64 levels" in error["message"]
    assert error["details"][0]["path"].startswith("$.context.note[0][0]")
    objects = '{"a": ' * 70 + "1" + "}" * 70
    error = error_of(post_raw(client, ORDER % objects), 422, "validation_error")
    assert error["details"][0]["path"].startswith("$.context.note.a.a.a")
    error = error_of(post_raw(client, ORDER % ("[" * 40 + "]" * 40)), 422, "validation_error")
    assert "nests deeper than 32 levels" in error["message"]
    ok = create(
        client, context={"email": "a@example.com", "deep": {"a": {"b": {"c": [[[{"d": 1}]]]}}}}
    )
    assert ok["context"]["deep"]["a"]["b"]["c"] == [[[{"d": 1}]]]


def test_injection_strings_are_plain_data(client: TestClient) -> None:
    hostile = [
        "' OR 1=1 --",
        "'; DROP TABLE tasker_tasks; --",
        "<script>alert(1)</script>",
        "../../etc/passwd",
        "${jndi:ldap://x}",
        "{{7*7}}",
        "%s%s%n",
        "\u202e\u0000"[:1],
        "é漢字🙂",
    ]
    for i, text in enumerate(hostile):
        task = create(
            client, context={"email": f"u{i}@example.com", "note": text}, correlation_id=f"c-{i}"
        )
        assert client.get(f"{API}/tasks/{task['id']}").json()["context"]["note"] == text
    assert client.get(f"{API}/tasks").json()["total"] == len(hostile)
    error = error_of(
        client.post(f"{API}/tasks", json={"template": "<script>alert(1)</script>"}), 422
    )
    assert "$.template" in error["message"]
    error_of(client.post(f"{API}/tasks", json={"template": "../../etc/passwd"}), 422)
    error_of(client.post(f"{API}/tasks", json={"template": "x/' OR 1=1 --"}), 422)


def test_long_strings(client: TestClient) -> None:
    task = create(client, context={"email": "a@example.com", "note": "x" * 500_000})
    assert len(task["context"]["note"]) == 500_000
    echoed = client.post(
        f"{API}/tasks", json={"template": "apitest/order", "context": {"email": "e" * 500_000}}
    )
    error = error_of(echoed, 422, "invalid_context")
    # the 500,000-character value is not echoed back: the message shows its start only
    assert len(echoed.content) < 10_000 and "... is not a valid email" in error["message"]
    error_of(client.get(f"{API}/tasks", params={"namespace": "n" * 5000}), 422)
    error_of(client.get(f"{API}/handlers/{'n' * 5000}"), 422)
    error_of(client.get(f"{API}/tasks", params={"namespace": "n" * 20_000}), 414, "uri_too_long")


def small_limit(make_client: Any) -> TestClient:
    client: TestClient = make_client(Settings(max_body_bytes=2048))
    return client


def test_bodies_over_the_limit_are_413(make_client: Any) -> None:
    client = small_limit(make_client)
    note = '"' + "x" * 3000 + '"'
    error = error_of(post_raw(client, ORDER % note), 413, "payload_too_large")
    assert "2048 bytes" in error["message"]
    fits = post_raw(client, ORDER % '"short"')
    assert fits.status_code == 201, fits.text


def test_a_chunked_body_without_length_is_counted_as_it_streams(make_client: Any) -> None:
    client = small_limit(make_client)

    def chunks() -> Iterator[bytes]:
        yield b'{"template": "apitest/order", "context": {"email": "a@example.com", "note": "'
        for _ in range(100):
            yield b"x" * 512
        yield b'"}}'

    response = client.post(
        f"{API}/tasks", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    error_of(response, 413, "payload_too_large")

    def small() -> Iterator[bytes]:
        yield b'{"template": "apitest/order", '
        yield b'"context": {"email": "a@example.com"}}'

    ok = client.post(f"{API}/tasks", content=small(), headers={"Content-Type": "application/json"})
    assert ok.status_code == 201, ok.text


def test_the_default_limit_is_one_mebibyte(client: TestClient) -> None:
    error_of(post_raw(client, ORDER % ('"' + "x" * 1_100_000 + '"')), 413, "payload_too_large")


def test_a_bad_content_length_is_400() -> None:
    sent: list[MutableMapping[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never reached
        raise AssertionError("the limit must answer first")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    for length in (b"abc", b"-5"):
        sent.clear()
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/x",
            "headers": [(b"content-length", length)],
        }
        asyncio.run(BodySizeLimit(app, 1024)(scope, receive, send))
        assert sent[0]["status"] == 400 and b"Content-Length" in sent[1]["body"]


def test_an_unexpected_error_is_a_logged_500_without_internals(
    client: TestClient,
    engine: Tasker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(task_id: int) -> None:
        raise RuntimeError("cannot open /srv/secret/config.yaml")

    monkeypatch.setattr(engine, "get_task", broken)
    with caplog.at_level(logging.ERROR, logger="tasker.api"):
        response = client.get(f"{API}/tasks/1")
    error = error_of(response, 500, "internal_error")
    assert "secret" not in response.text and "RuntimeError" not in response.text
    assert "the error is logged" in error["message"]
    assert any("cannot open /srv/secret" in (r.exc_text or "") for r in caplog.records)


def test_http_errors_from_other_routes_keep_the_body_shape(app: FastAPI) -> None:
    @app.get("/api/v1/test-only/raise")
    def raising(kind: str) -> None:
        if kind == "nested":
            raise HTTPException(
                401,
                detail={"error": {"status": 401, "code": "unauthorized", "message": "no key"}},
                headers={"WWW-Authenticate": "Bearer"},
            )
        if kind == "flat":
            raise HTTPException(
                403, detail={"code": "forbidden", "message": "lacks tasker.task:show"}
            )
        raise HTTPException(503, detail="database unreachable")

    with TestClient(app) as c:
        r = c.get("/api/v1/test-only/raise", params={"kind": "nested"})
        assert error_of(r, 401, "unauthorized")["message"] == "no key"
        assert r.headers["www-authenticate"] == "Bearer"
        assert (
            error_of(c.get("/api/v1/test-only/raise", params={"kind": "flat"}), 403, "forbidden")[
                "message"
            ]
            == "lacks tasker.task:show"
        )
        assert (
            error_of(c.get("/api/v1/test-only/raise", params={"kind": "x"}), 503, "unavailable")[
                "message"
            ]
            == "database unreachable"
        )
        error_of(c.get("/api/v1/test-only/raise"), 422, "validation_error")
