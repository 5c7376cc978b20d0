"""EXPLAIN of the hot statements under custom and generic plans, on a store with a backlog.

The workers' statements are prepared (psycopg) and their connections plan them once
(`plan_cache_mode=force_generic_plan`, `tasker.store.database`): a generic plan knows no parameter
values, so a condition on the state that is a bind parameter could no longer be matched to a partial
index. This prints each hot statement's plan both ways, with `--backlog` ready tasks of the 5-step
chain and as many finished ones in the tables (analyzed), so the plans can be compared and kept in
docs/benchmarks.md.

    python benchmarks/explain_hot.py [--backlog 20000]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from benchmarks.fleet import scratch_database  # noqa: E402
from tasker import Tasker  # noqa: E402
from tasker.store import journal, pg_cycle  # noqa: E402
from tasker.store.claims import _candidates  # noqa: E402

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


def explain(conn: psycopg.Connection[Any], name: str, sql: str, params: dict[str, Any]) -> None:
    text, values = positional(sql, params)
    conn.execute(f"PREPARE {name} AS {text}")
    args = ", ".join(literal(v) for v in values)
    for mode in ("force_custom_plan", "force_generic_plan"):
        conn.execute(f"SET plan_cache_mode = {mode}")
        rows = conn.execute(f"EXPLAIN (COSTS OFF) EXECUTE {name}({args})").fetchall()
        print(f"\n-- {name}, {mode}")
        for (line,) in rows:
            print(line)
    conn.execute(f"DEALLOCATE {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backlog", type=int, default=20000)
    args = ap.parse_args()
    with scratch_database() as url:
        t = Tasker(url, migrate=True, templates=TEMPLATES)
        t.create_tasks("bench/linear5", [{"i": i} for i in range(args.backlog)], chunk_size=2000)
        t.work(concurrency=32, until_idle=True)  # as many finished tasks as will wait
        t.create_tasks("bench/linear5", [{"i": i} for i in range(args.backlog)], chunk_size=2000)
        t.close()
        now = datetime.now(UTC)
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute("ANALYZE")
            # the general path's claim (SQLAlchemy Core, rendered for psycopg)
            from sqlalchemy.dialects import postgresql

            q = _candidates(namespaces=False, task=False, skip_locked=True, restricted=False)
            general = str(q.compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]
            explain(conn, "claim_general", general, {"now": now, "limit": 32})
            first = pg_cycle._FIRST[(False, False)]
            explain(
                conn,
                "cycle_first",
                first,
                {
                    "now": now,
                    "worker": "w",
                    "lease_until": now,
                    "outcomes": json.dumps([]),
                    "edges": json.dumps([]),
                    "take": False,
                    "scan_limit": 32,
                },
            )
            explain(
                conn, "cycle_settle", pg_cycle._SETTLE, {"ids": [1, 2], "now": now, "worker": "w"}
            )
            explain(conn, "cycle_lock", pg_cycle._LOCK, {"ids": [1, 2]})
            explain(
                conn,
                "journal_flush",
                journal._FLUSH_PG,
                {"steps": json.dumps([]), "tasks": json.dumps([]), "notify": False},
            )


if __name__ == "__main__":
    main()
