"""Step handlers that call an HTTP service: `ApiStepHandler` (sync) and `AsyncApiStepHandler`.

A service call is the step most likely to fail for reasons outside the workflow, so the
classification lives here once instead of in every handler: what a status code means (retry or give
up), how long a server asked us to wait, and when a 409 is really our own earlier attempt
succeeding. Every request carries the step's idempotency key, so a retry after a lost response
cannot create a second resource.

Subclasses only say what to send (`build_request`) and what to keep (`process_response`).
"""

from __future__ import annotations

import asyncio
import atexit
import email.utils
import functools
import importlib.metadata
import json
import logging
import math
import ssl
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar

import httpx

from tasker.domain.errors import PermanentError, RetryableError
from tasker.domain.hooks import ServiceCall
from tasker.handlers.base import StepContext, StepHandler
from tasker.observability import metrics, tracing

#: HTTP timeout when the step has no `handler_config.timeout_seconds` (the engine then enforces
#: none).
DEFAULT_TIMEOUT_SECONDS = 30.0
#: What the HTTP call leaves of `timeout_seconds` for the engine: 10%, at least a quarter second (or
#: half of a shorter timeout). The call's own timeout then fires first and the attempt is recorded
#: as a (retryable) timeout naming the URL, not as a bare step timeout.
HTTP_TIMEOUT_MARGIN_SHARE = 0.1
HTTP_TIMEOUT_MIN_MARGIN_SECONDS = 0.25
#: A server may ask for a long pause; beyond five minutes it is an outage for the circuit breaker.
MAX_RETRY_AFTER_SECONDS = 300.0
#: Service messages copied into errors are cut to this many characters (errors are stored per
#: attempt).
MESSAGE_LIMIT = 300
#: At most this many cached clients (per event loop for async ones); the oldest is dropped beyond.
MAX_CACHED_CLIENTS = 64

STARTED, COMPLETED, FAILED = "service_call_started", "service_call_completed", "service_call_failed"
THROTTLED_STATUSES = frozenset({429, 503})
#: Answers that say the service itself is unwell (overloaded, down, its upstream timing out): they
#: count towards opening its circuit. Other 5xx answers (a 500 for this one request, say) are
#: retried but are no sign of an outage.
SYSTEM_FAULT_STATUSES = frozenset({408, 429, 502, 503, 504})

T = TypeVar("T")

try:
    USER_AGENT = f"tasker/{importlib.metadata.version('tasker-engine')}"
except (
    importlib.metadata.PackageNotFoundError
):  # pragma: no cover - running from a bare source tree
    USER_AGENT = "tasker/unknown"


@dataclass
class ApiRequest:
    """What one step sends: `path` is joined to `handler_config["url"]`; `json` is the body, if
    any."""

    method: str = "POST"
    path: str = ""
    json: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] | None = None


@dataclass(frozen=True)
class _Call:
    """One prepared request: where it goes, with what timeout, and the request itself."""

    base_url: str
    timeout: float
    request: ApiRequest
    url: httpx.URL
    headers: dict[str, str]
    deadline: float  # time.perf_counter() by which the whole call must be over

    def remaining(self) -> float:
        """The budget left for the request itself, after building it and finding a client."""
        return max(self.deadline - time.perf_counter(), 0.001)


class ApiStepHandler(StepHandler):
    """A step that makes one HTTP call with a shared, keep-alive `httpx.Client` (runs in the thread
    pool).

    Implement `build_request`; override `process_response` (calling `super()`) to pick what the next
    steps need, and `on_conflict` when a 409 means something else for your service. Set the class
    attribute `transport` (e.g. `httpx.MockTransport`) to test a handler without a network.
    """

    #: Transport for the cached client; None means httpx's default (real sockets).
    transport: ClassVar[httpx.BaseTransport | httpx.AsyncBaseTransport | None] = None
    #: Dotted request fields a 409's existing resource need not echo (a password, say) to count as
    #: identical.
    conflict_ignore_fields: ClassVar[frozenset[str]] = frozenset()

    def build_request(self, ctx: StepContext) -> ApiRequest:
        raise NotImplementedError(f"{type(self).__name__} must implement build_request(ctx)")

    def process_response(self, ctx: StepContext, response: httpx.Response) -> dict[str, Any]:
        """The step's results for a successful response; keep what later steps need."""
        return {
            "response": response_body(response),
            "status_code": response.status_code,
            "response_time_ms": elapsed_ms(response),
            "correlation_id": ctx.correlation_id,
            "url": _request_url(response),
        }

    def on_conflict(self, ctx: StepContext, response: httpx.Response) -> dict[str, Any]:
        """A 409 whose `existing` resource matches what we sent is our own earlier attempt: success.

        Services answer `{"error": {...}, "existing": {...}}`; every field of the request JSON must
        equal the existing resource's (recursively, on the keys the request has). Anything else is
        permanent.
        """
        body = _json_or_none(response)
        if not isinstance(body, dict) or "existing" not in body:
            raise _http_error(
                PermanentError,
                response,
                hint=(
                    "(no 'existing' resource in the body to compare "
                    "with; override on_conflict to resolve it)"
                ),
            )
        existing = body["existing"]
        differing = [
            f
            for f in differing_fields(_sent_json(response), existing)
            if not _ignored(f, self.conflict_ignore_fields)
        ]
        if differing:
            raise _http_error(
                PermanentError,
                response,
                hint=f"(an existing resource differs in: {', '.join(differing)})",
                extra={"differing_fields": differing},
            )
        resolved = httpx.Response(response.status_code, json=existing, request=response.request)
        resolved.elapsed = timedelta(milliseconds=elapsed_ms(response))
        return {**self.process_response(ctx, resolved), "conflict_resolved": True}

    # -- the call ----------------------------------------------------------------------------------
    def process(self, ctx: StepContext) -> dict[str, Any]:
        call = self._prepare(ctx)
        client = _clients.sync_client(call.base_url, call.timeout, self.transport)
        started = time.perf_counter()
        try:
            response = client.request(
                call.request.method,
                call.url,
                json=call.request.json,
                headers=call.headers,
                timeout=call.remaining(),
            )
        except httpx.HTTPError as exc:
            raise self._failed_to_send(ctx, call, exc, time.perf_counter() - started) from exc
        return self._received(ctx, call, response, time.perf_counter() - started)

    def _prepare(self, ctx: StepContext) -> _Call:
        began = time.perf_counter()
        base_url = _base_url(ctx)
        timeout = _http_timeout(ctx)
        request = self.build_request(ctx)
        if not isinstance(request, ApiRequest):
            raise PermanentError(
                f"{type(self).__name__}.build_request returned {type(request).__name__}; "
                "it must return an ApiRequest",
                error_code="INVALID_REQUEST",
            )
        request = replace(request, method=request.method.upper())
        headers = dict(request.headers or {})
        headers["Idempotency-Key"] = ctx.idempotency_key
        headers["X-Correlation-ID"] = ctx.correlation_id
        tracing.inject_headers(headers)
        url = _join(base_url, request.path, ctx)
        if request.params:  # merged here: httpx would replace a query the path already has
            url = url.copy_merge_params(request.params)
        call = _Call(base_url, timeout, request, url, headers, deadline=began + timeout)
        _publish(
            ctx,
            STARTED,
            {
                "method": call.request.method,
                "url": str(call.url),
                "attempt": ctx.attempt,
                "service": ctx.dependent_system,
                "correlation_id": ctx.correlation_id,
            },
        )
        return call

    def _received(
        self, ctx: StepContext, call: _Call, response: httpx.Response, seconds: float
    ) -> dict[str, Any]:
        status = response.status_code
        ms = round(seconds * 1000, 3)
        response.elapsed = timedelta(
            seconds=seconds
        )  # one figure for results, events, metrics and logs
        _observe(ctx, call, str(status), seconds)
        level = logging.INFO if status < 400 or status == 409 else logging.WARNING
        ctx.logger.log(level, "%s %s -> %s in %.1f ms", call.request.method, call.url, status, ms)
        try:
            if 200 <= status < 300:
                results = self.process_response(ctx, response)
            elif status == 409:
                results = self.on_conflict(ctx, response)
            else:
                raise classify_status(response)
        except Exception as exc:
            _publish(
                ctx,
                FAILED,
                {
                    "status": str(status),
                    "status_code": status,
                    "message": str(exc),
                    "retryable": not isinstance(exc, PermanentError),
                    "url": str(call.url),
                    "response_time_ms": ms,
                },
            )
            raise
        _publish(
            ctx,
            COMPLETED,
            {
                "status": str(status),
                "status_code": status,
                "response_time_ms": ms,
                "url": str(call.url),
                "conflict_resolved": bool(results.get("conflict_resolved")),
            },
        )
        return results

    def _failed_to_send(
        self, ctx: StepContext, call: _Call, exc: httpx.HTTPError, seconds: float
    ) -> Exception:
        kind, retryable = classify_transport_error(exc)
        message = (
            f"{call.request.method} {call.url} failed: {kind.replace('_', ' ')} ({_describe(exc)})"
        )
        _observe(ctx, call, kind, seconds)
        ctx.logger.warning(
            "%s %s -> %s after %.1f ms: %s",
            call.request.method,
            call.url,
            kind,
            seconds * 1000,
            _describe(exc),
        )
        _publish(
            ctx,
            FAILED,
            {
                "status": kind,
                "status_code": None,
                "message": message,
                "retryable": retryable,
                "url": str(call.url),
                "response_time_ms": round(seconds * 1000, 3),
            },
        )
        context = {"error_kind": kind, "method": call.request.method, "url": str(call.url)}
        if retryable:
            return RetryableError(message, error_code=kind.upper(), context=context)
        return PermanentError(message, error_code=kind.upper(), context=context)


class AsyncApiStepHandler(ApiStepHandler):
    """The same hooks, with `async def process` on the worker's event loop and a per-loop
    `httpx.AsyncClient`."""

    async def process(self, ctx: StepContext) -> dict[str, Any]:  # type: ignore[override]
        call = self._prepare(ctx)
        client = _clients.async_client(call.base_url, call.timeout, self.transport)
        started = time.perf_counter()
        budget = call.remaining()
        try:
            async with asyncio.timeout(budget):  # one deadline for connect, send and read together
                response = await client.request(
                    call.request.method,
                    call.url,
                    json=call.request.json,
                    headers=call.headers,
                    timeout=budget,
                )
        except httpx.HTTPError as exc:
            raise self._failed_to_send(ctx, call, exc, time.perf_counter() - started) from exc
        except TimeoutError as exc:
            late = httpx.TimeoutException(f"no complete response within {budget:.3g}s")
            raise self._failed_to_send(ctx, call, late, time.perf_counter() - started) from exc
        return self._received(ctx, call, response, time.perf_counter() - started)


# -- classification --------------------------------------------------------------------------------
def classify_status(response: httpx.Response) -> PermanentError | RetryableError:
    """The error for a non-2xx, non-409 answer: throttling and server faults retry, client mistakes
    do not."""
    status = response.status_code
    if status in THROTTLED_STATUSES:
        return _http_error(
            RetryableError,
            response,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if status >= 500 or status == 408:
        return _http_error(RetryableError, response, system_fault=status in SYSTEM_FAULT_STATUSES)
    if 300 <= status < 400:
        where = response.headers.get("Location")
        return _http_error(
            PermanentError,
            response,
            hint=(
                "(redirects are not followed; point handler_config.url "
                f"at the final address{': ' + where if where else ''})"
            ),
        )
    return _http_error(PermanentError, response)


def classify_transport_error(exc: httpx.HTTPError) -> tuple[str, bool]:
    """(error kind, retryable) for a request that got no response: the network retries, our own bugs
    do not."""
    if isinstance(exc, httpx.TimeoutException):
        return "timeout", True
    if isinstance(exc, httpx.ConnectError):
        return "connect_error", True
    if isinstance(exc, httpx.RemoteProtocolError):
        return "protocol_error", True
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL)):
        return "invalid_request", False
    if isinstance(exc, httpx.NetworkError):
        return "network_error", True
    if isinstance(exc, httpx.DecodingError):
        return "decoding_error", True
    return "request_error", True


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or HTTP-date), capped; None when absent or
    unreadable.

    None leaves the delay to the engine's exponential backoff; a date in the past means "now" (0).
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP-date is GMT; RFC 850 and asctime forms parse as naive
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None if math.isnan(seconds) else MAX_RETRY_AFTER_SECONDS
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def service_message(response: httpx.Response) -> str:
    """The service's own explanation: a JSON body's error/message/detail, else its text, on one
    short line."""
    body = _json_or_none(response)
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            found = _message_from(body.get(key))
            if found:
                return _one_line(found)
    text = response.text if response.content else ""
    return _one_line(text) if text.strip() else (response.reason_phrase or "no message")


def differing_fields(sent: Any, existing: Any, path: str = "") -> list[str]:
    """Dotted paths of the request fields whose value differs from (or is missing in) the existing
    resource."""
    if isinstance(sent, dict):
        if not isinstance(existing, dict):
            return [path or "(body)"]
        out: list[str] = []
        for k, v in sent.items():
            p = f"{path}.{k}" if path else str(k)
            out.extend(differing_fields(v, existing[k], p) if k in existing else [p])
        return out
    if isinstance(sent, list):
        if not isinstance(existing, list) or len(existing) != len(sent):
            return [path or "(body)"]
        return [
            f
            for i, (a, b) in enumerate(zip(sent, existing, strict=True))
            for f in differing_fields(a, b, f"{path}[{i}]")
        ]
    same = sent == existing and isinstance(sent, bool) == isinstance(existing, bool)
    return [] if same else [path or "(body)"]


def response_body(response: httpx.Response) -> Any:
    """The decoded JSON body, else the text, else None for an empty body."""
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text


def elapsed_ms(response: httpx.Response) -> float:
    """httpx's request-to-response time in ms (0.0 for a response that never went over the wire)."""
    try:
        return round(response.elapsed.total_seconds() * 1000, 3)
    except RuntimeError:
        return 0.0


def _http_error(
    cls: type[PermanentError] | type[RetryableError],
    response: httpx.Response,
    *,
    hint: str = "",
    retry_after: float | None = None,
    extra: dict[str, Any] | None = None,
    system_fault: bool = True,
) -> PermanentError | RetryableError:
    status = response.status_code
    method = response.request.method if _has_request(response) else "?"
    message = (
        f"{method} {_request_url(response)} answered {status} {response.reason_phrase}: "
        f"{service_message(response)}"
    )
    if hint:
        message = f"{message} {hint}"
    context: dict[str, Any] = {
        "status": status,
        "method": method,
        "url": _request_url(response),
        "response": _excerpt(response),
        **(extra or {}),
    }
    if cls is RetryableError:
        if retry_after is not None:
            context["retry_after"] = retry_after
        return RetryableError(
            message,
            retry_after=retry_after,
            error_code=f"HTTP_{status}",
            context=context,
            system_fault=system_fault,
        )
    return PermanentError(message, error_code=f"HTTP_{status}", context=context)


# -- configuration ---------------------------------------------------------------------------------
def _base_url(ctx: StepContext) -> str:
    url = ctx.handler_config.get("url")
    fix = "set it to the service's base URL, e.g. url: http://localhost:8001"
    if url is None or (isinstance(url, str) and not url.strip()):
        raise PermanentError(
            f"step '{ctx.step_name}': handler_config.url is missing; {fix}",
            error_code="INVALID_CONFIG",
        )
    try:
        parsed = httpx.URL(url) if isinstance(url, str) else None
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise PermanentError(
            f"step '{ctx.step_name}': handler_config.url {url!r} is not an http(s) URL; {fix}",
            error_code="INVALID_CONFIG",
        )
    return str(url).strip()


def _http_timeout(ctx: StepContext) -> float:
    value = ctx.handler_config.get("timeout_seconds")
    if value is None:
        return DEFAULT_TIMEOUT_SECONDS
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise PermanentError(
            f"step '{ctx.step_name}': handler_config.timeout_seconds {value!r} must be a number "
            "of seconds greater than 0",
            error_code="INVALID_CONFIG",
        )
    seconds = float(value)
    return seconds - max(
        seconds * HTTP_TIMEOUT_MARGIN_SHARE, min(HTTP_TIMEOUT_MIN_MARGIN_SECONDS, seconds / 2)
    )


def _join(base_url: str, path: str, ctx: StepContext) -> httpx.URL:
    """`path` appended to the base URL's path (not RFC 3986 resolution, which would drop its last
    segment)."""
    base = httpx.URL(base_url)
    if not path:
        return base
    rel = httpx.URL(path)
    if rel.is_absolute_url or rel.host:
        raise PermanentError(
            f"step '{ctx.step_name}': ApiRequest.path {path!r} must be relative to "
            "handler_config.url (put the service address in the url)",
            error_code="INVALID_REQUEST",
        )
    return base.copy_with(
        path=base.path.rstrip("/") + "/" + rel.path.lstrip("/"), query=rel.query or None
    )


# -- clients ---------------------------------------------------------------------------------------
class _ClientCache:
    """Keep-alive clients shared by every attempt, keyed by base URL, timeout and transport.

    One cache per process (`_clients`), deliberately: it is a pool of connections, not engine state.
    Keys hold everything a client is made from, so engines in one process share keep-alive
    connections and nothing else; clients are closed at exit. Sync clients are shared across threads
    (httpx.Client is thread-safe); async clients belong to one event loop, so they are kept per loop
    and forgotten with it. A client dropped from a full
    cache is not closed, because another attempt may still be using it; its sockets close when it is
    collected.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sync: OrderedDict[tuple[Any, ...], httpx.Client] = OrderedDict()
        self._async: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, OrderedDict[tuple[Any, ...], httpx.AsyncClient]
        ]
        self._async = weakref.WeakKeyDictionary()
        self._atexit = False

    def sync_client(self, base_url: str, timeout: float, transport: Any = None) -> httpx.Client:
        key = (base_url, timeout, transport)
        with self._lock:
            client = self._sync.get(key)
            if client is None:
                client = httpx.Client(
                    timeout=timeout,
                    transport=_checked(transport, httpx.BaseTransport),
                    verify=_ssl_context(),
                    headers={"User-Agent": USER_AGENT},
                )
                self._remember(self._sync, key, client)
            else:
                self._sync.move_to_end(key)
            return client

    def async_client(
        self, base_url: str, timeout: float, transport: Any = None
    ) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        key = (base_url, timeout, transport)
        with self._lock:
            clients = self._async.setdefault(loop, OrderedDict())
            client = clients.get(key)
            if client is None:
                client = httpx.AsyncClient(
                    timeout=timeout,
                    transport=_checked(transport, httpx.AsyncBaseTransport),
                    verify=_ssl_context(),
                    headers={"User-Agent": USER_AGENT},
                )
                self._remember(clients, key, client)
            else:
                clients.move_to_end(key)
            return client

    def _remember(
        self, cache: OrderedDict[tuple[Any, ...], Any], key: tuple[Any, ...], client: Any
    ) -> None:
        cache[key] = client
        while len(cache) > MAX_CACHED_CLIENTS:
            cache.popitem(last=False)
        if not self._atexit:
            atexit.register(self.close)
            self._atexit = True

    def close(self) -> None:
        """Close every cached client; async ones only where their loop can still run (else they are
        dropped)."""
        with self._lock:
            sync = list(self._sync.values())
            self._sync.clear()
            per_loop = [(loop, list(clients.values())) for loop, clients in self._async.items()]
            self._async.clear()
        for client in sync:
            client.close()
        for loop, clients in per_loop:
            if loop.is_closed() or loop.is_running():
                continue
            for aclient in clients:
                loop.run_until_complete(aclient.aclose())


_clients = _ClientCache()


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context for every client: building one loads the CA bundle (a tenth of a second or
    more)."""
    return httpx.create_ssl_context()


def _checked(transport: Any, kind: type[T]) -> T | None:
    """The handler's `transport`, refused early when it cannot serve this (sync or async) client."""
    if transport is None or isinstance(transport, kind):
        return transport
    raise TypeError(
        f"transport {type(transport).__name__} is not an {kind.__module__}.{kind.__qualname__}; use"
        " httpx.HTTPTransport for ApiStepHandler and httpx.AsyncHTTPTransport for"
        " AsyncApiStepHandler"
    )


# -- small helpers ---------------------------------------------------------------------------------
def _publish(ctx: StepContext, event: str, payload: dict[str, Any]) -> None:
    """Publish only what the template declares: undeclared service events are simply not wanted."""
    if event in ctx.declared_events:
        ctx.publish(event, payload)


def _observe(ctx: StepContext, call: _Call, status: str, seconds: float) -> None:
    """Report the call to the worker's hooks; a context made outside an engine (a handler's own
    test) feeds the process's default metrics instead."""
    try:
        sink = ctx._on_service_call
        if sink is not None:
            sink(ServiceCall(ctx.dependent_system, call.request.method, status, seconds))
        else:
            metrics.observe_api_call(
                system=ctx.dependent_system,
                method=call.request.method,
                status=status,
                seconds=seconds,
            )
    except Exception:  # a metrics fault must never fail the business step
        ctx.logger.exception("recording the API call metric failed")


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json() if response.content else None
    except ValueError:
        return None


def _sent_json(response: httpx.Response) -> Any:
    if not _has_request(response):
        return None
    try:
        content = response.request.content
    except httpx.RequestNotRead:
        return None
    try:
        return json.loads(content) if content else None
    except ValueError:
        return None


def _ignored(field: str, ignore: frozenset[str]) -> bool:
    return any(field == f or field.startswith(f + ".") or field.startswith(f + "[") for f in ignore)


def _message_from(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        return (
            _message_from(value.get("message"))
            or _message_from(value.get("detail"))
            or json.dumps(value)
        )
    if isinstance(value, list) and value:  # FastAPI's 422: [{"loc": [...], "msg": "..."}]
        return "; ".join(_validation_item(v) for v in value)
    return None


def _validation_item(item: Any) -> str:
    if isinstance(item, dict) and "msg" in item:
        loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
        return f"{loc}: {item['msg']}" if loc else str(item["msg"])
    return str(item)


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MESSAGE_LIMIT else flat[: MESSAGE_LIMIT - 1] + "…"


def _excerpt(response: httpx.Response) -> Any:
    body = response_body(response)
    if isinstance(body, str) or len(json.dumps(body, default=str)) > 4 * MESSAGE_LIMIT:
        return _one_line(response.text)
    return body


def _has_request(response: httpx.Response) -> bool:
    try:
        response.request  # noqa: B018 - the property raises when the response was built without one
    except RuntimeError:
        return False
    return True


def _request_url(response: httpx.Response) -> str:
    return str(response.request.url) if _has_request(response) else ""


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
