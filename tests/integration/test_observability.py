"""Logs, metrics and traces observed from real task runs, on both stores.

Handlers are defined here; their lines, metrics and spans are what the tests read back.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert, update

from tasker import PermanentError, RetryableError, StepContext, StepHandler, Tasker
from tasker.engine.settle import SettledBatch
from tasker.observability import metrics, tracing
from tasker.observability.logging import STEP_FIELDS, configure_logging
from tasker.store.database import Database
from tasker.store.schema import dependent_systems, steps, workers
from tests.fixture_types import LoadTemplate, WriteTemplate

ROOT = Path(__file__).resolve().parents[2]
HERE = "tests.integration.test_observability"
plain = logging.getLogger("obs_test.plain")


# -- handlers --------------------------------------------------------------------------------------
class SyncLogs(StepHandler):
    """Logs three ways from the thread pool; fails its first attempt so the engine logs a retry."""

    def process(self, ctx: StepContext) -> dict[str, Any]:
        ctx.logger.info("sync ctx.logger", extra={"order_ref": "A-1"})
        plain.info("sync plain logger")
        structlog.get_logger("obs_test.structlog").info("sync structlog", detail=1)
        if ctx.attempt == 1 and ctx.handler_config.get("flaky"):
            raise RetryableError("warming up")
        headers: dict[str, str] = {}
        tracing.inject_headers(headers)
        return {"headers": headers}


class AsyncLogs(StepHandler):
    async def process(self, ctx: StepContext) -> dict[str, Any]:
        await asyncio.sleep(0)
        ctx.logger.info("async ctx.logger")
        plain.info("async plain logger")
        structlog.get_logger("obs_test.structlog").info("async structlog")
        headers: dict[str, str] = {}
        tracing.inject_headers(headers)
        return {"headers": headers}


class Declined(PermanentError):
    """A business failure with a class name of its own, to find in the failures counter."""


class Decline(StepHandler):
    def process(self, ctx: StepContext) -> dict[str, Any]:
        raise Declined("card declined")


def _step(
    name: str, handler: str, after: str | list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    s: dict[str, Any] = {"name": name, "handler_class": f"{HERE}:{handler}", **extra}
    if isinstance(after, str):
        s["depends_on_step"] = after
    elif after:
        s["depends_on_steps"] = after
    return s


LOGGING_STEPS = [
    _step("sync_step", "SyncLogs", handler_config={"flaky": True}),
    _step("async_step", "AsyncLogs", after="sync_step"),
]


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture
def json_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """JSON logging at DEBUG into a buffer; yields a function returning the parsed lines so far."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_structlog = structlog.get_config()
    buf = io.StringIO()
    configure_logging("json", "DEBUG", stream=buf)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]

    yield lines
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    structlog.configure(**saved_structlog)


@pytest.fixture
def fresh_metrics() -> Iterator[metrics.EngineMetrics]:
    previous = metrics.set_engine_metrics(metrics.EngineMetrics())
    yield metrics.engine_metrics()
    metrics.set_engine_metrics(previous)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.set_tracer_provider(provider)
    yield exporter
    tracing.set_tracer_provider(None)


@pytest.fixture
def no_global_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever another test did to OpenTelemetry's global provider, none is configured here."""
    from opentelemetry import trace

    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.delenv("OTEL_PYTHON_TRACER_PROVIDER", raising=False)
    tracing.set_tracer_provider(None)


# -- logs ------------------------------------------------------------------------------------------
def test_every_line_of_an_attempt_carries_the_step_fields(
    tasker: Tasker, load: LoadTemplate, key: str, json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    ref = load("logged", LOGGING_STEPS)
    task = tasker.run(tasker.create_task(ref, {"key": key, "correlation_id": "order-77"}).id)
    assert task.status == "complete"

    lines = [ln for ln in json_lines() if ln.get("task_id") == task.id]
    by = {(ln["logger"], ln["message"], ln.get("attempt")) for ln in lines}
    expected = {
        ("tasker.handlers.itest.logged", "sync ctx.logger", 1),
        ("obs_test.plain", "sync plain logger", 1),
        ("obs_test.structlog", "sync structlog", 1),
        ("tasker.handlers.itest.logged", "sync ctx.logger", 2),
        ("obs_test.plain", "sync plain logger", 2),
        ("obs_test.structlog", "sync structlog", 2),
        ("tasker.handlers.itest.logged", "async ctx.logger", 1),
        ("obs_test.plain", "async plain logger", 1),
        ("obs_test.structlog", "async structlog", 1),
    }
    assert expected <= by
    engine_lines = [ln for ln in lines if ln["logger"] == "tasker.executor"]
    assert any("failed, retry in" in ln["message"] and ln["level"] == "info" for ln in engine_lines)
    assert len(engine_lines) >= 6  # start and end of each of the three attempts
    for ln in lines:
        assert ln["correlation_id"] == "order-77"
        assert ln["template"] == "itest/logged@1.0.0"
        assert ln["step"] == ("async_step" if "async" in ln["message"] else "sync_step")
        assert set(STEP_FIELDS) <= set(ln)
        assert {"timestamp", "level", "logger", "message"} <= set(ln)
    # A call's own `extra` is kept next to the step fields.
    assert all(ln["order_ref"] == "A-1" for ln in lines if ln["message"] == "sync ctx.logger")
    assert any(ln.get("detail") == 1 for ln in lines if ln["message"] == "sync structlog")
    # Outside an attempt, the worker's own lines carry no step fields: the binding does not leak.
    worker_lines = [ln for ln in json_lines() if ln["logger"] == "tasker.worker"]
    assert worker_lines and all("task_id" not in ln and "step" not in ln for ln in worker_lines)


def test_handler_lines_get_the_generated_correlation_id(
    tasker: Tasker, load: LoadTemplate, key: str, json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    ref = load("uncorrelated", LOGGING_STEPS)
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)  # no correlation_id in the context
    assert task.status == "complete"
    assert task.correlation_id.startswith("corr-")

    handler_lines = [
        ln
        for ln in json_lines()
        if ln["logger"].startswith(("obs_test", "tasker.handlers")) and ln.get("task_id") == task.id
    ]
    assert len(handler_lines) == 9
    assert {ln["correlation_id"] for ln in handler_lines} == {task.correlation_id}


# -- metrics ---------------------------------------------------------------------------------------
def _samples(engine: Tasker | None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.exposition(engine)
    assert content_type.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_after_a_task_with_a_retry_and_a_failure(
    tasker: Tasker, load: LoadTemplate, key: str, fresh_metrics: metrics.EngineMetrics
) -> None:
    ref = load(
        "charged",
        [
            _step("prepare", "SyncLogs", handler_config={"flaky": True}),
            _step("charge", "Decline", after="prepare"),
            _step("notify", "AsyncLogs", after="prepare"),
        ],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "error"
    waiting = tasker.create_task(
        ref, {"key": key, "n": 2}
    )  # not run: its root step waits in the queue

    got = _samples(tasker)
    t = "itest/charged@1.0.0"
    assert got[("tasker_database_up", ())] == 1
    assert got[("tasker_tasks", (("state", "error"),))] == 1
    assert got[("tasker_tasks", (("state", "pending"),))] == 1
    assert got[("tasker_tasks", (("state", "complete"),))] == 0
    # Finished steps only grow: the scrape counts the states a step can leave (bounded reads).
    assert ("tasker_steps", (("state", "complete"),)) not in got
    assert got[("tasker_steps", (("state", "error"),))] == 1
    assert got[("tasker_steps", (("state", "ready"),))] == 1
    assert got[("tasker_steps", (("state", "pending"),))] == 2
    assert got[("tasker_ready_queue_depth", ())] == 1
    assert got[("tasker_ready_queue_oldest_seconds", ())] >= 0
    outcome = "tasker_step_outcomes_total"
    assert got[(outcome, (("outcome", "retry"), ("step", "prepare"), ("template", t)))] == 1
    assert got[(outcome, (("outcome", "complete"), ("step", "prepare"), ("template", t)))] == 1
    assert got[(outcome, (("outcome", "error"), ("step", "charge"), ("template", t)))] == 1
    assert got[(outcome, (("outcome", "complete"), ("step", "notify"), ("template", t)))] == 1
    assert got[("tasker_step_retries_total", (("step", "prepare"), ("template", t)))] == 1
    assert (
        got[
            (
                "tasker_step_failures_total",
                (("error_class", "RetryableError"), ("step", "prepare"), ("template", t)),
            )
        ]
        == 1
    )
    assert (
        got[
            (
                "tasker_step_failures_total",
                (("error_class", "Declined"), ("step", "charge"), ("template", t)),
            )
        ]
        == 1
    )
    assert got[("tasker_step_duration_seconds_count", (("step", "prepare"), ("template", t)))] == 2
    assert got[("tasker_claim_latency_seconds_count", ())] >= 1
    # Bounded labels: no task id anywhere.
    assert not any(name == "task_id" for _, labels in got for name, _ in labels)
    assert waiting.status == "pending"


def test_queue_circuit_and_worker_gauges(
    tasker: Tasker, load: LoadTemplate, key: str, fresh_metrics: metrics.EngineMetrics
) -> None:
    ref = load("queued", [_step("only", "AsyncLogs")])
    first = tasker.create_task(ref, {"key": key, "n": 1})
    tasker.create_task(ref, {"key": key, "n": 2})
    now = datetime.now(UTC)
    with (
        tasker.db.write() as conn
    ):  # one step due later, e.g. waiting out a retry_after: not in the queue yet
        conn.execute(
            update(steps).where(steps.c.task_id == first.id).values(run_at=now + timedelta(hours=1))
        )
        for worker_id, seen, stopped in [
            ("alive", now, None),
            ("silent", now - timedelta(minutes=5), None),
            ("stopped", now, now),
        ]:
            conn.execute(
                insert(workers).values(
                    id=worker_id,
                    hostname="h",
                    pid=1,
                    concurrency=4,
                    started_at=now,
                    last_seen_at=seen,
                    stopped_at=stopped,
                )
            )
    tasker.systems.configure("payments", failure_threshold=3)
    tasker.systems.configure("mailer", failure_threshold=3)
    tasker.systems.configure("inventory", failure_threshold=3)
    with tasker.db.write() as conn:
        for name, circuit in [("payments", "open"), ("mailer", "half_open")]:
            conn.execute(
                update(dependent_systems)
                .where(dependent_systems.c.name == name)
                .values(circuit_state=circuit)
            )

    got = _samples(tasker)
    assert got[("tasker_ready_queue_depth", ())] == 1
    assert got[("tasker_workers_active", ())] == 1
    assert got[("tasker_circuit_state", (("system", "payments"),))] == 2
    assert got[("tasker_circuit_state", (("system", "mailer"),))] == 1
    assert got[("tasker_circuit_state", (("system", "inventory"),))] == 0


def test_worker_process_serves_its_metrics(
    store_url: str, tmp_path: Path, write_template: WriteTemplate
) -> None:
    """`tasker worker --metrics-port`: a separate process runs a task and exposes what it
    observed."""
    path = write_template(
        textwrap.dedent("""\
        name: served
        namespace_name: itest
        version: 1.0.0
        step_templates:
          - name: only
            handler_class: tests.integration.handlers:Scripted
        """)
    )  # a handler module that imports little: the process starts faster
    engine = Tasker(store_url, templates=path)
    try:
        task = engine.create_task("itest/served", {"key": "served"})
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TASKER_LOG_FORMAT": "json"}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tasker.cli.main",
                "--database-url",
                store_url,
                "worker",
                "-t",
                str(path),
                "--metrics-port",
                str(port),
                "--store-metrics",
                "--lease-seconds",
                "5",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = (
                time.monotonic() + 90
            )  # a liveness bound for a loaded machine, not a performance figure
            body = ""
            outcome = 'tasker_step_outcomes_total{outcome="complete"'
            while time.monotonic() < deadline:
                try:
                    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                except httpx.HTTPError:
                    body = ""
                # both in one body: a scrape reads the store's gauges before the process's own
                # counters, so the commit between them can show the step counted, the task not yet
                if (
                    f'{outcome},step="only",template="itest/served@1.0.0"}} 1.0' in body
                    and 'tasker_tasks{state="complete"} 1.0' in body
                ):
                    break
                time.sleep(0.2)
            else:
                pytest.fail(
                    f"the worker's metrics never showed the step; last body:\n{body[-2000:]}"
                )
            assert (
                'tasker_tasks{state="complete"} 1.0' in body
            )  # --store-metrics adds the store gauges
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        started = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert any(
            ln["logger"] == "tasker.worker" and ln["message"].startswith("worker ")
            for ln in started
        )
        assert engine.get_task(task.id).status == "complete"
    finally:
        engine.close()


# -- traces ----------------------------------------------------------------------------------------
def test_spans_of_a_task_share_one_trace(
    tasker: Tasker, load: LoadTemplate, key: str, spans: InMemorySpanExporter
) -> None:
    ref = load("traced", LOGGING_STEPS)
    tasks = [tasker.run(tasker.create_task(ref, {"key": key, "n": n}).id) for n in (1, 2)]
    assert [t.status for t in tasks] == ["complete", "complete"]

    finished = spans.get_finished_spans()
    trace_ids = set()
    for task in tasks:
        trace_id, task_span_id = tracing.task_trace_ids(task.id, task.correlation_id)
        mine = [s for s in finished if s.context.trace_id == trace_id]
        task_spans = [s for s in mine if s.name == "tasker.task itest/traced@1.0.0"]
        step_spans = [s for s in mine if s.name.startswith("tasker.step ")]
        assert (
            len(task_spans) == 1 and len(step_spans) == 3
        )  # sync_step twice (a retry), async_step once
        assert len(mine) == 4
        root = task_spans[0]
        assert root.context.span_id == task_span_id and root.parent is None
        assert root.attributes is not None
        assert root.attributes["tasker.status"] == "complete"
        assert root.start_time is not None and root.end_time is not None
        assert all(s.start_time is not None and s.start_time >= root.start_time for s in step_spans)
        assert all(s.end_time is not None and s.end_time <= root.end_time for s in step_spans)
        assert all(s.parent is not None and s.parent.span_id == task_span_id for s in step_spans)
        attempts = sorted(
            (
                (s.attributes or {})["tasker.step"],
                (s.attributes or {})["tasker.attempt"],
                (s.attributes or {})["tasker.outcome"],
            )
            for s in step_spans
        )
        assert attempts == [
            ("async_step", 1, "complete"),
            ("sync_step", 1, "retry"),
            ("sync_step", 2, "complete"),
        ]
        failed = next(s for s in step_spans if (s.attributes or {})["tasker.outcome"] == "retry")
        assert failed.attributes is not None
        assert failed.attributes["tasker.error_class"] == "RetryableError"
        assert failed.status.status_code.name == "ERROR"
        for s in step_spans:
            assert s.attributes is not None
            assert s.attributes["tasker.task_id"] == task.id
            assert s.attributes["tasker.template"] == "itest/traced@1.0.0"
            assert s.attributes["tasker.correlation_id"] == task.correlation_id
        # Handlers, sync (in a thread) and async, pass the context of their own attempt's span on.
        for name in ("sync_step", "async_step"):
            span = next(
                s
                for s in step_spans
                if (s.attributes or {})["tasker.step"] == name
                and (s.attributes or {})["tasker.outcome"] == "complete"
            )
            parent = (task.step(name).results or {})["headers"]["traceparent"]
            assert parent == f"00-{trace_id:032x}-{span.context.span_id:016x}-01"
        trace_ids.add(trace_id)
    assert len(trace_ids) == 2


def test_a_failed_task_span_is_an_error(
    tasker: Tasker, load: LoadTemplate, key: str, spans: InMemorySpanExporter
) -> None:
    ref = load("traced_failure", [_step("charge", "Decline")])
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "error"
    (root,) = [s for s in spans.get_finished_spans() if s.name.startswith("tasker.task ")]
    assert root.status.status_code.name == "ERROR" and "charge" in (root.status.description or "")
    (step_span,) = [s for s in spans.get_finished_spans() if s.name == "tasker.step charge"]
    assert step_span.attributes is not None
    assert step_span.attributes["tasker.outcome"] == "error"
    assert step_span.attributes["tasker.error_class"] == "Declined"


def test_no_spans_and_no_headers_without_a_provider(
    tasker: Tasker, load: LoadTemplate, key: str, no_global_provider: None
) -> None:
    exporter = InMemorySpanExporter()
    TracerProvider().add_span_processor(
        SimpleSpanProcessor(exporter)
    )  # exists, but nobody configured it
    ref = load("untraced", LOGGING_STEPS)
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)

    assert task.status == "complete"
    assert not tracing.enabled()
    assert task.step("sync_step").results == {"headers": {}}
    assert task.step("async_step").results == {"headers": {}}
    assert exporter.get_finished_spans() == ()


def test_runs_without_opentelemetry_installed(store_url: str, tmp_path: Path) -> None:
    """The `otel` extra is optional: with the package unimportable, tasks run and nothing imports
    it."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["opentelemetry"] = None  # as if the package were not installed
        from tasker import StepHandler, Tasker
        from tasker.observability import tracing
        from tasker.observability.metrics import exposition
        from tasker.templates.loader import load_path

        class Call(StepHandler):
            def process(self, ctx):
                headers = {{}}
                tracing.inject_headers(headers)
                return {{"headers": headers}}

        engine = Tasker({store_url!r})
        (path,) = sys.argv[1:]
        engine.load_templates(path)
        task = engine.run(engine.create_task("itest/bare", {{}}).id)
        body, _ = exposition(engine)
        print(task.status, task.step("only").results, tracing.enabled(),
              b"tasker_step_outcomes_total" in body,
              [m for m in sys.modules
               if m.startswith("opentelemetry") and sys.modules[m] is not None])
        engine.close()
    """)
    template = tmp_path / "bare.yaml"
    template.write_text(
        "name: bare\nnamespace_name: itest\nversion: 1.0.0\n"
        "step_templates:\n  - name: only\n    handler_class: __main__:Call\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(template)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "complete {'headers': {}} False True []"


def test_a_store_that_cannot_be_read_costs_the_task_span_only(
    tasker: Tasker,
    load: LoadTemplate,
    key: str,
    spans: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ref = load("traced_unreadable", [_step("only", "AsyncLogs")])
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "complete"
    unreachable = Database("postgresql://postgres@127.0.0.1:1/nowhere", migrate=False)
    spans.clear()
    with caplog.at_level(logging.ERROR, logger="tasker.tracing"):
        # the settled tasks are read when a hook first asks: logged, never raised
        tracing.record_task_spans(SettledBatch(unreachable, [(task.id, "complete")]))
    assert "could not record the task spans" in caplog.text
    assert spans.get_finished_spans() == ()
    unreachable.dispose()


# -- the command line ------------------------------------------------------------------------------
@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level, config = list(root.handlers), root.level, structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)


def test_cli_log_options(
    store_url: str, write_template: WriteTemplate, restore_logging: None
) -> None:
    from click.testing import CliRunner

    from tasker.cli.main import cli

    path = write_template(
        textwrap.dedent(f"""\
        name: cli_logged
        namespace_name: itest
        version: 1.0.0
        step_templates:
          - name: sync_step
            handler_class: {HERE}:SyncLogs
        """)
    )
    args = [
        "--database-url",
        store_url,
        "--log-format",
        "json",
        "run",
        "itest/cli_logged",
        "-t",
        str(path),
        "--context",
        '{"correlation_id": "cli-1"}',
    ]
    quiet = CliRunner().invoke(cli, args)
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == ""  # interactive commands show warnings and errors only, unless asked

    loud = CliRunner().invoke(
        cli, [*args[:4], "--log-level", "info", *args[4:-1], '{"correlation_id": "cli-2"}']
    )
    assert loud.exit_code == 0, loud.output
    lines = [json.loads(line) for line in loud.stderr.splitlines()]
    mine = [ln for ln in lines if ln["logger"] in ("obs_test.plain", "obs_test.structlog")]
    assert len(mine) == 2 and all(
        ln["correlation_id"] == "cli-2" and ln["step"] == "sync_step" for ln in mine
    )


def test_cli_rejects_a_bad_log_level_in_one_line(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from tasker.cli.main import cli

    monkeypatch.setenv("TASKER_LOG_LEVEL", "LOUD")
    result = CliRunner().invoke(cli, ["templates", "list"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: log_level 'LOUD' (TASKER_LOG_LEVEL or the config file) is not a level; fix: use one"
        " of DEBUG, INFO, WARNING, ERROR, CRITICAL"
    ]
