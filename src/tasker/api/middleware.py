"""The HTTP-level guards every response passes through: security headers, HEAD, URL and header
sizes.

- `SecurityHeaders` adds the standard headers to every answer, errors and static files included. The
  Content-Security-Policy allows scripts only from this server (no inline script: the docs page
  loads its initialisation from a file) and forbids framing; styles may be inline because Swagger UI
  sets them from its script (swagger-api/swagger-ui#10655), a far smaller risk than inline script.
- `HeadAsGet` answers HEAD wherever GET is served (FastAPI routes declare GET only): the request
  runs as GET and only the status and headers are sent, so `Content-Length` is that of the GET
  answer.
- `RequestSizeLimits` answers 414 for a URL longer than `MAX_URL_BYTES` and 431 for headers over
  `MAX_HEADER_BYTES` in total, with the API's error body. Larger still, up to what the HTTP parser
  buffers, is answered by `tasker.api.protocol` with the same statuses.

"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tasker.api.errors import HEAD_SCOPE_KEY, error_response

#: The longest path plus query string accepted (bytes); a longer URL is answered 414.
MAX_URL_BYTES = 8192
#: The most header bytes (names and values) accepted in total; more is answered 431. A JWT of the
#: longest accepted size (8,192 characters) fits with room to spare.
MAX_HEADER_BYTES = 32_768

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"cross-origin-opener-policy", b"same-origin"),
)


class SecurityHeaders:
    """Adds `SECURITY_HEADERS` to every response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class _HeadDone(Exception):
    """Raised from `send` to stop an app still streaming after a HEAD answer's headers went out."""


class HeadAsGet:
    """Serves HEAD as GET without a body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            await self.app(scope, receive, send)
            return
        scope = {**scope, "method": "GET", HEAD_SCOPE_KEY: True}
        finished = False

        async def headers_only(message: Message) -> None:
            nonlocal finished
            if finished:
                raise _HeadDone
            if message["type"] == "http.response.start":
                await send(message)
            elif message["type"] == "http.response.body":
                finished = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                if message.get("more_body", False):
                    raise _HeadDone  # a stream (an event stream never ends): stop producing it
            else:
                await send(message)

        try:
            await self.app(scope, receive, headers_only)
        except _HeadDone:
            pass
        except (
            BaseExceptionGroup
        ) as group:  # raised from inside a task group (a streaming response)
            rest = group.subgroup(lambda e: not isinstance(e, _HeadDone))
            if rest is not None:
                raise rest from None


class RequestSizeLimits:
    """414 for a URL over `MAX_URL_BYTES`, 431 for headers over `MAX_HEADER_BYTES`, first thing."""

    def __init__(
        self,
        app: ASGIApp,
        max_url_bytes: int = MAX_URL_BYTES,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        self.app = app
        self.max_url_bytes = max_url_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_path = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "replace")
        url_bytes = len(raw_path) + len(scope.get("query_string", b""))
        if url_bytes > self.max_url_bytes:
            await error_response(
                414,
                "uri_too_long",
                url_too_long(self.max_url_bytes, url_bytes),
                headers={"Connection": "close"},
            )(scope, receive, send)
            return
        header_bytes = sum(len(k) + len(v) for k, v in scope.get("headers", []))
        if header_bytes > self.max_header_bytes:
            await error_response(
                431,
                "headers_too_large",
                headers_too_large(self.max_header_bytes, header_bytes),
                headers={"Connection": "close"},
            )(scope, receive, send)
            return
        await self.app(scope, receive, send)


def url_too_long(limit: int, size: int | None = None) -> str:
    sent = f" ({size} bytes)" if size is not None else ""
    return (
        f"the URL is longer than the limit of {limit} bytes{sent}; "
        "fix: send long or many values in a "
        "POST body, or filter with fewer query parameters"
    )


def headers_too_large(limit: int, size: int | None = None) -> str:
    sent = f" ({size} bytes)" if size is not None else ""
    return (
        f"the request headers are larger than the limit of {limit} bytes in total{sent}; "
        "fix: send fewer "
        "or shorter headers (cookies for other sites, say)"
    )
