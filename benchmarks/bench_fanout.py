"""Control-flow benchmarks on PostgreSQL (issue: branch, fan out): is the cost per step flat?

Each case runs on a scratch database with 2 `tasker worker` processes (concurrency 32), in one
run, and prints a table:

  a. chain: 2,000 tasks of the 5-step no-op chain (10,000 steps), the reference;
  b. fan-out: one task whose first step lists 10,000 items, one no-op instance per item, and a
     fan-in step reading all their results: instances per second, in the first and the last
     quarter of the instances (flat?), the expansion (the first step's completion to the first
     instance's claim) and the fan-in (the last instance's completion to the fan-in's);
  c. branches: tasks of a 1,002-step template: a start, 100 branches of 10 steps (the first step
     of every other branch has a false `when:`, so 500 steps are skipped in the start's
     completion) and a `join: any` at the end: steps per second, and the start's completion;
  d. the same shape a tenth as wide (102 steps, 10 branches), ten times as many tasks: as many
     steps in all, so that d against c says whether a step's cost grows with the template's width.

Rates come from the transition log (first claim to last completion), so worker start-up is not
counted. Run from the repository root:

    python benchmarks/bench_fanout.py [--runs 3] [--items 10000] [--chains 2000] [--tasks 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.fleet import WorkerProcess, scratch_database, wait_until  # noqa: E402
from tasker import Tasker  # noqa: E402

TEMPLATES = ROOT / "benchmarks" / "templates"
WORKERS = 2
CONCURRENCY = 32


def _engine(url: str) -> Tasker:
    t = Tasker(url, migrate=True)
    t.load_templates(TEMPLATES)
    return t


def _done(t: Tasker, n: int) -> bool:
    with t.db.read() as c:
        q = "select count(*) from tasker_tasks where status in ('complete', 'error')"
        return int(c.exec_driver_sql(q).scalar_one()) >= n


def _work(url: str, t: Tasker, tasks: int) -> None:
    procs = [WorkerProcess(url, concurrency=CONCURRENCY) for _ in range(WORKERS)]
    try:
        assert wait_until(lambda: _done(t, tasks), timeout=900), "tasks did not finish"
    finally:
        for p in procs:
            p.stop()
    with t.db.read() as c:
        bad = c.exec_driver_sql(
            "select count(*) from tasker_tasks where status <> 'complete'"
        ).scalar_one()
    assert bad == 0, f"{bad} tasks did not complete"


def _span(t: Tasker, where: str = "true") -> tuple[float, int]:
    """Steps per second from the first claim to the last completion of the steps `where` picks
    (SQL over tasker_step_transitions `tr` joined to tasker_steps `s`), and how many completed."""
    with t.db.read() as c:
        first, last, n = c.execute(
            sa.text(
                "select min(tr.at) filter (where tr.to_state = 'in_progress'),"
                " max(tr.at) filter (where tr.to_state = 'complete'),"
                " count(*) filter (where tr.to_state = 'complete')"
                " from tasker_step_transitions tr join tasker_steps s on s.id = tr.step_id"
                f" where {where}"
            )
        ).one()
    return n / max((last - first).total_seconds(), 1e-9), int(n)


def _at(t: Tasker, sql: str) -> datetime:
    with t.db.read() as c:
        value: datetime = c.execute(sa.text(sql)).scalar_one()
    return value


def chain(tasks: int) -> float:
    with scratch_database() as url:
        t = _engine(url)
        t.create_tasks("bench/linear5", [{"i": i} for i in range(tasks)])
        _work(url, t, tasks)
        rate, n = _span(t)
        assert n == tasks * 5, n
        t.close()
        return rate


def fanout(items: int) -> dict[str, float]:
    with scratch_database() as url:
        t = _engine(url)
        t.create_task("bench/fanout", {"count": items})
        _work(url, t, 1)
        rate, n = _span(t, "s.instance_of is not null")
        assert n == items, n
        quarter = items // 4
        first_q, _ = _span(t, f"s.instance_of is not null and s.item_index < {quarter}")
        last_q, _ = _span(t, f"s.instance_of is not null and s.item_index >= {items - quarter}")
        discovered = _at(
            t,
            "select tr.at from tasker_step_transitions tr join tasker_steps s on s.id = tr.step_id"
            " where s.name = 'discover' and tr.to_state = 'complete'",
        )
        first_claim = _at(
            t,
            "select min(tr.at) from tasker_step_transitions tr join tasker_steps s"
            " on s.id = tr.step_id where s.instance_of is not null"
            " and tr.to_state = 'in_progress'",
        )
        last_instance = _at(
            t,
            "select max(tr.at) from tasker_step_transitions tr join tasker_steps s"
            " on s.id = tr.step_id where s.instance_of is not null and tr.to_state = 'complete'",
        )
        fanned_in = _at(
            t,
            "select tr.at from tasker_step_transitions tr join tasker_steps s on s.id = tr.step_id"
            " where s.name = 'fan_in' and tr.to_state = 'complete'",
        )
        result = t.get_task(1).step("fan_in").results
        assert result == {"n": items}, result
        t.close()
        return {
            "rate": rate,
            "first_quarter": first_q,
            "last_quarter": last_q,
            "expand_ms": (first_claim - discovered).total_seconds() * 1000,
            "fan_in_ms": (fanned_in - last_instance).total_seconds() * 1000,
        }


def branches(tasks: int, width: int = 100) -> dict[str, float]:
    """Tasks of `bench/branches<width>`: a start, `width` branches of 10 steps (half skipped) and a
    join."""
    with scratch_database() as url:
        t = _engine(url)
        t.create_tasks(f"bench/branches{width}", [{"odd_branches": False} for _ in range(tasks)])
        _work(url, t, tasks)
        rate, n = _span(t)
        assert n == tasks * (width * 5 + 2), n  # start, half the branches of 10, end
        with t.db.read() as c:
            skipped = c.exec_driver_sql(
                "select count(*) from tasker_steps where state = 'skipped'"
            ).scalar_one()
            start_ms = c.execute(
                sa.text(
                    "select avg(extract(epoch from done.at - run.at) * 1000) from"
                    " tasker_step_transitions run join tasker_step_transitions done"
                    " on done.step_id = run.step_id join tasker_steps s on s.id = run.step_id"
                    " where s.name = 'start' and run.to_state = 'in_progress'"
                    " and done.to_state = 'complete'"
                )
            ).scalar_one()
        assert skipped == tasks * width * 5, skipped
        t.close()
        return {"rate": rate, "start_ms": float(start_ms)}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--chains", type=int, default=2_000)
    ap.add_argument("--tasks", type=int, default=40, help="tasks of the 1,002-step template")
    args = ap.parse_args()

    chains, fans, wide, narrow = [], [], [], []
    for i in range(args.runs):  # alternating cases, so drifts of the machine hit all alike
        chains.append(chain(args.chains))
        fans.append(fanout(args.items))
        wide.append(branches(args.tasks))
        narrow.append(branches(args.tasks * 10, width=10))
        print(
            f"run {i + 1}: chain {chains[-1]:,.0f} steps/s, fan-out {fans[-1]['rate']:,.0f}"
            f" instances/s, branches {wide[-1]['rate']:,.0f} steps/s, a tenth as wide"
            f" {narrow[-1]['rate']:,.0f} steps/s",
            file=sys.stderr,
        )

    def med(values: list[float]) -> float:
        return statistics.median(values)

    chain_rate = med(chains)
    table = Table(
        title=f"Control flow on PostgreSQL, {WORKERS} workers x {CONCURRENCY}, medians of"
        f" {args.runs} runs"
    )
    for col in ("case", "steps/s", "vs chain", "detail"):
        table.add_column(col, justify="right" if col != "case" else "left")
    table.add_row(f"5-step chain ({args.chains:,} tasks)", f"{chain_rate:,.0f}", "1.00", "")
    fan_rate = med([f["rate"] for f in fans])
    table.add_row(
        f"fan-out of {args.items:,} instances",
        f"{fan_rate:,.0f}",
        f"{fan_rate / chain_rate:.2f}",
        f"first quarter {med([f['first_quarter'] for f in fans]):,.0f}/s, last quarter"
        f" {med([f['last_quarter'] for f in fans]):,.0f}/s; expansion"
        f" {med([f['expand_ms'] for f in fans]):,.0f} ms, fan-in"
        f" {med([f['fan_in_ms'] for f in fans]):,.0f} ms",
    )
    wide_rate = med([w["rate"] for w in wide])
    table.add_row(
        f"1,002-step template, 100 branches ({args.tasks} tasks)",
        f"{wide_rate:,.0f}",
        f"{wide_rate / chain_rate:.2f}",
        f"start step (500 skips in its completion) {med([w['start_ms'] for w in wide]):,.0f} ms",
    )
    narrow_rate = med([w["rate"] for w in narrow])
    table.add_row(
        f"102-step template, 10 branches ({args.tasks * 10} tasks)",
        f"{narrow_rate:,.0f}",
        f"{narrow_rate / chain_rate:.2f}",
        f"1,002-step / 102-step: {wide_rate / narrow_rate:.2f} (1.00: flat in the width)",
    )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
