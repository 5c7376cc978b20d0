"""`python -m tasker.demos.team_scaling`: the two teams' refunds and the 2.1.0 deploy, on a
temporary SQLite store.

Option: `--database-url URL` to run on another store (PostgreSQL, say).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tasker import Tasker, TaskerError, TaskState
from tasker.demos.team_scaling.demo import describe, run_story


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasker.demos.team_scaling", description=__doc__
    )
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tasker-teams-") as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'tasker.db'}"
        try:
            with Tasker(url, poll_interval=0.05, migrate=True) as engine:
                ids = run_story(engine)
                for line in describe(engine, ids):
                    print(line)
                ok = all(engine.get_task(i).status == TaskState.COMPLETE for i in ids.values())
        except TaskerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
