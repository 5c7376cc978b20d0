"""Soak: the checkout workload on PostgreSQL for a fixed time with retention on (issue 17, point 2).

Does a store that deletes its finished tasks stay the same size, and the engine as fast, however
long it runs? On a scratch database (migrated), `--workers` `tasker worker` processes
(`--concurrency` each) run `bench/checkout` (benchmarks/templates/checkout.yaml: the demo's 5-step
checkout chain, validate cart -> payment -> inventory -> order -> confirmation, with no-op
handlers) with retention set short through their environment:
`TASKER_RETENTION=complete=<--retention>` (2m) and `TASKER_HOUSEKEEPING_SECONDS=<--housekeeping>`
(10), so the housekeeping job deletes complete tasks `--retention` after they finished, every
`--housekeeping` seconds.
This process feeds tasks at a steady `--rate` (150 tasks/s, 750 steps/s: about a third of what
two workers do on a 2-core machine, docs/benchmarks.md), or keeps `--backlog K` tasks open
instead (then steps/s is the fleet's capacity), for `--minutes` (10).

Every `--interval` seconds (60) it records: tasks fed and steps completed per second in the
interval (steps complete in the store + 5 x tasks purged, read in one snapshot), the p50 and p99
of created -> finished of the tasks that finished in it, the live rows (`count(*)`), the total
relation size (`pg_total_relation_size`, indexes and TOAST included) and the dead rows
(`n_dead_tup`) of tasker_tasks, tasker_steps, tasker_step_transitions and
tasker_task_transitions, the tasks purged so far (fed minus held: only retention deletes tasks),
the housekeeping passes seen (`tasker_jobs.last_pass`, polled every second) and the backlog
(ready steps).

The verdict: over the samples after the one that first saw purged tasks (that interval holds the
first retention pass), the max/min ratio of each table's live rows and of steps/s; flat when all
are within `--tolerance` (25%). It is judged on live rows, not sizes: PostgreSQL does not give
back the space of deleted rows; vacuum marks it for reuse, so a table's size climbs to a
high-water mark (the rows of about one retention period plus the dead ones between two vacuums)
and then stays there, while a leak shows in the rows first. Sizes are reported, with their ratio
over the same samples, to show that they plateau. Expect the rows to saw-tooth between
rate x retention and rate x (retention + housekeeping) held tasks, so keep `--housekeeping` well
under `--retention`.

Vacuum: a step's row is updated two or three times and a purged task's ~30 rows are deleted, so
without vacuum dead rows pile up (about 5,000 a second in these tables at 150 tasks/s), the
claims walk them, and throughput falls whatever retention does. A server running with
`autovacuum = off` (as the test server may) would measure that, not the engine; there
(`--vacuum auto`, the default) this process stands in for autovacuum: `VACUUM (ANALYZE)` of the
database every `--vacuum-seconds` (20), throttled as autovacuum is. `--vacuum off` shows the
store without it, `on` vacuums anyway.

Workers, the vacuum and the scratch database are removed at the end, also on Ctrl-C or SIGTERM
(which still print what was measured). Run from the repository root:

    python benchmarks/bench_soak.py [--minutes 10] [--interval 60] [--rate 150 | --backlog 2000]
        [--retention 2m] [--housekeeping 10] [--workers 2] [--concurrency 32]
        [--vacuum auto|on|off] [--json]

A short check: `--minutes 3 --interval 20 --retention 40s --housekeeping 5`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.fleet import TEMPLATES, scratch_database, tasker_command, wait_until  # noqa: E402
from tasker import Tasker  # noqa: E402
from tasker.domain.waits import duration_seconds  # noqa: E402

TEMPLATE = TEMPLATES / "checkout.yaml"
REF = "bench/checkout"
STEPS = 5
TABLES = ("tasker_tasks", "tasker_steps", "tasker_step_transitions", "tasker_task_transitions")
#: Short names of TABLES, for the table's columns and the verdict.
SHORT = {
    "tasker_tasks": "tasks",
    "tasker_steps": "steps",
    "tasker_step_transitions": "step tr.",
    "tasker_task_transitions": "task tr.",
}
#: The feeder creates what is due every TICK seconds; the last housekeeping pass is read every
#: PASS_POLL seconds (a pass every `--housekeeping` >= 1 s is never missed).
TICK = 0.2
PASS_POLL = 1.0

COUNTS = sa.text(
    """SELECT statement_timestamp() AS at,
              (SELECT count(*) FROM tasker_tasks) AS tasker_tasks,
              (SELECT count(*) FROM tasker_steps) AS tasker_steps,
              (SELECT count(*) FROM tasker_step_transitions) AS tasker_step_transitions,
              (SELECT count(*) FROM tasker_task_transitions) AS tasker_task_transitions,
              (SELECT count(*) FROM tasker_steps WHERE state = 'complete') AS steps_complete,
              (SELECT count(*) FROM tasker_steps WHERE state = 'ready') AS ready,
              (SELECT count(*) FROM tasker_tasks
                WHERE status IN ('pending', 'in_progress')) AS open_tasks"""
)
SIZES = sa.text(
    """SELECT relname, pg_total_relation_size(relid) AS size, n_dead_tup,
              vacuum_count + autovacuum_count AS vacuums
         FROM pg_stat_user_tables WHERE relname = ANY(:tables)"""
)
LATENCY = sa.text(
    """SELECT count(*),
              percentile_cont(0.5) WITHIN GROUP (ORDER BY finished_at - created_at),
              percentile_cont(0.99) WITHIN GROUP (ORDER BY finished_at - created_at)
         FROM tasker_tasks
        WHERE status = 'complete' AND finished_at > :since AND finished_at <= :until"""
)
OPEN = sa.text("SELECT count(*) FROM tasker_tasks WHERE status IN ('pending', 'in_progress')")
LAST_PASS = sa.text("SELECT last_pass FROM tasker_jobs WHERE name = 'housekeeping'")


@dataclass
class Sample:
    elapsed_s: float
    fed: int
    fed_per_s: float
    steps_per_s: float
    #: created -> finished of the tasks that finished in the interval (those still held).
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    rows: dict[str, int]
    size_bytes: dict[str, int]
    dead_rows: dict[str, int]
    #: Vacuums of each table so far (autovacuum's and the benchmark's).
    vacuums: dict[str, int]
    purged: int
    passes: int
    ready_steps: int
    open_tasks: int
    database_bytes: int

    @property
    def size_total(self) -> int:
        return sum(self.size_bytes.values())


@dataclass
class Soak:
    """What a run recorded."""

    config: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    #: The housekeeping passes seen, as `tasker_jobs.last_pass` recorded them.
    passes: list[dict[str, Any]] = field(default_factory=list)
    #: The benchmark's own vacuums (`Vacuumer`): (seconds since the start, seconds it took).
    vacuums: list[tuple[float, float]] = field(default_factory=list)
    interrupted: bool = False


def checkout_context(n: int) -> dict[str, Any]:
    """A storefront's checkout: 1-3 lines, the card, the customer."""
    lines = [
        {"product_id": 1 + (n * 7 + i) % 50, "quantity": 1 + i, "price": 9.99 + i * 15}
        for i in range(1 + n % 3)
    ]
    total = round(sum(line["price"] * line["quantity"] for line in lines), 2)
    return {
        "checkout_id": f"soak-{n}",
        "cart_items": lines,
        "payment_info": {"method": "credit_card", "token": f"tok_{n:08d}", "amount": total},
        "customer_info": {"id": n % 1000, "email": f"c{n % 1000}@example.com", "name": "Soak"},
    }


class Worker:
    """`tasker worker` as a child process with retention set in its environment, its log in a
    file (a pipe nobody reads would stall it once full)."""

    def __init__(self, url: str, concurrency: int, env: dict[str, str], log: Path):
        self.log = log
        cmd = [*tasker_command(), "--database-url", url, "worker"]
        cmd += ["--concurrency", str(concurrency), "--templates", str(TEMPLATE)]
        path = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env={**os.environ, **env, "PYTHONPATH": path},
                stdout=subprocess.DEVNULL,
                stderr=out,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Vacuumer(threading.Thread):
    """Stands in for autovacuum where the server runs without it: `VACUUM (ANALYZE)` of the
    scratch database every `every` seconds, throttled as autovacuum throttles itself (cost delay
    2 ms, cost limit 200), on its own connection."""

    def __init__(self, url: str, every: float, started_at: float):
        super().__init__(name="vacuum", daemon=True)
        self.every = every
        self.conn = psycopg.connect(url.replace("+psycopg", ""), autocommit=True)
        self.conn.execute("SET vacuum_cost_delay = '2ms'")
        self.conn.execute("SET vacuum_cost_limit = 200")
        self.done = threading.Event()
        #: (seconds since the start, seconds it took) of each vacuum.
        self.runs: list[tuple[float, float]] = []
        self.error: str | None = None
        self.started_at = started_at

    def run(self) -> None:
        while not self.done.wait(self.every):
            t0 = time.monotonic()
            try:
                self.conn.execute("VACUUM (ANALYZE)")
            except psycopg.Error as exc:
                if not self.done.is_set():
                    self.error = f"{type(exc).__name__}: {exc}"
                return
            self.runs.append((round(t0 - self.started_at, 1), round(time.monotonic() - t0, 2)))

    def stop(self) -> None:
        self.done.set()
        self.conn.cancel_safe()  # a vacuum under way ends now
        self.join(30)
        self.conn.close()


def autovacuum_on(t: Tasker) -> bool:
    with t.db.read() as c:
        return str(c.exec_driver_sql("SHOW autovacuum").scalar_one()) == "on"


class Feeder:
    """Creates tasks: `rate` a second on the monotonic clock (catching up after a pause), or
    enough to keep `backlog` tasks open."""

    def __init__(self, t: Tasker, rate: float, backlog: int | None):
        self.t, self.rate, self.backlog = t, rate, backlog
        self.created = 0
        self.started = time.monotonic()
        self._numbers = itertools.count()

    def tick(self) -> None:
        if self.backlog is None:
            due = int(self.rate * (time.monotonic() - self.started)) - self.created
        else:
            with self.t.db.read() as c:
                due = self.backlog - int(c.execute(OPEN).scalar_one())
        if due > 0:
            contexts = [checkout_context(next(self._numbers)) for _ in range(due)]
            self.t.create_tasks(REF, contexts, chunk_size=500)
            self.created += due


def sample(t: Tasker, feeder: Feeder, soak: Soak, start: float, last: dict[str, Any]) -> Sample:
    """Read the store; `last` carries the previous sample's clock, counters and time."""
    # One statement, one snapshot: a purge batch (a task and all its rows) is in it or not. The
    # feeder runs in this thread, so `created` is exact: held + purged = created.
    with t.db.read() as c:
        counts = c.execute(COUNTS).mappings().one()
        sizes = {r.relname: r for r in c.execute(SIZES, {"tables": list(TABLES)})}
        database = int(
            c.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one()
        )
        n, p50, p99 = c.execute(LATENCY, {"since": last["at"], "until": counts["at"]}).one()
    now = time.monotonic()
    created = feeder.created
    purged = created - int(counts["tasker_tasks"])
    done = int(counts["steps_complete"]) + STEPS * purged
    seconds = max(now - last["clock"], 1e-9)
    s = Sample(
        elapsed_s=round(now - start, 1),
        fed=created,
        fed_per_s=(created - last["created"]) / seconds,
        steps_per_s=(done - last["done"]) / seconds,
        latency_p50_ms=None if not n else p50.total_seconds() * 1000,
        latency_p99_ms=None if not n else p99.total_seconds() * 1000,
        rows={name: int(counts[name]) for name in TABLES},
        size_bytes={name: int(sizes[name].size) for name in TABLES},
        dead_rows={name: int(sizes[name].n_dead_tup) for name in TABLES},
        vacuums={name: int(sizes[name].vacuums) for name in TABLES},
        purged=purged,
        passes=len(soak.passes),
        ready_steps=int(counts["ready"]),
        open_tasks=int(counts["open_tasks"]),
        database_bytes=database,
    )
    last.update(at=counts["at"], clock=now, created=created, done=done)
    return s


def poll_pass(t: Tasker, soak: Soak) -> None:
    with t.db.read() as c:
        record = c.execute(LAST_PASS).scalar()
    if record and (not soak.passes or soak.passes[-1]["started_at"] != record["started_at"]):
        soak.passes.append(dict(record))


def run(args: argparse.Namespace, console: Console) -> Soak:
    soak = Soak(config={k: v for k, v in vars(args).items() if k != "json"})
    soak.config["cpus"] = os.cpu_count()
    env = {
        "TASKER_RETENTION": f"complete={args.retention}",
        "TASKER_HOUSEKEEPING_SECONDS": str(args.housekeeping),
    }
    with tempfile.TemporaryDirectory(prefix="tasker_soak_") as logs, scratch_database() as url:
        t = Tasker(url, migrate=True)
        t.load_templates(TEMPLATE)
        workers: list[Worker] = []
        vacuumer: Vacuumer | None = None
        try:
            workers = [
                Worker(url, args.concurrency, env, Path(logs) / f"worker{i}.log")
                for i in range(args.workers)
            ]

            def registered() -> bool:
                with t.db.read() as c:
                    q = "SELECT count(*) FROM tasker_workers WHERE stopped_at IS NULL"
                    held = int(c.exec_driver_sql(q).scalar_one())
                return held >= int(args.workers)

            if not wait_until(registered, timeout=60, interval=0.2):
                raise SystemExit("the workers did not start:\n" + workers[0].tail())
            autovacuum = autovacuum_on(t)
            soak.config["server_autovacuum"] = autovacuum
            every = vacuum_seconds(args, autovacuum)
            soak.config["benchmark_vacuum_seconds"] = every
            if not autovacuum:
                console.print(
                    "the server runs with autovacuum off: "
                    + (
                        f"this benchmark vacuums the database every {every:g}s instead"
                        if every
                        else "nothing vacuums the database (--vacuum off)"
                    ),
                    style="yellow",
                )
            feeder = Feeder(t, args.rate, args.backlog)
            start = feeder.started
            if every:
                vacuumer = Vacuumer(url, every, start)
                vacuumer.start()
            with t.db.read() as c:
                at = c.exec_driver_sql("SELECT statement_timestamp()").scalar_one()
            last: dict[str, Any] = {"at": at, "clock": start, "created": 0, "done": 0}
            end = start + args.minutes * 60
            next_sample = start + args.interval
            next_poll = start
            try:
                while (now := time.monotonic()) < end + 0.5:
                    feeder.tick()
                    if now >= next_poll:
                        poll_pass(t, soak)
                        next_poll += PASS_POLL
                        dead = [w for w in workers if not w.alive()]
                        if dead:
                            raise SystemExit("a worker exited:\n" + dead[0].tail())
                    if now >= next_sample:
                        if vacuumer is not None and vacuumer.error:
                            raise SystemExit(f"the benchmark's vacuum failed: {vacuumer.error}")
                        s = sample(t, feeder, soak, start, last)
                        soak.samples.append(s)
                        console.print(progress(s), highlight=False)
                        next_sample += args.interval
                    time.sleep(max(0.0, min(TICK, next_sample - time.monotonic())))
            except KeyboardInterrupt:
                soak.interrupted = True
                console.print("interrupted: cleaning up", style="yellow")
        finally:
            if vacuumer is not None:
                vacuumer.stop()
                soak.vacuums = vacuumer.runs
            for w in workers:
                w.stop()
            t.close()
    return soak


def vacuum_seconds(args: argparse.Namespace, autovacuum: bool) -> float:
    """How often the benchmark vacuums (0: never), by `--vacuum` and the server's autovacuum."""
    if args.vacuum == "off" or (args.vacuum == "auto" and autovacuum):
        return 0.0
    return float(args.vacuum_seconds)


def progress(s: Sample) -> str:
    return (
        f"{s.elapsed_s:6.0f}s  fed {s.fed_per_s:6.1f}/s  steps {s.steps_per_s:7.1f}/s  "
        + "  ".join(f"{SHORT[k]} {v:,}" for k, v in s.rows.items())
        + f"  {s.size_total / 2**20:.1f} MB  dead {sum(s.dead_rows.values()):,}"
        + f"  purged {s.purged:,}  ready {s.ready_steps:,}"
    )


def ratio(values: list[float]) -> float:
    low, high = min(values), max(values)
    return high / low if low > 0 else float("inf")


def verdict(soak: Soak, tolerance: float) -> dict[str, Any]:
    """Max/min ratios over the samples after the first one that saw purged tasks."""
    first = next((i for i, s in enumerate(soak.samples) if s.purged > 0), None)
    later = [] if first is None else soak.samples[first + 1 :]
    out: dict[str, Any] = {
        "first_purge_sample_s": None if first is None else soak.samples[first].elapsed_s,
        "samples_judged": len(later),
        "tolerance": tolerance,
    }
    if len(later) < 2:
        out["flat"] = None
        out["why"] = "fewer than 2 samples after the first retention pass: run longer"
        return out
    ratios = {name: ratio([s.rows[name] for s in later]) for name in TABLES}
    ratios["steps_per_s"] = ratio([s.steps_per_s for s in later])
    out["max_min_ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    out["size_max_min_ratio"] = round(ratio([s.size_total for s in later]), 3)
    out["size_growth_bytes"] = later[-1].size_total - later[0].size_total
    out["flat"] = all(v <= 1 + tolerance for v in ratios.values())
    return out


def expected_tasks(args: argparse.Namespace, retention: float) -> tuple[float, float] | None:
    """Tasks held at a steady rate: the retention's worth, plus up to a housekeeping interval."""
    if args.backlog is not None:
        return None
    return args.rate * retention, args.rate * (retention + args.housekeeping)


def wide(console: Console) -> Console:
    """Output that is not a terminal (a file, a pipe) gets room for the whole table."""
    return console if console.is_terminal else Console(file=console.file, width=170)


def report(soak: Soak, judged: dict[str, Any], args: argparse.Namespace, retention: float) -> None:
    console = wide(Console())
    mode = f"backlog {args.backlog}" if args.backlog is not None else f"{args.rate:g} tasks/s"
    table = Table(
        title=f"Soak: {REF}, {mode}, {args.workers} workers x {args.concurrency}, retention"
        f" complete={args.retention}, housekeeping {args.housekeeping:g}s ({os.cpu_count()} CPUs)"
    )
    columns = ["t (s)", "fed/s", "steps/s", "p50/p99 ms", *SHORT.values()]
    for col in [*columns, "size MB", "dead", "purged", "ready"]:
        table.add_column(col, justify="right")
    for s in soak.samples:
        lat = (
            "-"
            if s.latency_p50_ms is None or s.latency_p99_ms is None
            else f"{s.latency_p50_ms:.0f}/{s.latency_p99_ms:.0f}"
        )
        table.add_row(
            f"{s.elapsed_s:.0f}",
            f"{s.fed_per_s:.1f}",
            f"{s.steps_per_s:.1f}",
            lat,
            *(f"{s.rows[name]:,}" for name in TABLES),
            f"{s.size_total / 2**20:.1f}",
            f"{sum(s.dead_rows.values()):,}",
            f"{s.purged:,}",
            f"{s.ready_steps:,}",
        )
    console.print(table)
    band = expected_tasks(args, retention)
    if band:
        console.print(f"expected tasks held at a steady rate: {band[0]:,.0f} to {band[1]:,.0f}")
    if soak.passes:
        secs = [p["seconds"] for p in soak.passes]
        totals = [sum(p["deleted"].values()) for p in soak.passes]
        console.print(
            f"housekeeping passes seen: {len(soak.passes)}, deleting {sum(totals):,} tasks"
            f" (at most {max(totals):,} in one), {max(secs):.2f}s the longest,"
            f" {sum(not p['complete'] for p in soak.passes)} cut short"
        )
    if soak.vacuums:
        console.print(
            f"the benchmark's vacuums (the server's autovacuum is off): {len(soak.vacuums)},"
            f" {max(v[1] for v in soak.vacuums):.2f}s the longest"
        )
    elif not soak.config.get("server_autovacuum", True):
        console.print("nothing vacuumed: the server's autovacuum is off", style="yellow")
    if judged["flat"] is None:
        console.print(f"verdict: none, {judged['why']}", style="yellow")
        return
    ratios = ", ".join(f"{SHORT.get(k, k)} {v:.2f}" for k, v in judged["max_min_ratios"].items())
    console.print(
        f"after the first retention pass (sample at {judged['first_purge_sample_s']:.0f}s),"
        f" max/min over {judged['samples_judged']} samples: {ratios}; size (not judged)"
        f" {judged['size_max_min_ratio']:.2f}"
    )
    console.print(
        f"verdict: {'FLAT' if judged['flat'] else 'NOT FLAT'} (within {judged['tolerance']:.0%})",
        style="bold green" if judged["flat"] else "bold red",
    )


def interrupt(signum: int, frame: object) -> None:
    """A SIGTERM cleans up as Ctrl-C does."""
    raise KeyboardInterrupt


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=60.0, help="seconds between samples")
    ap.add_argument("--rate", type=float, default=150.0, help="tasks fed per second")
    ap.add_argument(
        "--backlog",
        type=int,
        default=None,
        metavar="K",
        help="instead of --rate, keep K tasks open (pending or in progress)",
    )
    ap.add_argument("--retention", default="2m", help="how long complete tasks are kept")
    ap.add_argument(
        "--housekeeping", type=float, default=10.0, help="seconds between housekeeping passes"
    )
    ap.add_argument(
        "--vacuum",
        choices=("auto", "on", "off"),
        default="auto",
        help="the benchmark vacuums the database every --vacuum-seconds: auto (only when the"
        " server's autovacuum is off), on, off",
    )
    ap.add_argument("--vacuum-seconds", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--tolerance", type=float, default=0.25, help="flat: max/min <= 1 + this")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    try:
        retention = duration_seconds(args.retention)
    except ValueError as exc:
        ap.error(f"--retention: {exc}")
    signal.signal(signal.SIGTERM, interrupt)
    soak = run(args, wide(Console(stderr=True)))
    judged = verdict(soak, args.tolerance)
    if args.json:
        print(
            json.dumps(
                {
                    "config": soak.config,
                    "interrupted": soak.interrupted,
                    "samples": [asdict(s) for s in soak.samples],
                    "passes": soak.passes,
                    "vacuums": soak.vacuums,
                    "verdict": judged,
                },
                default=lambda o: o.isoformat() if isinstance(o, datetime) else str(o),
            )
        )
        return
    report(soak, judged, args, retention)


if __name__ == "__main__":
    main()
