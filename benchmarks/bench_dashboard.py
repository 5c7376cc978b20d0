"""Dashboard benchmark (issue #10): each page's server time on PostgreSQL with 1,000,000 tasks.

Fills a PostgreSQL database with tasks of four templates over 30 days (5 steps each, so 5,000,000
steps, with their step and task transitions) using set-based SQL, then times the engine calls behind
each dashboard page (the dashboard holds no SQL: the facade calls are the server's database time)
and, when the dashboard is installed, the full HTML pages through the ASGI app with the bytes each
transfers.

    python benchmarks/bench_dashboard.py                      # 1,000,000 tasks on a scratch
    database python benchmarks/bench_dashboard.py --tasks 100000 --runs 20
    python benchmarks/bench_dashboard.py --database-url postgresql://postgres@127.0.0.1/db --keep

With --database-url the database must be empty (it is migrated and filled) unless --reuse is given,
which times an already filled one. The scratch database is dropped at the end unless --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from benchmarks.fleet import ADMIN_URL, percentile, scratch_database  # noqa: E402
from tasker import Tasker  # noqa: E402
from tasker.domain.listing import TaskQuery  # noqa: E402
from tasker.engine.queries import encode_cursor  # noqa: E402
from tasker.store import rollups  # noqa: E402
from tasker.store import tasks as task_store  # noqa: E402

TARGET_MS = 150.0
DAYS = 30
STEPS = ("reserve", "charge", "pack", "ship", "notify")
SYSTEMS = ("inventory", "payments_gateway", "warehouse", "carrier", "email")
#: (namespace, name, version, share of tasks in per mille)
TEMPLATES = (
    ("shop", "process_order", "1.0.0", 200),
    ("shop", "process_order", "1.1.0", 490),
    ("payments", "refund", "2.0.0", 300),
    ("crm", "sync_contact", "1.0.0", 10),
)
TABLES = ("tasker_tasks", "tasker_steps", "tasker_step_transitions", "tasker_task_transitions")


def template_yaml(namespace: str, name: str, version: str) -> str:
    steps = []
    for i, (step, system) in enumerate(zip(STEPS, SYSTEMS)):
        after = f"\n    depends_on_step: {STEPS[i - 1]}" if i else ""
        steps.append(
            f"  - name: {step}\n    handler_class: benchmarks.noop:Noop\n"
            f"    dependent_system: {system}{after}"
        )
    return (
        f"name: {name}\nnamespace_name: {namespace}\nversion: {version}\n"
        "description: Dashboard benchmark workload.\nstep_templates:\n" + "\n".join(steps) + "\n"
    )


def load_templates(engine: Tasker, folder: Path) -> None:
    for ns, name, version, _ in TEMPLATES:
        (folder / f"{ns}-{name}-{version}.yaml").write_text(template_yaml(ns, name, version))
    engine.load_templates(folder)


# -- filling ---------------------------------------------------------------------------------------
TASKS_SQL = """
INSERT INTO tasker_tasks (namespace, name, version, template_id, status, context, idempotency_key,
                          correlation_id, annotations, created_at, updated_at, started_at,
                          finished_at)
SELECT t.ns, t.nm, t.ver, t.tid, s.status, jsonb_build_object('order_id', g, 'amount', g % 1000),
       'bench-' || g, 'corr-' || g, NULL, c.at, c.at + s.took, c.at + interval '1 second',
       CASE WHEN s.status IN ('pending', 'in_progress') THEN NULL ELSE c.at + s.took END
FROM generate_series(1, :n) AS g
CROSS JOIN LATERAL (SELECT :now - (:n - g) * (:span / :n) * interval '1 second'
                           - (g % 7) * interval '1 second' AS at) AS c
CROSS JOIN LATERAL (SELECT CASE WHEN g > :n - :pending THEN 'pending'
                                WHEN g > :n - :active THEN 'in_progress'
                                WHEN g % 25 = 0 OR g % 1000 = 995 THEN 'error'
                                WHEN g % 50 = 1 THEN 'cancelled'
                                WHEN g % 100 = 2 THEN 'resolved_manually'
                                ELSE 'complete' END AS status,
                           (5 + g % 55) * interval '1 second' AS took) AS s
CROSS JOIN LATERAL (SELECT ns, nm, ver, tid FROM bench_templates
                    WHERE g % 1000 >= lo AND g % 1000 < hi) AS t
ORDER BY g
"""

# Per task status, the state of the step at each position (0-based) in the chain.
STEP_STATE = """
CASE t.status
  WHEN 'complete' THEN 'complete'
  WHEN 'error' THEN CASE WHEN p < 2 THEN 'complete' WHEN p = 2 THEN 'error' ELSE 'pending' END
  WHEN 'cancelled' THEN CASE WHEN p < 1 THEN 'complete' ELSE 'cancelled' END
  WHEN 'resolved_manually' THEN CASE WHEN p = 2 THEN 'resolved_manually' ELSE 'complete' END
  WHEN 'pending' THEN CASE WHEN p = 0 THEN 'ready' ELSE 'pending' END
  ELSE CASE WHEN p = 0 THEN 'complete' WHEN p = 1 THEN
            (CASE WHEN t.id % 3 = 0 THEN 'waiting_retry' ELSE 'in_progress' END) ELSE 'pending' END
END
"""

STEPS_SQL = f"""
INSERT INTO tasker_steps (task_id, name, position, namespace, dependent_system, state,
                          pending_parents, run_at, attempts, retry_limit, retryable, lease_owner,
                          lease_expires_at, claim_token, idempotency_key, results, last_error,
                          created_at, updated_at, started_at, finished_at)
SELECT t.id, (CAST(:steps AS text[]))[p + 1], p, t.namespace, (CAST(:systems AS text[]))[p + 1],
       x.state,
       CASE WHEN x.state = 'pending' THEN 1 ELSE 0 END,
       CASE WHEN x.state IN ('ready', 'waiting_retry')
            THEN t.created_at + p * interval '2 second' END,
       CASE WHEN x.state = 'error' THEN 3 WHEN x.state IN ('pending', 'ready', 'cancelled') THEN 0
            ELSE 1 END,
       3, true,
       CASE WHEN x.state = 'in_progress' THEN 'bench-worker' END,
       CASE WHEN x.state = 'in_progress' THEN :now + interval '30 second' END,
       0, md5(t.id || '/' || p), CASE WHEN x.state = 'complete' THEN '{{"ok": true}}'::jsonb END,
       CASE WHEN x.state IN ('error', 'waiting_retry') THEN
         '{{"class": "PermanentError", "message": "card declined", "retryable": false}}'::jsonb
       END,
       t.created_at, t.updated_at, t.created_at + p * interval '2 second',
       CASE WHEN x.state IN ('complete', 'error', 'resolved_manually')
            THEN t.created_at + p * interval '2 second' + interval '1 second' END
FROM tasker_tasks t
CROSS JOIN generate_series(0, 4) AS p
CROSS JOIN LATERAL (SELECT {STEP_STATE} AS state) AS x
WHERE t.id BETWEEN :lo AND :hi
ORDER BY t.id, p
"""

# One creation row per step; per attempt that ran: ready -> in_progress, then its outcome.
STEP_TRANSITIONS_SQL = """
INSERT INTO tasker_step_transitions (step_id, task_id, from_state, to_state, attempt, at, worker,
                                     error_class, error_message, duration_ms)
SELECT s.id, s.task_id, NULL::text, CASE WHEN s.position = 0 THEN 'ready' ELSE 'pending' END, 0,
       s.created_at, NULL::text, NULL::text, NULL::text, NULL::float8
FROM tasker_steps s WHERE s.task_id BETWEEN :lo AND :hi
UNION ALL
SELECT s.id, s.task_id, CASE WHEN a = 1 THEN 'ready' ELSE 'waiting_retry' END, 'in_progress', a,
       s.started_at + (a - 1) * interval '200 millisecond', 'bench-worker', NULL, NULL, NULL
FROM tasker_steps s CROSS JOIN LATERAL generate_series(1, s.attempts) AS a
WHERE s.task_id BETWEEN :lo AND :hi AND s.started_at IS NOT NULL AND s.attempts > 0
UNION ALL
SELECT s.id, s.task_id, 'in_progress', o.to_state, a,
       s.started_at + (a - 1) * interval '200 millisecond' + interval '150 millisecond',
       'bench-worker', o.error_class, o.message, (20 + s.id % 480)::float8
FROM tasker_steps s CROSS JOIN LATERAL generate_series(1, s.attempts) AS a
CROSS JOIN LATERAL (SELECT CASE WHEN s.state = 'error' AND a < s.attempts THEN 'waiting_retry'
                                WHEN s.state IN ('error', 'resolved_manually') THEN 'error'
                                WHEN s.state = 'waiting_retry' THEN 'waiting_retry'
                                WHEN s.state = 'in_progress' THEN NULL
                                ELSE 'complete' END AS to_state,
                           CASE WHEN s.state IN ('error', 'waiting_retry', 'resolved_manually')
                                THEN 'PermanentError' END AS error_class,
                           CASE WHEN s.state IN ('error', 'waiting_retry', 'resolved_manually')
                                THEN 'card declined' END AS message) AS o
WHERE s.task_id BETWEEN :lo AND :hi AND s.attempts > 0 AND o.to_state IS NOT NULL
"""

TASK_TRANSITIONS_SQL = """
INSERT INTO tasker_task_transitions (task_id, from_state, to_state, at, worker, reason)
SELECT id, NULL::text, 'pending', created_at, NULL::text, NULL::text FROM tasker_tasks
WHERE id BETWEEN :lo AND :hi
UNION ALL
SELECT id, 'pending', 'in_progress', started_at, 'bench-worker', NULL::text FROM tasker_tasks
WHERE id BETWEEN :lo AND :hi AND started_at IS NOT NULL
UNION ALL
SELECT id, 'in_progress', status, finished_at, 'bench-worker', NULL::text FROM tasker_tasks
WHERE id BETWEEN :lo AND :hi AND finished_at IS NOT NULL
"""


def _secondary_indexes(conn: sa.Connection) -> list[tuple[str, str]]:
    """Indexes of the big tables that back no constraint: dropped while loading, rebuilt after."""
    return [
        (r[0], r[1])
        for r in conn.execute(
            sa.text("""
        SELECT i.indexname, i.indexdef FROM pg_indexes i
        WHERE i.tablename = ANY(:tables)
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)
    """),
            {"tables": list(TABLES)},
        )
    ]


def fill(engine: Tasker, tasks: int, now: datetime, chunk: int = 100_000) -> dict[str, float]:
    """Fill the store; returns seconds per phase. Set-based SQL, foreign-key triggers off, secondary
    indexes rebuilt at the end (as a bulk load should be)."""
    timings: dict[str, float] = {}
    with engine.db.write() as conn:
        ids = {
            (t.namespace_name, t.name, t.version): task_store.template_id(conn, t, now)
            for t in engine.registry.all()
        }
    raw = engine.db.writer
    with raw.connect() as conn:
        conn.execute(sa.text("SET session_replication_role = replica"))  # no FK trigger per row
        conn.execute(sa.text("SET maintenance_work_mem = '512MB'"))
        conn.execute(
            sa.text(
                "CREATE TEMP TABLE bench_templates (ns text, nm text, ver text, "
                "tid bigint, lo int, hi int)"
            )
        )
        lo = 0
        for ns, name, version, share in TEMPLATES:
            conn.execute(
                sa.text("INSERT INTO bench_templates VALUES (:ns, :nm, :ver, :tid, :lo, :hi)"),
                {
                    "ns": ns,
                    "nm": name,
                    "ver": version,
                    "tid": ids[(ns, name, version)],
                    "lo": lo,
                    "hi": lo + share,
                },
            )
            lo += share
        indexes = _secondary_indexes(conn)
        for name, _ in indexes:
            conn.execute(sa.text(f'DROP INDEX "{name}"'))
        conn.commit()
        started = time.perf_counter()
        conn.execute(
            sa.text(TASKS_SQL),
            {
                "n": tasks,
                "now": now,
                "span": DAYS * 86400.0,
                "pending": min(500, tasks // 100),
                "active": min(1500, tasks // 50),
            },
        )
        conn.commit()
        timings["tasks"] = time.perf_counter() - started
        first, last = conn.execute(sa.text("SELECT min(id), max(id) FROM tasker_tasks")).one()
        for phase, sql, extra in (
            ("steps", STEPS_SQL, {"steps": list(STEPS), "systems": list(SYSTEMS)}),
            ("step transitions", STEP_TRANSITIONS_SQL, {}),
            ("task transitions", TASK_TRANSITIONS_SQL, {}),
        ):
            started = time.perf_counter()
            for lo_id in range(first, last + 1, chunk):
                conn.execute(
                    sa.text(sql), {"lo": lo_id, "hi": lo_id + chunk - 1, "now": now, **extra}
                )
                conn.commit()
            timings[phase] = time.perf_counter() - started
        started = time.perf_counter()
        for _, definition in indexes:
            conn.execute(sa.text(definition))
            conn.commit()
        timings["indexes"] = time.perf_counter() - started
    started = time.perf_counter()
    with raw.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in TABLES:
            conn.execute(sa.text(f"VACUUM (ANALYZE) {table}"))
    timings["vacuum analyze"] = time.perf_counter() - started
    return timings


# -- timing ----------------------------------------------------------------------------------------
@dataclass
class Result:
    page: str
    calls: str
    p50: float
    p95: float
    rows: int | str = ""
    kb: float | None = None


def timed(fn: Callable[[], Any], runs: int, warmup: int = 2) -> tuple[float, float, Any]:
    out: Any = None
    for _ in range(warmup):
        out = fn()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        out = fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), percentile(samples, 95), out


def engine_pages(engine: Tasker, runs: int) -> list[Result]:
    """The facade calls behind each page, each timed as the page makes them."""
    with engine.db.read() as conn:
        newest, oldest = conn.execute(sa.text("SELECT max(id), min(id) FROM tasker_tasks")).one()
        detail_id = conn.execute(
            sa.text("SELECT max(id) FROM tasker_tasks WHERE status = 'error'")
        ).scalar_one()
    middle = encode_cursor((newest + oldest) // 2)
    deep = encode_cursor(oldest + 1000)
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=15)

    def walk_ten() -> int:
        cursor, seen = None, 0
        for _ in range(10):
            page = engine.listing.page(limit=50, after=cursor)
            seen += len(page.tasks)
            cursor = page.next_cursor
        return seen

    listing: list[tuple[str, Callable[[], Any]]] = [
        ("tasks: first page", lambda: engine.listing.page(limit=50)),
        ("tasks: page 10 (ten pages via cursors, per page)", walk_ten),
        ("tasks: middle page (after=)", lambda: engine.listing.page(limit=50, after=middle)),
        (
            "tasks: back from the middle (before=)",
            lambda: engine.listing.page(limit=50, before=middle),
        ),
        (
            "tasks: last pages (after= near the oldest)",
            lambda: engine.listing.page(limit=50, after=deep),
        ),
        ("tasks: namespace=payments", lambda: engine.listing.page(TaskQuery(namespace="payments"))),
        ("tasks: namespace=crm (1%)", lambda: engine.listing.page(TaskQuery(namespace="crm"))),
        (
            "tasks: template shop/process_order",
            lambda: engine.listing.page(TaskQuery(namespace="shop", name="process_order")),
        ),
        (
            "tasks: template + version 1.0.0",
            lambda: engine.listing.page(
                TaskQuery(namespace="shop", name="process_order", version="1.0.0")
            ),
        ),
        ("tasks: status=error", lambda: engine.listing.page(TaskQuery(statuses=("error",)))),
        (
            "tasks: status=error, middle page",
            lambda: engine.listing.page(TaskQuery(statuses=("error",)), after=middle),
        ),
        (
            "tasks: status in (pending, in_progress, error)",
            lambda: engine.listing.page(TaskQuery(statuses=("pending", "in_progress", "error"))),
        ),
        (
            "tasks: crm + status=error",
            lambda: engine.listing.page(
                TaskQuery(namespace="crm", name="sync_contact", statuses=("error",))
            ),
        ),
        (
            "tasks: created on one day 15 days ago",
            lambda: engine.listing.page(
                TaskQuery(created_from=day, created_to=day + timedelta(days=1))
            ),
        ),
        (
            "tasks: created that day + status=error",
            lambda: engine.listing.page(
                TaskQuery(created_from=day, created_to=day + timedelta(days=1), statuses=("error",))
            ),
        ),
        (
            "tasks: created that day + namespace=crm",
            lambda: engine.listing.page(
                TaskQuery(created_from=day, created_to=day + timedelta(days=1), namespace="crm")
            ),
        ),
        (
            "tasks: key = idempotency key",
            lambda: engine.listing.page(TaskQuery(key=f"bench-{newest // 3}")),
        ),
        (
            "tasks: key = correlation id",
            lambda: engine.listing.page(TaskQuery(key=f"corr-{newest // 2}")),
        ),
        ("tasks: key matching nothing", lambda: engine.listing.page(TaskQuery(key="no-such-key"))),
    ]
    results = []
    for label, fn in listing:
        p50, p95, out = timed(fn, runs)
        if label.startswith("tasks: page 10"):
            p50, p95 = p50 / 10, p95 / 10
            rows: int | str = out
        else:
            rows = len(out.tasks)
        results.append(Result(label, "page_tasks", p50, p95, rows))

    def overview_page() -> Any:
        return engine.insight.overview(), engine.systems.workers(), engine.systems.report()

    def detail_page() -> Any:
        return (
            engine.get_task(detail_id),
            engine.history.step_transitions(detail_id),
            engine.history.task_transitions(detail_id),
            engine.templates.of_task(detail_id),
        )

    def systems_page() -> Any:
        return (
            engine.systems.report(),
            engine.systems.namespace_limits(),
            engine.systems.circuit_history(),
        )

    def analytics_page() -> Any:
        return engine.insight.performance(24), engine.insight.bottlenecks(24)

    pages: list[tuple[str, str, Callable[[], Any]]] = [
        ("overview", "overview + workers + systems", overview_page),
        ("overview: engine.insight.overview() alone", "overview", engine.insight.overview),
        (
            "task detail (a task in error)",
            "get_task + step/task_transitions + task_template",
            detail_page,
        ),
        ("templates", "template_versions", engine.templates.versions),
        ("systems", "systems + namespace_limits + circuit_history", systems_page),
        ("analytics (24 h)", "performance(24) + bottlenecks(24)", analytics_page),
        ("analytics: performance(24)", "performance", lambda: engine.insight.performance(24)),
        ("analytics: bottlenecks(24)", "bottlenecks", lambda: engine.insight.bottlenecks(24)),
        ("events (last 100)", "read_events", lambda: engine.history.read_events(limit=100)),
    ]
    for label, calls, fn in pages:
        p50, p95, _ = timed(fn, runs)
        results.append(Result(label, calls, p50, p95))
    return results


ASSET = re.compile(r'(?:href|src)="(/static/[^"]+)"')


def html_pages(engine: Tasker, runs: int) -> list[Result]:
    """Full pages through the ASGI app (auth off): server time and bytes of the page and its
    assets."""
    try:
        from fastapi.testclient import TestClient

        from tasker.api.app import create_app
    except ImportError:  # pragma: no cover
        return []
    with engine.db.read() as conn:
        detail_id = conn.execute(
            sa.text("SELECT max(id) FROM tasker_tasks WHERE status = 'error'")
        ).scalar_one()
        newest = conn.execute(sa.text("SELECT max(id) FROM tasker_tasks")).scalar_one()
    client = TestClient(create_app(engine))
    urls = [
        ("/", "overview"),
        ("/tasks", "tasks"),
        (f"/tasks?after={encode_cursor(newest // 2)}", "tasks, middle page"),
        ("/tasks?status=error&namespace=crm", "tasks, filtered"),
        (f"/tasks/{detail_id}", "task detail"),
        ("/templates", "templates"),
        ("/templates/shop/process_order", "template detail"),
        ("/systems", "systems"),
        ("/analytics?hours=24", "analytics"),
        ("/events", "events"),
    ]
    results = []
    for url, label in urls:
        first = client.get(url)
        if first.status_code != 200:
            results.append(
                Result(
                    f"HTML {label}",
                    f"GET {url}",
                    float("nan"),
                    float("nan"),
                    f"HTTP {first.status_code}",
                )
            )
            continue
        assets = sorted(set(ASSET.findall(first.text)))
        size = len(first.content) + sum(len(client.get(a).content) for a in assets)
        p50, p95, _ = timed(lambda url=url: client.get(url), runs)  # type: ignore[misc]
        results.append(
            Result(f"HTML {label}", f"GET {url}", p50, p95, f"{len(assets)} assets", size / 1024)
        )
    return results


def report(results: list[Result]) -> None:
    print(f"\n{'page':<52} {'p50 ms':>8} {'p95 ms':>8} {'rows':>10} {'KB':>7}  ok")
    for r in results:
        kb = f"{r.kb:.1f}" if r.kb is not None else ""
        ok = "yes" if r.p95 <= TARGET_MS else "NO"
        print(f"{r.page:<52} {r.p50:>8.1f} {r.p95:>8.1f} {r.rows!s:>10} {kb:>7}  {ok}")


@contextlib.contextmanager
def database(url: str | None, keep: bool) -> Iterator[str]:
    if url:
        yield url
    elif keep:
        name = f"tasker_dash_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        admin.dispose()
        kept = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        print(f"database kept: {kept}")
        yield kept
    else:
        with scratch_database("tasker_dash") as scratch:
            yield scratch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--database-url", help="an empty PostgreSQL database (default: a scratch one)"
    )
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument(
        "--runs", type=int, default=20, help="timed runs per page (after 2 warm-ups)"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="time an already filled --database-url"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--no-html", action="store_true", help="skip the HTML pages")
    args = parser.parse_args()
    with database(args.database_url, args.keep) as url, tempfile.TemporaryDirectory() as folder:
        engine = Tasker(url, migrate=True)
        load_templates(engine, Path(folder))
        if not args.reuse:
            started = time.perf_counter()
            timings = fill(engine, args.tasks, datetime.now(UTC))
            print(
                f"filled in {time.perf_counter() - started:.0f} s: "
                + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
            )
        with engine.db.read() as conn:
            counts = {
                t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES
            }
        print("rows: " + ", ".join(f"{t.removeprefix('tasker_')} {n:,}" for t, n in counts.items()))
        # The analytics rollups read the history once (as after an upgrade); later calls read only
        # what is new. Timed apart so the page timings below are those of a store in service.
        started = time.perf_counter()
        read = rollups.catch_up(engine.db.write, max_seconds=3600)
        print(
            f"analytics rollups caught up: {read:,} transition ids in"
            f" {time.perf_counter() - started:.0f} s"
        )
        results = engine_pages(engine, args.runs)
        if not args.no_html:
            results += html_pages(engine, args.runs)
        report(results)
        engine.close()


if __name__ == "__main__":
    main()
