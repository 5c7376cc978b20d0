"""Does the engine slow down as finished work piles up? (issue 13, points 5 and 6; issue 17)

Two scratch PostgreSQL databases: the *grown* one, with `--finished` finished 5-step tasks
(default 1,000,000; `--big` for 10,000,000), and the *baseline*, empty or with `--baseline N`
finished tasks (issue 17 compares 10,000,000 with 10,000: a capped count reads as much at 10,000
as at 10 M). The tasks are written straight into the tables with `generate_series` (spread over the
last 30 days, their steps, edges and transitions, and the analytics rollups of them, as the engine
would leave them), analyzed. Then, on both:

  - one 5-step task created and run (`Tasker.run`, handlers `run_inline`): claim and completion;
  - `insight.status()`, `insight.performance(24)` and the first page of `list_tasks` (a page and
    the count of matches, capped).

The calls alternate between the two stores, one call each in turn (the order swapped every
round), so the drift of a shared machine, which moves these figures by a third within minutes,
falls on both alike; each figure is the median of `--samples` calls per store.

The plain indexes are dropped while the rows are written and built again afterwards (a bulk load;
the unique ones stay). The rollups are written with the rows, as a running store keeps them up to
date at every report; `--catch-up` leaves them empty instead, and the first report, which then
reads the whole history once, is reported apart (one call per store, not a median).
Run from the repository root:

    python benchmarks/bench_growth.py [--finished 1000000 | --big] [--baseline 10000]
        [--samples 100] [--keep DB]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.fleet import ADMIN_URL, scratch_database  # noqa: E402
from tasker import Tasker  # noqa: E402
from tasker.domain.reports import Performance  # noqa: E402
from tasker.store.rollups import bucket_of  # noqa: E402
from tasker.store.schema import tasks  # noqa: E402

TEMPLATES = ROOT / "benchmarks" / "templates"
REF = "bench/linear5_inline"
#: The idempotency keys of the written tasks start with it.
PREFIX = "grown-"

FILL = [
    """INSERT INTO tasker_tasks (namespace, name, version, template_id, status, context,
                                 idempotency_key, correlation_id, created_at, updated_at,
                                 started_at, finished_at)
       SELECT 'bench', %(name)s, '1.0.0', %(template_id)s, 'complete', '{}'::jsonb,
              %(prefix)s || g, %(prefix)s || g, x.at, x.at + interval '50 ms', x.at,
              x.at + interval '50 ms'
         FROM generate_series(1, %(n)s) g,
              LATERAL (SELECT now() - interval '1 hour'
                              - (g %% 2592000) * interval '1 second' AS at) x""",
    """INSERT INTO tasker_steps (task_id, name, position, namespace, dependent_system, state,
                                 pending_parents, attempts, retry_limit, retryable, claim_token,
                                 idempotency_key, results, created_at, updated_at, started_at,
                                 finished_at)
       SELECT t.id, 's' || p, p - 1, 'bench', 'default', 'complete', 0, 1, 3, true, 1,
              md5(t.id || '-' || p), '{}'::jsonb, t.created_at, t.finished_at, t.started_at,
              t.finished_at
         FROM tasker_tasks t CROSS JOIN generate_series(1, 5) p
        WHERE t.idempotency_key LIKE %(like)s""",
    """INSERT INTO tasker_step_edges (task_id, parent_id, child_id)
       SELECT c.task_id, p.id, c.id
         FROM tasker_steps c
         JOIN tasker_tasks t ON t.id = c.task_id AND t.idempotency_key LIKE %(like)s
         JOIN tasker_steps p ON p.task_id = c.task_id AND p.name = 's' || c.position
        WHERE c.position > 0""",
    """INSERT INTO tasker_step_transitions (step_id, task_id, from_state, to_state, attempt, at,
                                            worker, duration_ms)
       SELECT s.id, s.task_id, m.src, m.dst, m.attempt, s.finished_at, 'grown', m.ms
         FROM tasker_steps s
         JOIN tasker_tasks t ON t.id = s.task_id AND t.idempotency_key LIKE %(like)s
        CROSS JOIN (VALUES (NULL, 'ready', 0, NULL::float8),
                           ('ready', 'in_progress', 1, NULL),
                           ('in_progress', 'complete', 1, 1.0)) AS m(src, dst, attempt, ms)""",
    """INSERT INTO tasker_task_transitions (task_id, from_state, to_state, at, worker)
       SELECT t.id, m.src, m.dst, t.finished_at, 'grown'
         FROM tasker_tasks t
        CROSS JOIN (VALUES (NULL, 'pending'), ('pending', 'in_progress'),
                           ('in_progress', 'complete')) AS m(src, dst)
        WHERE t.idempotency_key LIKE %(like)s""",
]


@contextmanager
def kept_database(name: str) -> Iterator[str]:
    """A database of that name, created when missing and left in place afterwards."""
    with psycopg.connect(ADMIN_URL.replace("+psycopg", ""), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def grown_count(url: str) -> int:
    """How many finished tasks the database holds (0 for a new one)."""
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        table = conn.execute("SELECT to_regclass('tasker_tasks')").fetchone()
        if table is None or table[0] is None:
            return 0
        row = conn.execute("SELECT count(*) FROM tasker_tasks WHERE status = 'complete'").fetchone()
        return int(row[0]) if row else 0


ROLLUPS = [
    """INSERT INTO tasker_task_rollups (hour, namespace, name, version, status, tasks, started,
                                        samples, total, low, high, buckets, step_states)
       SELECT slot, 'bench', %(name)s, '1.0.0', 'complete', n, n, n, n * 0.05, 0.05, 0.05,
              json_build_object(%(task_bucket)s::text, n)::text,
              json_build_object('complete', 5 * n)::text
         FROM (SELECT date_bin('30 minutes', created_at, TIMESTAMPTZ '2000-01-01 00:00+00') slot,
                      count(*) n
                 FROM tasker_tasks WHERE idempotency_key LIKE %(like)s GROUP BY 1) g""",
    """INSERT INTO tasker_step_rollups (hour, namespace, name, version, step, dependent_system,
                                        outcome, error_class, attempts, after_retries,
                                        first_outcomes, retry_limit)
       SELECT slot, 'bench', %(name)s, '1.0.0', 's' || p, 'default', 'complete', '', n, 0,
              n, 3
         FROM (SELECT date_bin('30 minutes', created_at, TIMESTAMPTZ '2000-01-01 00:00+00') slot,
                      count(*) n
                 FROM tasker_tasks WHERE idempotency_key LIKE %(like)s GROUP BY 1) g
        CROSS JOIN generate_series(1, 5) p""",
    """INSERT INTO tasker_step_duration_rollups (hour, namespace, name, version, step,
                                                 dependent_system, samples, total, low, high,
                                                 buckets)
       SELECT slot, 'bench', %(name)s, '1.0.0', 's' || p, 'default', n, n * 1.0, 1.0, 1.0,
              json_build_object(%(step_bucket)s::text, n)::text
         FROM (SELECT date_bin('30 minutes', created_at, TIMESTAMPTZ '2000-01-01 00:00+00') slot,
                      count(*) n
                 FROM tasker_tasks WHERE idempotency_key LIKE %(like)s GROUP BY 1) g
        CROSS JOIN generate_series(1, 5) p""",
    """UPDATE tasker_rollup_cursors
          SET last_id = (SELECT coalesce(max(id), 0) FROM tasker_step_transitions), gaps = '[]'
        WHERE source = 'step_transitions'""",
    """UPDATE tasker_rollup_cursors
          SET last_id = (SELECT coalesce(max(id), 0) FROM tasker_task_transitions), gaps = '[]'
        WHERE source = 'task_transitions'""",
]
GROWN_TABLES = [
    "tasker_tasks",
    "tasker_steps",
    "tasker_step_edges",
    "tasker_step_transitions",
    "tasker_task_transitions",
]


def fill(url: str, finished: int, *, rollups: bool) -> float:
    """Write `finished` finished tasks straight into the tables and analyze them: seconds.

    Everything the measures before did is rolled up already (their reports caught up), so the
    rollups of the written tasks can be added and the cursors moved past them.
    """
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        template_id = conn.execute(
            "SELECT template_id FROM tasker_tasks ORDER BY id LIMIT 1"
        ).fetchone()
        assert template_id is not None
        t0 = time.perf_counter()
        conn.execute("SET maintenance_work_mem = '1GB'")
        plain = conn.execute(
            """SELECT indexname, indexdef FROM pg_indexes i
                WHERE tablename = ANY(%s)
                  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)""",
            (GROWN_TABLES,),
        ).fetchall()
        for name, _ in plain:
            conn.execute(f'DROP INDEX "{name}"')
        marks = {"prefix": PREFIX, "like": PREFIX + "%", "name": REF.partition("/")[2]}
        for sql in FILL:
            conn.execute(sql, {"n": finished, "template_id": template_id[0], **marks})
        for _, definition in plain:
            conn.execute(definition)
        if rollups:
            buckets = {"task_bucket": str(bucket_of(0.05)), "step_bucket": str(bucket_of(1.0))}
            for sql in ROLLUPS:
                conn.execute(sql, {**buckets, **marks})
        conn.execute("VACUUM ANALYZE")
        return time.perf_counter() - t0


#: What is timed on both stores, by name.
MEASURES: dict[str, Callable[[Tasker], Any]] = {
    "sequential_task_ms": lambda t: t.run(t.create_task(REF, {}).id),
    "status_ms": lambda t: t.insight.status(),
    "performance_24h_ms": lambda t: t.insight.performance(24),
    "list_first_page_ms": lambda t: t.list_tasks(limit=50),
}


def first_report_ms(t: Tasker) -> float:
    """A few tasks run, then the first 24-hour report (it rolls up whatever is not yet), checked
    against the raw rows."""
    for _ in range(3):
        MEASURES["sequential_task_ms"](t)
    t0 = time.perf_counter()
    first = t.insight.performance(24)
    ms = (time.perf_counter() - t0) * 1000
    check_against_raw(t, first)
    return ms


def measure_pair(before: Tasker, grown: Tasker, samples: int) -> dict[str, tuple[float, float]]:
    """Each measure's median on both stores (before, grown), the calls alternating."""
    out = {"performance_first_call_ms": (first_report_ms(before), first_report_ms(grown))}
    for name, fn in MEASURES.items():
        times: tuple[list[float], list[float]] = ([], [])
        for engine in (before, grown):  # warm each store's connections and plans
            for _ in range(3):
                fn(engine)
        for i in range(samples):
            order = ((0, before), (1, grown)) if i % 2 else ((1, grown), (0, before))
            for side, engine in order:
                t0 = time.perf_counter()
                fn(engine)
                times[side].append((time.perf_counter() - t0) * 1000)
        out[name] = (statistics.median(times[0]), statistics.median(times[1]))
    return out


def check_against_raw(t: Tasker, report: Performance) -> None:
    """The report counts what the tables hold: written rollups must agree with the rows."""
    with t.db.read() as conn:
        raw = conn.execute(
            sa.select(sa.func.count()).where(tasks.c.created_at >= report.since)
        ).scalar_one()
    if report.totals.created != raw:
        raise SystemExit(f"performance counts {report.totals.created} tasks, the table {raw}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--finished", type=int, default=1_000_000)
    ap.add_argument("--big", action="store_true", help="10,000,000 finished tasks")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument(
        "--baseline",
        type=int,
        default=0,
        help="compare with a store of this many finished tasks (written the same way) instead"
        " of an empty one: issue 17 compares 10,000,000 with 10,000",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--catch-up",
        action="store_true",
        help="leave the rollups of the written tasks to the first report (reported apart)",
    )
    ap.add_argument(
        "--keep",
        metavar="DATABASE",
        help="fill this database and keep it (reused, not filled again, when it already holds "
        "the finished tasks): for profiling the grown store between runs",
    )
    args = ap.parse_args()
    finished = 10_000_000 if args.big else args.finished
    grown_db = kept_database(args.keep) if args.keep else scratch_database()
    with scratch_database() as base_url, grown_db as url:
        base, _ = prepare(base_url, args.baseline, args.catch_up)
        t = Tasker(url, migrate=True, templates=TEMPLATES)
        reused = grown_count(url) >= finished
        t.close()
        fill_s = 0.0
        if not reused:
            filled, fill_s = prepare(url, finished, args.catch_up)
            filled.close()
        grown = Tasker(url, templates=TEMPLATES)
        try:
            figures = measure_pair(base, grown, args.samples)
        finally:
            base.close()
            grown.close()
    result: dict[str, Any] = {
        "finished": finished,
        "baseline": args.baseline,
        "samples": args.samples,
        "fill_seconds": round(fill_s, 1),
    }
    for key, (before, after) in figures.items():
        result[f"{key}_before"] = round(before, 2)
        result[f"{key}_grown"] = round(after, 2)
        result[f"{key}_ratio"] = round(after / before, 2)
    if args.json:
        print(json.dumps(result))
        return
    name = f"{args.baseline:,} finished tasks" if args.baseline else "Empty store"
    table = Table(
        title=f"{name} vs {finished:,} finished tasks (medians of {args.samples}, alternating)"
    )
    for col in ("measure", "before", "grown", "grown / before"):
        table.add_column(col, justify="right" if col != "measure" else "left")
    for key, (before, after) in figures.items():
        table.add_row(key, f"{before:.2f}", f"{after:.2f}", f"{after / before:.2f}")
    Console().print(table)
    Console().print(f"filled in {fill_s:.0f} s" if fill_s else "the grown store was reused")


def prepare(url: str, finished: int, catch_up: bool) -> tuple[Tasker, float]:
    """A store with `finished` finished tasks written (none: an empty store), ready to measure,
    and the seconds the writing took."""
    t = Tasker(url, migrate=True, templates=TEMPLATES)
    t.run(t.create_task(REF, {}).id)  # the template's row, which the fill names
    if not finished:
        return t, 0.0
    t.insight.performance(24)  # rolled up before the fill moves the rollups' cursors
    t.close()
    seconds = fill(url, finished, rollups=not catch_up)
    return Tasker(url, templates=TEMPLATES), seconds


if __name__ == "__main__":
    main()
