"""The pure rules of time: durations, waits, delayed starts and deadlines, cron ticks and catch-up,
and the template keys that declare them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tasker.domain.deadlines import TimingError, task_times
from tasker.domain.errors import TemplateError
from tasker.domain.schedules import (
    GRACE_SECONDS,
    MAX_CATCH_UP,
    CatchUp,
    due_ticks,
    first_tick,
    next_tick,
    tick_key,
)
from tasker.domain.waits import (
    Wait,
    WaitKind,
    WaitStatus,
    duration_seconds,
    resume,
    signal_results,
)
from tasker.templates.loader import parse_template

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


# -- durations -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30),
        (1.5, 1.5),
        ("45", 45),
        ("PT10M", 600),
        ("P1DT2H", 93600),
        ("pt5s", 5),
        ("90s", 90),
        ("10m", 600),
        ("2h", 7200),
        ("1d", 86400),
        ("1w", 604800),
        ("250ms", 0.25),
        (timedelta(minutes=2), 120),
    ],
)
def test_a_duration_is_seconds_iso_8601_or_a_shorthand(value: Any, seconds: float) -> None:
    assert duration_seconds(value) == seconds


@pytest.mark.parametrize(
    "value", ["soon", "P", "PTX", "-5", -1, True, None, [1], float("nan"), 400 * 86400]
)
def test_what_is_not_a_duration_is_refused_saying_what_is(value: Any) -> None:
    with pytest.raises(ValueError, match=r"duration|out of range|finite"):
        duration_seconds(value)


# -- waits -----------------------------------------------------------------------------------------
def test_a_wait_survives_its_json_form() -> None:
    wait = Wait(WaitKind.SIGNAL, NOW, "ok", {"n": 1}, since=NOW, handler=True)
    assert Wait.from_json(wait.to_json()) == wait
    assert Wait.from_json(None) is None and Wait.from_json({"kind": "bogus"}) is None


@given(
    kind=st.sampled_from(WaitKind),
    until=st.one_of(st.none(), st.integers(-3600, 3600)),
    signalled=st.booleans(),
)
def test_resume_says_whether_a_wait_is_over(
    kind: WaitKind, until: int | None, signalled: bool
) -> None:
    end = None if until is None else NOW + timedelta(seconds=until)
    status = resume(Wait(kind, end, "s" if kind == WaitKind.SIGNAL else None), NOW, signalled)
    if kind == WaitKind.SIGNAL and signalled:
        assert status == WaitStatus.RECEIVED  # a signal that came counts, even past the timeout
    elif end is not None and end <= NOW:
        assert status == (WaitStatus.SLEPT if kind == WaitKind.SLEEP else WaitStatus.TIMED_OUT)
    else:
        assert status == WaitStatus.WAITING
    assert resume(None, NOW, signalled) == WaitStatus.NONE


def test_a_signals_payload_becomes_an_object_of_results() -> None:
    assert signal_results({"a": 1}) == {"a": 1}
    assert signal_results("yes") == {"payload": "yes"}
    assert signal_results(None) == {}


# -- delayed starts and deadlines ------------------------------------------------------------------
def test_a_delay_or_a_time_sets_the_start_and_a_deadline_counts_from_it() -> None:
    assert task_times(NOW, None) == (None, None)
    starts, deadline = task_times(NOW, 600, delay="1h")
    assert starts == NOW + timedelta(hours=1) and deadline == starts + timedelta(minutes=10)
    later = NOW + timedelta(days=1)
    assert task_times(NOW, None, run_at=later, deadline="PT1H") == (
        later,
        later + timedelta(hours=1),
    )
    assert task_times(NOW, 60, run_at=NOW - timedelta(hours=1)) == (
        None,
        NOW + timedelta(seconds=60),
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"run_at": datetime(2026, 1, 1)}, "no time zone"),
        ({"run_at": NOW, "delay": 1}, "not both"),
        ({"deadline": NOW}, "not after the task's start"),
        ({"deadline": datetime(2027, 1, 1)}, "no time zone"),
        ({"delay": "whenever"}, "delay:"),
        ({"run_at": "tomorrow"}, "must be a datetime"),
    ],
)
def test_impossible_times_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(TimingError, match=message):
        task_times(NOW, None, **kwargs)


# -- cron ticks ------------------------------------------------------------------------------------
BERLIN_7 = ("0 7 * * *", "Europe/Berlin")


def test_ticks_keep_local_time_across_daylight_saving() -> None:
    # Clocks go forward on 2026-03-29 and back on 2026-10-25 in Berlin.
    spring = first_tick(*BERLIN_7, datetime(2026, 3, 28, 12, tzinfo=UTC))
    assert spring == datetime(2026, 3, 29, 5, tzinfo=UTC)  # 07:00 CEST
    assert next_tick(*BERLIN_7, datetime(2026, 3, 27, 12, tzinfo=UTC)) == datetime(
        2026, 3, 28, 6, tzinfo=UTC
    )
    autumn = next_tick(*BERLIN_7, datetime(2026, 10, 24, 12, tzinfo=UTC))
    assert autumn == datetime(2026, 10, 25, 6, tzinfo=UTC)  # 07:00 CET


def test_a_time_that_does_not_exist_fires_once_at_the_next_minute_and_a_repeated_one_once() -> None:
    skipped = ("30 2 * * *", "Europe/Berlin")  # 02:30 does not exist on 2026-03-29
    tick = next_tick(*skipped, datetime(2026, 3, 28, 12, tzinfo=UTC))
    assert tick == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)  # 03:00 CEST
    twice = ("30 2 * * *", "Europe/Berlin")  # 02:30 happens twice on 2026-10-25
    first = next_tick(*twice, datetime(2026, 10, 24, 12, tzinfo=UTC))
    assert first == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # its first occurrence (CEST)
    assert next_tick(*twice, first) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)


def test_a_schedule_added_at_its_tick_fires_now() -> None:
    at_seven = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)
    assert first_tick(*BERLIN_7, at_seven) == at_seven


def test_a_ticks_key_names_the_schedule_and_the_utc_tick() -> None:
    tick = datetime(2026, 1, 5, 7, 0, tzinfo=UTC)
    assert tick_key(3, tick) == "schedule:3:2026-01-05T07:00:00Z"


@given(
    missed=st.integers(0, 300),
    late=st.integers(0, 3599),
    catch_up=st.sampled_from(CatchUp),
)
def test_due_ticks_fire_the_ticks_on_time_and_what_catch_up_says_of_the_missed(
    missed: int, late: int, catch_up: CatchUp
) -> None:
    hourly = ("0 * * * *", "UTC")
    next_at = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    now = next_at + timedelta(hours=missed, seconds=late)
    due = due_ticks(*hourly, next_at, now, catch_up)
    all_due = [next_at + timedelta(hours=i) for i in range(missed + 1)]
    on_time = [t for t in all_due if (now - t).total_seconds() <= GRACE_SECONDS]
    behind = [t for t in all_due if t not in on_time]
    assert due.next_at > now and due.next_at == all_due[-1] + timedelta(hours=1)
    assert due.fire == sorted(due.fire) and set(due.fire) <= set(all_due)
    assert len(due.fire) + due.skipped == len(all_due)
    assert set(on_time) <= set(due.fire)  # a tick on time always fires
    expected_behind = {
        CatchUp.ALL: behind[-MAX_CATCH_UP:],
        CatchUp.ONCE: behind[-1:],
        CatchUp.SKIP: [],
    }[catch_up]
    assert due.fire == expected_behind + on_time
    assert due_ticks(*hourly, next_at, next_at - timedelta(seconds=1), catch_up).fire == []


def test_an_every_second_schedule_fires_each_second_a_handover_delayed() -> None:
    every_second = ("* * * * * *", "UTC")
    next_at = datetime(2026, 1, 5, 9, 0, 0, tzinfo=UTC)
    due = due_ticks(*every_second, next_at, next_at + timedelta(seconds=4.5), CatchUp.SKIP)
    assert due.fire == [next_at + timedelta(seconds=i) for i in range(5)]  # 5 s late: on time
    assert due.next_at == next_at + timedelta(seconds=5)


def test_a_month_of_missed_seconds_is_walked_back_not_forward() -> None:
    every_second = ("* * * * * *", "UTC")
    next_at = datetime(2026, 1, 5, 9, 0, 0, tzinfo=UTC)
    now = next_at + timedelta(days=30)
    due = due_ticks(*every_second, next_at, now, CatchUp.ONCE)
    assert len(due.fire) == GRACE_SECONDS + 2  # the newest missed one, and the last minute's
    assert due.next_at == now + timedelta(seconds=1)


# -- template keys ---------------------------------------------------------------------------------
def template(steps: list[dict[str, Any]], **top: Any) -> str:
    return yaml.safe_dump({"name": "t", "namespace_name": "ns", "step_templates": steps, **top})


def test_waiting_steps_need_no_handler_and_declare_their_signals() -> None:
    t = parse_template(
        yaml.safe_load(
            template(
                [
                    {"name": "nap", "sleep": "PT5M"},
                    {
                        "name": "confirm",
                        "wait_for": "ok",
                        "timeout_seconds": "1d",
                        "on_timeout": "skip",
                        "depends_on_step": "nap",
                    },
                    {"name": "later", "sleep": "context.delay", "depends_on_step": "confirm"},
                ],
                timeout_seconds="2h",
                schedules=[{"name": "daily", "cron": "0 7 * * *", "timezone": "Europe/Berlin"}],
            )
        ),
        source="t.yaml",
    )
    assert t.step("nap").sleep == 300 and t.step("confirm").wait_timeout == 86400
    assert t.step("confirm").timeout_seconds is None  # the wait's, not an attempt's
    assert t.signal_names() == frozenset({"ok"}) and t.timeout_seconds == 7200
    assert t.controls()["later"].sleep is not None
    assert "later" in t.gated_steps()  # its parent may end skipped (on_timeout: skip)
    assert t.schedules[0].catch_up == CatchUp.ONCE


@pytest.mark.parametrize(
    ("steps", "top", "message"),
    [
        ([{"name": "a", "sleep": 5, "wait_for": "x"}], {}, "cannot go together"),
        ([{"name": "a", "handler_class": "x.Y", "on_timeout": "skip"}], {}, "on_timeout"),
        ([{"name": "a", "wait_for": "bad name"}], {}, "signal name"),
        ([{"name": "a", "sleep": "results.nope.x"}], {}, "nope"),
        ([{"name": "a", "wait_for": "x", "on_timeout": "later"}], {}, "on_timeout"),
        ([{"name": "a", "sleep": 5}], {"timeout_seconds": "eventually"}, "timeout_seconds"),
        ([{"name": "a", "sleep": 5}], {"schedules": [{"name": "s", "cron": "daily"}]}, "cron"),
        (
            [{"name": "a", "sleep": 5}],
            {"schedules": [{"name": "s", "cron": "0 7 * * *", "timezone": "Moon"}]},
            "time zone",
        ),
        (
            [{"name": "a", "sleep": 5}],
            {"schedules": [{"name": "s", "cron": "0 7 * * *"}, {"name": "s", "cron": "0 8 * * *"}]},
            "two",
        ),
    ],
)
def test_bad_time_keys_are_refused_at_load_naming_them(
    steps: list[dict[str, Any]], top: dict[str, Any], message: str
) -> None:
    with pytest.raises(TemplateError, match=message):
        parse_template(yaml.safe_load(template(steps, **top)), source="t.yaml")
