"""A layered left-to-right layout of a step DAG, as SVG coordinates the templates draw.

Why our own layout rather than Mermaid in the browser: the page must work without a JavaScript
library (no CDN, a small first load) and the browser tests address each node (`g.node[data-step]`).
Templates are small DAGs (a handful to a few dozen steps), so a simple Sugiyama-style layout is
enough: a step's column is its depth (`execution_levels`), and within a column steps are ordered by
the mean row of their parents (one barycentre pass), which keeps most edges short and uncrossed.

Control flow is drawn where it acts: a step's `when:` condition labels the edges into it (decided
when those parents finish), in the gap just before the step, which is widened to fit the label; a
step without parents carries its condition on its node; a `join: any` step is marked on its node.

A `foreach` step is one node however many instances it expands into (a fan-out may have 10,000):
drawn as a stack of cards, with a second line under its name, `for each` until it expands, then
its progress (`n/N done`, and how many instances failed) on the task page.

A `task:` step (a sub-workflow) carries a `task` badge; on the task page, once the step created
its child task, the badge links to the child's page and the tooltip names the child and its status.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from tasker.domain.control import JoinRule
from tasker.domain.graph import execution_levels
from tasker.domain.states import StepState
from tasker.domain.templates import TaskTemplate

NODE_W = 160
NODE_H = 40
COL_GAP = 56
ROW_GAP = 18
PAD = 12
#: Labels longer than this are cut with an ellipsis; the full name is in the node's <title>.
LABEL_CHARS = 20
#: Conditions on edges are cut to this many characters; the full text is in the edge's <title>.
WHEN_CHARS = 28
#: How far each card of a fan-out's stack sits behind the node (up and to the right), and how many
#: cards there are; PAD leaves them room at the edges of the drawing.
STACK_OFFSET = 3
STACK_CARDS = 2
#: The width of one character of an edge label (10px monospace, `.dag .edge-label` in the CSS);
#: the padding of the box that hides the edge under the label; and the room left on each side of
#: that box in the gap, so that a label never covers a node or the arrow head.
WHEN_CHAR_W = 6.0
WHEN_PAD = 3.0
WHEN_MARGIN = 20.0


@dataclass(frozen=True)
class Progress:
    """How far a fan-out's instances got: `done` of `total` finished (the states
    `Task.fanout_progress` counts), `failed` of them in error."""

    done: int
    total: int
    failed: int = 0

    @property
    def text(self) -> str:
        """`n/N done`, as `Task.fanout_progress` says it."""
        return f"{self.done}/{self.total} done"

    @property
    def line(self) -> str:
        """The node's second line: the progress, and the failures if any."""
        return self.text + (f", {self.failed} failed" if self.failed else "")


@dataclass(frozen=True)
class ChildRef:
    """The child task a `task:` step created: its id, its template (`namespace/name@version`)
    and its status."""

    id: int
    template: str
    status: str

    @property
    def name(self) -> str:
        """`child task 42 (payments/refund@1.0.0)`: the link's text."""
        return f"child task {self.id} ({self.template})"

    @property
    def text(self) -> str:
        """The name and the status, as the tooltips and the step's entry say it (dashboard.js
        says it the same way)."""
        return f"{self.name}, {self.status}"


@dataclass(frozen=True)
class Node:
    name: str
    label: str
    state: str
    x: float
    y: float
    w: float = NODE_W
    h: float = NODE_H
    #: The step's `when:` condition, if it has one.
    when: str | None = None
    #: True for a `join: any` step.
    join_any: bool = False
    #: True when the node itself shows the condition: the step has no parent, so no edge to
    #: carry it.
    when_on_node: bool = False
    #: A fan-out step's `foreach` expression and `max_parallel`.
    foreach: str | None = None
    max_parallel: int | None = None
    #: A fan-out step's instances, once it expanded (task page only).
    progress: Progress | None = None
    #: A `task:` step's template reference (`namespace/name`, maybe `@version`).
    task: str | None = None
    #: The child task it created (task page only).
    child: ChildRef | None = None

    @property
    def badge_x(self) -> float:
        """Where a `task:` node's badge ends: at the top right, left of a `join: any` badge."""
        return self.x + self.w - (30 if self.join_any else 8)

    @property
    def text_x(self) -> float:
        return self.x + self.w / 2

    @property
    def text_y(self) -> float:
        """The name's baseline: centred, or on the first of two lines for a fan-out."""
        return self.y + (20 if self.foreach is not None else self.h / 2 + 5)

    @property
    def sub_y(self) -> float:
        """The baseline of a fan-out's second line (its progress)."""
        return self.y + 33

    @property
    def sub_text(self) -> str:
        """A fan-out's second line: its progress once it expanded, `for each` before."""
        if self.progress is not None:
            return self.progress.line
        if self.max_parallel is not None:
            return f"for each, {self.max_parallel} at once"
        return "for each"

    @property
    def stack(self) -> list[tuple[float, float]]:
        """Where the cards behind a fan-out's node sit, farthest first (none for other steps)."""
        if self.foreach is None:
            return []
        offsets = [STACK_OFFSET * k for k in range(STACK_CARDS, 0, -1)]
        return [(self.x + d, self.y - d) for d in offsets]

    @property
    def about(self) -> str:
        """The step's control flow in full, as the tooltip says it after the name and state; the
        live page keeps it when it rewrites the state (`data-about`)."""
        parts = []
        if self.when is not None:
            parts.append(f"runs when {one_line(self.when)}")
        if self.join_any:
            parts.append("join: any (runs when at least one parent completed)")
        if self.foreach is not None:
            each = f"for each item in {one_line(self.foreach)}"
            if self.max_parallel is not None:
                each += f", at most {self.max_parallel} at once"
            parts.append(each)
        if self.task is not None:
            parts.append(f"runs task {self.task}")
        return "; ".join(parts)

    @property
    def title(self) -> str:
        """The node's tooltip: name and state (and a fan-out's progress), then its control flow,
        in full, then a `task:` step's child and its status. dashboard.js builds the same text
        when the state changes."""
        head = f"{self.name}: {self.state}"
        if self.progress is not None:
            head += f", {self.progress.line}"
        parts = [head, self.about, self.child.text if self.child is not None else ""]
        return "; ".join(p for p in parts if p)


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: str  # an SVG path `d` attribute
    #: The target's condition, which this edge carries (None: the edge is unconditional).
    when: str | None = None
    #: The condition cut to WHEN_CHARS, and where its text is centred.
    when_label: str = ""
    label_x: float = 0.0
    label_y: float = 0.0

    @property
    def label_w(self) -> float:
        """The width of the box behind the label, which breaks the edge around its text."""
        return len(self.when_label) * WHEN_CHAR_W + 2 * WHEN_PAD


@dataclass(frozen=True)
class Layout:
    nodes: list[Node]
    edges: list[Edge]
    width: float
    height: float

    @property
    def conditional(self) -> bool:
        """Whether any step has a condition (the legend then explains dashed edges)."""
        return any(n.when is not None for n in self.nodes)

    @property
    def joins_any(self) -> bool:
        """Whether any step is a `join: any` (the legend then explains its border)."""
        return any(n.join_any for n in self.nodes)

    @property
    def fans_out(self) -> bool:
        """Whether any step has a `foreach` (the legend then explains the stack)."""
        return any(n.foreach is not None for n in self.nodes)

    @property
    def subflows(self) -> bool:
        """Whether any step is a `task:` step (the legend then explains its badge)."""
        return any(n.task is not None for n in self.nodes)


def label(name: str, limit: int = LABEL_CHARS) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "\u2026"


def one_line(text: str) -> str:
    """A condition on one line: a multi-line YAML expression reads the same with its breaks
    folded."""
    return " ".join(text.split())


def when_label(expression: str) -> str:
    return label(one_line(expression), WHEN_CHARS)


def template_layout(
    template: TaskTemplate,
    states: Mapping[str, str] | None = None,
    progress: Mapping[str, Progress] | None = None,
    children: Mapping[str, ChildRef] | None = None,
) -> Layout:
    """The layout of a template's steps with their conditions, joins, fan-outs and sub-workflows,
    as both the task page (with `states`, the fan-outs' `progress` and the `task:` steps'
    `children`) and the template page draw it."""
    steps = template.step_templates
    return layout(
        [(s.name, s.parents) for s in steps],
        states,
        when={s.name: s.when for s in steps if s.when},
        join_any={s.name for s in steps if s.join == JoinRule.ANY},
        foreach={s.name: (s.foreach, s.max_parallel) for s in steps if s.foreach is not None},
        progress=progress,
        task={s.name: s.task for s in steps if s.task is not None},
        children=children,
    )


def layout(
    steps: Sequence[tuple[str, Sequence[str]]],
    states: Mapping[str, str] | None = None,
    *,
    when: Mapping[str, str] | None = None,
    join_any: Collection[str] = (),
    foreach: Mapping[str, tuple[str, int | None]] | None = None,
    progress: Mapping[str, Progress] | None = None,
    task: Mapping[str, str] | None = None,
    children: Mapping[str, ChildRef] | None = None,
) -> Layout:
    """Place every step; `steps` are (name, parents) in declaration order, `states` colour them,
    `when` (step -> condition) labels the edges into a step, `join_any` marks its steps,
    `foreach` (step -> expression and max_parallel) stacks a fan-out's node and `progress` adds
    its instances' progress, `task` (step -> template reference) badges a sub-workflow's node and
    `children` links it to its child task."""
    if not steps:
        return Layout([], [], 2 * PAD, 2 * PAD)
    when = when or {}
    foreach = foreach or {}
    progress = progress or {}
    task = task or {}
    children = children or {}
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
    gaps = [_gap_before(level, parents, when) for level in columns[1:]]
    width = 2 * PAD + len(columns) * NODE_W + sum(gaps)
    nodes: dict[str, Node] = {}
    x = float(PAD)
    for c, level in enumerate(columns):
        if c:
            x += NODE_W + gaps[c - 1]
        offset = (height - 2 * PAD - (len(level) * NODE_H + (len(level) - 1) * ROW_GAP)) / 2
        for i, name in enumerate(level):
            nodes[name] = Node(
                name=name,
                label=label(name),
                state=(states or {}).get(name, StepState.PENDING),
                x=x,
                y=PAD + offset + i * (NODE_H + ROW_GAP),
                when=when.get(name),
                join_any=name in join_any,
                when_on_node=name in when and not parents[name],
                foreach=foreach[name][0] if name in foreach else None,
                max_parallel=foreach[name][1] if name in foreach else None,
                progress=progress.get(name) if name in foreach else None,
                task=task.get(name),
                child=children.get(name) if name in task else None,
            )
    gap_of = {
        name: (gaps[c - 1] if c else 0.0) for c, level in enumerate(columns) for name in level
    }
    edges = [
        _edge(nodes[p], nodes[name], when.get(name), gap_of[name])
        for name, ps in steps
        for p in dict.fromkeys(ps)
    ]
    ordered = [nodes[name] for name, _ in steps]
    return Layout(ordered, edges, width, height)


def _gap_before(
    level: Sequence[str], parents: Mapping[str, Sequence[str]], when: Mapping[str, str]
) -> float:
    """The gap before a column: wide enough for the longest condition on an edge into it."""
    chars = max((len(when_label(when[n])) for n in level if n in when and parents[n]), default=0)
    return max(float(COL_GAP), chars * WHEN_CHAR_W + 2 * (WHEN_PAD + WHEN_MARGIN))


def _edge(a: Node, b: Node, when: str | None, gap: float) -> Edge:
    """The edge from `a` into `b`; a condition of `b` is labelled in the middle of the gap before
    `b` (an edge that crosses columns reaches it last), on the curve."""
    if when is None:
        return Edge(a.name, b.name, _curve(a, b))
    x = b.x - gap / 2
    return Edge(a.name, b.name, _curve(a, b), when, when_label(when), x, _y_at(a, b, x))


def _controls(a: Node, b: Node) -> tuple[tuple[float, float], ...]:
    """The four control points of the cubic Bezier from the right middle of `a` to the left
    middle of `b` (short of it by the arrow head)."""
    x1, y1 = a.x + a.w, a.y + a.h / 2
    x2, y2 = b.x, b.y + b.h / 2
    bend = max(20.0, (x2 - x1) / 2)
    return (x1, y1), (x1 + bend, y1), (x2 - bend, y2), (x2 - 6, y2)


def _curve(a: Node, b: Node) -> str:
    """The edge's SVG path: a cubic Bezier from the right middle of `a` to the left middle of
    `b`."""
    (x1, y1), (cx1, cy1), (cx2, cy2), (x2, y2) = _controls(a, b)
    return f"M{x1:g},{y1:g} C{cx1:g},{cy1:g} {cx2:g},{cy2:g} {x2:g},{y2:g}"


def _y_at(a: Node, b: Node, x: float) -> float:
    """The height of the edge's curve where it passes `x`: its x only grows along the curve, so
    halving the parameter's interval finds the point (to well under a pixel in 30 steps)."""
    points = _controls(a, b)
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if _bezier(points, mid)[0] < x:
            lo = mid
        else:
            hi = mid
    return round(_bezier(points, (lo + hi) / 2)[1], 1)


def _bezier(points: tuple[tuple[float, float], ...], t: float) -> tuple[float, float]:
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = points
    u = 1 - t
    a, b, c, d = u * u * u, 3 * u * u * t, 3 * u * t * t, t * t * t
    return a * x0 + b * x1 + c * x2 + d * x3, a * y0 + b * y1 + c * y2 + d * y3
