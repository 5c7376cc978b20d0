"""The monitoring demo: checkout orders through flaky, slow services, watched by both subscribers.

Prints what the business subscriber counted, the alerts the performance subscriber raised, and what
the engine's analytics make of the same run (`engine.insight.performance` and
`engine.insight.bottlenecks`).
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from tasker import Tasker
from tasker.demos.ecommerce import services
from tasker.demos.ecommerce.demo import (
    COOLDOWN_SECONDS,
    MAX_COOLDOWN_SECONDS,
    SYSTEMS,
    TEMPLATE,
    TEMPLATES,
    generate_orders,
)
from tasker.demos.ecommerce.services import FaultSettings
from tasker.demos.observability.subscribers import MemorySink
from tasker.demos.observability.wiring import attach
from tasker.domain.reports import Bottlenecks, Performance

BACKOFF_SCALE = 0.01


def run_demo(
    orders: int = 30,
    *,
    seed: int = 7,
    slow_ms: float = 100.0,
    database_url: str | None = None,
) -> dict[str, Any]:
    """Run `orders` checkouts with 10% transient faults, 5% declined cards and up to 150 ms of
    latency."""
    with tempfile.TemporaryDirectory() as scratch:
        url = database_url or f"sqlite:///{Path(scratch) / 'observability.db'}"
        engine = Tasker(
            url, concurrency=8, backoff_scale=BACKOFF_SCALE, poll_interval=0.05, migrate=True
        )
        try:
            engine.load_templates(TEMPLATES)
            for (
                system
            ) in SYSTEMS:  # compress the circuit breakers' cool-downs like the retry delays
                engine.systems.configure(
                    system,
                    cooldown_seconds=COOLDOWN_SECONDS * BACKOFF_SCALE,
                    max_cooldown_seconds=MAX_COOLDOWN_SECONDS * BACKOFF_SCALE,
                )
            services.configure(
                engine.db.writer,
                FaultSettings(
                    transient_failure_rate=0.1, decline_rate=0.05, max_latency_ms=150, seed=seed
                ),
                reader=engine.db.reader,
                reset=True,
            )
            sink = MemorySink()
            monitoring = attach(engine, sink=sink, thresholds_ms={}, slow_step_ms=slow_ms)
            try:
                for i, order in enumerate(generate_orders(orders, seed)):
                    engine.create_task(TEMPLATE, order, idempotency_key=f"observability-{seed}-{i}")
                engine.work(until_idle=True)
                monitoring.business.flush()
                business = monitoring.business.snapshot()
            finally:
                monitoring.detach()
            return {
                "business": business,
                "alerts": sink.alerts,
                "performance": engine.insight.performance(1),
                "bottlenecks": engine.insight.bottlenecks(1, limit=5),
            }
        finally:
            services.reset_registry()
            engine.close()


def render(result: dict[str, Any]) -> str:
    b = result["business"]
    d = b.checkout_seconds
    lines = [
        "business metrics (BusinessMetricsSubscriber)",
        f"  orders completed   {b.orders_completed}",
        f"  orders failed      {b.orders_failed}  {dict(sorted(b.failures_by_reason.items()))}",
        "  revenue            "
        + ", ".join(f"{amount:.2f} {cur}" for cur, amount in sorted(b.revenue.items())),
        (
            f"  checkout seconds   p50 {d['p50']:.3f}  p95 {d['p95']:.3f}  max {d['max']:.3f}"
            if d["count"]
            else "  checkout seconds   -"
        ),
        "",
        "alerts (PerformanceSubscriber)",
    ]
    kinds = Counter(a.kind for a in result["alerts"])
    lines.append("  " + ", ".join(f"{kind}: {n}" for kind, n in sorted(kinds.items())))
    for kind in sorted(kinds):
        first = next(a for a in result["alerts"] if a.kind == kind)
        lines.append(f"  e.g. [{first.severity}] {first.message}")
    lines += ["", "analytics (engine.insight.performance / .bottlenecks, last hour)"]
    performance: Performance = result["performance"]
    bottlenecks: Bottlenecks = result["bottlenecks"]
    for t in performance.templates:
        lines.append(
            f"  {t.namespace}/{t.name}@{t.version}: {t.completed} completed,"
            f" {t.failed} failed, completion rate {t.completion_rate or 0.0:.1%},"
            f" p95 {t.duration_seconds.p95}s, {t.step_retries} retries"
        )
    for r in bottlenecks.recommendations:
        lines.append(f"  [{r.severity}] {r.message}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasker.demos.observability", description=__doc__
    )
    parser.add_argument("--orders", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--slow-ms", type=float, default=100.0, help="alert on attempts slower than this"
    )
    parser.add_argument(
        "--database",
        default=None,
        help=(
            "keep the run in this store (e.g. sqlite:///observability.db) to explore it afterwards "
            "with 'tasker serve'; default: a scratch SQLite file"
        ),
    )
    args = parser.parse_args(argv)
    if args.orders < 1:
        parser.error("--orders must be at least 1")
    print(
        render(
            run_demo(args.orders, seed=args.seed, slow_ms=args.slow_ms, database_url=args.database)
        )
    )
    return 0
