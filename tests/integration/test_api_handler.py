"""ApiStepHandler through the engine against a real HTTP service (uvicorn on a loopback port), on
both stores.

The service is a tiny ASGI app that answers each path from a script and records every request it
got, with its headers and arrival time, so the tests see what really went over the wire.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tasker import ApiRequest, ApiStepHandler, AsyncApiStepHandler, Event, StepContext, Tasker
from tests.integration.support import step_history, to_states
from tests.servers import serving

HERE = "tests.integration.test_api_handler"
SERVICE_EVENTS = ["service_call_started", "service_call_completed", "service_call_failed"]


# -- the service -----------------------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class ScriptedService:
    """Answers `/things/<script>` with the script's replies in turn (the last one repeats); records
    requests."""

    def __init__(self) -> None:
        self.url = ""
        self._lock = threading.Lock()
        self._scripts: dict[str, list[Reply]] = {}
        self._received: dict[str, list[dict[str, Any]]] = {}

    def script(self, name: str, *replies: Reply) -> None:
        with self._lock:
            self._scripts[name] = list(replies)

    def received(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._received.get(name, []))

    def _next(self, name: str, request: dict[str, Any]) -> Reply:
        with self._lock:
            self._received.setdefault(name, []).append(request)
            replies = self._scripts.get(name) or [
                Reply(404, {"error": {"message": f"no script for {name}"}})
            ]
            return replies.pop(0) if len(replies) > 1 else replies[0]

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        assert scope["type"] == "http"
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        name = scope["path"].removeprefix("/things/")
        reply = self._next(
            name,
            {
                "method": scope["method"],
                "headers": {k.decode().lower(): v.decode() for k, v in scope["headers"]},
                "json": json.loads(body) if body else None,
                "at": time.monotonic(),
                "client": tuple(scope["client"]),
            },
        )
        if reply.delay:
            await asyncio.sleep(reply.delay)
        payload = b"" if reply.body is None else json.dumps(reply.body).encode()
        headers = [(b"content-type", b"application/json")]
        headers += [(k.encode(), v.encode()) for k, v in reply.headers.items()]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


@pytest.fixture(scope="module")
def service() -> Iterator[ScriptedService]:
    """The service served by uvicorn in a background thread on a free loopback port, stopped after
    the module."""
    app = ScriptedService()
    with serving(app, lifespan="off") as url:
        app.url = url
        yield app


# -- handlers the templates name -------------------------------------------------------------------
class PutThing:
    def build_request(self, ctx: StepContext) -> ApiRequest:
        return ApiRequest(
            "POST",
            f"/things/{ctx.context['key']}/{ctx.step_name}",
            json={"key": ctx.context["key"], "name": "widget", "size": {"w": 2, "h": 3}},
        )


class CreateThing(PutThing, ApiStepHandler):
    pass


class AsyncCreateThing(PutThing, AsyncApiStepHandler):
    pass


FLAVOURS = pytest.mark.parametrize(
    "handler", ["CreateThing", "AsyncCreateThing"], ids=["sync", "async"]
)


def api_step(
    name: str, service: ScriptedService, handler: str = "CreateThing", **extra: Any
) -> dict[str, Any]:
    config = {"url": service.url, "timeout_seconds": 5, **extra.pop("handler_config", {})}
    return {
        "name": name,
        "handler_class": f"{HERE}:{handler}",
        "dependent_system": "things_service",
        "handler_config": config,
        **extra,
    }


def received_gaps(requests: list[dict[str, Any]]) -> list[float]:
    return [b["at"] - a["at"] for a, b in itertools.pairwise(requests)]


# -- tests -----------------------------------------------------------------------------------------
@FLAVOURS
def test_a_503_then_201_completes_after_one_retry_with_the_same_keys(
    tasker: Tasker, load: Callable[..., str], key: str, service: ScriptedService, handler: str
) -> None:
    service.script(
        f"{key}/create",
        Reply(503, {"error": {"code": "unavailable", "message": "warming up"}}),
        Reply(201, {"id": 7, "name": "widget"}),
    )
    ref = load("api_retry", [api_step("create", service, handler)], custom_events=SERVICE_EVENTS)
    heard: list[Event] = []
    tasker.bus.subscribe(heard.append, "service_call_*")
    task = tasker.run(tasker.create_task(ref, {"key": key, "correlation_id": f"reg-{key}"}).id)

    create = task.step("create")
    assert (task.status, create.status, create.attempts) == ("complete", "complete", 2)
    assert create.results is not None
    assert create.results["response"] == {"id": 7, "name": "widget"}
    assert create.results["status_code"] == 201
    assert create.results["correlation_id"] == f"reg-{key}"
    assert create.results["url"] == f"{service.url}/things/{key}/create"
    requests = service.received(f"{key}/create")
    assert len(requests) == 2
    # The same idempotency key on both attempts (the step's), and the task's correlation id on each.
    assert {r["headers"]["idempotency-key"] for r in requests} == {create.idempotency_key}
    assert (
        {r["headers"]["x-correlation-id"] for r in requests}
        == {f"reg-{key}"}
        == {task.correlation_id}
    )
    assert all(r["headers"]["user-agent"].startswith("tasker/") for r in requests)
    assert (
        requests[0]["json"]
        == requests[1]["json"]
        == {
            "key": key,
            "name": "widget",
            "size": {"w": 2, "h": 3},
        }
    )
    assert (
        requests[0]["client"] == requests[1]["client"]
    )  # the retry reused the kept-alive connection
    retry = next(
        r for r in step_history(tasker, task.id, "create") if r["to_state"] == "waiting_retry"
    )
    assert retry["error_class"] == "RetryableError"
    message = retry["error_message"] or ""
    assert "answered 503" in message and "warming up" in message
    # The template declares the service events: one started/failed and one started/completed pair.
    assert [(e.name, e.payload.get("status")) for e in heard] == [
        ("service_call_started", None),
        ("service_call_failed", "503"),
        ("service_call_started", None),
        ("service_call_completed", "201"),
    ]


def test_a_429_with_retry_after_2_is_not_retried_before_2_seconds(
    tasker: Tasker, load: Callable[..., str], key: str, service: ScriptedService
) -> None:
    service.script(
        f"{key}/create",
        Reply(429, {"message": "slow down"}, {"Retry-After": "2"}),
        Reply(200, {"id": 1}),
    )
    ref = load("api_throttled", [api_step("create", service)])
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)

    assert (task.status, task.step("create").attempts) == ("complete", 2)
    rows = step_history(tasker, task.id, "create")
    assert to_states(rows) == ["ready", "in_progress", "waiting_retry", "in_progress", "complete"]
    waiting = rows[2]
    assert waiting["error_class"] == "RetryableError" and "answered 429" in (
        waiting["error_message"] or ""
    )
    assert (rows[3]["at"] - waiting["at"]).total_seconds() >= 2.0
    assert received_gaps(service.received(f"{key}/create"))[0] >= 2.0


def test_a_404_ends_the_step_in_error_without_retrying(
    tasker: Tasker, load: Callable[..., str], key: str, service: ScriptedService
) -> None:
    service.script(
        f"{key}/create", Reply(404, {"error": {"code": "not_found", "message": "no such account"}})
    )
    ref = load(
        "api_missing",
        [
            api_step("create", service, default_retry_limit=5),
            {
                "name": "after",
                "handler_class": "tests.integration.handlers:Scripted",
                "depends_on_step": "create",
            },
        ],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)

    create = task.step("create")
    assert (task.status, create.status, create.attempts) == ("error", "error", 1)
    assert task.step("after").status == "pending"
    assert len(service.received(f"{key}/create")) == 1
    error = create.last_error
    assert error is not None
    assert (error["class"], error["error_code"], error["retryable"]) == (
        "PermanentError",
        "HTTP_404",
        False,
    )
    assert (
        error["message"]
        == f"POST {service.url}/things/{key}/create answered 404 Not Found: no such account"
    )
    assert error["context"]["status"] == 404
    assert "waiting_retry" not in to_states(step_history(tasker, task.id, "create"))


@FLAVOURS
def test_a_service_slower_than_the_timeout_is_a_retryable_read_timeout(
    tasker: Tasker, load: Callable[..., str], key: str, service: ScriptedService, handler: str
) -> None:
    service.script(
        f"{key}/create", Reply(200, {"late": True}, delay=2.5), Reply(200, {"late": False})
    )
    ref = load(
        "api_slow", [api_step("create", service, handler, handler_config={"timeout_seconds": 1})]
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)

    create = task.step("create")
    assert (task.status, create.attempts) == ("complete", 2)
    assert create.results is not None and create.results["response"] == {"late": False}
    retry = next(
        r for r in step_history(tasker, task.id, "create") if r["to_state"] == "waiting_retry"
    )
    # The HTTP timeout (90% of timeout_seconds) fired before the engine's: the error names the call.
    assert retry["error_class"] == "RetryableError"
    assert (retry["error_message"] or "").startswith(
        f"POST {service.url}/things/{key}/create failed: timeout"
    )


def test_a_409_for_the_same_resource_succeeds_and_for_another_fails(
    tasker: Tasker, load: Callable[..., str], key: str, service: ScriptedService
) -> None:
    sent = {"key": key, "name": "widget", "size": {"w": 2, "h": 3}}
    service.script(
        f"{key}/same",
        Reply(
            409, {"error": {"code": "conflict", "message": "exists"}, "existing": {**sent, "id": 3}}
        ),
    )
    service.script(
        f"{key}/other",
        Reply(
            409,
            {
                "error": {"code": "conflict", "message": "exists"},
                "existing": {**sent, "size": {"w": 2, "h": 4}, "id": 4},
            },
        ),
    )
    ref = load("api_conflict", [api_step("same", service), api_step("other", service)])
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)

    same, other = task.step("same"), task.step("other")
    assert (same.status, same.attempts) == ("complete", 1)
    assert same.results is not None
    assert same.results["conflict_resolved"] is True and same.results["response"]["id"] == 3
    assert (other.status, other.attempts) == ("error", 1)
    assert other.last_error is not None
    assert other.last_error["error_code"] == "HTTP_409"
    assert "differs in: size.h" in other.last_error["message"]


def test_a_step_without_a_url_fails_at_once_with_a_clear_message(
    tasker: Tasker, load: Callable[..., str], key: str
) -> None:
    ref = load("api_no_url", [{"name": "create", "handler_class": f"{HERE}:CreateThing"}])
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    create = task.step("create")
    assert (create.status, create.attempts) == ("error", 1)
    assert create.last_error is not None
    assert (
        create.last_error["message"]
        == "step 'create': handler_config.url is missing; set it to the service's "
        "base URL, e.g. url: http://localhost:8001"
    )
