"""PostgreSQL fleet benchmarks (issue: fleet of workers), each on a scratch database, printing a
table.

  a. throughput: 4,000 tasks of the 5-step no-op chain, worked by 1 and by 2 `tasker worker`
  processes; b. claim latency with idle workers: step ready -> handler started, p50 and p99;
  c. cost growth: steps/s with 1,000 and with 100,000 tasks already waiting;
  d. recovery: time from SIGKILL of a worker to its steps running on another worker;
  e. the same 5-step workload on DBOS (pip install 'tasker-engine[bench]') against the same server:
     one workflow at a time, and its fleet of 1 and 2 worker processes draining a queue the
     workflows were enqueued to beforehand (`benchmarks/dbos_fleet.py`), as Tasker's tasks are
     created before its workers start.

Throughput is measured from each engine's own records (first claim or dequeue to last
completion), so worker start-up does not count for either; it is reported apart (spawn to first
claim or dequeue). Run from the repository root:

    python benchmarks/bench_postgres.py [--runs 3] [--backlog 100000] [--skip dbos,growth]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks import dbos_fleet  # noqa: E402
from benchmarks.fleet import WorkerProcess, percentile, scratch_database, wait_until  # noqa: E402
from tasker import Tasker  # noqa: E402

TEMPLATE = ROOT / "benchmarks" / "templates"
REF = "bench/linear5"
#: The same chain with `run_inline` handlers (`--inline`): no hand-off to a handler thread.
INLINE_REF = "bench/linear5_inline"
#: The one-step template whose handler stamps when it starts (claim latency); `--inline` too.
STAMP_REF = "bench/stamp"
STAMP_INLINE_REF = "bench/stamp_inline"
STEPS = 5


def engine(url: str) -> Tasker:
    t = Tasker(url, migrate=True)  # a scratch database: create the schema
    t.load_templates(TEMPLATE)
    return t


def count_complete(t: Tasker, ids: list[int] | None = None) -> int:
    with t.db.read() as c:
        q = "select count(*) from tasker_tasks where status = 'complete'"
        return int(c.exec_driver_sql(q).scalar_one())


def span_steps_per_second(t: Tasker, since_task_id: int = 0) -> tuple[float, int]:
    """Steps per second between the first claim and the last completion of tasks with id > since."""
    with t.db.read() as c:
        row = c.execute(
            sa.text(
                "select min(at) filter (where to_state = 'in_progress'), max(at) filter (where"
                " to_state = 'complete'), count(*) filter (where to_state = 'complete') from"
                " tasker_step_transitions where task_id > :since"
            ),
            {"since": since_task_id},
        ).one()
    first, last, n = row
    return n / max((last - first).total_seconds(), 1e-9), int(n)


def throughput(workers: int, tasks: int, concurrency: int) -> tuple[float, float]:
    """(steps/s from the first claim to the last completion, seconds from spawning the worker
    processes to the first claim: their start-up, excluded from the rate and reported apart)."""
    with scratch_database() as url:
        t = engine(url)
        t.create_tasks(REF, [{"i": i} for i in range(tasks)])
        spawned = time.time()
        procs = [WorkerProcess(url, concurrency=concurrency) for _ in range(workers)]
        try:
            # Polled as often as DBOS's run is (`dbos_fleet.throughput`, every 0.2 s): the count
            # costs the server a few milliseconds, on the cores the workers use.
            assert wait_until(lambda: count_complete(t) >= tasks, timeout=600, interval=0.2), (
                "tasks did not finish"
            )
        finally:
            for p in procs:
                p.stop()
        rate, n = span_steps_per_second(t)
        assert n == tasks * STEPS, n
        with t.db.read() as c:
            first: datetime = c.execute(
                sa.text(
                    "select min(at) from tasker_step_transitions where to_state = 'in_progress'"
                )
            ).scalar_one()
        t.close()
        return rate, first.timestamp() - spawned


def claim_latency(samples: int) -> tuple[float, float]:
    """ms from a ready step being committed (create_task has returned) to its handler running, with
    one idle, listening worker in another process. The handler stamps its own start time."""
    with scratch_database() as url:
        t = engine(url)
        proc = WorkerProcess(url, concurrency=8)
        try:
            time.sleep(2.0)  # let it start and LISTEN
            lat: list[float] = []
            for i in range(samples):
                task = t.create_task(STAMP_REF, {"sample": i})
                committed = time.time()
                # Look only once the claim has had time to happen: polling at once would put this
                # process and its backend on the two cores the worker is claiming with.
                time.sleep(0.02)
                assert wait_until(
                    lambda tid=task.id: t.get_task(tid).status == "complete", timeout=30
                )
                started = t.get_task(task.id).steps[0].results["started"]  # type: ignore[index]
                lat.append((started - committed) * 1000)
                time.sleep(0.02)
        finally:
            proc.stop()
        t.close()
    return percentile(lat, 50), percentile(lat, 99)


def growth(backlog: int, measured_steps: int, concurrency: int) -> float:
    """steps/s over the first `measured_steps` completions by 2 workers, with `backlog` tasks all
    due at the start: finding work must cost the same however long the queue is."""
    with scratch_database() as url:
        t = engine(url)
        t.create_tasks(REF, [{"backlog": i} for i in range(backlog)], chunk_size=2000)
        with t.db.write() as c:
            c.exec_driver_sql("analyze")

        def completions() -> int:
            with t.db.read() as c:
                return int(
                    c.execute(
                        sa.text(
                            "select count(*) from tasker_step_transitions where to_state ="
                            " 'complete'"
                        )
                    ).scalar_one()
                )

        procs = [WorkerProcess(url, concurrency=concurrency) for _ in range(2)]
        try:
            assert wait_until(lambda: completions() >= measured_steps, timeout=600, interval=0.2)
        finally:
            for p in procs:
                p.stop()
        with t.db.read() as c:
            first: datetime = c.execute(
                sa.text(
                    "select min(at) from tasker_step_transitions where to_state = 'in_progress'"
                )
            ).scalar_one()
            nth: datetime = c.execute(
                sa.text(
                    "select at from tasker_step_transitions where to_state = 'complete' order by at"
                    " offset :n limit 1"
                ),
                {"n": measured_steps - 1},
            ).scalar_one()
        t.close()
        return measured_steps / (nth - first).total_seconds()


def recovery(lease: float) -> float:
    """Seconds from SIGKILL of the worker holding steps to their claim by the surviving worker."""
    with scratch_database() as url:
        t = engine(url)
        victim = WorkerProcess(
            url, concurrency=4, lease_seconds=lease, extra=["--namespaces", "slow"]
        )
        try:
            ids = [t.create_task("slow/hold", {"i": i}).id for i in range(4)]
            assert wait_until(
                lambda: all(t.get_task(i).steps[0].status == "in_progress" for i in ids), timeout=30
            )
            survivor = WorkerProcess(
                url, concurrency=4, lease_seconds=lease, extra=["--namespaces", "slow"]
            )
            time.sleep(1.0)
            killed_at = time.time()
            victim.kill()
            assert wait_until(
                lambda: all(t.get_task(i).steps[0].attempts >= 2 for i in ids),
                timeout=lease * 3 + 10,
            )
            with t.db.read() as c:
                reclaimed: datetime = c.execute(
                    sa.text(
                        "select max(at) from tasker_step_transitions where to_state = 'in_progress'"
                        " and attempt = 2"
                    )
                ).scalar_one()
            survivor.stop()
        finally:
            victim.kill()
        t.close()
        return reclaimed.timestamp() - killed_at


def dbos_sequential(url: str, n: int) -> float:
    """ms per 5-step DBOS workflow called directly, one after another (median of `n`)."""
    linear5 = dbos_fleet.launch(url)
    try:
        for i in range(3):
            linear5(-i - 1)
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            linear5(i)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        dbos_fleet.destroy()
    return statistics.median(times)


def dbos_throughput(workers: int, tasks: int, concurrency: int) -> tuple[float, float]:
    """DBOS's fleet (`benchmarks/dbos_fleet.py`): (steps/s, start-up seconds), as `throughput`."""
    with scratch_database("dbos_bench") as url:
        return dbos_fleet.throughput(url, workers, tasks, concurrency)


def tasker_sequential(url: str, n: int) -> float:
    t = engine(url)
    for i in range(3):
        t.run(t.create_task(REF, {"warm": i}).id)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        t.run(t.create_task(REF, {"seq": i}).id)
        times.append((time.perf_counter() - t0) * 1000)
    t.close()
    return statistics.median(times)


class _Reported(dict[str, object]):
    """Results that are also written to stderr as they are measured, so a late failure loses
    nothing."""

    def __setitem__(self, key: str, value: object) -> None:
        super().__setitem__(key, value)
        print(f"{key}: {value}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--tasks",
        type=int,
        default=4000,
        help="tasks of the fleet runs: 4,000 (20,000 steps) keep ramp-up and the last chain a"
        " small part of a run at 10,000 steps/s",
    )
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--backlog", type=int, default=100_000)
    ap.add_argument("--latency-samples", type=int, default=200)
    ap.add_argument("--lease", type=float, default=5.0)
    ap.add_argument(
        "--skip", default="", help="comma-separated: throughput,latency,growth,recovery,dbos"
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--inline",
        action="store_true",
        help="handlers run_inline (as DBOS runs its steps)",
    )
    args = ap.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.inline:
        global REF, STAMP_REF
        REF = INLINE_REF
        STAMP_REF = STAMP_INLINE_REF
    res: dict[str, object] = _Reported({"cpus": os.cpu_count(), "runs": args.runs})
    if "throughput" not in skip:
        for workers, label in ((1, "1_worker"), (2, "2_workers")):
            runs = [throughput(workers, args.tasks, args.concurrency) for _ in range(args.runs)]
            res[f"steps_per_s_{label}"] = statistics.median(r[0] for r in runs)
            res[f"startup_s_{label}"] = statistics.median(r[1] for r in runs)
    if "latency" not in skip:
        p50, p99 = claim_latency(args.latency_samples)
        res["claim_latency_ms_p50"], res["claim_latency_ms_p99"] = p50, p99
    if "growth" not in skip:
        small = growth(1000, args.tasks * STEPS, args.concurrency)
        res["steps_per_s_1k_waiting"] = small
        large = growth(args.backlog, args.tasks * STEPS, args.concurrency)
        res[f"steps_per_s_{args.backlog // 1000}k_waiting"] = large
        res["growth_ratio"] = large / small
    if "recovery" not in skip:
        res["lease_seconds"] = args.lease
        res["recovery_seconds"] = statistics.median(recovery(args.lease) for _ in range(args.runs))
    if "dbos" not in skip:
        with scratch_database("tasker_bench_seq") as url:
            res["tasker_sequential_ms"] = tasker_sequential(url, 50)
        with scratch_database("dbos_bench") as url:
            res["dbos_sequential_ms"] = dbos_sequential(url, 50)
        res["ratio_vs_dbos_sequential"] = res["dbos_sequential_ms"] / res["tasker_sequential_ms"]  # type: ignore[operator]
        for workers, label in ((1, "1_worker"), (2, "2_workers")):
            runs = [
                dbos_throughput(workers, args.tasks, args.concurrency) for _ in range(args.runs)
            ]
            rate = statistics.median(r[0] for r in runs)
            res[f"dbos_steps_per_s_{label}"] = rate
            res[f"dbos_startup_s_{label}"] = statistics.median(r[1] for r in runs)
            if f"steps_per_s_{label}" in res:
                res[f"ratio_vs_dbos_{label}"] = res[f"steps_per_s_{label}"] / rate  # type: ignore[operator]
    if args.json:
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in res.items()}))
        return
    table = Table(
        title=f"Tasker on PostgreSQL ({os.cpu_count()} CPUs; medians of {args.runs} runs)"
    )
    table.add_column("measure")
    table.add_column("result", justify="right")
    for k, v in res.items():
        table.add_row(k, f"{v:,.2f}" if isinstance(v, float) else str(v))
    Console().print(table)


if __name__ == "__main__":
    main()
