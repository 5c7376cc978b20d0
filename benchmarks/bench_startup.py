"""Start-up time of `import tasker`, `tasker --version` and `tasker --help`, each in a fresh
interpreter.

    python benchmarks/bench_startup.py [--runs 20] [--src PATH]

`--src` points at another copy of `src/` (e.g. an older commit from `git archive`) to compare.
Prints the median and the best wall time of each command and what an empty interpreter costs on this
machine; `python -X importtime -c "import tasker"` says where the rest goes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
CLI = "import sys; sys.argv = ['tasker', {arg!r}]; from tasker.cli.main import main; main()"
COMMANDS = {
    "python -c pass (the floor)": "pass",
    'python -c "import tasker"': "import tasker",
    'python -c "from tasker import Tasker"': "from tasker import Tasker",
    "tasker --version": CLI.format(arg="--version"),
    "tasker --help": CLI.format(arg="--help"),
}


def timed(code: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the src/ folder to measure")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(args.src.resolve())}
    table = Table(title=f"start-up, {args.runs} runs each ({args.src})")
    for col in ("command", "median", "best"):
        table.add_column(col, justify="right" if col != "command" else "left")
    for label, code in COMMANDS.items():
        timed(code, env)  # warm the file cache
        samples = [timed(code, env) for _ in range(args.runs)]
        table.add_row(
            label, f"{statistics.median(samples) * 1000:.0f} ms", f"{min(samples) * 1000:.0f} ms"
        )
    Console().print(table)


if __name__ == "__main__":
    main()
