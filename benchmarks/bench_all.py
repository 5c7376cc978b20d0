"""Every measure of issue 13 in one run, Tasker and DBOS side by side, with the targets.

Runs the other benchmark scripts one after another (each as its own process, with `--json`), on
this machine, against the same PostgreSQL server, and prints one table:

  - sequential 5-step task on SQLite and on PostgreSQL (bench_core: `create_task` + `run()`, the
    handlers `run_inline` as DBOS runs its steps in the workflow's thread; DBOS's workflow called
    directly, on the same store);
  - throughput with 1 and 2 worker processes and claim latency p50/p99 (bench_postgres `--inline`:
    tasks or workflows enqueued first, throughput from each engine's own records, start-up of the
    worker processes excluded and reported apart);
  - round trips, executions, commits, rows and WAL bytes per step, counted (bench_wire);
  - the growth case: 1,000,000 finished tasks, or 10,000,000 with `--big` (bench_growth).

    python benchmarks/bench_all.py [--runs 3] [--big] [--skip growth,wire] [--json]

The growth case writes millions of rows (about 6 minutes for 1 M on the machine of
docs/benchmarks.md, an hour for 10 M); `--skip growth` leaves it out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
STEPS = 5


def run(script: str, *args: str) -> dict[str, Any]:
    """One benchmark script's `--json` answer (its last line of output)."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), *args, "--json"]
    print("$", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    try:
        answer: dict[str, Any] = json.loads(out)
    except json.JSONDecodeError:  # progress printed before the answer
        answer = json.loads(out.strip().splitlines()[-1])
    return answer


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


Row = tuple[str, float | None, float | None, float | None, str]


def collect(args: argparse.Namespace) -> list[Row]:
    """(measure, Tasker, DBOS, ratio in Tasker's favour, target) rows."""
    skip = set(args.skip.split(",")) if args.skip else set()
    runs = str(args.runs)
    rows: list[Row] = []
    for store, target in (("sqlite", ">= 4x, <= 5 ms"), ("postgresql", ">= 1.5x")):
        core = run("bench_core.py", "--store", store, "--runs", runs)
        ours, theirs = (
            core["sequential_inline_ms_per_task"],
            core["dbos_sequential_ms_per_workflow"],
        )
        rows.append(
            (f"{store}: sequential 5-step task (ms)", ours, theirs, ratio(theirs, ours), target)
        )
        rows.append(
            (
                f"{store}: same, threaded handlers (ms)",
                core["sequential_ms_per_task"],
                None,
                None,
                "",
            )
        )
    fleet = run("bench_postgres.py", "--runs", runs, "--inline", "--skip", "growth,recovery")
    for label, name in (("1_worker", "1 worker process"), ("2_workers", "2 worker processes")):
        ours, theirs = fleet[f"steps_per_s_{label}"], fleet[f"dbos_steps_per_s_{label}"]
        target = ">= 25x" if label == "2_workers" else ""
        rows.append((f"{name} (steps/s)", ours, theirs, ratio(ours, theirs), target))
        rows.append(
            (
                f"{name}: start-up, excluded above (s)",
                fleet[f"startup_s_{label}"],
                fleet[f"dbos_startup_s_{label}"],
                None,
                "",
            )
        )
    rows.append(("claim latency p50 (ms)", fleet["claim_latency_ms_p50"], None, None, "<= 2 ms"))
    rows.append(("claim latency p99 (ms)", fleet["claim_latency_ms_p99"], None, None, ""))
    if "wire" not in skip:
        wire = run("bench_wire.py", "--store", "postgresql")
        ours, theirs = wire["postgresql"]["sequential"], wire["dbos"]["sequential"]
        for key, label in (
            ("wire_round_trips", "round trips per step"),
            ("wire_executions", "server executions per step"),
            ("server_xact_commit", "commits per step"),
            ("server_wal_bytes", "WAL bytes per step"),
        ):
            a, b = ours[key] / STEPS, theirs[key] / STEPS
            rows.append((f"{label} (counted)", a, b, ratio(b, a), ""))
    if "growth" not in skip:
        growth = run("bench_growth.py", *(["--big"] if args.big else []))
        n = f"{growth['finished']:,}"
        for key, label in (
            ("sequential_task_ms", "claim + completion: one task"),
            ("status_ms", "status"),
            ("performance_24h_ms", "analytics (24 h)"),
            ("list_first_page_ms", "task list, first page"),
        ):
            rows.append(
                (
                    f"{label}, {n} finished / empty",
                    growth[f"{key}_grown"],
                    growth[f"{key}_before"],
                    growth[f"{key}_ratio"],
                    "<= 1.2" if key != "list_first_page_ms" else "",
                )
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--big", action="store_true", help="the growth case with 10,000,000 tasks")
    ap.add_argument("--skip", default="", help="comma-separated: wire,growth")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = collect(args)
    if args.json:
        print(
            json.dumps(
                [dict(zip(("measure", "tasker", "dbos", "ratio", "target"), r)) for r in rows]
            )
        )
        return
    table = Table(title="Issue 13: Tasker and DBOS in one run (growth rows: grown / empty)")
    for col in ("measure", "Tasker", "DBOS", "ratio", "target"):
        table.add_column(col, justify="left" if col in ("measure", "target") else "right")
    for measure, ours, theirs, r, target in rows:
        table.add_row(
            measure,
            "-" if ours is None else f"{ours:,.2f}",
            "-" if theirs is None else f"{theirs:,.2f}",
            "-" if r is None else f"{r:.2f}x",
            target,
        )
    Console(width=max(Console().width, 110)).print(table)


if __name__ == "__main__":
    main()
