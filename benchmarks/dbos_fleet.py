"""DBOS worker processes consuming one queue: the DBOS side of the fleet comparison.

The same shape as Tasker's fleet in `bench_postgres.py`: the workflows (5 no-op steps each, run in
the workflow's thread as DBOS does) are enqueued first by a client (`DBOSClient`), then `workers`
processes each start DBOS with the queue at `concurrency` and run until the queue is drained.
Throughput is measured from DBOS's own records, the first dequeue (`started_at_epoch_ms`) to the
last completion (`updated_at`), so the processes' start-up is excluded, as it is for Tasker; how
long they took to start (spawn to first dequeue) is reported apart.

A worker process is this module run as a script:

    python -m benchmarks.dbos_fleet URL CONCURRENCY
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
APP = "tasker-bench"
VERSION = "bench"
QUEUE = "tasker_bench"
WORKFLOW = "linear5"
STEPS = 5


def _config(url: str) -> Any:
    from dbos import DBOSConfig

    return DBOSConfig(
        name=APP,
        system_database_url=url,
        log_level="WARNING",
        run_migrations=True,
        application_version=VERSION,
    )


def _define() -> Callable[[int], int]:
    """The workflow (5 no-op steps, run in the workflow's thread as DBOS does) and its step,
    registered under the names the client enqueues."""
    from dbos import DBOS

    # dbos is an optional dependency (the bench extra): its decorators are untyped.
    @DBOS.step()  # type: ignore[untyped-decorator]
    def noop(i: int) -> dict[str, bool]:
        return {"ok": True}

    @DBOS.workflow(name=WORKFLOW)  # type: ignore[untyped-decorator]
    def linear5(i: int) -> int:
        for _ in range(STEPS):
            noop(i)
        return i

    workflow: Callable[[int], int] = linear5
    return workflow


def launch(url: str) -> Callable[[int], int]:
    """DBOS started in this process on `url` (SQLite or PostgreSQL), with the workflow to call."""
    from dbos import DBOS

    DBOS(config=_config(url.replace("+psycopg", "")))
    workflow = _define()
    DBOS.launch()
    return workflow


def destroy() -> None:
    from dbos import DBOS

    DBOS.destroy(destroy_registry=True)


def prepare(url: str) -> None:
    """Create DBOS's schema on a scratch database (a launch does), in a process of its own."""
    code = (
        "from dbos import DBOS; from benchmarks import dbos_fleet as f; "
        f"DBOS(config=f._config({url!r})); f._define(); DBOS.launch(); "
        "DBOS.destroy(destroy_registry=True)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def enqueue(url: str, n: int) -> None:
    from dbos import DBOSClient
    from dbos._enqueue_options import EnqueueOptions

    client = DBOSClient(system_database_url=url)
    try:
        options: EnqueueOptions = {
            "queue_name": QUEUE,
            "workflow_name": WORKFLOW,
            "app_version": VERSION,
        }
        for i in range(n):
            client.enqueue(options, i)
    finally:
        client.destroy()


def _counts(url: str) -> tuple[int, int | None, int | None]:
    """Workflows done, the first dequeue and the last completion (epoch ms)."""
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(
            """SELECT count(*) FILTER (WHERE status = 'SUCCESS'),
                      min(started_at_epoch_ms), max(updated_at) FILTER (WHERE status = 'SUCCESS')
                 FROM dbos.workflow_status"""
        ).fetchone()
    assert row is not None
    return int(row[0]), row[1], row[2]


def throughput(url: str, workers: int, tasks: int, concurrency: int) -> tuple[float, float]:
    """(steps/s from the first dequeue to the last completion, seconds from spawning the workers
    to the first dequeue) for `tasks` workflows drained by `workers` DBOS processes."""
    url = url.replace("+psycopg", "")
    prepare(url)
    enqueue(url, tasks)
    spawned = time.time()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.dbos_fleet", url, str(concurrency)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    try:
        deadline = time.monotonic() + 600
        while True:
            done, first, last = _counts(url)
            if done >= tasks:
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"DBOS workers finished {done} of {tasks} workflows")
            time.sleep(0.2)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    assert first is not None and last is not None
    return tasks * STEPS / ((last - first) / 1000), first / 1000 - spawned


def _worker(url: str, concurrency: int) -> None:
    from dbos import DBOS

    launch(url)
    # DBOS polls its queue table; 0.1 s instead of the 1 s default, so polling does not cap its
    # throughput (as in bench_postgres's one-process run).
    DBOS.register_queue(QUEUE, worker_concurrency=concurrency, polling_interval_sec=0.1)
    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    while not stop:
        time.sleep(0.1)
    destroy()
    os._exit(0)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _worker(sys.argv[1], int(sys.argv[2]))
