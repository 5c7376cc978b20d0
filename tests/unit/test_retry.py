"""RetryPolicy: exponential backoff, jitter, server-requested delays, attempt counting and
validation."""

from __future__ import annotations

import math
import random
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tasker.domain.retry import DEFAULT_RETRY_LIMIT, MAX_DELAY_SECONDS, RetryPolicy

seconds = st.floats(
    min_value=0, max_value=MAX_DELAY_SECONDS / 4, allow_nan=False, allow_infinity=False
)
attempts = st.integers(min_value=-3, max_value=5000)
jitters = st.floats(min_value=0, max_value=1, allow_nan=False)
seeds = st.integers(min_value=0, max_value=2**32)


def exact_backoff(p: RetryPolicy, attempt: int) -> float:
    """base * 2**(attempt-1) capped, computed exactly with rationals (no float overflow)."""
    raw = Fraction(p.backoff_base_seconds) * 2 ** max(attempt - 1, 0)
    return float(min(raw, Fraction(p.backoff_max_seconds)))


@st.composite
def policies(draw: st.DrawFn, jitter: st.SearchStrategy[float] = jitters) -> RetryPolicy:
    base = draw(seconds)
    cap = draw(
        st.floats(
            min_value=base, max_value=MAX_DELAY_SECONDS, allow_nan=False, allow_infinity=False
        )
    )
    return RetryPolicy(
        retry_limit=draw(st.integers(min_value=1, max_value=50)),
        retryable=draw(st.booleans()),
        backoff_base_seconds=base,
        backoff_max_seconds=cap,
        jitter=draw(jitter),
        max_server_delay_seconds=draw(seconds),
    )


def test_defaults_keep_taskers_feel() -> None:
    p = RetryPolicy()
    assert (p.retry_limit, p.retryable) == (DEFAULT_RETRY_LIMIT, True) == (3, True)
    assert (p.backoff_base_seconds, p.backoff_max_seconds, p.max_server_delay_seconds) == (
        1.0,
        30.0,
        300.0,
    )
    assert 0 < p.jitter <= 1


@given(policies(), attempts, seeds)
def test_exponential_delay_is_within_zero_and_the_cap(
    p: RetryPolicy, attempt: int, seed: int
) -> None:
    d = p.exponential_delay(attempt, random.Random(seed))
    assert 0.0 <= d <= p.backoff_max_seconds
    assert math.isfinite(d)


@given(policies(jitter=st.just(0.0)), st.integers(min_value=1, max_value=5000))
def test_without_jitter_delay_doubles_until_the_cap(p: RetryPolicy, attempt: int) -> None:
    assert p.exponential_delay(attempt) == exact_backoff(p, attempt)
    # Monotonic: the next attempt never waits less than this one.
    assert p.exponential_delay(attempt + 1) >= p.exponential_delay(attempt)


def test_without_jitter_exact_sequence() -> None:
    p = RetryPolicy(backoff_base_seconds=1, backoff_max_seconds=30, jitter=0)
    assert [p.exponential_delay(a) for a in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]
    q = RetryPolicy(backoff_base_seconds=0.5, backoff_max_seconds=3, jitter=0)
    assert [q.exponential_delay(a) for a in range(1, 6)] == [0.5, 1, 2, 3, 3]


def test_attempt_zero_or_negative_uses_the_base() -> None:
    p = RetryPolicy(backoff_base_seconds=2, backoff_max_seconds=100, jitter=0)
    assert p.exponential_delay(0) == p.exponential_delay(-5) == p.exponential_delay(1) == 2


def test_huge_attempt_numbers_do_not_overflow() -> None:
    p = RetryPolicy(jitter=0)
    assert p.exponential_delay(1025) == p.exponential_delay(10_000) == 30.0
    assert p.delay(1_000_000) == 30.0
    assert RetryPolicy(jitter=0.5).exponential_delay(5000, random.Random(1)) <= 30.0
    # A tiny base still doubles all the way to the cap rather than stopping at some exponent.
    tiny = RetryPolicy(backoff_base_seconds=5e-324, backoff_max_seconds=1e-3, jitter=0)
    assert tiny.exponential_delay(1100) == 1e-3
    assert RetryPolicy(backoff_base_seconds=0, backoff_max_seconds=0).exponential_delay(10**9) == 0


@given(policies(), st.integers(min_value=1, max_value=5000), seeds)
def test_jitter_stays_within_its_fraction(p: RetryPolicy, attempt: int, seed: int) -> None:
    raw = exact_backoff(p, attempt)
    d = p.exponential_delay(attempt, random.Random(seed))
    lo = raw * (1 - p.jitter)
    hi = min(raw * (1 + p.jitter), p.backoff_max_seconds)
    assert lo * (1 - 1e-9) <= d <= hi * (1 + 1e-9)


def test_jitter_actually_spreads_delays() -> None:
    p = RetryPolicy(backoff_base_seconds=10, backoff_max_seconds=1000, jitter=0.5)
    rng = random.Random(7)
    delays = {p.exponential_delay(2, rng) for _ in range(50)}
    assert len(delays) > 1
    assert all(10 <= d <= 30 for d in delays)


def test_same_seed_same_delay() -> None:
    p = RetryPolicy(jitter=0.3)
    assert p.exponential_delay(3, random.Random(42)) == p.exponential_delay(3, random.Random(42))


@given(policies(), attempts, st.floats(min_value=0, max_value=1e9, allow_nan=False), seeds)
def test_retry_after_is_honoured_and_capped(
    p: RetryPolicy, attempt: int, retry_after: float, seed: int
) -> None:
    d = p.delay(attempt, retry_after=retry_after, rng=random.Random(seed))
    assert d == min(retry_after, p.max_server_delay_seconds)


@given(policies(), attempts, seeds)
def test_without_retry_after_the_delay_is_the_backoff(
    p: RetryPolicy, attempt: int, seed: int
) -> None:
    assert p.delay(attempt, None, random.Random(seed)) == p.exponential_delay(
        attempt, random.Random(seed)
    )


def test_retry_after_examples() -> None:
    p = RetryPolicy()
    assert p.delay(1, retry_after=45) == 45
    assert p.delay(1, retry_after=0) == 0  # "retry now" is honoured, not replaced by backoff
    assert p.delay(1, retry_after=3600) == 300
    assert p.delay(1, retry_after=-5) == 0
    assert RetryPolicy(max_server_delay_seconds=10).delay(9, retry_after=60) == 10


@given(st.integers(min_value=1, max_value=200), st.integers(min_value=0, max_value=400))
def test_may_retry_counts_attempts_in_all(limit: int, failed: int) -> None:
    p = RetryPolicy(retry_limit=limit)
    assert p.may_retry(failed) == (failed < limit)
    assert p.max_attempts == limit


@given(st.integers(min_value=1, max_value=200))
def test_exactly_retry_limit_attempts_are_made(limit: int) -> None:
    p = RetryPolicy(retry_limit=limit)
    made = 0
    while True:
        made += 1  # an attempt runs and fails
        if not p.may_retry(made):
            break
    assert made == limit


@given(st.integers(min_value=1, max_value=200), st.integers(min_value=0, max_value=400))
def test_not_retryable_never_retries(limit: int, failed: int) -> None:
    p = RetryPolicy(retry_limit=limit, retryable=False)
    assert p.may_retry(failed) is False
    assert p.max_attempts == 1


def test_limit_one_means_a_single_attempt() -> None:
    assert RetryPolicy(retry_limit=1).may_retry(1) is False
    assert RetryPolicy(retry_limit=1).may_retry(0) is True


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retry_limit": 0},
        {"retry_limit": -1},
        {"backoff_base_seconds": -1},
        {"backoff_max_seconds": -1, "backoff_base_seconds": 0},
        {"backoff_base_seconds": 10, "backoff_max_seconds": 5},
        {"jitter": -0.1},
        {"jitter": 1.5},
        {"jitter": 2},
        {"max_server_delay_seconds": -1},
        {"backoff_base_seconds": math.nan},
        {"backoff_max_seconds": math.inf},
        {"jitter": math.nan},
        {"max_server_delay_seconds": math.inf},
    ],
)
def test_invalid_values_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@given(seconds, seconds)
def test_max_below_base_is_refused(base: float, cap: float) -> None:
    assume(cap < base)
    with pytest.raises(ValueError):
        RetryPolicy(backoff_base_seconds=base, backoff_max_seconds=cap)


@given(policies())
def test_dict_round_trip(p: RetryPolicy) -> None:
    assert RetryPolicy.from_dict(p.to_dict()) == p
    assert RetryPolicy.from_dict({**p.to_dict(), "unknown": 1}) == p


def test_from_dict_fills_defaults() -> None:
    assert RetryPolicy.from_dict({"retry_limit": 5}) == RetryPolicy(retry_limit=5)


@pytest.mark.parametrize("field", ["backoff_max_seconds", "max_server_delay_seconds"])
def test_delays_past_a_week_are_refused(field: str) -> None:
    with pytest.raises(ValueError, match="7 days"):
        too_long: dict[str, Any] = {field: MAX_DELAY_SECONDS * 2}
        RetryPolicy(**too_long)
