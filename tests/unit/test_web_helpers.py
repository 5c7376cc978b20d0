"""The dashboard's pure helpers: DAG layout, waterfall, charts, session codec, form parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasker.web.charts import hbars, nice_max, stacked_columns, state_band
from tasker.web.dag import NODE_W, label, layout
from tasker.web.pages.login import safe_next
from tasker.web.pages.task import parse_results
from tasker.web.rendering import query
from tasker.web.session import SessionCodec, new_session
from tasker.web.timeline import CHART_W, duration, look, spans, waterfall

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def test_layout_places_steps_in_columns_by_depth() -> None:
    steps = [
        ("validate", []),
        ("charge", ["validate"]),
        ("reserve", ["validate"]),
        ("ship", ["charge", "reserve"]),
    ]
    result = layout(steps, {"validate": "complete", "charge": "error"})
    nodes = {n.name: n for n in result.nodes}
    assert [n.name for n in result.nodes] == ["validate", "charge", "reserve", "ship"]
    assert nodes["validate"].x < nodes["charge"].x == nodes["reserve"].x < nodes["ship"].x
    assert nodes["charge"].y != nodes["reserve"].y
    assert nodes["validate"].state == "complete" and nodes["ship"].state == "pending"
    assert {(e.source, e.target) for e in result.edges} == {
        ("validate", "charge"),
        ("validate", "reserve"),
        ("charge", "ship"),
        ("reserve", "ship"),
    }
    assert result.width >= 3 * NODE_W and all(e.path.startswith("M") for e in result.edges)


def test_layout_of_nothing_and_long_labels() -> None:
    assert layout([]).nodes == []
    assert label("x" * 40).endswith("\u2026") and len(label("x" * 40)) == 20
    assert label("short") == "short"


def test_layout_repeated_parent_draws_one_edge() -> None:
    result = layout([("a", []), ("b", ["a", "a"])])
    assert len(result.edges) == 1


def _t(step: int, to: str, seconds: float, attempt: int = 0, **extra: object) -> dict[str, object]:
    return {
        "step_id": step,
        "to_state": to,
        "at": T0 + timedelta(seconds=seconds),
        "attempt": attempt,
        **extra,
    }


def test_a_step_parked_for_its_child_task_is_no_failed_attempt() -> None:
    rows = [
        _t(1, "ready", 0),
        _t(1, "in_progress", 1, 1),
        _t(1, "waiting_retry", 2, 0),  # no error: the attempt created a child task and parked
        _t(1, "in_progress", 5, 1),
        _t(1, "complete", 6, 1),
    ]
    found = spans(rows, T0 + timedelta(seconds=10))[1]
    assert [(s.kind, s.outcome, s.seconds) for s in found] == [
        ("queued", "in_progress", 1.0),
        ("run", "parked", 1.0),
        ("child", "in_progress", 3.0),
        ("run", "complete", 1.0),
    ]
    assert [look(s.kind, s.outcome) for s in found] == ["queued", "handoff", "child", "complete"]


def test_spans_show_attempts_waits_and_an_unfinished_step() -> None:
    rows = [
        _t(1, "pending", 0),
        _t(1, "ready", 0),
        _t(1, "in_progress", 1, 1),
        _t(1, "waiting_retry", 2, 1, error_class="RetryableError"),
        _t(1, "in_progress", 5, 2),
        _t(1, "complete", 6, 2),
        _t(2, "ready", 6),
        _t(2, "in_progress", 7, 1),
    ]
    found = spans(rows, T0 + timedelta(seconds=10))
    assert [(s.kind, s.attempt, s.outcome, s.seconds) for s in found[1]] == [
        ("queued", 0, "in_progress", 1.0),
        ("run", 1, "waiting_retry", 1.0),
        ("wait", 1, "in_progress", 3.0),
        ("run", 2, "complete", 1.0),
    ]
    assert (
        found[2][-1].outcome == "" and found[2][-1].seconds == 3.0
    )  # still running: drawn up to now


def test_waterfall_scales_bars_to_one_axis() -> None:
    rows = [_t(1, "ready", 0), _t(1, "in_progress", 0, 1), _t(1, "complete", 4, 1)]
    chart = waterfall([(1, "a"), (2, "b")], rows, T0 + timedelta(seconds=4))
    assert [name for name, _ in chart.rows] == ["a", "b"]
    run = next(b for b in chart.bars if b.kind == "run")
    assert (
        run.w == pytest.approx(CHART_W) and run.outcome == "complete" and "attempt 1" in run.title
    )
    assert run.look == "complete"
    assert [k for k, _ in chart.legend] == [
        "complete",
        "retry",
        "error",
        "running",
        "wait",
        "queued",
    ]
    assert chart.ticks[-1][1] == "+4.0s"


@pytest.mark.parametrize(
    ("kind", "outcome", "drawn"),
    [
        ("run", "complete", "complete"),
        ("run", "waiting_retry", "retry"),
        ("run", "ready", "retry"),  # the lease expired: it runs again
        ("run", "error", "error"),
        ("run", "", "running"),
        ("run", "cancelled", "cancelled"),
        ("wait", "in_progress", "wait"),
        ("queued", "in_progress", "queued"),
    ],
)
def test_each_bar_is_drawn_as_the_legend_says(kind: str, outcome: str, drawn: str) -> None:
    assert look(kind, outcome) == drawn


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "\u2013"), (0.25, "250ms"), (12.34, "12.3s"), (245, "4m05s"), (7800, "2h10m")],
)
def test_duration(seconds: float | None, shown: str) -> None:
    assert duration(seconds) == shown


def test_charts() -> None:
    assert [nice_max(v) for v in (0, 1, 3, 7, 12, 101)] == [1, 1, 5, 10, 20, 200]
    chart = stacked_columns([(T0, 3, 1), (T0 + timedelta(minutes=1), 0, 0)])
    assert [r.kind for r in chart.rects] == ["completed", "failed"] and chart.peak == 5
    bars = hbars([("a", 2.0, "2"), ("b", 1.0, "1")])
    assert bars.rects[0].w == 2 * bars.rects[1].w
    band = state_band(
        [
            {"from_state": "closed", "to_state": "open", "at": T0, "reason": "5 failures"},
            {"from_state": "open", "to_state": "closed", "at": T0 + timedelta(seconds=30)},
        ],
        T0 + timedelta(seconds=60),
    )
    assert [r.kind for r in band.rects] == ["open", "closed"]
    assert band.rects[0].w == pytest.approx(band.width / 2) and "5 failures" in band.rects[0].title
    assert state_band([], T0).rects == []


def test_session_codec_round_trip_and_refusals() -> None:
    codec = SessionCodec("s" * 40)
    session = new_session("api_key", "tk_secret")
    sealed = codec.seal(session)
    assert "tk_secret" not in sealed
    assert codec.open(sealed) == session
    assert (
        codec.open(None) is None
        and codec.open("garbage") is None
        and codec.open(sealed[:-2]) is None
    )
    assert SessionCodec("t" * 40).open(sealed) is None  # another server's secret


def test_csrf_token_is_bound_to_the_session_and_the_secret() -> None:
    codec = SessionCodec("s" * 40)
    one, two = new_session(), new_session()
    token = codec.csrf_token(one)
    assert codec.csrf_ok(one, token)
    assert (
        not codec.csrf_ok(two, token)
        and not codec.csrf_ok(one, "")
        and not codec.csrf_ok(None, token)
    )
    assert not SessionCodec("t" * 40).csrf_ok(one, token)


def test_flash_messages_are_signed() -> None:
    codec = SessionCodec("s" * 40)
    sealed = codec.seal_flash("ok", "task 3 cancelled")
    assert codec.open_flash(sealed) == ("ok", "task 3 cancelled")
    assert codec.open_flash(sealed.replace(".", "x.", 1)) is None
    assert SessionCodec("t" * 40).open_flash(sealed) is None


@pytest.mark.parametrize(
    ("target", "safe"),
    [
        ("/tasks/3", "/tasks/3"),
        ("//evil.example", "/"),
        ("https://evil.example", "/"),
        (None, "/"),
        ("/\\evil", "/"),
    ],
)
def test_safe_next(target: str | None, safe: str) -> None:
    assert safe_next(target) == safe


def test_parse_results() -> None:
    assert parse_results('{"a": 1}') == ({"a": 1}, None)
    assert parse_results("  ") == ({}, None)
    value, error = parse_results('{"a": ')
    assert value is None and error is not None and "not valid JSON" in error
    assert parse_results("[1]")[1] == "the results must be a JSON object ({...}), not list"


def test_query_drops_empty_values_and_repeats_lists() -> None:
    assert (
        query("/tasks", namespace="", status=["error", "pending"], after=None)
        == "/tasks?status=error&status=pending"
    )
    assert query("/tasks") == "/tasks"
