"""Poisoned neighbours: does a buggy template or hung handlers slow an innocent template down?

Three scenarios, each on a fresh store, each the median of several alternating runs:

- alone: 30 innocent 3-step tasks, worked at concurrency 4;
- beside a bug: the same 30 tasks created interleaved with 30 tasks of a template whose handler
  raises `KeyError` on every attempt (retry limit 3): the innocent tasks' completion time is
  measured;
- beside hung handlers: the same 30 tasks beside 8 tasks whose sync handlers hang past a 0.2 s
  timeout.

Printed: the median seconds until the last innocent task completed, its ratio to "alone", and the
circuit state of the shared `default` system at the end. Run from the repository root:

    python benchmarks/bench_poison.py [--store sqlite|postgresql] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.bench_core import drop, fresh_url  # noqa: E402
from tasker import Tasker  # noqa: E402

P = "tests.integration.poison_handlers"
FAST = {"backoff_base_seconds": 0.05, "backoff_max_seconds": 0.2}
INNOCENT = 30


def _template(directory: Path, name: str, steps: list[dict[str, Any]]) -> Path:
    data = {
        "name": name,
        "namespace_name": "bench",
        "version": "1.0.0",
        "retry": FAST,
        "step_templates": steps,
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _templates(directory: Path) -> None:
    innocent = [
        {
            "name": n,
            "handler_class": f"{P}:Innocent",
            "handler_config": {"sleep": 0.005},
            **({"depends_on_step": p} if p else {}),
        }
        for n, p in (("a", None), ("b", "a"), ("c", "b"))
    ]
    _template(directory, "innocent", innocent)
    _template(
        directory,
        "buggy",
        [
            {
                "name": "bad",
                "handler_class": f"{P}:Poison",
                "default_retry_limit": 3,
                "handler_config": {"mode": "key_error"},
            }
        ],
    )
    _template(
        directory,
        "hung",
        [
            {
                "name": "hang",
                "handler_class": f"{P}:Hang",
                "default_retry_limit": 1,
                "handler_config": {"timeout_seconds": 0.2, "hang": 3.0},
            }
        ],
    )


def run(store: str, scenario: str, workdir: Path) -> tuple[float, str]:
    url = fresh_url(store, workdir)
    engine = Tasker(url, templates=workdir / "templates", migrate=True)
    try:
        ctx = {"dir": str(workdir / "runs")}
        innocent: list[int] = []
        for i in range(INNOCENT):
            innocent.append(engine.create_task("bench/innocent", {**ctx, "n": i}).id)
            if scenario == "beside a bug":
                engine.create_task("bench/buggy", {**ctx, "n": i})
            if scenario == "beside hung handlers" and i % 4 == 0 and i < 32:
                engine.create_task("bench/hung", {**ctx, "n": i})
        started = time.perf_counter()
        done_at: float | None = None
        w = engine.worker(concurrency=4)

        def finished() -> bool:
            return all(t.status == "complete" for t in engine.get_tasks(innocent))

        import threading

        runner = threading.Thread(target=engine.work, kwargs={"worker": w}, daemon=True)
        runner.start()
        while done_at is None and time.perf_counter() - started < 120:
            if finished():
                done_at = time.perf_counter()
                break
            time.sleep(0.02)
        runner.join(timeout=120)
        circuits = {s["name"]: s["circuit_state"] for s in engine.systems.report()}
        return (done_at or float("inf")) - started, circuits.get("default", "closed (no row)")
    finally:
        engine.close()
        drop(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    scenarios = ["alone", "beside a bug", "beside hung handlers"]
    times: dict[str, list[float]] = {s: [] for s in scenarios}
    states: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "templates").mkdir()
        (workdir / "runs").mkdir()
        _templates(workdir / "templates")
        for _ in range(args.runs):  # alternate the scenarios so machine noise hits each alike
            for s in scenarios:
                seconds, state = run(args.store, s, workdir)
                times[s].append(seconds)
                states[s] = state
    alone = statistics.median(times["alone"])
    table = Table(
        title=(
            f"{INNOCENT} innocent 3-step tasks, concurrency 4, {args.store}, median of {args.runs}"
        )
    )
    for col in ("scenario", "innocent tasks done (s)", "vs alone", "default circuit at the end"):
        table.add_column(col)
    for s in scenarios:
        med = statistics.median(times[s])
        table.add_row(s, f"{med:.2f}", f"{med / alone:.2f}x", states[s])
    Console().print(table)


if __name__ == "__main__":
    main()
