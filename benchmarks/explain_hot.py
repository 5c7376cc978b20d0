"""EXPLAIN of the hot statements under custom and generic plans (and the workers' own settings),
on a store with a backlog.

The workers' statements are prepared (psycopg) and their connections plan them once, with
sequential scans off (`WORKER_PLANNER` in `tasker.store.database`): a generic plan knows no
parameter values, so a condition on the state that is a bind parameter could no longer be matched to
a partial index. This prints each hot statement's plan both ways (and the workers' statements under
the workers' own settings, first before any ANALYZE, as on a new store or a server without
autovacuum), with `--backlog` ready tasks of the 5-step chain and as many finished ones in the
tables, so the plans can be compared and kept in docs/plans.md.

    python benchmarks/explain_hot.py [--backlog 20000]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from sqlalchemy import select, text  # noqa: E402
from sqlalchemy.dialects import postgresql  # noqa: E402

from benchmarks.fleet import scratch_database  # noqa: E402
from tasker import Tasker  # noqa: E402
from tasker.domain.listing import TOTAL_CAP, TaskQuery  # noqa: E402
from tasker.domain.states import TERMINAL_TASK_STATES  # noqa: E402
from tasker.store import claims, journal, listing, pg_cycle, rollups  # noqa: E402
from tasker.store import tasks as task_store  # noqa: E402
from tasker.store.analytics import Scope  # noqa: E402
from tasker.store.claims import _candidates  # noqa: E402
from tasker.store.database import WORKER_PLANNER  # noqa: E402
from tasker.store.overview import final_by_status_statement  # noqa: E402
from tasker.store.schema import CLAIMABLE, steps  # noqa: E402

TEMPLATES = ROOT / "benchmarks" / "templates"


def positional(sql: str, params: dict[str, Any]) -> tuple[str, list[Any]]:
    """`%(name)s` placeholders as `$n`, with the values in order."""
    order: list[str] = []

    def number(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    return re.sub(r"%\((\w+)\)s", number, sql), [params[n] for n in order]


def literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'"
    if isinstance(value, list):
        return "'{" + ",".join(str(v) for v in value) + "}'"
    return "'" + str(value).replace("'", "''") + "'"


PLANS: list[str] = []


def emit(line: str = "") -> None:
    print(line)
    PLANS.append(line)


#: (label, settings) of a plan to print.
Mode = tuple[str, dict[str, str]]
CUSTOM: Mode = ("force_custom_plan", {"plan_cache_mode": "force_custom_plan"})
GENERIC: Mode = ("force_generic_plan", {"plan_cache_mode": "force_generic_plan"})
#: How the workers' own connections plan (`tasker.store.database.WORKER_PLANNER`).
WORKERS: Mode = (
    "the workers' settings (" + ", ".join(f"{k}={v}" for k, v in WORKER_PLANNER.items()) + ")",
    WORKER_PLANNER,
)


def explain(
    conn: psycopg.Connection[Any],
    name: str,
    sql: str,
    params: dict[str, Any],
    modes: tuple[Mode, ...] = (CUSTOM, GENERIC),
) -> None:
    text, values = positional(sql, params)
    args = ", ".join(literal(v) for v in values)
    for label, settings in modes:
        for key, value in settings.items():
            conn.execute(f"SET {key} = {value}")
        # Prepared afresh for each mode: a cached generic plan would outlive the settings it was
        # made under.
        conn.execute(f"PREPARE {name} AS {text}")
        rows = conn.execute(f"EXPLAIN (COSTS OFF) EXECUTE {name}({args})").fetchall()
        conn.execute(f"DEALLOCATE {name}")
        conn.execute("RESET ALL")
        emit(f"\n-- {name}, {label}")
        for (line,) in rows:
            emit(line)


def explain_core(
    conn: psycopg.Connection[Any],
    name: str,
    stmt: Any,
    params: dict[str, Any] | None = None,
    modes: tuple[Mode, ...] = (CUSTOM, GENERIC),
) -> None:
    """A SQLAlchemy statement, rendered for psycopg with its IN lists expanded."""
    compiled = stmt.compile(
        dialect=postgresql.psycopg.dialect(),  # type: ignore[no-untyped-call]
        compile_kwargs={"render_postcompile": True},
    )
    values = dict(compiled.params)
    values.update(params or {})
    explain(conn, name, str(compiled), values, modes)


def cycle_params(now: datetime) -> dict[str, Any]:
    return {
        "now": now,
        "worker": "w",
        "lease_until": now,
        "outcomes": json.dumps([]),
        "edges": json.dumps([]),
        "take": False,
        "scan_limit": 32,
        "check_expired": True,
    }


def without_statistics(backlog: int) -> None:
    """The workers' cycle on a small store never analyzed (a new deployment, or a server without
    autovacuum): a generic plan made there reads tables sequentially, and the workers keep it."""
    with scratch_database() as url:
        t = Tasker(url, migrate=True, templates=TEMPLATES)
        t.create_tasks("bench/linear5", [{"i": i} for i in range(backlog)])
        t.close()
        now = datetime.now(UTC)
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
            emit(f"-- == the workers' cycle with {backlog} ready 5-step tasks, never analyzed")
            modes = (GENERIC, WORKERS)
            explain(conn, "cycle_first", pg_cycle._FIRST[(False, False)], cycle_params(now), modes)
            claim_only = pg_cycle._CLAIM_ONLY[(False, False)]
            explain(conn, "cycle_claim_only", claim_only, cycle_params(now), modes)
        emit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backlog", type=int, default=20000)
    ap.add_argument("--out", type=Path, help="also write the plans to this file (docs/plans.md)")
    ap.add_argument(
        "--small", type=int, default=500, help="ready tasks of the store without statistics"
    )
    args = ap.parse_args()
    without_statistics(args.small)
    with scratch_database() as url:
        t = Tasker(url, migrate=True, templates=TEMPLATES)
        t.create_tasks("bench/linear5", [{"i": i} for i in range(args.backlog)], chunk_size=2000)
        t.work(concurrency=32, until_idle=True)  # as many finished tasks as will wait
        t.create_tasks("bench/linear5", [{"i": i} for i in range(args.backlog)], chunk_size=2000)
        t.insight.status()  # the rollups caught up, as a running store keeps them
        t.close()
        now = datetime.now(UTC)
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute("ANALYZE")
            found = conn.execute("SELECT template_id FROM tasker_tasks LIMIT 1").fetchone()
            assert found is not None
            tid = found[0]
            emit(f"-- backlog: {args.backlog} ready 5-step tasks, as many finished; analyzed")
            emit(
                "\n-- == the workers' statements (prepared; planned once, with the workers'"
                " settings)"
            )
            workers = (CUSTOM, GENERIC, WORKERS)
            q = _candidates(namespaces=False, task=False, skip_locked=True, restricted=False)
            explain_core(conn, "claim_general", q, {"now": now, "limit": 32}, workers)
            explain(
                conn, "cycle_first", pg_cycle._FIRST[(False, False)], cycle_params(now), workers
            )
            explain(
                conn,
                "cycle_claim_only",
                pg_cycle._CLAIM_ONLY[(False, False)],
                cycle_params(now),
                workers,
            )
            explain(
                conn,
                "cycle_settle",
                pg_cycle._SETTLE,
                {"ids": [1, 2], "now": now, "worker": "w"},
                workers,
            )
            explain(conn, "cycle_lock", pg_cycle._LOCK, {"ids": [1, 2]}, workers)
            explain(
                conn,
                "journal_flush",
                journal._FLUSH_PG,
                {
                    "steps": json.dumps([]),
                    "tasks": json.dumps([]),
                    "notify": False,
                    "at": now,
                    "worker": "w",
                },
                workers,
            )
            explain_core(
                conn, "reclaim_expired", claims._EXPIRED[True], {"now": now, "limit": 500}, workers
            )
            next_run = (
                select(steps.c.run_at).where(text(CLAIMABLE)).order_by(steps.c.run_at).limit(1)
            )
            explain_core(conn, "next_run_at", next_run, None, workers)
            create = {
                "ns": "bench",
                "name": "linear5",
                "version": "1.0.0",
                "template_id": tid,
                "now": now,
                "worker": "w",
                "items": json.dumps([]),
                "shapes": json.dumps([]),
                "keys": json.dumps([]),
                "edges": json.dumps([]),
            }
            explain_core(conn, "create_tasks", task_store._CREATE_PG, create)
            emit("\n-- == what an operator reads (plan_cache_mode auto: custom, generic after 5)")
            everything = TaskQuery()
            first_page = listing.page_statement(everything, limit=51)
            explain_core(conn, "list_first_page", first_page)
            by_status = listing.page_statement(TaskQuery(statuses=("error",)), limit=51)
            explain_core(conn, "list_page_by_status", by_status)
            capped = listing.count_statement(everything, TOTAL_CAP)
            explain_core(conn, "list_total_capped", capped)
            window = Scope(rollups.slot_start(now - timedelta(hours=24)))
            explain_core(conn, "status_open_steps", rollups.open_steps_statement(window))
            final = sorted(s.value for s in TERMINAL_TASK_STATES)
            recent = final_by_status_statement(final, since=now - timedelta(minutes=5))
            explain_core(conn, "final_counts_recent", recent)
    if args.out:
        header = [
            "# Plans of the hot statements, custom and generic",
            "",
            f"Written by `python benchmarks/explain_hot.py --backlog {args.backlog} --out "
            f"{args.out}` on a scratch database (docs/benchmarks.md says when and where).",
            "The workers' statements are also shown as the workers plan them"
            " (`WORKER_PLANNER` in `tasker.store.database`: generic plans, sequential scans and"
            " JIT off), first on a small store that was never analyzed.",
            "",
            "```",
        ]
        args.out.write_text("\n".join(header + PLANS + ["```"]) + "\n")


if __name__ == "__main__":
    main()
