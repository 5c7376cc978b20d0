"""`python -m tasker.demos.data_pipeline`: one customer analytics run on a temporary SQLite store.

Options: `--seed N`, `--fail-first N` (failed first attempts of extract_orders; the template says
2), `--output-dir DIR` (kept; by default a temporary directory removed at the end),
`--database-url URL`. `--daily` runs the daily revenue rollup instead: a fan-out over the days
that have orders (`--flaky-partition I` picks the partition whose first attempt fails, -1 none).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from tasker import Tasker, TaskerError, TaskState
from tasker.demos.data_pipeline.demo import describe, describe_daily, run_daily, run_pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasker.demos.data_pipeline", description=__doc__
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--fail-first", type=int, default=None, metavar="N")
    parser.add_argument("--output-dir", type=Path, default=None)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--daily", action="store_true", help="run the daily revenue fan-out")
    parser.add_argument("--flaky-partition", type=int, default=None, metavar="I")
    args = parser.parse_args(argv)
    if args.daily:
        return _daily(args)
    context: dict[str, Any] = {"seed": args.seed}
    if args.fail_first is not None:
        context["simulate_failures"] = {"extract_orders": args.fail_first}
    with tempfile.TemporaryDirectory(prefix="tasker-pipeline-") as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'tasker.db'}"
        try:
            with Tasker(url, poll_interval=0.05, migrate=True) as engine:
                task = run_pipeline(engine, args.output_dir or Path(tmp) / "dashboards", **context)
                for line in describe(engine, task, output_kept=args.output_dir is not None):
                    print(line)
        except TaskerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0 if task.status == TaskState.COMPLETE else 1


def _daily(args: argparse.Namespace) -> int:
    context: dict[str, Any] = {"seed": args.seed}
    if args.flaky_partition is not None:
        context["flaky_partition"] = args.flaky_partition
    with tempfile.TemporaryDirectory(prefix="tasker-pipeline-") as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'tasker.db'}"
        try:
            with Tasker(url, poll_interval=0.05, migrate=True) as engine:
                task = run_daily(engine, **context)
                for line in describe_daily(task):
                    print(line)
        except TaskerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0 if task.status == TaskState.COMPLETE else 1


if __name__ == "__main__":
    sys.exit(main())
