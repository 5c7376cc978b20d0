"""Core engine benchmark on the embedded store: a 5-step no-op chain.

(a) sequential: create one task and run it to completion, median milliseconds over N runs, with
    threaded handlers and with `run_inline` ones, and DBOS running the same 5-step workflow on the
    same store (SQLite file or PostgreSQL server) called directly (skip with --no-dbos);
(b) throughput: create 1,000 tasks, then work them with concurrency 32: steps per second.

Each figure is the median of several runs on a fresh database. Run from the repository root:

    python benchmarks/bench_core.py [--store sqlite|postgresql] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.bench_postgres import dbos_sequential  # noqa: E402
from tasker import Tasker  # noqa: E402

TEMPLATE = ROOT / "benchmarks" / "templates" / "linear5.yaml"
INLINE_TEMPLATE = ROOT / "benchmarks" / "templates" / "linear5_inline.yaml"
STEPS = 5


def fresh_url(store: str, workdir: Path) -> str:
    if store == "sqlite":
        return f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:8]}.db'}"
    import sqlalchemy as sa

    admin_url = os.environ.get(
        "TASKER_BENCH_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    name = f"tasker_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop(url: str) -> None:
    if url.startswith("sqlite"):
        return
    import sqlalchemy as sa

    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    admin.dispose()


def sequential(url: str, n: int, ref: str = "bench/linear5") -> float:
    """Median ms to create and run one 5-step task (`ref`: the chain, or the chain with
    `run_inline` handlers)."""
    engine = Tasker(url, poll_interval=0.5, migrate=True)
    engine.load_templates(TEMPLATE)
    engine.load_templates(INLINE_TEMPLATE)
    times = []
    for i in range(n + 3):
        t0 = time.perf_counter()
        task = engine.create_task(ref, {"i": i, "run": uuid.uuid4().hex})
        done = engine.run(task.id)
        elapsed = (time.perf_counter() - t0) * 1000
        assert done.status == "complete", done.status
        if i >= 3:  # warm-up: imports, compiled statement caches
            times.append(elapsed)
    engine.close()
    return statistics.median(times)


def throughput(url: str, tasks: int, concurrency: int) -> tuple[float, float]:
    """Steps per second working `tasks` pre-created tasks; also returns creation rate (tasks/s)."""
    engine = Tasker(url, poll_interval=0.5, migrate=True)
    engine.load_templates(TEMPLATE)
    t0 = time.perf_counter()
    for i in range(tasks):
        engine.create_task("bench/linear5", {"i": i})
    created = tasks / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    ran = engine.work(concurrency=concurrency, until_idle=True)
    elapsed = time.perf_counter() - t0
    assert ran == tasks * STEPS, ran
    engine.close()
    return ran / elapsed, created


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--runs", type=int, default=5, help="runs per figure (median reported)")
    ap.add_argument("--sequential-tasks", type=int, default=30)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-dbos", action="store_true", help="skip DBOS (needs the bench extra)")
    args = ap.parse_args()
    seq, inline, peer, thr, cre = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            url = fresh_url(args.store, Path(tmp))
            try:
                seq.append(sequential(url, args.sequential_tasks))
                inline.append(sequential(url, args.sequential_tasks, "bench/linear5_inline"))
            finally:
                drop(url)
            if not args.no_dbos:
                url = fresh_url(args.store, Path(tmp))
                try:
                    peer.append(dbos_sequential(url, args.sequential_tasks))
                finally:
                    drop(url)
            url = fresh_url(args.store, Path(tmp))
            try:
                s, c = throughput(url, args.tasks, args.concurrency)
                thr.append(s)
                cre.append(c)
            finally:
                drop(url)
    result = {
        "store": args.store,
        "sequential_ms_per_task": round(statistics.median(seq), 2),
        "sequential_inline_ms_per_task": round(statistics.median(inline), 2),
        "dbos_sequential_ms_per_workflow": round(statistics.median(peer), 2) if peer else None,
        "throughput_steps_per_s": round(statistics.median(thr), 1),
        "create_tasks_per_s": round(statistics.median(cre), 1),
        "runs": args.runs,
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result))
        return
    table = Table(
        title=(
            f"Tasker core benchmark ({args.store}, 5-step no-op chain, median of {args.runs} runs)"
        )
    )
    table.add_column("measure")
    table.add_column("result", justify="right")
    table.add_column("all runs")
    table.add_row(
        "sequential: create + run one task",
        f"{result['sequential_ms_per_task']:.2f} ms",
        ", ".join(f"{x:.2f}" for x in seq),
    )
    table.add_row(
        "sequential, handlers run_inline",
        f"{result['sequential_inline_ms_per_task']:.2f} ms",
        ", ".join(f"{x:.2f}" for x in inline),
    )
    if peer:
        table.add_row(
            "DBOS, same store: one 5-step workflow called directly",
            f"{result['dbos_sequential_ms_per_workflow']:.2f} ms",
            ", ".join(f"{x:.2f}" for x in peer),
        )
        table.add_row(
            "ratio DBOS / Tasker (sequential; inline)",
            f"{statistics.median(peer) / statistics.median(seq):.2f}x;"
            f" {statistics.median(peer) / statistics.median(inline):.2f}x",
            "",
        )
    table.add_row(
        f"throughput: {args.tasks} tasks, concurrency {args.concurrency}",
        f"{result['throughput_steps_per_s']:.0f} steps/s",
        ", ".join(f"{x:.0f}" for x in thr),
    )
    table.add_row(
        "task creation",
        f"{result['create_tasks_per_s']:.0f} tasks/s",
        ", ".join(f"{x:.0f}" for x in cre),
    )
    Console().print(table)


if __name__ == "__main__":
    main()
