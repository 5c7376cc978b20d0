"""The log pipeline: formats, step fields through context variables, idempotent configuration, bad
input."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from tasker.domain.errors import TaskerInputError
from tasker.observability.logging import (
    STEP_FIELDS,
    bind_step_context,
    configure_logging,
    set_level,
    step_fields,
    step_logger,
)

FIELDS: dict[str, Any] = {
    "task_id": 7,
    "template": "shop/checkout@1.0.0",
    "step": "charge",
    "attempt": 2,
    "correlation_id": "c-1",
}
log = logging.getLogger("tests.unit.observability")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    alembic_level = logging.getLogger("alembic").level
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("alembic").setLevel(alembic_level)
    structlog.configure(**config)


def _json(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_json_lines_carry_the_bound_step_fields() -> None:
    buf = io.StringIO()
    configure_logging("json", "INFO", stream=buf)
    with bind_step_context(**FIELDS):
        log.info("charging %s", "card")
    log.info("outside")

    inside, outside = _json(buf)
    assert {k: inside[k] for k in STEP_FIELDS} == FIELDS
    assert inside["message"] == "charging card"
    assert inside["level"] == "info" and inside["logger"] == "tests.unit.observability"
    assert list(inside)[:4] == ["timestamp", "level", "logger", "message"]
    assert inside["timestamp"].endswith("Z")
    assert not set(STEP_FIELDS) & set(outside)


def test_nested_bindings_restore_the_outer_values() -> None:
    buf = io.StringIO()
    configure_logging("json", "INFO", stream=buf)
    with bind_step_context(**FIELDS):
        with bind_step_context(**{**FIELDS, "task_id": 8, "step": "child"}):
            log.info("inner")
        log.info("outer again")

    inner, outer = _json(buf)
    assert (inner["task_id"], inner["step"]) == (8, "child")
    assert (outer["task_id"], outer["step"]) == (7, "charge")


def test_structlog_loggers_share_the_pipeline() -> None:
    buf = io.StringIO()
    configure_logging("json", "INFO", stream=buf)
    with bind_step_context(**FIELDS):
        structlog.get_logger("tests.structlog").info("reserved", sku="A-1")

    (line,) = _json(buf)
    assert (
        line["message"] == "reserved"
        and line["sku"] == "A-1"
        and line["logger"] == "tests.structlog"
    )
    assert {k: line[k] for k in STEP_FIELDS} == FIELDS


def test_console_format_is_readable() -> None:
    buf = io.StringIO()
    configure_logging("console", "INFO", stream=buf)
    with bind_step_context(**FIELDS):
        log.warning("slow answer")

    text = buf.getvalue()
    assert "slow answer" in text and "warning" in text
    assert "task_id=7" in text and "correlation_id=c-1" in text and "step=charge" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_configuring_twice_keeps_one_handler_and_applies_the_new_settings() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("console", "WARNING", stream=first)
    configure_logging("json", "DEBUG", stream=second)
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "tasker.observability"]
    assert len(ours) == 1
    log.debug("debug now shows")
    assert first.getvalue() == ""
    assert _json(second)[0]["message"] == "debug now shows"
    set_level("ERROR")
    log.warning("hidden")
    assert len(_json(second)) == 1


def test_level_filters_lines() -> None:
    buf = io.StringIO()
    configure_logging("json", "WARNING", stream=buf)
    log.info("dropped")
    log.error("kept")
    assert [ln["message"] for ln in _json(buf)] == ["kept"]


@pytest.mark.parametrize(
    ("fmt", "level", "expected"),
    [
        ("xml", "INFO", "log format 'xml' is not supported; fix: use one of json, console"),
        (
            "json",
            "LOUD",
            (
                "log level 'LOUD' is not supported; fix: use one of DEBUG, INFO, WARNING, ERROR,"
                " CRITICAL"
            ),
        ),
    ],
)
def test_bad_settings_are_one_clear_line(fmt: str, level: str, expected: str) -> None:
    with pytest.raises(TaskerInputError) as err:
        configure_logging(fmt, level, stream=io.StringIO())
    assert str(err.value) == expected
    with pytest.raises(TaskerInputError):
        set_level("LOUD")


def test_exceptions_render_as_a_field() -> None:
    buf = io.StringIO()
    configure_logging("json", "INFO", stream=buf)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("handler crashed")
    (line,) = _json(buf)
    assert line["message"] == "handler crashed"
    assert "ValueError: boom" in line["exception"]


def test_step_logger_merges_a_calls_extra() -> None:
    buf = io.StringIO()
    configure_logging("json", "INFO", stream=buf)
    adapter = step_logger("tasker.handlers.shop.checkout", FIELDS)
    adapter.info("charged", extra={"payment_id": "p-9"})
    adapter.info("plain")

    charged, plain = _json(buf)
    assert charged["payment_id"] == "p-9" and charged["task_id"] == 7 and charged["attempt"] == 2
    assert "payment_id" not in plain and plain["correlation_id"] == "c-1"


def test_thread_pool_threads_see_the_fields_only_through_a_copied_context() -> None:
    """Why the executor runs sync handlers with `copy_context().run`: a bare thread starts without
    them."""
    buf = io.StringIO()
    configure_logging("json", "INFO", stream=buf)

    async def attempt() -> None:
        with bind_step_context(**FIELDS):
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, log.info, "bare thread")
            await loop.run_in_executor(
                None, contextvars.copy_context().run, log.info, "copied context"
            )

    asyncio.run(attempt())
    bare, copied = _json(buf)
    assert "task_id" not in bare
    assert {k: copied[k] for k in STEP_FIELDS} == FIELDS


def test_async_tasks_inherit_the_fields() -> None:
    buf = io.StringIO()
    configure_logging("json", "INFO", stream=buf)

    async def child() -> None:
        log.info("from a child task")

    async def attempt() -> None:
        with bind_step_context(**FIELDS):
            await asyncio.create_task(child())

    asyncio.run(attempt())
    (line,) = _json(buf)
    assert line["step"] == "charge" and line["attempt"] == 2


def test_lines_from_other_threads_keep_their_own_context() -> None:
    buf = io.StringIO()
    configure_logging("json", "INFO", stream=buf)
    barrier = threading.Barrier(2)

    def work(task_id: int) -> None:
        with bind_step_context(**{**FIELDS, "task_id": task_id}):
            barrier.wait()
            log.info("line of %d", task_id)

    threads = [threading.Thread(target=work, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted((ln["message"], ln["task_id"]) for ln in _json(buf)) == [
        ("line of 1", 1),
        ("line of 2", 2),
    ]


def test_default_stream_follows_sys_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """A harness that swaps standard error (CliRunner, pytest) gets the lines, and never a closed
    file later."""
    configure_logging("json", "INFO")
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    log.info("one")
    first.close()
    monkeypatch.setattr("sys.stderr", second)
    log.info("two")
    assert [ln["message"] for ln in _json(second)] == ["two"]


def test_step_fields_and_own_structlog_bindings_meet_on_the_line() -> None:
    buf = io.StringIO()
    configure_logging("json", "INFO", stream=buf)
    assert step_fields() == {}
    with structlog.contextvars.bound_contextvars(request_id="r-5"), bind_step_context(**FIELDS):
        assert step_fields() == FIELDS
        log.info("both")
    assert step_fields() == {}
    (line,) = _json(buf)
    assert line["request_id"] == "r-5" and line["task_id"] == 7
