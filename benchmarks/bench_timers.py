"""Time at scale on PostgreSQL (issue: time and the outside world): do waiting steps cost the
claims anything, and how fast do timers that come due together run?

Each case runs on a scratch database with 2 `tasker worker` processes (concurrency 32), in one
run, alternating, and prints a table:

  a. claims beside 100,000 waiting steps: 2,000 tasks of the 5-step no-op chain drained on an
     empty store, and again beside 50,000 steps parked for a signal (no `run_at`) and 50,000 tasks
     delayed by a day (their first steps `ready`, due tomorrow). Steps per second of the chain
     (first claim to last completion, from the transition log), and the claim index's tuples read
     per claimed step (`pg_stat_user_indexes`): flat means the waiting rows are never visited.
  b. 10,000 timers due in the same second: 10,000 one-step tasks (`bench/timer`) created with the
     same delayed start `run_at` T, the workers already running: when the first was claimed and
     when the last completed, counted from T.

    python benchmarks/bench_timers.py [--runs 3] [--waiting 100000] [--timers 10000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
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
CHAINS = 2_000
CLAIM_INDEX = "ix_tasker_steps_claimable"


def _engine(url: str) -> Tasker:
    t = Tasker(url, migrate=True)
    t.load_templates(TEMPLATES)
    return t


def _count(t: Tasker, sql: str) -> int:
    with t.db.read() as c:
        return int(c.exec_driver_sql(sql).scalar_one())


def _index_reads(t: Tasker) -> int:
    with t.db.read() as c:
        return int(
            c.execute(
                sa.text("select idx_tup_read from pg_stat_user_indexes where indexrelname = :i"),
                {"i": CLAIM_INDEX},
            ).scalar_one()
        )


def _chain_rate(t: Tasker) -> float:
    with t.db.read() as c:
        first, last = c.execute(
            sa.text(
                "select min(tr.at) filter (where tr.to_state = 'in_progress'),"
                " max(tr.at) filter (where tr.to_state = 'complete')"
                " from tasker_step_transitions tr join tasker_steps s on s.id = tr.step_id"
                " join tasker_tasks k on k.id = s.task_id where k.name = 'linear5'"
            )
        ).one()
    return float(CHAINS * 5 / max((last - first).total_seconds(), 1e-9))


def claims(waiting: int) -> dict[str, float]:
    """Drain the chains beside `waiting` waiting steps (half parked for a signal, half delayed)."""
    with scratch_database() as url:
        t = _engine(url)
        procs = [WorkerProcess(url, concurrency=CONCURRENCY) for _ in range(WORKERS)]
        try:
            parked = waiting // 2
            if parked:
                t.create_tasks("bench/waiter", [{} for _ in range(parked)], chunk_size=1000)
                t.create_tasks(
                    "bench/linear5",
                    [{} for _ in range(waiting - parked)],
                    delay="1d",
                    chunk_size=1000,
                )
                assert wait_until(
                    lambda: (
                        _count(
                            t,
                            "select count(*) from tasker_steps where state = 'waiting_retry'"
                            " and run_at is null",
                        )
                        >= parked
                    ),
                    timeout=900,
                ), "the waiters did not park"
            time.sleep(11.0)  # idle backends flush their statistics every 10 s (PostgreSQL 15)
            before = _index_reads(t)
            t.create_tasks("bench/linear5", [{} for _ in range(CHAINS)])
            assert wait_until(
                lambda: (
                    _count(
                        t,
                        "select count(*) from tasker_tasks where name = 'linear5'"
                        " and status = 'complete'",
                    )
                    >= CHAINS
                ),
                timeout=900,
            ), "the chains did not finish"
        finally:
            for p in procs:
                p.stop()  # their backends exit, which flushes their statistics
        time.sleep(1.0)
        reads = _index_reads(t) - before
        rate = _chain_rate(t)
        left = _count(
            t, "select count(*) from tasker_steps where state in ('ready', 'waiting_retry')"
        )
        t.close()
        return {"rate": rate, "reads_per_step": reads / (CHAINS * 5), "still_waiting": left}


def timers(count: int) -> dict[str, float]:
    """`count` chains whose start is the same instant, with the workers running."""
    with scratch_database() as url:
        t = _engine(url)
        procs = [WorkerProcess(url, concurrency=CONCURRENCY) for _ in range(WORKERS)]
        try:
            due = datetime.now(UTC) + timedelta(seconds=15)
            t.create_tasks("bench/timer", [{} for _ in range(count)], run_at=due, chunk_size=1000)
            assert datetime.now(UTC) < due, "creating the tasks took longer than the delay"
            assert wait_until(
                lambda: (
                    _count(t, "select count(*) from tasker_tasks where status = 'complete'")
                    >= count
                ),
                timeout=900,
            ), "the timers did not all run"
        finally:
            for p in procs:
                p.stop()
        with t.db.read() as c:
            first_start, all_started, last = c.execute(
                sa.text(
                    "select min(tr.at) filter (where tr.to_state = 'in_progress'),"
                    " max(tr.at) filter (where tr.to_state = 'in_progress' and s.name = 's1'),"
                    " max(tr.at) filter (where tr.to_state = 'complete')"
                    " from tasker_step_transitions tr join tasker_steps s on s.id = tr.step_id"
                )
            ).one()
        t.close()
        return {
            "first_claim_s": (first_start - due).total_seconds(),
            "all_fired_s": (all_started - due).total_seconds(),
            "last_s": (last - due).total_seconds(),
        }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--waiting", type=int, default=100_000)
    ap.add_argument("--timers", type=int, default=10_000)
    ap.add_argument("--only-timers", action="store_true", help="skip case a")
    args = ap.parse_args()

    empty, loaded, fired = [], [], []
    for i in range(args.runs):  # alternating, so drifts of the machine hit all alike
        if not args.only_timers:
            empty.append(claims(0))
            loaded.append(claims(args.waiting))
        fired.append(timers(args.timers))
        if args.only_timers:
            print(f"run {i + 1}: {fired[-1]}", file=sys.stderr)
            continue
        print(
            f"run {i + 1}: chain {empty[-1]['rate']:,.0f} steps/s empty,"
            f" {loaded[-1]['rate']:,.0f} beside {args.waiting:,} waiting; index reads per step"
            f" {empty[-1]['reads_per_step']:.2f} / {loaded[-1]['reads_per_step']:.2f};"
            f" {args.timers:,} timers: last step done {fired[-1]['last_s']:.1f} s after T",
            file=sys.stderr,
        )

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    table = Table(title=f"Waiting steps and timers, PostgreSQL, median of {args.runs} runs")
    table.add_column("measure")
    table.add_column("value", justify="right")
    if not args.only_timers:
        _claim_rows(table, empty, loaded, args.waiting, med)
    table.add_row(
        f"{args.timers:,} timers due at T: first claim after T (s)",
        f"{med(fired, 'first_claim_s'):.2f}",
    )
    table.add_row(
        f"{args.timers:,} timers: the last one claimed, after T (s)",
        f"{med(fired, 'all_fired_s'):.1f}",
    )
    table.add_row(
        f"{args.timers:,} timers: the last one done, after T (s)", f"{med(fired, 'last_s'):.1f}"
    )
    Console().print(table)


def _claim_rows(
    table: Table,
    empty: list[dict[str, float]],
    loaded: list[dict[str, float]],
    waiting: int,
    med: Callable[[list[dict[str, float]], str], float],
) -> None:
    table.add_row("chain steps/s, empty store", f"{med(empty, 'rate'):,.0f}")
    table.add_row(f"chain steps/s beside {waiting:,} waiting", f"{med(loaded, 'rate'):,.0f}")
    table.add_row("ratio (beside / empty)", f"{med(loaded, 'rate') / med(empty, 'rate'):.2f}")
    table.add_row("claim index tuples read per step, empty", f"{med(empty, 'reads_per_step'):.2f}")
    table.add_row(
        f"claim index tuples read per step, beside {waiting:,}",
        f"{med(loaded, 'reads_per_step'):.2f}",
    )
    table.add_row("waiting steps left untouched", f"{med(loaded, 'still_waiting'):,.0f}")


if __name__ == "__main__":
    main()
