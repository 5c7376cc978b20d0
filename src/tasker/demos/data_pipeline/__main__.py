"""`python -m tasker.demos.data_pipeline`: one customer analytics run on a temporary SQLite store.

Options: `--seed N`, `--fail-first N` (failed first attempts of extract_orders; the template says
2), `--output-dir DIR` (kept; by default a temporary directory removed at the end),
`--database-url URL`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from tasker import Tasker, TaskerError, TaskState
from tasker.demos.data_pipeline.demo import describe, run_pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasker.demos.data_pipeline", description=__doc__
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--fail-first", type=int, default=None, metavar="N")
    parser.add_argument("--output-dir", type=Path, default=None)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
