"""The attempts waterfall of a task: one row per step, one bar per span of time in a state.

Built from the step transitions alone (each row: step, from, to, attempt, at), so it shows what
happened, not what the step row says now: every attempt (`in_progress` spans, labelled with the
attempt number), every wait for a retry (`waiting_retry`), and the time spent queued (`ready`). A
step still running or waiting has its last span drawn up to `now`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tasker.domain.states import TERMINAL_STEP_STATES, StepState

#: States whose spans are drawn; `pending` (waiting for parents) is the gap before the first bar.
DRAWN: dict[str, str] = {
    StepState.READY: "queued",
    StepState.IN_PROGRESS: "run",
    StepState.WAITING_RETRY: "wait",
}
FINAL: frozenset[str] = TERMINAL_STEP_STATES | {StepState.ERROR}
#: How a bar is drawn, by its kind and (for attempts) what came next; the legend lists these, in
#: this order, so it says exactly what the colours mean. An attempt that went back to `ready`
#: (its lease expired) failed and will run again, like one that went to `waiting_retry`.
LOOKS = {
    "complete": "attempt: complete",
    "retry": "attempt: failed, retried",
    "error": "attempt: error",
    "running": "attempt: running",
    "cancelled": "attempt: cancelled",
    "wait": "waiting to retry",
    "queued": "queued",
    "handoff": "attempt: parked the step",
    "child": "parked: a child task, a sleep or a signal",
}
#: The pseudo-outcome of an attempt that parked its step for a child task (a `task:` step): it
#: went to `waiting_retry` with no error, so it is no failed attempt.
PARKED = "parked"
#: Always in the legend; the rarer looks only when a bar is drawn so.
USUAL_LOOKS = ("complete", "retry", "error", "running", "wait", "queued")
_RUN_LOOKS: dict[str, str] = {
    StepState.COMPLETE: "complete",
    StepState.WAITING_RETRY: "retry",
    StepState.READY: "retry",
    StepState.ERROR: "error",
    "": "running",
    PARKED: "handoff",
}
#: The SVG is stretched to the page's width: 150 + 1120 + 40 is about that width at 1366 pixels,
#: so its 12px text stays 12px there (an 820 wide axis drew it at ~16px).
LABEL_W = 150
CHART_W = 1120
ROW_H = 22
AXIS_H = 22


@dataclass(frozen=True)
class Span:
    kind: str  # queued | run | wait | child
    state: str  # the state the step was in during the span
    outcome: str  # the state it went to next ("" when still in it)
    attempt: int
    start: datetime
    end: datetime

    @property
    def seconds(self) -> float:
        return max(0.0, (self.end - self.start).total_seconds())


def look(kind: str, outcome: str) -> str:
    """The `LOOKS` key of a span: waits and queues by kind, an attempt by how it ended."""
    if kind != "run":
        return kind
    return _RUN_LOOKS.get(outcome, "cancelled")


@dataclass(frozen=True)
class Bar:
    kind: str
    outcome: str
    x: float
    y: float
    w: float
    title: str

    @property
    def look(self) -> str:
        return look(self.kind, self.outcome)


@dataclass(frozen=True)
class Mark:
    """A signal received, as a marker on the time axis."""

    name: str
    x: float
    title: str


@dataclass(frozen=True)
class Waterfall:
    rows: list[tuple[str, float]]  # step name and the y of its label
    bars: list[Bar]
    ticks: list[tuple[float, str]]  # x and label of the axis ticks
    width: float
    height: float
    total_seconds: float
    marks: list[Mark] = field(default_factory=list)

    @property
    def legend(self) -> list[tuple[str, str]]:
        """(look, label) for the legend: the usual looks, then any other one a bar is drawn with."""
        drawn = {b.look for b in self.bars}
        return [(k, label) for k, label in LOOKS.items() if k in USUAL_LOOKS or k in drawn]


def _failed(row: Mapping[str, Any]) -> bool:
    """Whether a transition into `waiting_retry` came from a failure (else: parked for a child)."""
    return bool(row.get("error_class"))


def spans(transitions: Sequence[Mapping[str, Any]], now: datetime) -> dict[int, list[Span]]:
    """Spans per step id, from the task's step transitions (oldest first)."""
    by_step: dict[int, list[Mapping[str, Any]]] = {}
    for t in transitions:
        by_step.setdefault(int(t["step_id"]), []).append(t)
    out: dict[int, list[Span]] = {}
    for step_id, rows in by_step.items():
        found: list[Span] = []
        for i, t in enumerate(rows):
            state = str(t["to_state"])
            if state not in DRAWN:
                continue
            following = rows[i + 1] if i + 1 < len(rows) else None
            end = following["at"] if following is not None else now
            outcome = str(following["to_state"]) if following is not None else ""
            if outcome == StepState.WAITING_RETRY and following and not _failed(following):
                outcome = PARKED  # it started a child task and waits for it
            kind = DRAWN[state]
            if state == StepState.WAITING_RETRY and not _failed(t):
                kind = "child"
            attempt = int(t.get("attempt") or 0)
            found.append(Span(kind, state, outcome, attempt, t["at"], max(end, t["at"])))
        out[step_id] = found
    return out


def waterfall(
    steps: Sequence[tuple[int, str]],
    transitions: Sequence[Mapping[str, Any]],
    now: datetime,
    signals: Sequence[tuple[datetime, str]] = (),
    parked: Mapping[int, str] | None = None,
) -> Waterfall:
    """Lay out the bars of `steps` ((id, name) in the task's order) on one time axis, with a
    marker for each signal received ((at, name)); `parked` says what each parked step waits for
    (its bar's tooltip; a `task:` step's child by default)."""
    per_step = spans(transitions, now)
    every = [s for found in per_step.values() for s in found]
    times = [s.start for s in every] + [at for at, _ in signals]
    start = min(times, default=now)
    end = max([s.end for s in every] + [at for at, _ in signals], default=now)
    total = max((end - start).total_seconds(), 0.001)
    scale = CHART_W / total
    rows: list[tuple[str, float]] = []
    bars: list[Bar] = []
    for i, (step_id, name) in enumerate(steps):
        y = AXIS_H + i * ROW_H
        rows.append((name, y + ROW_H / 2 + 4))
        for s in per_step.get(step_id, []):
            x = LABEL_W + (s.start - start).total_seconds() * scale
            w = max(2.0, s.seconds * scale)
            what = {
                "run": f"attempt {s.attempt}",
                "wait": "waiting to retry",
                "queued": "queued",
                "child": (parked or {}).get(step_id, "waiting for the child task"),
            }[s.kind]
            result = f" \u2192 {s.outcome}" if s.outcome else " (now)"
            bars.append(
                Bar(
                    s.kind, s.outcome, x, y + 4, w, f"{name}: {what}, {duration(s.seconds)}{result}"
                )
            )
    ticks = [(LABEL_W + CHART_W * k / 4, f"+{duration(total * k / 4)}") for k in range(5)]
    marks = [
        Mark(
            name,
            LABEL_W + (at - start).total_seconds() * scale,
            f"signal '{name}' received at +{duration((at - start).total_seconds())}",
        )
        for at, name in signals
    ]
    return Waterfall(
        rows,
        bars,
        ticks,
        LABEL_W + CHART_W + 40,
        AXIS_H + max(1, len(steps)) * ROW_H + 4,
        total,
        marks,
    )


def duration(seconds: float | None) -> str:
    """A short human duration: 850ms, 12.3s, 4m05s, 2h10m."""
    if seconds is None:
        return "\u2013"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
