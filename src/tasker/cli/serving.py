"""What `tasker serve` runs: the REST API (uvicorn), optionally with in-process workers that run the
steps.

Kept apart from the command's definition so that every other command starts without importing
FastAPI.

With `--workers N` one command both serves and executes, which is what a laptop or a small
deployment wants; a fleet runs `tasker serve` and separate `tasker worker` processes on the same
PostgreSQL. The workers run on their own threads and event loops, so a busy handler never delays an
HTTP answer. A supervisor restarts a worker that dies (with backoff, logging why) and tells the
health routes, so `/health/ready` answers 503 while one is down instead of lying. On SIGTERM or
SIGINT the server stops accepting requests and the workers stop claiming at once; in-flight requests
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
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from types import FrameType

import click
import uvicorn

from tasker.api.app import API_PREFIX, create_app
from tasker.api.auth import auth_warning, check_auth_settings
from tasker.api.embedded import EmbeddedState, EmbeddedWorkerState, attach
from tasker.api.protocol import uvicorn_options
from tasker.cli.common import fail, state
from tasker.engine.tasker import Tasker
from tasker.engine.worker import Worker
from tasker.observability.logging import set_level

log = logging.getLogger("tasker.api")


def serve_api(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    templates: tuple[str, ...],
    database_url: str | None,
    workers: int,
    concurrency: int | None,
) -> None:
    """Serve the REST API (under /api/v1, docs at /docs) and optionally run workers."""
    st = state(ctx)
    settings = dataclasses.replace(
        st.settings,
        api_host=host or st.settings.api_host,
        api_port=st.settings.api_port if port is None else port,
    )
    check_auth_settings(settings)
    level = ctx.meta.get("tasker.log_level") or ("DEBUG" if st.verbose else settings.log_level)
    set_level(level)
    if database_url:
        st.database_url = database_url
    sock = _listen(settings.api_host, settings.api_port)
    engine = st.engine(templates)
    if not len(engine.registry):
        log.warning(
            "no templates are loaded, so no task can be created; fix: pass --templates PATH"
        )
    warning = auth_warning(settings)
    if warning:
        log.warning(warning)
    bound_host, bound_port = sock.getsockname()[:2]
    log.info(
        "serving the Tasker API on http://%s:%d%s (docs at /docs) with %d in-process worker(s)",
        bound_host,
        bound_port,
        API_PREFIX,
        workers,
    )
    per_worker = concurrency or settings.concurrency
    pool = _Supervisor(
        engine,
        workers,
        grace_seconds=settings.grace_seconds,
        make_worker=lambda: engine.worker(
            concurrency=per_worker,
            grace_seconds=settings.grace_seconds,
            housekeeping=settings.housekeeping(),
        ),
    )
    app = create_app(engine, settings)
    if workers:
        attach(app, pool)  # the health routes report the embedded workers: down means not ready
    # log_config=None: uvicorn's own lines go through the same handler (and format) as every other
    # line.
    logging.getLogger("uvicorn.error").addFilter(_drop_colour)
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=level.lower(),
        lifespan="on",
        timeout_graceful_shutdown=max(1, round(settings.grace_seconds)),
        **uvicorn_options(),
    )  # h11 with a bounded head: 414/431, never a reset
    server = _Server(config, on_exit=pool.stop)
    pool.start()
    try:
        server.run(sockets=[sock])
    finally:
        pool.stop()
        pool.join()
        engine.close()
    stuck = pool.abandoned or _handler_threads_left(timeout=1.0)
    if stuck:
        # Abandoned sync handlers cannot be interrupted and the interpreter would wait for their
        # threads (so would the handlers of a worker that died): their steps are handed back or will
        # be when their leases expire, so leave without them (as `tasker worker` does).
        log.warning("exiting without waiting for %d abandoned step handler(s)", stuck)
        logging.shutdown()
        os._exit(0)


def _handler_threads_left(timeout: float) -> int:
    """Step handler threads still running after the workers stopped, given `timeout` s to finish."""
    deadline = time.monotonic() + timeout
    left = [t for t in threading.enumerate() if t.name.startswith("tasker-step") and not t.daemon]
    for thread in left:
        thread.join(max(0.0, deadline - time.monotonic()))
    return sum(t.is_alive() for t in left)


def _drop_colour(record: logging.LogRecord) -> bool:
    """uvicorn attaches an ANSI-coloured copy of some messages; structured lines would print it as a
    field."""
    record.__dict__.pop("color_message", None)
    return True


def _listen(host: str, port: int) -> socket.socket:
    """Bind before anything else starts, so a busy port or a bad host is one clear line and exit
    2."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        fail(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); fix: choose another --port or"
            " --host"
        )
        raise  # unreachable: fail() exits
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, telling the workers to stop as soon as a signal arrives and not re-raising
    it.

    uvicorn re-raises a captured SIGTERM after its shutdown, which would kill the process before the
    workers drain; here the command itself exits once everything has stopped.
    """

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]):
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """One log line per signal received, then stop serving and stop the workers claiming."""
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if self.should_exit:
            log.info("received %s again: already stopping", name)
        else:
            log.info(
                "received %s: stops accepting requests; in-flight requests and steps finish", name
            )
        super().handle_exit(sig, frame)
        self._on_exit()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {
            sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def next_backoff(
    previous: float | None, ran_for: float, *, initial: float, maximum: float, healthy_after: float
) -> float:
    """Seconds to wait before restarting a worker that died after running `ran_for` seconds.

    Doubling from `initial` up to `maximum` keeps a worker that dies at once (a poison step it keeps
    claiming, a broken store) from spinning and flooding the log; a run that lasted `healthy_after`
    seconds was a success, so its death starts the sequence afresh.
    """
    if previous is None or ran_for >= healthy_after:
        return initial
    return min(previous * 2, maximum)


@dataclasses.dataclass
class _Slot:
    """The mutable state of one supervised worker; read only under the supervisor's lock."""

    index: int
    state: EmbeddedState = "starting"
    since: datetime = dataclasses.field(default_factory=lambda: datetime.now(UTC))
    worker: Worker | None = None
    restarts: int = 0
    last_error: str | None = None
    last_error_at: datetime | None = None
    restart_at: float | None = None


class _Supervisor:
    """N embedded workers, each on its own thread and event loop, restarted with backoff on death.

    Whatever ends a worker's run other than the server's own shutdown (an exception escaping
    `Worker.run`, or a `SystemExit`/`KeyboardInterrupt` from a handler, which asyncio lets escape
    the event loop) is caught here, on the worker's thread, so it can never take the server down:
    it is logged with its traceback, counted, and the worker is replaced by a fresh one (a new
    worker id; the steps the dead one held come back when their leases expire). One thread per
    worker keeps a death from cancelling the others. `snapshot()` is what `/health/ready` and
    `/health/status` read, so the server never reports healthy while a worker is down.
    """

    def __init__(
        self,
        engine: Tasker,
        count: int,
        make_worker: Callable[[], Worker],
        *,
        grace_seconds: float,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        healthy_after: float = 60.0,
    ):
        self.engine = engine
        self.count = count
        self.make_worker = make_worker
        self.grace_seconds = grace_seconds
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.healthy_after = healthy_after
        self._slots = [_Slot(i + 1) for i in range(count)]
        self._made: list[Worker] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for slot in self._slots:
            thread = threading.Thread(
                target=self._supervise,
                args=(slot,),
                daemon=True,
                name=f"tasker-serve-worker-{slot.index}",
            )
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        """The server's shutdown: stop claiming, let in-flight steps finish, restart nothing."""
        self._stopping.set()  # before reading the slots: a worker registered later sees the flag
        with self._lock:
            running = [slot.worker for slot in self._slots if slot.worker is not None]
        for worker in running:
            worker.stop()

    def join(self) -> None:
        deadline = time.monotonic() + self.grace_seconds + 10
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    @property
    def abandoned(self) -> int:
        with self._lock:
            return sum(w.abandoned for w in self._made)

    def snapshot(self) -> list[EmbeddedWorkerState]:
        now = time.monotonic()
        with self._lock:
            return [
                EmbeddedWorkerState(
                    index=s.index,
                    total=self.count,
                    state=s.state,
                    worker_id=s.worker.id if s.worker is not None else None,
                    since=s.since,
                    restarts=s.restarts,
                    last_error=s.last_error,
                    last_error_at=s.last_error_at,
                    restart_in_seconds=(
                        None if s.restart_at is None else max(0.0, s.restart_at - now)
                    ),
                )
                for s in self._slots
            ]

    def _set(self, slot: _Slot, state: EmbeddedState, **changes: object) -> None:
        with self._lock:
            if slot.state != state:
                slot.state, slot.since = state, datetime.now(UTC)
            for name, value in changes.items():
                setattr(slot, name, value)

    def _supervise(self, slot: _Slot) -> None:
        """The life of one slot: run a worker; when it dies, wait out the backoff, run another."""
        delay: float | None = None
        first = True
        while not self._stopping.is_set():
            with self._lock:
                if not first:
                    slot.restarts += 1
                slot.restart_at = None
            first = False
            started = time.monotonic()
            error: BaseException | None = None
            worker_id = "not created"
            try:
                worker = self.make_worker()
                worker_id = worker.id
                with self._lock:
                    self._made.append(worker)
                    slot.worker = worker
                if self._stopping.is_set():
                    worker.stop()  # stop() may have read the slots before this one was there
                self._set(slot, "running")
                asyncio.run(self.engine.awork(worker=worker, until_idle=False))
            except BaseException as exc:  # a SystemExit from a handler must not end the server
                error = exc
            ran_for = time.monotonic() - started
            if self._stopping.is_set():
                if error is not None:
                    log.warning(
                        "embedded worker %d of %d (%s) ended with %s while the server stopped",
                        slot.index,
                        self.count,
                        worker_id,
                        _describe(error),
                        exc_info=error,
                    )
                break
            if error is None:
                error = RuntimeError("its run returned although nobody asked it to stop")
            delay = next_backoff(
                delay,
                ran_for,
                initial=self.backoff_initial,
                maximum=self.backoff_max,
                healthy_after=self.healthy_after,
            )
            why = _describe(error)
            # The traceback once per distinct error: a worker dying of the same poison every minute
            # would otherwise bury the log under copies of it.
            repeated = why == slot.last_error
            self._set(
                slot,
                "restarting",
                last_error=why,
                last_error_at=datetime.now(UTC),
                restart_at=time.monotonic() + delay,
            )
            log.error(
                "embedded worker %d of %d (%s) died after %.1f s on %s%s; restarting it in %.3g s",
                slot.index,
                self.count,
                worker_id,
                ran_for,
                why,
                " (as before; traceback above)" if repeated else "",
                delay,
                exc_info=None if repeated else error,
            )
            if self._stopping.wait(delay):
                break
        self._set(slot, "stopped", restart_at=None)


def _describe(exc: BaseException) -> str:
    """`SystemExit: 3`: the class and first line, short enough for a health answer; never raises."""
    try:
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    except Exception:  # a broken __str__ still names the class
        text = "(its message could not be read)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
