"""Serve an ASGI app for a test: uvicorn in a background thread, on a socket bound to a free loopback port.

Binding the socket first (port 0) and handing it to uvicorn leaves no window in which another process
could take the port. Streaming and real HTTP clients need this; a buffered test client would not do.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


@contextmanager
def serving(app: Any, **config: Any) -> Iterator[str]:
    """Yield the base URL (`http://127.0.0.1:<port>`) while `app` is served; stop it afterwards."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config.setdefault("log_level", "warning")
    server = uvicorn.Server(uvicorn.Config(app, access_log=False, timeout_graceful_shutdown=1, **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
