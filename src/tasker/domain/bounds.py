"""The ranges every number a user configures must fall in: settings, templates,
`tasker systems set`.

One place, so a cool-down the CLI refuses is refused by a template and by `engine.systems.configure`
too. A number outside its range is refused at load with one line instead of crashing a worker later:
a NaN cool-down made every worker fail when its circuit opened, an infinite timeout meant no timeout
at all, and `true` slipped through where a count belongs because `bool` is an `int` in Python.

Pure functions and constants only; the callers turn the `ValueError` into their own one-line error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Seven days: longer than this is an outage for an operator, not a wait (same cap as `retry.py`).
WEEK_SECONDS = 7 * 24 * 3600.0
DAY_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class Range:
    """A closed range of numbers (or whole numbers); `low_open` excludes `low` itself (so `> 0`)."""

    low: float
    high: float
    integer: bool = False
    low_open: bool = False
    unit: str = ""

    def describe(self) -> str:
        """The rule in words, for the fix part of an error message."""
        kind = "a whole number" if self.integer else "a number"
        unit = f" of {self.unit}" if self.unit else ""
        low = f"greater than {_num(self.low)}" if self.low_open else f"at least {_num(self.low)}"
        return f"{kind}{unit} {low} and at most {_num(self.high)}"

    def check(self, value: Any) -> int | float:
        """`value` as a number in range, or `ValueError` saying what is wrong and what is expected.

        Booleans are refused although Python counts them as integers, and so are NaN and the
        infinities (they compare false with every bound, so a plain `low <= x <= high` test lets NaN
        through).
        """
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{_show(value)} is not a number; use {self.describe()}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{_show(value)} is not a finite number; use {self.describe()}")
        if self.integer and isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{_show(value)} is not a whole number; use {self.describe()}")
            value = int(value)
        too_low = value <= self.low if self.low_open else value < self.low
        if too_low or value > self.high:
            raise ValueError(f"{_show(value)} is out of range; use {self.describe()}")
        return value if self.integer else float(value)

    def parse(self, text: str) -> int | float:
        """A number typed as text (an environment variable, a CLI option), then `check`ed."""
        t = text.strip()
        try:
            value: int | float = int(t) if self.integer else float(t)
        except ValueError:
            try:
                value = float(t)  # '1e3' for a whole number is fine; check() refuses '2.5'
            except ValueError:
                raise ValueError(f"{_show(text)} is not a number; use {self.describe()}") from None
        return self.check(value)


def _num(x: float) -> str:
    """1000000 rather than 1e+06: bounds are read by people."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- templates -------------------------------------------------------------------------------------
RETRY_LIMIT = Range(1, 1000, integer=True, unit="attempts")
TIMEOUT_SECONDS = Range(0, WEEK_SECONDS, low_open=True, unit="seconds")
BACKOFF_SECONDS = Range(0, WEEK_SECONDS, unit="seconds")
JITTER = Range(0, 1)
SERVER_DELAY_SECONDS = Range(0, WEEK_SECONDS, unit="seconds")
NAMESPACE_MAX_IN_FLIGHT = Range(1, 1_000_000, integer=True, unit="steps")
#: A task's priority (`tasker.domain.priorities`: one level is a minute ahead in the claim order).
PRIORITY = Range(0, 1000, integer=True, unit="levels")
#: Fair share: the most steps in flight per key of a template (`max_in_flight_per_key`).
MAX_IN_FLIGHT_PER_KEY = Range(1, 100_000, integer=True, unit="steps")
#: `identity.window_seconds`: how long requests with the same identity are one task (a year at
#: most).
IDENTITY_WINDOW_SECONDS = Range(0, 366 * DAY_SECONDS, low_open=True, unit="seconds")

# -- dependent systems (templates, `tasker systems set`, `engine.systems.configure`) ---------------
MAX_IN_FLIGHT = Range(1, 100_000, integer=True, unit="steps")
#: A fan-out's instances running at once in one task (`max_parallel`), and how many it may have
#: (`max_items`: 10,000 by default, at most 100,000 in one transaction).
MAX_PARALLEL = Range(1, 100_000, integer=True, unit="instances")
MAX_ITEMS = Range(0, 100_000, integer=True, unit="items")
FAILURE_THRESHOLD = Range(1, 10_000, integer=True, unit="failures")
COOLDOWN_SECONDS = Range(0, DAY_SECONDS, low_open=True, unit="seconds")
#: How long a system may stay silent before the steps waiting for it give up (a week at most).
MAX_OUTAGE_SECONDS = Range(0, WEEK_SECONDS, low_open=True, unit="seconds")
SYSTEM_SETTINGS: Mapping[str, Range] = {
    "max_in_flight": MAX_IN_FLIGHT,
    "failure_threshold": FAILURE_THRESHOLD,
    "cooldown_seconds": COOLDOWN_SECONDS,
    "max_cooldown_seconds": COOLDOWN_SECONDS,
    "max_outage_seconds": MAX_OUTAGE_SECONDS,
}


def check_system_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Validated dependent-system settings; None (clear back to the default) passes unchanged.

    Raises `ValueError` naming the setting, for unknown names as for values out of range.
    """
    unknown = sorted(set(settings) - set(SYSTEM_SETTINGS))
    if unknown:
        raise ValueError(
            f"unknown dependent-system setting(s): {', '.join(unknown)}; known:"
            f" {', '.join(SYSTEM_SETTINGS)}"
        )
    out: dict[str, Any] = {}
    for name, value in settings.items():
        if value is None:
            out[name] = None
            continue
        try:
            out[name] = SYSTEM_SETTINGS[name].check(value)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return out


# -- settings (environment and tasker.toml) --------------------------------------------------------
CONCURRENCY = Range(1, 1024, integer=True, unit="steps")
LEASE_SECONDS = Range(0, DAY_SECONDS, low_open=True, unit="seconds")
POLL_INTERVAL = Range(0, 3600, low_open=True, unit="seconds")
GRACE_SECONDS = Range(0, DAY_SECONDS, unit="seconds")
PORT = Range(1, 65_535, integer=True)
MAX_BODY_BYTES = Range(1024, 1 << 30, integer=True, unit="bytes")
