"""Small SVG charts as geometry: the templates draw rectangles and text at these coordinates.

Why hand-made: a chart library would be most of the first page load (the budget is 500 KB) and
would need inline script or a CDN, both ruled out by the Content-Security-Policy and air-gapped
installs. Three shapes cover the pages: stacked columns per minute (overview throughput),
horizontal bars (analytics), and a state band over time (circuit history). Functions here are pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    kind: str  # a CSS class suffix: completed, failed, bar, open, closed, half_open, ...
    title: str


@dataclass(frozen=True)
class Chart:
    rects: list[Rect]
    labels: list[tuple[float, float, str]]  # x, y, text
    width: float
    height: float
    peak: float


def nice_max(value: float) -> float:
    """The smallest of 1, 2, 5 x 10^k at or above `value` (at least 1): a round top for an axis."""
    if value <= 1:
        return 1.0
    step = 1.0
    while True:
        for m in (1, 2, 5):
            if m * step >= value:
                return m * step
        step *= 10


def stacked_columns(
    points: Sequence[tuple[datetime, int, int]], *, width: float = 1300, height: float = 170
) -> Chart:
    """One column per (minute, completed, failed): completed at the bottom, failed on top."""
    top = nice_max(max((c + f for _, c, f in points), default=0))
    axis_w, base = 36.0, height - 18
    slot = (width - axis_w) / max(1, len(points))
    rects: list[Rect] = []
    for i, (minute, completed, failed) in enumerate(points):
        x = axis_w + i * slot + 1
        when = minute.strftime("%H:%M")
        hc = (base - 6) * completed / top
        hf = (base - 6) * failed / top
        if completed:
            rects.append(
                Rect(
                    x,
                    base - hc,
                    max(1.0, slot - 2),
                    hc,
                    "completed",
                    f"{when}: {completed} completed",
                )
            )
        if failed:
            rects.append(
                Rect(
                    x, base - hc - hf, max(1.0, slot - 2), hf, "failed", f"{when}: {failed} failed"
                )
            )
    labels = [(axis_w - 4, 12.0, f"{top:g}"), (axis_w - 4, base, "0")]
    if points:
        labels.append((axis_w, height - 4, points[0][0].strftime("%H:%M")))
        labels.append((width - 34, height - 4, points[-1][0].strftime("%H:%M")))
    return Chart(rects, labels, width, height, top)


def hbars(
    items: Sequence[tuple[str, float, str]],
    *,
    width: float = 560,
    row: float = 22,
    label_w: float = 220,
) -> Chart:
    """Horizontal bars for (label, value, shown value); the longest bar spans the chart."""
    top = max((v for _, v, _ in items), default=0.0) or 1.0
    span = width - label_w - 70
    rects: list[Rect] = []
    labels: list[tuple[float, float, str]] = []
    for i, (name, value, shown) in enumerate(items):
        y = i * row
        w = max(1.0, span * value / top) if value else 0.0
        rects.append(Rect(label_w, y + 3, w, row - 6, "bar", f"{name}: {shown}"))
        labels.append(
            (label_w - 6, y + row / 2 + 4, name if len(name) <= 34 else name[:33] + "\u2026")
        )
        labels.append((label_w + w + 6, y + row / 2 + 4, shown))
    return Chart(rects, labels, width, max(row, len(items) * row), top)


def state_band(
    history: Sequence[Mapping[str, Any]], now: datetime, *, width: float = 1300, height: float = 36
) -> Chart:
    """A band over time coloured by circuit state, from transitions (`to_state`, `at`, ...).

    As wide as the page at 1366 pixels, like the throughput chart: the SVG is stretched to the
    page's width, so a narrower one would blow its text up (720 made 12px labels ~22px)."""
    if not history:
        return Chart([], [], width, height, 0)
    start = history[0]["at"]
    total = max((now - start).total_seconds(), 1.0)
    rects: list[Rect] = []
    for i, t in enumerate(history):
        end = history[i + 1]["at"] if i + 1 < len(history) else now
        x = width * (t["at"] - start).total_seconds() / total
        w = max(1.0, width * (end - t["at"]).total_seconds() / total)
        state = str(t["to_state"])
        reason = f" ({t['reason']})" if t.get("reason") else ""
        rects.append(
            Rect(x, 0, w, height - 14, state, f"{t['at']:%Y-%m-%d %H:%M:%S} {state}{reason}")
        )
    labels = [
        (0.0, height - 2, f"{start:%Y-%m-%d %H:%M}"),
        (width - 110, height - 2, f"{now:%Y-%m-%d %H:%M}"),
    ]
    return Chart(rects, labels, width, height, total)
