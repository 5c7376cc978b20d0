"""What `tasker serve` runs: the REST API (uvicorn), optionally with in-process workers that run the steps.

Kept apart from the command's definition so that every other command starts without importing FastAPI.

With `--workers N` one command both serves and executes, which is what a laptop or a small deployment
wants; a fleet runs `tasker serve` and separate `tasker worker` processes on the same PostgreSQL. The
workers run on their own thread and event loop, so a busy handler never delays an HTTP answer. On SIGTERM
or SIGINT the server stops accepting requests and the workers stop claiming at once; in-flight requests
and steps finish (steps for up to the grace period), then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from types import FrameType

import click
import uvicorn

from tasker.api.app import API_PREFIX, create_app
from tasker.api.auth import auth_warning, check_auth_settings
from tasker.cli.common import fail, state
from tasker.engine.tasker import Tasker
from tasker.engine.worker import Worker
from tasker.observability.logging import set_level

log = logging.getLogger("tasker.api")


def serve_api(ctx: click.Context, host: str | None, port: int | None, templates: tuple[str, ...],
              database_url: str | None, workers: int, concurrency: int | None) -> None:
    """Serve the REST API (under /api/v1, docs at /docs) and optionally run workers."""
    st = state(ctx)
    settings = dataclasses.replace(st.settings, api_host=host or st.settings.api_host,
                                   api_port=st.settings.api_port if port is None else port)
    check_auth_settings(settings)
    level = ctx.meta.get("tasker.log_level") or ("DEBUG" if st.verbose else settings.log_level)
    set_level(level)
    if database_url:
        st.database_url = database_url
    sock = _listen(settings.api_host, settings.api_port)
    engine = st.engine(templates)
    if not len(engine.registry):
        log.warning("no templates are loaded, so no task can be created; fix: pass --templates PATH")
    warning = auth_warning(settings)
    if warning:
        log.warning(warning)
    bound_host, bound_port = sock.getsockname()[:2]
    log.info("serving the Tasker API on http://%s:%d%s (docs at /docs) with %d in-process worker(s)",
             bound_host, bound_port, API_PREFIX, workers)
    pool = _WorkerThread(engine, workers, concurrency or settings.concurrency, settings.grace_seconds)
    # log_config=None: uvicorn's own lines go through the same handler (and format) as every other line.
    logging.getLogger("uvicorn.error").addFilter(_drop_colour)
    config = uvicorn.Config(create_app(engine, settings), log_config=None, log_level=level.lower(), lifespan="on",
                            timeout_graceful_shutdown=max(1, round(settings.grace_seconds)))
    server = _Server(config, on_exit=pool.stop)
    pool.on_crash = server.request_exit
    pool.start()
    try:
        server.run(sockets=[sock])
    finally:
        pool.stop()
        pool.join()
        engine.close()
    if pool.crashed:
        ctx.exit(1)
    if pool.abandoned:
        # Abandoned sync handlers cannot be interrupted and the interpreter would wait for their threads:
        # their steps are already handed back, so leave without them (as `tasker worker` does).
        log.warning("exiting without waiting for %d abandoned step handler(s)", pool.abandoned)
        logging.shutdown()
        os._exit(0)


def _drop_colour(record: logging.LogRecord) -> bool:
    """uvicorn attaches an ANSI-coloured copy of some messages; structured lines would print it as a field."""
    record.__dict__.pop("color_message", None)
    return True


def _listen(host: str, port: int) -> socket.socket:
    """Bind before anything else starts, so a busy port or a bad host is one clear line and exit 2."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port} ({exc.strerror or exc}); fix: choose another --port or --host")
        raise  # unreachable: fail() exits
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, telling the workers to stop as soon as a signal arrives and not re-raising it.

    uvicorn re-raises a captured SIGTERM after its shutdown, which would kill the process before the
    workers drain; here the command itself exits once everything has stopped.
    """

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]):
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._on_exit()

    def request_exit(self) -> None:
        self.should_exit = True

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


class _WorkerThread:
    """N workers on one event loop in a background thread; a crash stops the server too (exit 1)."""

    def __init__(self, engine: Tasker, count: int, concurrency: int, grace_seconds: float):
        self.engine = engine
        self.workers: list[Worker] = [
            engine.worker(concurrency=concurrency, grace_seconds=grace_seconds) for _ in range(count)
        ]
        self.grace_seconds = grace_seconds
        self.thread: threading.Thread | None = None
        self.on_crash: Callable[[], None] = lambda: None
        self.crashed = False

    def start(self) -> None:
        if self.workers:
            self.thread = threading.Thread(target=self._run, name="tasker-serve-workers", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        async def drive() -> None:
            await asyncio.gather(*(self.engine.awork(worker=w, until_idle=False) for w in self.workers))

        try:
            asyncio.run(drive())
        except Exception:
            log.exception("the in-process workers stopped on an error; shutting the server down")
            self.crashed = True
            self.stop()
            self.on_crash()

    def stop(self) -> None:
        for w in self.workers:
            w.stop()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join(timeout=self.grace_seconds + 10)

    @property
    def abandoned(self) -> int:
        return sum(w.abandoned for w in self.workers)
