"""Bounds on the shape of every JSON body, checked before the body is parsed.

Python's JSON parser recurses once per nesting level and turns any run of digits into an `int`: a
body of 100,000 `[` exhausts the recursion limit, and a 5,000-digit integer passes the interpreter's
digit limit; both surfaced as a misleading "is it UTF-8?" 400. A 30-digit integer parsed fine but no
JSON client in another language can read it back, and `1e400` silently became infinity. So a body is
scanned first, with a regular expression over its tokens (no recursion, linear time), and refused
with 422 naming the JSON path of the first problem:

- nesting deeper than `MAX_BODY_DEPTH` levels;
- an integer outside the signed 64-bit range, or a number literal longer than `MAX_NUMBER_CHARS`;
- a number that is not finite (`NaN`, `Infinity`, or a literal such as `1e400` that overflows).

Anything else the scanner does not understand is left to the parser, which reports invalid JSON
itself.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tasker.api.errors import ErrorDetail, error_response

#: How deep a request body may nest (a task context adds two levels to its own data).
MAX_BODY_DEPTH = 64
#: The longest number literal accepted: a double needs 17 significant digits and an exponent.
MAX_NUMBER_CHARS = 40
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_TOKEN = re.compile(
    r'"[^"\\]*(?:\\.[^"\\]*)*"'  # a string (escapes included)
    r"|[\[\]{},:]"  # structure
    r"|-?[0-9][0-9eE.+\-]*"  # a number
    r"|[A-Za-z_+\-][A-Za-z0-9_+\-.]*",  # true/false/null, or NaN/Infinity that the parser accepts
    re.DOTALL,
)
_INTEGER = re.compile(r"-?[0-9]+")
_NON_FINITE = {"NaN", "Infinity", "-Infinity", "+Infinity", "+NaN", "-NaN"}


@dataclass
class _Frame:
    """One open container: an object (with the key being read) or an array (with the index)."""

    is_object: bool
    key: str | None = None
    index: int = 0
    expect_key: bool = True


def _path(stack: list[_Frame]) -> str:
    out = "$"
    for frame in stack:
        if frame.is_object:
            if frame.key is not None:
                out += f".{frame.key}"
        else:
            out += f"[{frame.index}]"
    return out


def _key(token: str) -> str:
    try:
        text = json.loads(token)
    except ValueError:
        return token[1:-1]
    return text if isinstance(text, str) else token[1:-1]


def _number_problem(literal: str) -> str | None:
    shown = literal if len(literal) <= 30 else f"{literal[:24]}... ({len(literal)} characters)"
    if len(literal) > MAX_NUMBER_CHARS:
        if _INTEGER.fullmatch(literal):
            return (
                f"the integer {shown} is outside the 64-bit range ({INT64_MIN} to {INT64_MAX}); "
                "fix: send it as a string"
            )
        return (
            f"the number {shown} is longer than {MAX_NUMBER_CHARS} characters; "
            "fix: send it as a string"
        )
    if _INTEGER.fullmatch(literal):
        if not INT64_MIN <= int(literal) <= INT64_MAX:
            return (
                f"the integer {shown} is outside the 64-bit range ({INT64_MIN} to {INT64_MAX}); "
                "fix: send it as a string"
            )
        return None
    try:
        value = float(literal)
    except ValueError:
        return None  # not a number after all: the parser will say the JSON is invalid
    if not math.isfinite(value):
        return (
            f"the number {shown} is too large to be a finite number; "
            "fix: send a finite number or null"
        )
    return None


def body_problem(text: str) -> ErrorDetail | None:
    """The first violation of the bounds in the JSON `text`, with its path; None if none."""
    stack: list[_Frame] = []
    for match in _TOKEN.finditer(text):
        token = match.group()
        first = token[0]
        top = stack[-1] if stack else None
        if first in "[{":
            if len(stack) >= MAX_BODY_DEPTH:
                return ErrorDetail(
                    path=_path(stack),
                    message=f"nests deeper than {MAX_BODY_DEPTH} levels; fix: flatten the data",
                )
            stack.append(_Frame(is_object=first == "{"))
        elif first in "]}":
            if stack:
                stack.pop()
        elif first == ",":
            if top is not None:
                if top.is_object:
                    top.expect_key = True
                else:
                    top.index += 1
        elif first == ":":
            if top is not None and top.is_object:
                top.expect_key = False
        elif first == '"':
            if top is not None and top.is_object and top.expect_key:
                top.key = _key(token)
        elif token in _NON_FINITE:
            return ErrorDetail(
                path=_path(stack),
                message=f"{token} is not a finite JSON number; fix: send a finite number or null",
            )
        elif first.isdigit() or (first == "-" and len(token) > 1 and token[1].isdigit()):
            problem = _number_problem(token)
            if problem:
                return ErrorDetail(path=_path(stack), message=problem)
    return None


def _is_json(scope: Scope) -> bool:
    """FastAPI parses a body as JSON when it says so, and when it sends no Content-Type at all."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-type":
            kind: bytes = bytes(value).split(b";")[0].strip().lower()
            return kind == b"application/json" or (
                kind.startswith(b"application/") and kind.endswith(b"+json")
            )
    return True


class JsonBodyLimits:
    """ASGI middleware: read a JSON body, check `body_problem`, then hand the same bytes to the app.

    Sits inside `BodySizeLimit`, so the body it buffers is already bounded in size.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") in ("GET", "HEAD", "OPTIONS")
            or not _is_json(scope)
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: let the app see it
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:  # the encodings the parser accepts (UTF-8, -16, -32), detected the way it does
            text = body.decode(json.detect_encoding(body))
        except (UnicodeDecodeError, LookupError):
            text = ""  # the parser answers a body it cannot decode itself
        problem = body_problem(text) if text else None
        if problem is not None:
            message_text = f"invalid request: {problem.path}: {problem.message}"
            await error_response(422, "validation_error", message_text, [problem])(
                scope, receive, send
            )
            return
        await self.app(
            scope,
            _replay([{"type": "http.request", "body": body, "more_body": False}], receive),
            send,
        )


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
