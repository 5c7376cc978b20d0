"""What every example service does around its own code: faults, correlation ids, idempotency, a
request log.

A plain ASGI middleware, so the four services get the same behaviour without repeating it in each
route:

- the injected faults (`faults.py`) are decided first: a down or rate-limited service answers before
  its code runs;
- `X-Correlation-ID` is taken from the request (or generated), handed to the route as
  `request.state.correlation_id`, and echoed on the response;
- a mutating request with an `Idempotency-Key` is answered once: a repeat with the same method, path
  and body gets the stored response with the same status (and `Idempotent-Replayed: true`); a repeat
  with a different request is refused with 422. Requests with the same key are serialised, so two
  concurrent repeats cannot both do the work. Responses are stored unless they are 5xx or 429, which
  say "try again";
- every request is logged with its interval, status and correlation id (`GET /admin/requests`),
  which is how the tests see that billing and preferences really ran at the same time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tasker.demos.microservices.services.faults import Faults, Verdict
from tasker.demos.microservices.services.store import Store

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UNLOGGED_PREFIXES = ("/admin", "/health")


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, *, service: str, store: Store, faults: Faults) -> None:
        self.app = app
        self.service = service
        self.store = store
        self.faults = faults
        self._key_locks: dict[str, asyncio.Lock] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(UNLOGGED_PREFIXES):
            await self.app(scope, receive, send)
            return
        started = time.time()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        correlation_id = (
            headers.get("x-correlation-id") or f"{self.service}-{uuid.uuid4().hex[:12]}"
        )
        scope.setdefault("state", {})["correlation_id"] = correlation_id
        key = headers.get("idempotency-key") if scope["method"] in MUTATING else None
        verdict = self.faults.decide()
        if verdict.latency:
            await asyncio.sleep(verdict.latency)
        if verdict.status is not None:
            response = _error(verdict.status, verdict.code, verdict.message, verdict.retry_after)
            fault: str | None = verdict.code
            replayed = False
        elif key:
            response, replayed = await self._idempotent(
                scope, receive, key, correlation_id, verdict
            )
            fault = "error_after_work" if verdict.fail_after_work else None
        else:
            response = await _capture(self.app, scope, receive)
            replayed = False
            fault = None
            if verdict.fail_after_work:
                response = _error(verdict.fail_after_work, "internal_error", verdict.message, None)
                fault = "error_after_work"
        status, resp_headers, body = response
        resp_headers = [
            h for h in resp_headers if h[0].lower() not in (b"x-correlation-id", b"content-length")
        ]
        resp_headers.append((b"content-length", str(len(body)).encode()))
        resp_headers.append((b"x-correlation-id", correlation_id.encode("latin-1")))
        if replayed:
            resp_headers.append((b"idempotent-replayed", b"true"))
        # Logged before answering, so a caller that got its answer can read its request in the log.
        self._log(scope, status, correlation_id, key, replayed, fault, started)
        await send({"type": "http.response.start", "status": status, "headers": resp_headers})
        await send({"type": "http.response.body", "body": body})

    async def _idempotent(
        self, scope: Scope, receive: Receive, key: str, correlation_id: str, verdict: Verdict
    ) -> tuple[Response, bool]:
        body = await _read_body(receive)
        fingerprint = _fingerprint(scope["method"], scope["path"], body)
        lock = self._key_locks.setdefault(key, asyncio.Lock())
        async with lock:
            stored = self.store.row(
                "SELECT fingerprint, status, body FROM idempotency_keys WHERE key = ?", (key,)
            )
            if stored is not None:
                if stored["fingerprint"] != fingerprint:
                    return (
                        _error(
                            422,
                            "idempotency_key_reused",
                            f"Idempotency-Key '{key}' was already used for a different request; "
                            "send a new key for a new request",
                            None,
                        ),
                        False,
                    )
                return (
                    stored["status"],
                    [(b"content-type", b"application/json")],
                    stored["body"].encode(),
                ), True
            response = await _capture(self.app, scope, _replay(body))
            status = response[0]
            if status < 500 and status != 429:
                with self.store.transaction() as conn:
                    conn.execute(
                        "INSERT OR REPLACE INTO idempotency_keys (key, fingerprint, status, body,"
                        " correlation_id, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            key,
                            fingerprint,
                            status,
                            response[2].decode(),
                            correlation_id,
                            time.time(),
                        ),
                    )
        if verdict.fail_after_work:
            return _error(verdict.fail_after_work, "internal_error", verdict.message, None), False
        return response, False

    def _log(
        self,
        scope: Scope,
        status: int,
        correlation_id: str,
        key: str | None,
        replayed: bool,
        fault: str | None,
        started: float,
    ) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO requests (method, path, status, correlation_id, idempotency_key,"
                " replayed, fault, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    scope["method"],
                    scope["path"],
                    status,
                    correlation_id,
                    key,
                    int(replayed),
                    fault,
                    started,
                    time.time(),
                ),
            )


Response = tuple[int, list[tuple[bytes, bytes]], bytes]


def _error(status: int, code: str, message: str, retry_after: float | None) -> Response:
    headers = [(b"content-type", b"application/json")]
    if retry_after is not None:
        value = str(int(retry_after)) if float(retry_after).is_integer() else f"{retry_after:g}"
        headers.append((b"retry-after", value.encode()))
    return status, headers, json.dumps({"error": {"code": code, "message": message}}).encode()


async def _capture(app: ASGIApp, scope: Scope, receive: Receive) -> Response:
    """Run the app and collect its (small, JSON) response instead of streaming it."""
    status = 500
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []

    async def send(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = int(message["status"])
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))

    await app(scope, receive, send)
    return status, headers, b"".join(chunks)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    """A `receive` that hands the already-read body to the app once."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # like a client that keeps the connection open
        return {"type": "http.disconnect"}

    return receive


def _fingerprint(method: str, path: str, body: bytes) -> str:
    """The request a key stands for; JSON bodies are compared as data, not as bytes."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, UnicodeDecodeError):
        canonical = body
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).hexdigest()
