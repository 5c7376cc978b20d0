"""Durable waits: a step that sleeps or waits for a signal holds no worker slot, lease or attempt.

A waiting step is parked: `waiting_retry` with its attempt given back, and a `run_at` at the end of
its sleep or of its signal's timeout (none when it waits for a signal without a timeout). Its
`wait` column says what for (`Wait`, as JSON). A signal to its task gives it a `run_at` of now
(`tasker.store.signals`); the next claim reads the wait and the task's first signal of that name,
and `resume` decides whether the step's wait is over (slept, received, timed out) or goes on.

Pure: times come in as arguments, so the decisions are tested without a clock.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import TypeAdapter, ValidationError

#: The longest sleep, delay or signal timeout: a year (past it, a schedule is the better tool).
MAX_WAIT_SECONDS = 366 * 24 * 3600.0
_SHORTHAND = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_ISO_DURATION: TypeAdapter[timedelta] = TypeAdapter(timedelta)


class WaitKind(StrEnum):
    SLEEP = "sleep"
    SIGNAL = "signal"


class OnTimeout(StrEnum):
    """What a step that waited for a signal in vain does at its timeout."""

    #: The step fails for good (`SignalTimeout`); its task ends in error (or compensates).
    ERROR = "error"
    #: The step is skipped: dependents that `join: any` or test `has(results.step)` go on.
    SKIP = "skip"
    #: The step completes with `{"timed_out": true}`: dependents run and can tell.
    CONTINUE = "continue"


class WaitStatus(StrEnum):
    """What a claim of a parked step finds."""

    #: The step was not waiting (its first attempt, or a retry after a failure).
    NONE = "none"
    #: The sleep is over.
    SLEPT = "slept"
    #: The signal it waits for has arrived.
    RECEIVED = "received"
    #: The signal did not arrive before the timeout.
    TIMED_OUT = "timed_out"
    #: Woken early (an operator's retry, a signal of another name): it waits again.
    WAITING = "waiting"


@dataclass(frozen=True)
class Wait:
    """What a parked step waits for, stored as JSON in `tasker_steps.wait`."""

    kind: WaitKind
    #: The end of the sleep, or the signal's timeout (None: wait for the signal for ever).
    until: datetime | None
    #: The signal's name (a `signal` wait).
    signal: str | None = None
    #: What the handler asked to be given back when it is called again (`ctx.state`).
    state: Any = None
    #: When the wait began.
    since: datetime | None = None
    #: The handler parked itself (`ctx.sleep`, `ctx.wait_for_signal`), as opposed to the step's
    #: own `sleep` or `wait_for`.
    handler: bool = False
    #: The step's own wait is over (its handler runs, and a retry of it does not wait again).
    over: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "until": self.until.isoformat() if self.until else None,
            "signal": self.signal,
            "state": self.state,
            "since": self.since.isoformat() if self.since else None,
            "handler": self.handler,
            "over": self.over,
        }

    @classmethod
    def from_json(cls, data: Any) -> Wait | None:
        """The wait stored in a step's `wait` column (None: the step is not waiting)."""
        if not isinstance(data, dict) or data.get("kind") not in WaitKind.__members__.values():
            return None
        return cls(
            kind=WaitKind(data["kind"]),
            until=_time(data.get("until")),
            signal=data.get("signal"),
            state=data.get("state"),
            since=_time(data.get("since")),
            handler=bool(data.get("handler")),
            over=bool(data.get("over")),
        )

    def describe(self) -> str:
        """The step's note while it waits (its `decision`, shown by the CLI and the dashboard)."""
        until = self.until.isoformat(timespec="seconds") if self.until else None
        if self.kind == WaitKind.SLEEP:
            return f"sleeping until {until}"
        return f"waiting for signal '{self.signal}'" + (f" until {until}" if until else "")

    def describe_end(self, status: WaitStatus) -> str:
        """The step's note once its wait is over."""
        if status == WaitStatus.RECEIVED:
            return f"signal '{self.signal}' received"
        if status == WaitStatus.TIMED_OUT:
            return f"no signal '{self.signal}' before {self.until:%Y-%m-%dT%H:%M:%S%z}: timed out"
        until = self.until.isoformat(timespec="seconds") if self.until else "now"
        return f"slept until {until}"


@dataclass(frozen=True)
class WaitLookup:
    """What a claim of a step that may wait reads: its stored wait, and the first payload of each
    signal it declares that its task has received."""

    wait: Wait | None = None
    signals: Mapping[str, Any] = field(default_factory=dict)


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def resume(wait: Wait | None, now: datetime, signalled: bool) -> WaitStatus:
    """Whether a claimed step's wait is over: `signalled` says whether its task holds a signal of
    the name it waits for. A signal that arrived counts even after the timeout passed (it was
    there when the step was claimed)."""
    if wait is None:
        return WaitStatus.NONE
    if wait.kind == WaitKind.SIGNAL and signalled:
        return WaitStatus.RECEIVED
    if wait.until is not None and now >= wait.until:
        return WaitStatus.SLEPT if wait.kind == WaitKind.SLEEP else WaitStatus.TIMED_OUT
    return WaitStatus.WAITING


def remaining_seconds(wait: Wait, now: datetime) -> float | None:
    """Seconds until the wait's end or timeout (None: no end)."""
    if wait.until is None:
        return None
    return max(0.0, (wait.until - now).total_seconds())


def signal_results(payload: Any) -> dict[str, Any]:
    """The results of a `wait_for` step that received its signal: the payload when it is an
    object, else `{"payload": value}` (a step's results are always an object)."""
    if isinstance(payload, dict):
        return payload
    return {} if payload is None else {"payload": payload}


def duration_seconds(value: Any, maximum: float = MAX_WAIT_SECONDS) -> float:
    """A duration as seconds: a number of seconds, an ISO-8601 duration (`PT10M`, `P1D`) or a
    shorthand (`90s`, `10m`, `2h`, `1d`, `1w`), at most `maximum` (a wait's: a year). Raises
    `ValueError` saying what is accepted."""
    seconds: float
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; {_ACCEPTED}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        seconds = _parse(value)
    else:
        raise ValueError(f"{type(value).__name__} is not a duration; {_ACCEPTED}")
    if not math.isfinite(seconds) or seconds < 0 or seconds > maximum:
        raise ValueError(f"{value!r} is out of range; use 0 to {maximum / 86400:g} days")
    return seconds


_ACCEPTED = "use seconds (30), an ISO-8601 duration (PT10M, P1D) or 90s, 10m, 2h, 1d, 1w"


def _parse(text: str) -> float:
    short = _SHORTHAND.match(text)
    if short:
        return float(short.group(1)) * _UNIT_SECONDS[short.group(2)]
    stripped = text.strip()
    if stripped.upper().startswith("P"):
        try:
            return _ISO_DURATION.validate_python(stripped.upper()).total_seconds()
        except ValidationError:
            pass
    try:
        return float(stripped)
    except ValueError:
        raise ValueError(f"'{text}' is not a duration; {_ACCEPTED}") from None


def is_duration(value: Any) -> bool:
    """Whether `duration_seconds` accepts the value (else a template's string is an expression)."""
    try:
        duration_seconds(value)
    except ValueError:
        return False
    return True


def wake_time(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)
