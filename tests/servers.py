"""Serve an ASGI app for a test: uvicorn in a background thread, on a socket bound to a free
loopback port; or run the real `tasker serve` command as a process and learn its address from its
log.

Binding the socket first (port 0) and handing it to uvicorn leaves no window in which another
process could take the port. Streaming and real HTTP clients need this; a buffered test client would
not do.
"""

from __future__ import annotations

import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn


@contextmanager
def serving(app: Any, **config: Any) -> Iterator[str]:
    """Yield the base URL (`http://127.0.0.1:<port>`) while `app` is served; stop it afterwards."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config.setdefault("log_level", "warning")
    server = uvicorn.Server(
        uvicorn.Config(app, access_log=False, timeout_graceful_shutdown=1, **config)
    )
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


class ServeProcess:
    """A running `tasker serve` process: its base URL (`.../api/v1`) and every stderr line it
    wrote."""

    def __init__(self, proc: subprocess.Popen[str], lines: queue.Queue[str]):
        self.proc = proc
        self.lines = lines
        self.seen: list[str] = []
        self.base = ""

    def log(self) -> str:
        return "".join(self.seen)

    def drain(self) -> list[str]:
        """Every line written so far (after the process ended: all of them)."""
        time.sleep(0.1)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.seen


@contextmanager
def serve_process(
    args: Sequence[str], *, cwd: Path, env: Mapping[str, str], start_timeout: float = 30
) -> Iterator[ServeProcess]:
    """Start `python -m tasker.cli.main serve ARGS` and yield it once it logs the address it serves
    on; kill it afterwards if the test did not stop it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tasker.cli.main", "serve", *args],
        cwd=cwd,
        env=dict(env),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    stream = proc.stderr
    assert stream is not None

    def pump() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    served = ServeProcess(proc, lines)
    try:
        deadline = time.monotonic() + start_timeout
        while not served.base and time.monotonic() < deadline:
            try:
                served.seen.append(lines.get(timeout=1))
            except queue.Empty:
                assert proc.poll() is None, served.log()
                continue
            found = re.search(r"serving the Tasker API on (http://\S+/api/v1)", served.seen[-1])
            served.base = found.group(1) if found else ""
        assert served.base, served.log()
        yield served
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
