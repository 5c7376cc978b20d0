"""A layered left-to-right layout of a step DAG, as SVG coordinates the templates draw.

Why our own layout rather than Mermaid in the browser: the page must work without a JavaScript
library (no CDN, a small first load) and the browser tests address each node (`g.node[data-step]`).
Templates are small DAGs (a handful to a few dozen steps), so a simple Sugiyama-style layout is
enough: a step's column is its depth (`execution_levels`), and within a column steps are ordered by
the mean row of their parents (one barycentre pass), which keeps most edges short and uncrossed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tasker.domain.graph import execution_levels
from tasker.domain.states import StepState

NODE_W = 160
NODE_H = 40
COL_GAP = 56
ROW_GAP = 18
PAD = 12
#: Labels longer than this are cut with an ellipsis; the full name is in the node's <title>.
LABEL_CHARS = 20


@dataclass(frozen=True)
class Node:
    name: str
    label: str
    state: str
    x: float
    y: float
    w: float = NODE_W
    h: float = NODE_H

    @property
    def text_x(self) -> float:
        return self.x + self.w / 2

    @property
    def text_y(self) -> float:
        return self.y + self.h / 2 + 5


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: str  # an SVG path `d` attribute


@dataclass(frozen=True)
class Layout:
    nodes: list[Node]
    edges: list[Edge]
    width: float
    height: float


def label(name: str, limit: int = LABEL_CHARS) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "\u2026"


def layout(
    steps: Sequence[tuple[str, Sequence[str]]], states: Mapping[str, str] | None = None
) -> Layout:
    """Place every step; `steps` are (name, parents) in declaration order, `states` colour them."""
    if not steps:
        return Layout([], [], 2 * PAD, 2 * PAD)
    columns = execution_levels(steps)
    parents = {name: list(ps) for name, ps in steps}
    row: dict[str, float] = {}
    for level in columns:
        if row:  # order by the mean row of the parents; ties keep declaration order
            level.sort(key=lambda n: sum(row[p] for p in parents[n]) / max(1, len(parents[n])))
        for i, name in enumerate(level):
            row[name] = float(i)
    tallest = max(len(level) for level in columns)
    height = 2 * PAD + tallest * NODE_H + (tallest - 1) * ROW_GAP
    width = 2 * PAD + len(columns) * NODE_W + (len(columns) - 1) * COL_GAP
    nodes: dict[str, Node] = {}
    for c, level in enumerate(columns):
        offset = (height - 2 * PAD - (len(level) * NODE_H + (len(level) - 1) * ROW_GAP)) / 2
        for i, name in enumerate(level):
            nodes[name] = Node(
                name=name,
                label=label(name),
                state=(states or {}).get(name, StepState.PENDING),
                x=PAD + c * (NODE_W + COL_GAP),
                y=PAD + offset + i * (NODE_H + ROW_GAP),
            )
    edges = [
        Edge(p, name, _curve(nodes[p], nodes[name]))
        for name, ps in steps
        for p in dict.fromkeys(ps)
    ]
    ordered = [nodes[name] for name, _ in steps]
    return Layout(ordered, edges, width, height)


def _curve(a: Node, b: Node) -> str:
    """A cubic Bezier from the right middle of `a` to the left middle of `b`."""
    x1, y1 = a.x + a.w, a.y + a.h / 2
    x2, y2 = b.x, b.y + b.h / 2
    bend = max(20.0, (x2 - x1) / 2)
    return f"M{x1:g},{y1:g} C{x1 + bend:g},{y1:g} {x2 - bend:g},{y2:g} {x2 - 6:g},{y2:g}"
