"""Rate limits per time window (`tasker.domain.rates`): parsing, room in a sliding window and its
burst, and deferral slots; a simulation of claims that follow the rules never starts more than the
limit in any window, nor more than the burst together."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasker.domain.rates import RateLimit, deferral_times, first_free, room, started_in_window

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("spec", "limit", "per"),
    [
        ({"limit": 100, "per": "minute"}, 100, 60.0),
        ({"limit": 5}, 5, 1.0),
        ("50/second", 50, 1.0),
        ("3 / hour", 3, 3600.0),
    ],
)
def test_a_rate_is_read_from_yaml_or_the_command_line(spec: object, limit: int, per: float) -> None:
    rate = RateLimit.parse(spec)
    assert (rate.limit, rate.per_seconds) == (limit, per)
    assert RateLimit.parse(rate.describe()) == rate


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"limit": 0, "per": "second"}, "limit must be a whole number"),
        ({"limit": True}, "limit must be a whole number"),
        ({"limit": 2.5}, "limit must be a whole number"),
        ({"limit": 5, "per": "day"}, "per must be one of second, minute, hour"),
        ({"limit": 5, "every": "second"}, "unknown key"),
        ("fifty/second", "not a whole number"),
        ("50", "write it as 100/minute"),
        (["50"], "give a rate limit as"),
    ],
)
def test_a_bad_rate_is_refused_saying_what_to_write(spec: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RateLimit.parse(spec)


def test_the_window_has_a_guard_of_ten_percent_at_most_a_quarter_second() -> None:
    assert RateLimit(10, 1.0).window == timedelta(seconds=1.1)
    assert RateLimit(10, 60.0).window == timedelta(seconds=60.25)
    assert RateLimit(10, 1.0).pace == timedelta(seconds=0.11)


def test_room_counts_the_starts_inside_the_window_and_its_burst() -> None:
    rate = RateLimit(30, 1.0)
    assert (rate.burst, rate.burst_window) == (3, timedelta(seconds=0.11))
    starts = [T0 - timedelta(seconds=2), T0 - timedelta(seconds=0.5), T0 - timedelta(seconds=0.05)]
    assert started_in_window(rate, starts, T0) == 2
    assert room(rate, starts, T0) == 2  # the burst's three, less the one just taken
    assert room(rate, [T0] * 5, T0) == 0
    spread = [T0 - timedelta(seconds=0.03 * i) for i in range(1, 31)]
    assert room(rate, spread, T0) == 0  # thirty in the window: full, though none is recent


def test_the_next_start_waits_for_the_window_and_the_burst() -> None:
    rate = RateLimit(2, 1.0)
    starts = [T0 - timedelta(seconds=0.9), T0 - timedelta(seconds=0.1)]
    assert first_free(rate, starts, T0) == starts[1] + rate.burst_window
    assert first_free(rate, starts, T0) >= starts[0] + rate.window
    assert first_free(rate, [T0 - timedelta(seconds=5)], T0) == T0


def test_deferred_steps_come_back_one_pace_apart_after_the_horizon() -> None:
    rate = RateLimit(10, 1.0)
    times, horizon = deferral_times(rate, [T0] * 10, None, T0, 3)
    assert times[0] == T0 + rate.window
    assert [b - a for a, b in itertools.pairwise(times)] == [rate.pace, rate.pace]
    assert horizon == times[-1] + rate.pace
    later, _ = deferral_times(rate, [T0] * 10, horizon, T0, 1)
    assert later == [horizon]  # a second batch queues behind the first


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=8),
    per=st.sampled_from([1.0, 60.0]),
    arrivals=st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=80),
    step=st.integers(min_value=1, max_value=30),
)
def test_claims_that_follow_the_rules_never_start_more_than_the_limit_in_any_window(
    limit: int, per: float, arrivals: list[int], step: int
) -> None:
    """Steps arrive at `arrivals` (tenths of a period); every `step` tenths a claim takes what the
    window has room for and defers the rest; no window of `per` ever holds more than `limit`
    starts, and every step starts in the end."""
    rate = RateLimit(limit, per)
    tick = timedelta(seconds=per / 10)
    due = sorted(T0 + a * tick for a in arrivals)
    starts: list[datetime] = []
    horizon: datetime | None = None
    now = T0
    for _ in range(10_000):
        if not due:
            break
        ready = [d for d in due if d <= now]
        free = room(rate, starts, now)
        taken, over = ready[:free], ready[free:]
        starts += [now] * len(taken)
        rest = [d for d in due if d > now]
        if over:
            times, horizon = deferral_times(rate, starts, horizon, now, len(over))
            assert all(t > now for t in times)
            rest += times
        due = sorted(rest)
        now += min(tick * step, max((due[0] - now) if due else tick, tick))
    assert not due
    assert len(starts) == len(arrivals)
    for s in starts:
        inside = [t for t in starts if s <= t < s + timedelta(seconds=per)]
        assert len(inside) <= limit
        together = [t for t in starts if s <= t < s + rate.burst_window]
        assert len(together) <= rate.burst
