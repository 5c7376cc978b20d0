"""ApiStepHandler and AsyncApiStepHandler without the engine: classification, headers, hooks,
clients.

Responses come from `httpx.MockTransport`; the connection-refused and read-timeout cases use real
loopback sockets. Every behaviour is checked on both flavours (sync and async) through one `call`
helper.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import json
import logging
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tasker import (
    ApiRequest,
    ApiStepHandler,
    AsyncApiStepHandler,
    PermanentError,
    RetryableError,
    StepContext,
)
from tasker.handlers import api
from tasker.observability import metrics, tracing

BASE = "http://users.test/api"
SENT = {"email": "ada@example.com", "plan": "pro", "profile": {"country": "FR", "tags": ["a", "b"]}}
EVENTS = frozenset({api.STARTED, api.COMPLETED, api.FAILED})


class CreateUser:
    """build_request shared by the sync and async test handlers."""

    def build_request(self, ctx: StepContext) -> ApiRequest:
        return ApiRequest(
            "post",
            "/users",
            json=ctx.context.get("body", SENT),
            params=ctx.context.get("params"),
            headers={"X-Team": "growth"},
        )


class SyncUsers(CreateUser, ApiStepHandler):
    pass


class AsyncUsers(CreateUser, AsyncApiStepHandler):
    pass


Respond = Callable[[httpx.Request], httpx.Response]


def make_ctx(
    handler_config: dict[str, Any] | None = None,
    *,
    context: dict[str, Any] | None = None,
    events: frozenset[str] = frozenset(),
) -> StepContext:
    return StepContext(
        task_id=7,
        step_id=70,
        step_name="create_user_account",
        namespace="blog_examples",
        task_name="user_registration",
        version="1.0.0",
        context=context or {},
        results={},
        handler_config=(
            {"url": BASE, "timeout_seconds": 5} if handler_config is None else handler_config
        ),
        attempt=2,
        retry_limit=3,
        idempotency_key="idem-123",
        correlation_id="corr-abc",
        dependent_system="user_service",
        declared_events=events,
    )


def call(
    base: type[ApiStepHandler], ctx: StepContext, respond: Respond | None = None, **attrs: Any
) -> dict[str, Any]:
    """Run one attempt of a handler derived from `base`, answered by `respond` (None: real
    sockets)."""
    if respond is not None:
        attrs["transport"] = httpx.MockTransport(respond)
    handler = type("Handler", (base,), attrs)()
    out = handler.process(ctx)
    if inspect.iscoroutine(out):
        out = asyncio.run(out)
    assert isinstance(out, dict)
    return out


def answer(
    status: int,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    text: str | None = None,
    seen: list[httpx.Request] | None = None,
) -> Respond:
    def respond(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        if text is not None:
            return httpx.Response(status, text=text, headers=headers)
        if body is None:
            return httpx.Response(status, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return respond


@pytest.fixture(params=[SyncUsers, AsyncUsers], ids=["sync", "async"])
def flavour(request: pytest.FixtureRequest) -> type[ApiStepHandler]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def observed(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(metrics, "observe_api_call", lambda **kw: seen.append(kw))
    return seen


# -- success ---------------------------------------------------------------------------------------
def test_success_returns_body_status_time_correlation_and_url(
    flavour: type[ApiStepHandler],
) -> None:
    out = call(flavour, make_ctx(), answer(201, {"id": 42, "email": "ada@example.com"}))
    assert out["response"] == {"id": 42, "email": "ada@example.com"}
    assert out["status_code"] == 201
    assert out["correlation_id"] == "corr-abc"
    assert out["url"] == f"{BASE}/users"
    assert isinstance(out["response_time_ms"], float) and out["response_time_ms"] >= 0
    json.dumps(out)  # results must be storable


def test_text_and_empty_bodies(flavour: type[ApiStepHandler]) -> None:
    assert call(flavour, make_ctx(), answer(200, text="accepted"))["response"] == "accepted"
    assert call(flavour, make_ctx(), answer(204))["response"] is None


def test_every_request_carries_the_step_identity_headers(
    flavour: type[ApiStepHandler], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracing, "inject_headers", lambda h: h.update(traceparent="00-abc-def-01"))
    seen: list[httpx.Request] = []
    call(flavour, make_ctx(), answer(200, {}, seen=seen))
    (req,) = seen
    assert req.method == "POST"  # upper-cased
    assert req.headers["Idempotency-Key"] == "idem-123"
    assert req.headers["X-Correlation-ID"] == "corr-abc"
    assert req.headers["traceparent"] == "00-abc-def-01"
    assert req.headers["User-Agent"].startswith("tasker/")
    assert req.headers["X-Team"] == "growth"  # the handler's own headers are kept
    assert json.loads(req.content) == SENT


def test_the_step_key_wins_over_a_header_of_the_same_name(flavour: type[ApiStepHandler]) -> None:
    class Overriding(flavour):  # type: ignore[misc, valid-type]
        def build_request(self, ctx: StepContext) -> ApiRequest:
            return ApiRequest("GET", "/x", headers={"Idempotency-Key": "mine"})

    seen: list[httpx.Request] = []
    call(Overriding, make_ctx(), answer(200, {}, seen=seen))
    assert seen[0].headers["Idempotency-Key"] == "idem-123"


@pytest.mark.parametrize(
    ("base", "path", "params", "expected"),
    [
        ("http://svc.test/api", "/users", None, "http://svc.test/api/users"),
        (
            "http://svc.test/api/",
            "users/1",
            {"full": "yes"},
            "http://svc.test/api/users/1?full=yes",
        ),
        (
            "http://svc.test:8080",
            "/users?active=1",
            {"page": 2},
            "http://svc.test:8080/users?active=1&page=2",
        ),
        ("https://svc.test/api/users", "", None, "https://svc.test/api/users"),
    ],
)
def test_path_is_appended_to_the_configured_url(
    flavour: type[ApiStepHandler],
    base: str,
    path: str,
    params: dict[str, Any] | None,
    expected: str,
) -> None:
    class Get(flavour):  # type: ignore[misc, valid-type]
        def build_request(self, ctx: StepContext) -> ApiRequest:
            return ApiRequest("GET", path, params=params)

    seen: list[httpx.Request] = []
    out = call(Get, make_ctx({"url": base}), answer(200, {}, seen=seen))
    assert str(seen[0].url) == expected == out["url"]
    assert seen[0].content == b""  # no body unless json is given


# -- permanent failures ----------------------------------------------------------------------------
@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 410, 418])
def test_client_errors_are_permanent_with_the_service_message(
    flavour: type[ApiStepHandler], status: int
) -> None:
    body = {"error": {"code": "nope", "message": f"user service says {status}"}}
    with pytest.raises(PermanentError) as info:
        call(flavour, make_ctx(), answer(status, body))
    err = info.value
    assert err.error_code == f"HTTP_{status}"
    assert err.context["status"] == status
    assert err.context["url"] == f"{BASE}/users" and err.context["method"] == "POST"
    assert err.context["response"] == body
    assert f"POST {BASE}/users answered {status}" in err.message
    assert err.message.endswith(f"user service says {status}")


@pytest.mark.parametrize(
    ("respond", "expected"),
    [
        (answer(400, {"message": "email is taken"}), "email is taken"),
        (answer(404, {"detail": "user 9 not found"}), "user 9 not found"),
        (answer(400, {"error": "bad plan"}), "bad plan"),
        (
            answer(
                422,
                {
                    "detail": [
                        {"loc": ["body", "user", "email"], "msg": "not an email"},
                        {"loc": ["query", "page"], "msg": "must be > 0"},
                    ]
                },
            ),
            "user.email: not an email; query.page: must be > 0",
        ),
        (answer(403, text="forbidden\n  for this key"), "forbidden for this key"),
        (answer(401), "Unauthorized"),
        (answer(400, {"unrelated": 1}), '{"unrelated":1}'),
    ],
)
def test_the_service_message_is_found_in_common_shapes(respond: Respond, expected: str) -> None:
    with pytest.raises(PermanentError) as info:
        call(SyncUsers, make_ctx(), respond)
    assert info.value.message.endswith(": " + expected)


def test_a_long_service_message_is_cut_to_one_short_line() -> None:
    with pytest.raises(PermanentError) as info:
        call(SyncUsers, make_ctx(), answer(400, text="<html>" + "x" * 5000 + "\n</html>"))
    message = info.value.message
    assert "\n" not in message and message.endswith("…")
    assert len(message) < api.MESSAGE_LIMIT + 100
    assert len(info.value.context["response"]) <= api.MESSAGE_LIMIT


def test_a_redirect_is_permanent_and_names_the_new_address(flavour: type[ApiStepHandler]) -> None:
    with pytest.raises(PermanentError) as info:
        call(flavour, make_ctx(), answer(301, headers={"Location": "http://users.test/v2/users"}))
    assert info.value.error_code == "HTTP_301"
    assert (
        "point handler_config.url at the final address: http://users.test/v2/users"
        in info.value.message
    )


# -- retryable failures ----------------------------------------------------------------------------
@pytest.mark.parametrize("status", [408, 500, 502, 504, 507])
def test_server_errors_are_retryable_with_engine_backoff(
    flavour: type[ApiStepHandler], status: int
) -> None:
    with pytest.raises(RetryableError) as info:
        call(flavour, make_ctx(), answer(status, {"message": "db is down"}))
    assert info.value.retry_after is None
    assert info.value.error_code == f"HTTP_{status}"
    assert info.value.message.endswith("db is down")
    assert not isinstance(info.value, PermanentError)


@pytest.mark.parametrize(
    ("status", "outage"),
    [(408, True), (429, True), (500, False), (502, True), (503, True), (504, True), (507, False)],
)
def test_only_outage_statuses_count_against_the_services_circuit(
    flavour: type[ApiStepHandler], status: int, outage: bool
) -> None:
    with pytest.raises(RetryableError) as info:
        call(flavour, make_ctx(), answer(status, {"message": "x"}))
    assert info.value.system_fault is outage


def _http_date(delta: timedelta) -> str:
    return email.utils.format_datetime(datetime.now(UTC) + delta, usegmt=True)


IN_2_MINUTES, IN_2_DAYS, A_MINUTE_AGO = (
    timedelta(seconds=120),
    timedelta(days=2),
    timedelta(seconds=-60),
)


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize(
    ("header", "low", "high"),
    [
        ("2", 2, 2),
        ("0", 0, 0),
        ("1.5", 1.5, 1.5),
        ("100000", 300, 300),  # capped
        (IN_2_MINUTES, 110, 120),  # an HTTP-date, written when the test runs
        (IN_2_DAYS, 300, 300),  # capped
        (A_MINUTE_AGO, 0, 0),  # in the past: now
    ],
)
def test_throttling_honours_retry_after(
    flavour: type[ApiStepHandler], status: int, header: str | timedelta, low: float, high: float
) -> None:
    if isinstance(header, timedelta):
        header = _http_date(header)
    with pytest.raises(RetryableError) as info:
        call(
            flavour,
            make_ctx(),
            answer(status, {"message": "slow down"}, headers={"Retry-After": header}),
        )
    assert info.value.retry_after is not None
    assert low <= info.value.retry_after <= high
    assert info.value.context["retry_after"] == info.value.retry_after
    assert info.value.error_code == f"HTTP_{status}"


@pytest.mark.parametrize("header", [None, "", "soon", "nan"])
def test_throttling_without_a_usable_retry_after_leaves_the_delay_to_the_engine(
    header: str | None,
) -> None:
    headers = {} if header is None else {"Retry-After": header}
    with pytest.raises(RetryableError) as info:
        call(SyncUsers, make_ctx(), answer(429, headers=headers))
    assert info.value.retry_after is None


def test_parse_retry_after_forms() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert api.parse_retry_after("Wed, 01 Jan 2025 12:00:30 GMT", now) == 30
    assert api.parse_retry_after("Wednesday, 01-Jan-25 12:01:00 GMT", now) == 60  # RFC 850
    assert api.parse_retry_after("Wed Jan  1 12:00:10 2025", now) == 10  # asctime
    assert api.parse_retry_after(" 7 ", now) == 7
    assert api.parse_retry_after("-3", now) == 0
    assert api.parse_retry_after("inf", now) == api.MAX_RETRY_AFTER_SECONDS
    assert api.parse_retry_after("Wed, 99 Foo 2025", now) is None


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectTimeout, "timeout"),
        (httpx.ReadTimeout, "timeout"),
        (httpx.WriteTimeout, "timeout"),
        (httpx.PoolTimeout, "timeout"),
        (httpx.ConnectError, "connect_error"),
        (httpx.RemoteProtocolError, "protocol_error"),
        (httpx.ReadError, "network_error"),
    ],
)
def test_transport_failures_are_retryable(
    flavour: type[ApiStepHandler],
    exc: type[httpx.TransportError],
    kind: str,
    observed: list[dict[str, Any]],
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc("boom", request=request)

    with pytest.raises(RetryableError) as info:
        call(flavour, make_ctx(), fail)
    assert info.value.error_code == kind.upper()
    assert info.value.context == {"error_kind": kind, "method": "POST", "url": f"{BASE}/users"}
    assert info.value.message.startswith(f"POST {BASE}/users failed: {kind.replace('_', ' ')}")
    assert info.value.retry_after is None
    assert [o["status"] for o in observed] == [kind]


def test_a_local_protocol_error_is_our_bug_and_permanent(flavour: type[ApiStepHandler]) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.LocalProtocolError("bad header")

    with pytest.raises(PermanentError) as info:
        call(flavour, make_ctx(), fail)
    assert info.value.error_code == "INVALID_REQUEST"


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_refused_on_a_closed_port_is_retryable(
    flavour: type[ApiStepHandler], closed_port: int
) -> None:
    with pytest.raises(RetryableError) as info:
        call(flavour, make_ctx({"url": f"http://127.0.0.1:{closed_port}", "timeout_seconds": 5}))
    assert info.value.error_code == "CONNECT_ERROR"
    assert f"127.0.0.1:{closed_port}/users failed: connect error" in info.value.message


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (in the kernel backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


def test_a_service_that_never_answers_is_a_retryable_read_timeout(
    flavour: type[ApiStepHandler], silent_port: int
) -> None:
    with pytest.raises(RetryableError) as info:
        call(flavour, make_ctx({"url": f"http://127.0.0.1:{silent_port}", "timeout_seconds": 0.3}))
    assert info.value.error_code == "TIMEOUT"
    assert "failed: timeout" in info.value.message


@pytest.mark.parametrize(
    ("step_timeout", "low", "high"),
    [
        (10, 8.5, 9.0),  # 10% left to the engine
        (1, 0.6, 0.75),  # at least a quarter second
        (0.2, 0.05, 0.1),  # half of a very short timeout
        (None, 29.5, api.DEFAULT_TIMEOUT_SECONDS),  # no step timeout: the default
    ],
)
def test_the_http_timeout_fires_before_the_step_timeout(
    flavour: type[ApiStepHandler], step_timeout: float | None, low: float, high: float
) -> None:
    seen: list[httpx.Request] = []
    config: dict[str, Any] = (
        {"url": BASE} if step_timeout is None else {"url": BASE, "timeout_seconds": step_timeout}
    )
    call(flavour, make_ctx(config), answer(200, {}, seen=seen))
    timeouts = seen[0].extensions["timeout"]
    assert set(timeouts) == {"connect", "read", "write", "pool"}
    assert all(low <= t <= high for t in timeouts.values())


# -- 409: idempotent creation ----------------------------------------------------------------------
def conflict(existing: Any) -> Respond:
    return answer(
        409, {"error": {"code": "conflict", "message": "user exists"}, "existing": existing}
    )


def test_conflict_with_an_identical_resource_is_success(flavour: type[ApiStepHandler]) -> None:
    existing = {
        **SENT,
        "id": 42,
        "created_at": "2025-01-01T00:00:00Z",
        "profile": {"country": "FR", "tags": ["a", "b"], "extra": True},
    }
    out = call(flavour, make_ctx(events=EVENTS), conflict(existing))
    assert out["conflict_resolved"] is True
    assert out["response"] == existing
    assert out["status_code"] == 409
    assert out["correlation_id"] == "corr-abc" and out["url"] == f"{BASE}/users"


def test_conflict_results_go_through_the_subclass_process_response(
    flavour: type[ApiStepHandler],
) -> None:
    class KeepId(flavour):  # type: ignore[misc, valid-type]
        def process_response(self, ctx: StepContext, response: httpx.Response) -> dict[str, Any]:
            return {**super().process_response(ctx, response), "user_id": response.json()["id"]}

    assert call(KeepId, make_ctx(), answer(201, {**SENT, "id": 5}))["user_id"] == 5
    out = call(KeepId, make_ctx(), conflict({**SENT, "id": 42}))
    assert (out["user_id"], out["conflict_resolved"]) == (42, True)


@pytest.mark.parametrize(
    ("existing", "fields"),
    [
        ({**SENT, "plan": "free"}, ["plan"]),
        (
            {**SENT, "profile": {"country": "DE", "tags": ["a"]}},
            ["profile.country", "profile.tags"],
        ),
        (
            {"email": "ada@example.com", "plan": "pro"},
            ["profile"],
        ),  # missing in the existing resource
        ({**SENT, "profile": {"country": "FR", "tags": ["a", "c"]}}, ["profile.tags[1]"]),
        ([SENT], ["(body)"]),
    ],
)
def test_conflict_with_a_different_resource_is_permanent_and_names_the_fields(
    flavour: type[ApiStepHandler], existing: Any, fields: list[str]
) -> None:
    with pytest.raises(PermanentError) as info:
        call(flavour, make_ctx(events=EVENTS), conflict(existing))
    err = info.value
    assert err.error_code == "HTTP_409"
    assert err.context["differing_fields"] == fields
    assert f"an existing resource differs in: {', '.join(fields)}" in err.message
    assert "user exists" in err.message


def test_booleans_are_not_numbers_when_comparing() -> None:
    assert api.differing_fields({"a": True, "b": 1}, {"a": 1, "b": 1.0}) == ["a"]
    assert api.differing_fields({"a": {"b": None}}, {"a": {"b": None, "c": 2}}) == []


def test_conflict_without_the_existing_resource_is_permanent(flavour: type[ApiStepHandler]) -> None:
    with pytest.raises(PermanentError) as info:
        call(
            flavour,
            make_ctx(),
            answer(409, {"error": {"code": "conflict", "message": "already there"}}),
        )
    assert (
        "no 'existing' resource" in info.value.message
        and "override on_conflict" in info.value.message
    )


def test_conflict_ignore_fields_skips_fields_the_service_does_not_echo() -> None:
    ctx = make_ctx(context={"body": {**SENT, "password": "s3cret"}})
    with pytest.raises(PermanentError):
        call(SyncUsers, ctx, conflict({**SENT, "id": 1}))
    out = call(
        SyncUsers, ctx, conflict({**SENT, "id": 1}), conflict_ignore_fields=frozenset({"password"})
    )
    assert out["conflict_resolved"] is True


# -- configuration mistakes ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({}, "handler_config.url is missing"),
        ({"url": "  "}, "handler_config.url is missing"),
        ({"url": 8080}, "handler_config.url 8080 is not an http(s) URL"),
        ({"url": "ftp://files.test"}, "is not an http(s) URL"),
        ({"url": "users.test/api"}, "is not an http(s) URL"),
        ({"url": "http://"}, "is not an http(s) URL"),
        (
            {"url": BASE, "timeout_seconds": "5"},
            "handler_config.timeout_seconds '5' must be a number",
        ),
        ({"url": BASE, "timeout_seconds": 0}, "handler_config.timeout_seconds 0 must be a number"),
    ],
)
def test_bad_handler_config_is_permanent_and_names_step_and_key(
    flavour: type[ApiStepHandler], config: dict[str, Any], words: str
) -> None:
    seen: list[httpx.Request] = []
    with pytest.raises(PermanentError) as info:
        call(flavour, make_ctx(config), answer(200, {}, seen=seen))
    assert info.value.message.startswith("step 'create_user_account': ")
    assert words in info.value.message
    assert info.value.error_code == "INVALID_CONFIG"
    assert seen == []


def test_an_absolute_path_is_refused(flavour: type[ApiStepHandler]) -> None:
    class Elsewhere(flavour):  # type: ignore[misc, valid-type]
        def build_request(self, ctx: StepContext) -> ApiRequest:
            return ApiRequest("GET", "http://evil.test/steal")

    with pytest.raises(PermanentError) as info:
        call(Elsewhere, make_ctx(), answer(200, {}))
    assert "must be relative to handler_config.url" in info.value.message


def test_build_request_must_return_an_api_request(flavour: type[ApiStepHandler]) -> None:
    class Wrong(flavour):  # type: ignore[misc, valid-type]
        def build_request(self, ctx: StepContext) -> ApiRequest:
            return {"method": "GET"}  # type: ignore[return-value]

    with pytest.raises(PermanentError, match="must return an ApiRequest"):
        call(Wrong, make_ctx(), answer(200, {}))


def test_a_handler_without_build_request_says_so() -> None:
    with pytest.raises(NotImplementedError, match="must implement build_request"):
        call(ApiStepHandler, make_ctx(), answer(200, {}))


def test_a_sync_only_transport_is_refused_for_the_async_handler() -> None:
    with pytest.raises(TypeError, match="AsyncHTTPTransport"):
        call(AsyncUsers, make_ctx(), transport=httpx.HTTPTransport())


# -- events, metrics, logs -------------------------------------------------------------------------
def test_declared_service_events_are_published(flavour: type[ApiStepHandler]) -> None:
    ctx = make_ctx(events=EVENTS)
    out = call(flavour, ctx, answer(200, {"id": 1}))
    names = [name for name, _ in ctx.published]
    assert names == [api.STARTED, api.COMPLETED]
    started, completed = (p for _, p in ctx.published)
    assert (
        started["method"] == "POST"
        and started["url"] == f"{BASE}/users"
        and started["attempt"] == 2
    )
    assert completed["status"] == "200" and completed["status_code"] == 200
    assert completed["response_time_ms"] == out["response_time_ms"] >= 0  # one figure everywhere
    assert completed["conflict_resolved"] is False


@pytest.mark.parametrize(
    ("respond", "status", "retryable"),
    [
        (answer(404, {"message": "gone"}), "404", False),
        (answer(503, {"message": "busy"}), "503", True),
        (conflict({"email": "someone@else.test"}), "409", False),
    ],
)
def test_a_failed_call_publishes_service_call_failed(
    flavour: type[ApiStepHandler], respond: Respond, status: str, retryable: bool
) -> None:
    ctx = make_ctx(events=EVENTS)
    with pytest.raises((PermanentError, RetryableError)):
        call(flavour, ctx, respond)
    assert [name for name, _ in ctx.published] == [api.STARTED, api.FAILED]
    failed = ctx.published[1][1]
    assert (failed["status"], failed["retryable"]) == (status, retryable)
    assert failed["message"].startswith(f"POST {BASE}/users answered {status}")


def test_a_transport_failure_publishes_its_kind(
    flavour: type[ApiStepHandler], closed_port: int
) -> None:
    ctx = make_ctx({"url": f"http://127.0.0.1:{closed_port}"}, events=EVENTS)
    with pytest.raises(RetryableError):
        call(flavour, ctx)
    assert ctx.published[1][0] == api.FAILED
    assert (
        ctx.published[1][1]["status"] == "connect_error"
        and ctx.published[1][1]["status_code"] is None
    )


def test_undeclared_service_events_are_not_published_and_do_not_fail(
    flavour: type[ApiStepHandler],
) -> None:
    ctx = make_ctx(events=frozenset({api.COMPLETED}))
    call(flavour, ctx, answer(200, {}))
    assert [name for name, _ in ctx.published] == [api.COMPLETED]
    bare = make_ctx()
    assert call(flavour, bare, answer(200, {}))["status_code"] == 200
    assert bare.published == []


def test_each_call_is_measured(
    flavour: type[ApiStepHandler], observed: list[dict[str, Any]]
) -> None:
    call(flavour, make_ctx(), answer(201, {}))
    with pytest.raises(RetryableError):
        call(flavour, make_ctx(), answer(503))
    assert [(o["system"], o["method"], o["status"]) for o in observed] == [
        ("user_service", "POST", "201"),
        ("user_service", "POST", "503"),
    ]
    assert all(o["seconds"] >= 0 for o in observed)


def test_a_broken_metrics_backend_does_not_fail_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(**kw: Any) -> None:
        raise RuntimeError("registry full")

    monkeypatch.setattr(metrics, "observe_api_call", broken)
    assert call(SyncUsers, make_ctx(), answer(200, {}))["status_code"] == 200


def test_each_call_is_logged_with_method_url_status_and_time(
    flavour: type[ApiStepHandler], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tasker.handlers")
    call(flavour, make_ctx(), answer(201, {}))
    (record,) = [
        r for r in caplog.records if r.name == "tasker.handlers.blog_examples.user_registration"
    ]
    assert record.getMessage().startswith(f"POST {BASE}/users -> 201 in ")
    assert record.correlation_id == "corr-abc"  # type: ignore[attr-defined]


# -- clients ---------------------------------------------------------------------------------------
def test_sync_clients_are_reused_per_url_and_timeout() -> None:
    cache = api._ClientCache()
    try:
        a = cache.sync_client("http://a.test", 1.0)
        assert cache.sync_client("http://a.test", 1.0) is a
        assert cache.sync_client("http://a.test", 2.0) is not a
        assert cache.sync_client("http://b.test", 1.0) is not a
        assert a.headers["User-Agent"] == api.USER_AGENT
    finally:
        cache.close()
    assert a.is_closed


def test_async_clients_are_kept_per_event_loop() -> None:
    cache = api._ClientCache()

    async def get() -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
        return cache.async_client("http://a.test", 1.0), cache.async_client("http://a.test", 1.0)

    first, again = asyncio.run(get())
    other, _ = asyncio.run(get())
    assert first is again
    assert other is not first
    loop = asyncio.new_event_loop()
    try:
        mine, _ = loop.run_until_complete(get())
        cache.close()  # closes what a live loop can still run, drops the rest
        assert mine.is_closed
    finally:
        loop.close()


def test_the_cache_stays_small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "MAX_CACHED_CLIENTS", 4)
    transport = httpx.MockTransport(answer(200, {}))
    cache = api._ClientCache()
    try:
        first = cache.sync_client("http://0.test", 1.0, transport)
        for i in range(1, 10):
            cache.sync_client(f"http://{i}.test", 1.0, transport)
        assert len(cache._sync) == 4
        assert cache.sync_client("http://0.test", 1.0, transport) is not first
    finally:
        cache.close()
        first.close()
