"""`tasker worker`: a long-running process that claims and runs steps until SIGTERM or SIGINT.

On a signal it stops claiming, lets in-flight steps finish for up to the grace period, then hands
the rest back to other workers. Several workers cooperate through the database with no other
configuration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

import click

from tasker.cli.common import state, templates_option
from tasker.engine.worker import Worker
from tasker.observability.logging import set_level
from tasker.observability.metrics import serve_metrics

# This module loads only when `tasker worker` runs (`tasker.cli.main` imports commands on first
# use), so `tasker --help` starts fast (benchmarks/bench_startup.py) whatever it imports.

log = logging.getLogger("tasker.worker")


@click.command()
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1, 4096),
    default=None,
    help="Steps run at the same time.",
)
@click.option(
    "--namespaces", default=None, help="Only claim steps of these namespaces (comma-separated)."
)
@click.option(
    "--grace-seconds", type=float, default=None, help="How long in-flight steps may finish on stop."
)
@click.option(
    "--lease-seconds",
    type=float,
    default=None,
    help="Lease on a claimed step, renewed by heartbeats.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help=(
        "Serve this worker's Prometheus metrics on http://0.0.0.0:PORT/metrics (or"
        " TASKER_METRICS_PORT)."
    ),
)
@click.option(
    "--store-metrics",
    is_flag=True,
    help=(
        "With --metrics-port: also the store-wide gauges (tasks, steps, queue, circuits); one"
        " target is enough."
    ),
)
@templates_option
@click.pass_context
def worker(
    ctx: click.Context,
    concurrency: int | None,
    namespaces: str | None,
    grace_seconds: float | None,
    lease_seconds: float | None,
    metrics_port: int | None,
    store_metrics: bool,
    templates: tuple[str, ...],
) -> None:
    """Run steps from the store until stopped."""
    st = state(ctx)
    set_level(
        ctx.meta.get("tasker.log_level") or ("DEBUG" if st.verbose else st.settings.log_level)
    )
    engine = st.engine(templates)
    if not len(engine.registry):
        log.warning(
            "no templates are loaded, so this worker cannot run any step; fix: pass --templates"
            " PATH or set TASKER_TEMPLATE_PATH"
        )
    names = (
        [n.strip() for n in namespaces.split(",") if n.strip()]
        if namespaces
        else list(st.settings.namespaces)
    )
    w = engine.worker(
        concurrency=concurrency or st.settings.concurrency,
        namespaces=names or None,
        grace_seconds=grace_seconds if grace_seconds is not None else st.settings.grace_seconds,
        lease_seconds=lease_seconds or st.settings.lease_seconds,
        own_loop=True,  # this process's loop runs the worker and nothing else
        housekeeping=st.settings.housekeeping(),  # retention, archive: also from --config-file
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen: list[str] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _stopper(w, sig, seen))
        await engine.awork(worker=w, until_idle=False)

    port = metrics_port or st.settings.metrics_port
    server = None
    if port:
        server = serve_metrics(port, engine if store_metrics else None)
    asyncio.run(main())
    if server is not None:
        server.shutdown()
    if w.abandoned:
        # Abandoned sync handlers cannot be interrupted, and the interpreter would wait for their
        # threads at exit: their steps are already handed back, so leave without them.
        log.warning(
            "worker %s exits without waiting for %d abandoned step handler(s)", w.id, w.abandoned
        )
        logging.shutdown()
        os._exit(0)


def _stopper(w: Worker, sig: signal.Signals, seen: list[str]) -> Callable[[], None]:
    """One log line per signal received (`seen` lists them): the first stops claiming, later ones
    say so."""

    def stop() -> None:
        seen.append(sig.name)
        if len(seen) == 1:
            log.info(
                "worker %s received %s: stops claiming; in-flight steps finish within %gs",
                w.id,
                sig.name,
                w.opts.grace_seconds,
            )
        else:
            log.info(
                "worker %s received %s again (signal %d): already stopping",
                w.id,
                sig.name,
                len(seen),
            )
        w.stop()

    return stop
