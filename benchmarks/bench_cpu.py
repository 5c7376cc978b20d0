"""CPU per step on each side of the wire: worker processes and their PostgreSQL backends
(docs/scaling.md).

Creates `--tasks` tasks of the 5-step no-op chain on a scratch database, starts `--workers`
`tasker worker` processes, and once they are running reads the CPU time (user + system, from
/proc) of the worker processes and of the server backends serving this database, twice: when the
first thousand steps are done, and when all but the last thousand are. The steps completed in
between divide both, so start-up and the tail are left out. Linux only.

    python benchmarks/bench_cpu.py [--tasks 4000] [--workers 2] [--inline]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.fleet import ADMIN_URL, WorkerProcess, scratch_database, wait_until  # noqa: E402
from tasker import Tasker  # noqa: E402

TEMPLATES = ROOT / "benchmarks" / "templates"
STEPS = 5
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, in seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def backends(admin: sa.Engine, database: str) -> list[int]:
    with admin.connect() as c:
        rows = c.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = %(d)s", {"d": database}
        )
        return [int(r[0]) for r in rows]


def completed(engine: sa.Engine) -> int:
    with engine.connect() as c:
        n = c.exec_driver_sql(
            "SELECT count(*) FROM tasker_steps WHERE state = 'complete'"
        ).scalar_one()
        return int(n)


def measure(tasks: int, workers: int, inline: bool) -> dict[str, float]:
    ref = "bench/linear5_inline" if inline else "bench/linear5"
    total = tasks * STEPS
    with scratch_database() as url:
        name = url.rsplit("/", 1)[1]
        t = Tasker(url, migrate=True, templates=TEMPLATES)
        t.create_tasks(ref, [{"i": i} for i in range(tasks)])
        t.close()
        admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        probe = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        fleet = [WorkerProcess(url) for _ in range(workers)]
        try:
            wait_until(lambda: completed(probe) >= 1000, 120, 0.01)
            pids = [w.proc.pid for w in fleet]
            server = backends(admin, name)
            steps0, t0 = completed(probe), time.perf_counter()
            w0 = sum(cpu_seconds(p) for p in pids)
            s0 = {p: cpu_seconds(p) for p in server}
            wait_until(lambda: completed(probe) >= total - 1000, 600, 0.01)
            steps1, t1 = completed(probe), time.perf_counter()
            w1 = sum(cpu_seconds(p) for p in pids)
            s1 = {p: cpu_seconds(p) for p in server}
        finally:
            for w in fleet:
                w.stop()
            probe.dispose()
            admin.dispose()
    steps = steps1 - steps0
    pg = sum(s1[p] - s0[p] for p in s0 if s1.get(p))
    return {
        "steps": steps,
        "steps_per_s": steps / (t1 - t0),
        "worker_cpu_ms_per_step": (w1 - w0) / steps * 1000,
        "postgres_cpu_ms_per_step": pg / steps * 1000,
        "wall_ms_per_step": (t1 - t0) / steps * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks", type=int, default=4000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--inline", action="store_true", help="handlers run_inline")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = measure(args.tasks, args.workers, args.inline)
    result["cpus"] = os.cpu_count() or 0
    if args.json:
        print(json.dumps({k: round(v, 3) for k, v in result.items()}))
        return
    table = Table(
        title=f"CPU per step, {args.workers} worker process(es), {args.tasks} tasks"
        + (" (run_inline)" if args.inline else "")
    )
    table.add_column("measure")
    table.add_column("result", justify="right")
    for key, value in result.items():
        table.add_row(key, f"{value:,.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
