"""`tasker serve --workers N` never lies: embedded workers that die are logged, restarted with
backoff, and reported by `/health/ready` (503 with the reason) and `/health/status` while down.

The in-process tests drive the real supervisor, app and uvicorn server on both stores, with real
workers that die the way a handler calling `sys.exit()` kills one (the exception escapes the
worker's event loop mid-run); the subprocess test runs the real command with a handler that raises
`SystemExit`.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tasker import StepContext, StepHandler, Tasker
from tasker.api.app import create_app
from tasker.api.embedded import attach
from tasker.cli.serving import _Supervisor, next_backoff
from tasker.engine.worker import Worker, WorkerOptions
from tests.servers import serve_process, serving

ROOT = Path(__file__).parents[2]


class Exits(StepHandler):
    """A handler whose library calls `sys.exit(7)`: the subprocess test's poison step."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        raise SystemExit(7)


def _raise(exc: BaseException) -> None:
    raise exc


class Doomed(Worker):
    """A real worker that, when given a poison, dies of it.

    A SystemExit or KeyboardInterrupt is raised from a loop callback shortly after the worker
    started, and escapes the event loop exactly as one from a step handler does; an ordinary
    exception escapes `run` itself, as a bug in the worker would.
    """

    poison: BaseException | None = None

    async def run(self, *, until_idle: bool = False) -> None:
        if isinstance(self.poison, Exception):
            raise self.poison
        if self.poison is not None:
            asyncio.get_running_loop().call_later(0.05, _raise, self.poison)
        await super().run(until_idle=until_idle)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def get_until(client: httpx.Client, path: str, status: int) -> httpx.Response:
    """GET `path` until it answers `status` (a dying worker briefly runs between two deaths)."""
    answers: list[httpx.Response] = []

    def answered() -> bool:
        answers.append(client.get(path))
        return answers[-1].status_code == status

    wait_for(f"{path} answers {status}", answered)
    return answers[-1]


@pytest.fixture
def make_worker(
    engine: Tasker,
) -> Callable[[Callable[[int], BaseException | None]], Callable[[], Worker]]:
    """A worker factory for the supervisor; `poison(n)` says what the n-th worker made dies of."""

    def build(poison: Callable[[int], BaseException | None]) -> Callable[[], Worker]:
        made = 0
        lock = threading.Lock()  # each slot's thread makes its own workers

        def make() -> Worker:
            nonlocal made
            with lock:
                made += 1
                n = made
            worker = Doomed(
                engine.db,
                engine.resolver,
                engine.bus,
                WorkerOptions(concurrency=2, poll_interval=0.05, grace_seconds=1),
                tasks=engine,
            )
            worker.poison = poison(n)
            return worker

        return make

    return build


@pytest.fixture
def supervised(engine: Tasker) -> Iterator[Callable[..., tuple[_Supervisor, httpx.Client]]]:
    """Start a supervisor and serve the app that reports it; stop both afterwards."""
    started: list[tuple[_Supervisor, httpx.Client, Any]] = []

    def start(count: int, make: Callable[[], Worker]) -> tuple[_Supervisor, httpx.Client]:
        sup = _Supervisor(
            engine, count, make, grace_seconds=1, backoff_initial=0.2, backoff_max=0.4
        )
        app = create_app(engine)
        attach(app, sup)
        server = serving(app)
        url = server.__enter__()
        client = httpx.Client(base_url=f"{url}/api/v1", timeout=10)
        started.append((sup, client, server))
        sup.start()
        return sup, client

    yield start
    for sup, client, server in started:
        client.close()
        server.__exit__(None, None, None)
        sup.stop()
        sup.join()


def test_backoff_doubles_to_its_cap_and_starts_afresh_after_a_good_run() -> None:
    delays: list[float] = []
    delay = None
    for _ in range(8):
        delay = next_backoff(delay, 0.5, initial=1, maximum=60, healthy_after=60)
        delays.append(delay)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    assert next_backoff(60, 61, initial=1, maximum=60, healthy_after=60) == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "poison", [SystemExit(3), KeyboardInterrupt()], ids=["SystemExit", "KeyboardInterrupt"]
)
def test_a_dead_worker_is_reported_restarted_and_ready_again_once_it_runs(
    make_worker: Callable[..., Callable[[], Worker]],
    supervised: Callable[..., tuple[_Supervisor, httpx.Client]],
    poison: BaseException,
) -> None:
    healthy = threading.Event()
    sup, client = supervised(1, make_worker(lambda n: None if healthy.is_set() else poison))
    kind = type(poison).__name__

    wait_for("ready answers 503", lambda: client.get("/health/ready").status_code == 503)
    wait_for("the worker was restarted twice", lambda: sup.snapshot()[0].restarts >= 2)
    # The server keeps answering, and its supervising thread survived every death.
    assert client.get("/health/live").status_code == 200
    assert all(t.is_alive() for t in sup._threads)
    ready = get_until(client, "/health/ready", 503)
    body = ready.json()
    assert body["ready"] is False and body["failed_checks"] == ["embedded_workers"]
    check = body["checks"]["embedded_workers"]
    assert check["status"] == "failing" and check["running"] == 0 and check["total"] == 1
    assert re.fullmatch(
        rf"embedded worker 1 of 1 is down since \S+Z, last error: {kind}(: 3)?, "
        r"restarting in \d+ s",
        check["error"],
    ), check["error"]
    assert ready.headers["cache-control"] == "no-store"

    report = get_until(client, "/health/status", 503).json()
    assert report["status"] == "unhealthy" and any(
        "embedded worker 1 of 1 is down" in r for r in report["reasons"]
    )
    (slot,) = report["embedded_workers"]
    assert (
        slot["index"] == 1 and slot["state"] == "restarting" and slot["last_error"].startswith(kind)
    )

    healthy.set()
    body = get_until(client, "/health/ready", 200).json()
    assert body["checks"]["embedded_workers"] == {
        "status": "ok",
        "running": 1,
        "total": 1,
        "error": None,
    }
    report = client.get("/health/status").json()
    assert report["status"] == "healthy", report["reasons"]
    (slot,) = report["embedded_workers"]
    assert (
        slot["state"] == "running" and slot["restarts"] >= 2 and slot["last_error"].startswith(kind)
    )

    # The restarted worker does the work.
    created = client.post(
        "/tasks", json={"template": "apitest/order", "context": {"email": "r@example.com"}}
    )
    assert created.status_code == 201, created.text
    task = f"/tasks/{created.json()['id']}"
    wait_for("the task completes", lambda: client.get(task).json()["status"] == "complete")

    # The server's own shutdown is no death: nothing restarts, every slot ends stopped.
    restarts = sup.snapshot()[0].restarts
    sup.stop()
    sup.join()
    assert not any(t.is_alive() for t in sup._threads)
    (final,) = sup.snapshot()
    assert final.state == "stopped" and final.restarts == restarts


@pytest.mark.timeout(60)
def test_one_dead_worker_of_two_degrades_status_and_fails_readiness(
    make_worker: Callable[..., Callable[[], Worker]],
    supervised: Callable[..., tuple[_Supervisor, httpx.Client]],
) -> None:
    # Each slot makes one worker at start; only the slot that died makes more. So poisoning every
    # worker but the second made leaves one slot running and the other dying again and again.
    sup, client = supervised(
        2, make_worker(lambda n: None if n == 2 else RuntimeError("store exploded"))
    )
    wait_for("one worker was restarted", lambda: max(s.restarts for s in sup.snapshot()) >= 1)
    check = get_until(client, "/health/ready", 503).json()["checks"]["embedded_workers"]
    assert check["total"] == 2 and check["running"] == 1
    assert re.match(
        r"embedded worker [12] of 2 is down since .*last error: RuntimeError: store exploded",
        check["error"],
    ), check["error"]
    wait_for(
        "status is degraded", lambda: client.get("/health/status").json()["status"] == "degraded"
    )
    states = sorted(s["state"] for s in client.get("/health/status").json()["embedded_workers"])
    assert states[1] == "running" and states[0] in ("restarting", "running")


def test_without_embedded_workers_health_is_unchanged(engine: Tasker) -> None:
    with serving(create_app(engine)) as url, httpx.Client(base_url=f"{url}/api/v1") as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["embedded_workers"] is None
        assert client.get("/health/status").json()["embedded_workers"] is None


def clean_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("TASKER_")}, **extra}


POISON = {
    "name": "exits",
    "namespace_name": "poison",
    "version": "1.0.0",
    "step_templates": [
        {
            "name": "boom",
            "handler_class": "tests.api.test_serve_supervision:Exits",
            "default_retry_limit": 2,
        }
    ],
}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_serve_survives_a_handler_calling_sys_exit_and_still_stops_on_sigterm(
    store_url: str,
    api_templates: Path,
) -> None:
    (api_templates / "poison.yaml").write_text(yaml.safe_dump(POISON, sort_keys=False))
    args = [
        "--database-url",
        store_url,
        "--port",
        "0",
        "--templates",
        str(api_templates),
        "--workers",
        "1",
    ]
    with serve_process(
        args, cwd=ROOT, env=clean_env(TASKER_LEASE_SECONDS="2", TASKER_GRACE_SECONDS="2")
    ) as served:
        proc = served.proc
        with httpx.Client(base_url=served.base, timeout=10) as client:
            wait_for("ready", lambda: client.get("/health/ready").status_code == 200)
            poisoned = client.post("/tasks", json={"template": "poison/exits", "context": {}})
            assert poisoned.status_code == 201, poisoned.text
            poison_task = f"/tasks/{poisoned.json()['id']}"

            # Either the worker survives the handler (it records the step's failure) or it dies and
            # the supervisor restarts it; while it is down, readiness says why.
            def settled() -> bool:
                ready = client.get("/health/ready")
                if ready.status_code == 503:
                    assert (
                        "embedded worker 1 of 1 is down" in ready.text
                        and "SystemExit" in ready.text
                    )
                (slot,) = client.get("/health/status").json()["embedded_workers"]
                return bool(slot["restarts"]) or client.get(poison_task).json()["status"] == "error"

            wait_for("the poison step is handled", settled, timeout=40)
            assert proc.poll() is None, served.log()
            innocent = client.post(
                "/tasks", json={"template": "apitest/order", "context": {"email": "i@ex.com"}}
            )
            assert innocent.status_code == 201, innocent.text
            task = f"/tasks/{innocent.json()['id']}"
            wait_for(
                "the innocent task completes",
                lambda: client.get(task).json()["status"] == "complete",
                timeout=40,
            )
            assert client.get("/health/live").status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    seen = served.drain()
    died = [line for line in seen if "embedded worker 1 of 1" in line and "died" in line]
    assert all("SystemExit" in line and "restarting it in" in line for line in died), "".join(seen)
