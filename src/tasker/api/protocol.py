"""How `tasker serve` runs uvicorn's HTTP parser: h11 with a bounded buffer that answers 414/431.

uvicorn buffers a request's line and headers up to `h11_max_incomplete_event_size` (16 KiB by
default) and then answers a bare 400 and closes the socket while the client is still sending: the
client sees a connection reset, not a status (a 200 KB URL did). Here the buffer is
`MAX_REQUEST_HEAD_BYTES`, so anything up to that reaches the app, where `RequestSizeLimits` answers
414 or 431 with the API's error body. Beyond it, this protocol answers 414 (the request line never
ended) or 431 (the headers did not) itself, then reads and discards what the client is still sending
for a moment before closing, so the answer is read rather than lost to a reset.

h11 is chosen explicitly, rather than httptools when that happens to be installed, so the limits and
answers are the same on every installation.
"""

from __future__ import annotations

import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from tasker.api.errors import error_body
from tasker.api.middleware import SECURITY_HEADERS, headers_too_large, url_too_long

#: The most bytes of request line and headers buffered per connection before the app sees them.
MAX_REQUEST_HEAD_BYTES = 256 * 1024
#: How long an oversized request's remaining bytes are read and dropped before the socket closes.
DRAIN_SECONDS = 2.0


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering an oversized request head with 414/431, not 400 + reset."""

    draining = False

    def data_received(self, data: bytes) -> None:
        if self.draining:
            return  # the rest of a request already answered: drop it
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        buffered, _ = self.conn.trailing_data
        limit = self.config.h11_max_incomplete_event_size or MAX_REQUEST_HEAD_BYTES
        if len(buffered) <= limit:
            super().send_400_response(msg)
            return
        line_ended = b"\r\n" in buffered[: limit + 2] or b"\n" in buffered[: limit + 1]
        status, code = (431, "headers_too_large") if line_ended else (414, "uri_too_long")
        message = headers_too_large(limit) if line_ended else url_too_long(limit)
        self._answer_and_drain(status, error_body(status, code, message))

    def _answer_and_drain(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode("utf-8")
        headers = [
            (b"content-type", b"application/json"),
            (b"connection", b"close"),
            *SECURITY_HEADERS,
        ]
        # As uvicorn's own 400: h11 still lets a server answer after the client's protocol error.
        for event in (
            h11.Response(status_code=status, headers=headers),
            h11.Data(data=payload),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.draining = True
        self.logger.warning("refused an oversized request head with %d", status)
        try:
            self.transport.write_eof()
        except (NotImplementedError, OSError, RuntimeError):
            self.transport.close()
            return
        self.loop.call_later(DRAIN_SECONDS, self.transport.close)


def uvicorn_options() -> dict[str, Any]:
    """The `uvicorn.Config` arguments of the HTTP layer (used by `tasker serve` and the tests)."""
    return {"http": LimitedH11Protocol, "h11_max_incomplete_event_size": MAX_REQUEST_HEAD_BYTES}
