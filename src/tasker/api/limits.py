"""A cap on request body size, answered with 413 before a large body is read into memory.

A declared `Content-Length` over the limit is refused at once. A chunked body has no length up
front, so the bytes are counted as they stream in and the request is cut off as soon as the count
passes the limit: a client cannot get round the cap by leaving the header out.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tasker.api.errors import error_response


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a streamed body passes the limit; FastAPI lets HTTPExceptions
    through."""

    def __init__(self, limit: int):
        super().__init__(413, too_large_message(limit))


def too_large_message(limit: int) -> str:
    return (
        f"the request body is larger than the limit of {limit} bytes; fix: send a smaller body "
        "(the server's max_body_bytes setting, TASKER_MAX_BODY_BYTES, sets the limit)"
    )


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = [v for k, v in scope.get("headers", []) if k.lower() == b"content-length"]
        if declared:
            try:
                length = int(declared[0])
            except ValueError:
                length = -1
            if length < 0 or len(set(declared)) > 1:
                await error_response(
                    400, "bad_request", "the Content-Length header is not a valid length"
                )(scope, receive, send)
                return
            if length > self.max_bytes:
                await error_response(
                    413,
                    "payload_too_large",
                    too_large_message(self.max_bytes),
                    headers={"Connection": "close"},
                )(scope, receive, send)
                return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            # Read outside FastAPI's exception handling (a middleware, a raw Request): answer here.
            await error_response(
                413,
                "payload_too_large",
                too_large_message(self.max_bytes),
                headers={"Connection": "close"},
            )(scope, receive, send)
