"""The attempts waterfall of a task: one row per step, one bar per span of time in a state.

Built from the step transitions alone (each row: step, from, to, attempt, at), so it shows what
happened, not what the step row says now: every attempt (`in_progress` spans, labelled with the
attempt number), every wait for a retry (`waiting_retry`), and the time spent queued (`ready`). A
step still running or waiting has its last span drawn up to `now`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: States whose spans are drawn; `pending` (waiting for parents) is the gap before the first bar.
DRAWN = {"ready": "queued", "in_progress": "run", "waiting_retry": "wait"}
FINAL = {"complete", "error", "cancelled", "resolved_manually", "skipped"}
LABEL_W = 150
CHART_W = 820
ROW_H = 22
AXIS_H = 22


@dataclass(frozen=True)
class Span:
    kind: str  # queued | run | wait
    state: str  # the state the step was in during the span
    outcome: str  # the state it went to next ("" when still in it)
    attempt: int
    start: datetime
    end: datetime

    @property
    def seconds(self) -> float:
        return max(0.0, (self.end - self.start).total_seconds())


@dataclass(frozen=True)
class Bar:
    kind: str
    outcome: str
    x: float
    y: float
    w: float
    title: str


@dataclass(frozen=True)
class Waterfall:
    rows: list[tuple[str, float]]  # step name and the y of its label
    bars: list[Bar]
    ticks: list[tuple[float, str]]  # x and label of the axis ticks
    width: float
    height: float
    total_seconds: float


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
            attempt = int(t.get("attempt") or 0)
            found.append(Span(DRAWN[state], state, outcome, attempt, t["at"], max(end, t["at"])))
        out[step_id] = found
    return out


def waterfall(
    steps: Sequence[tuple[int, str]], transitions: Sequence[Mapping[str, Any]], now: datetime
) -> Waterfall:
    """Lay out the bars of `steps` ((id, name) in the task's order) on one time axis."""
    per_step = spans(transitions, now)
    every = [s for found in per_step.values() for s in found]
    start = min((s.start for s in every), default=now)
    end = max((s.end for s in every), default=now)
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
            what = {"run": f"attempt {s.attempt}", "wait": "waiting to retry", "queued": "queued"}[
                s.kind
            ]
            result = f" \u2192 {s.outcome}" if s.outcome else " (now)"
            bars.append(
                Bar(
                    s.kind, s.outcome, x, y + 4, w, f"{name}: {what}, {duration(s.seconds)}{result}"
                )
            )
    ticks = [(LABEL_W + CHART_W * k / 4, f"+{duration(total * k / 4)}") for k in range(5)]
    return Waterfall(
        rows, bars, ticks, LABEL_W + CHART_W + 40, AXIS_H + max(1, len(steps)) * ROW_H + 4, total
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
