"""The step DAG of a template: structural checks, execution order and the Mermaid diagram.

Pure functions over (name, parents) pairs, so DAG validation is property-tested without YAML or I/O.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterator, Mapping, Sequence


class GraphError(ValueError):
    """A structural defect in the step graph; `step` names the step it is about."""

    def __init__(self, step: str, message: str):
        super().__init__(message)
        self.step = step


def check_graph(steps: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Refuse duplicate names, unknown or self parents, and cycles (naming the cycle)."""
    seen: set[str] = set()
    for name, _ in steps:
        if name in seen:
            raise GraphError(
                name, f"duplicate step name '{name}'; fix: give every step a unique name"
            )
        seen.add(name)
    for name, parents in steps:
        for p in parents:
            if p == name:
                raise GraphError(
                    name, f"step '{name}' depends on itself; fix: remove it from its dependencies"
                )
            if p not in seen:
                raise GraphError(
                    name,
                    f"step '{name}' depends on unknown step '{p}'; fix: use one of "
                    f"{', '.join(sorted(seen - {name})) or '(no other steps)'}",
                )
    cycle = find_cycle({n: list(ps) for n, ps in steps})
    if cycle:
        raise GraphError(
            cycle[0],
            f"dependency cycle {' -> '.join(cycle)}; fix: remove one of these dependencies",
        )


def find_cycle(parents: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle as a closed path of step names (first == last), or None; follows parent links.

    Iterative depth-first search with an explicit stack: a chain of thousands of steps declared
    child-first is a legal template, and a recursive walk would hit Python's recursion limit on it.
    """
    white, grey, black = 0, 1, 2
    colour = {n: white for n in parents}
    for root in parents:
        if colour[root] != white:
            continue
        path: list[str] = [root]  # the grey steps, root first
        pending: list[Iterator[str]] = [iter(parents.get(root, ()))]
        colour[root] = grey
        while pending:
            p = next(pending[-1], None)
            if p is None:
                colour[path.pop()] = black
                pending.pop()
                continue
            if p not in colour:
                continue
            if colour[p] == grey:
                cycle = [*path[path.index(p) :], p]
                cycle.reverse()  # parent -> child reads in execution direction
                return cycle
            if colour[p] == white:
                colour[p] = grey
                path.append(p)
                pending.append(iter(parents.get(p, ())))
    return None


def execution_levels(steps: Sequence[tuple[str, Sequence[str]]]) -> list[list[str]]:
    """Steps grouped by depth: every step of a level can run in parallel once the levels before are
    done."""
    order = {name: i for i, (name, _) in enumerate(steps)}
    parents = {name: list(ps) for name, ps in steps}
    level: dict[str, int] = {}
    for name in execution_order(steps):
        level[name] = 1 + max((level[p] for p in parents[name]), default=-1)
    out: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for name in sorted(level, key=lambda n: order[n]):
        out[level[name]].append(name)
    return out


def children_of(parents: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Each step's children, in the order of `parents` (step -> its parents); a step named only as
    a parent gets an entry too."""
    children: dict[str, list[str]] = {name: [] for name in parents}
    for name, ps in parents.items():
        for p in ps:
            children.setdefault(p, []).append(name)
    return children


def reachable(step: str, edges: Mapping[str, Sequence[str]]) -> set[str]:
    """The steps reachable from `step` along `edges`: through a parents map its ancestors, through
    a children map its descendants."""
    seen: set[str] = set()
    todo = list(edges.get(step, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(edges.get(node, ()))
    return seen


def execution_order(steps: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    """A topological order that keeps declaration order among steps that are free at the same time.

    Kahn's algorithm with a heap of declaration positions: at each point the earliest-declared step
    whose parents are all placed comes next, in O(n log n + edges) rather than a rescan per step.
    """
    position = {name: i for i, (name, _) in enumerate(steps)}
    waiting = {name: len(set(ps)) for name, ps in steps}
    children: dict[str, list[str]] = {name: [] for name, _ in steps}
    for name, ps in steps:
        for p in set(ps):
            if p not in children:
                raise GraphError(name, f"step '{name}' depends on unknown step '{p}'")
            children[p].append(name)
    free = [position[name] for name, n in waiting.items() if n == 0]
    heapq.heapify(free)
    done: list[str] = []
    while free:
        name = steps[heapq.heappop(free)][0]
        done.append(name)
        for child in children[name]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(free, position[child])
    if len(done) < len(steps):
        placed = set(done)
        raise GraphError(next(n for n, _ in steps if n not in placed), "dependency cycle")
    return done


STATE_STYLES = {
    "pending": "fill:#eeeeee,stroke:#999999",
    "ready": "fill:#dbeafe,stroke:#3b82f6",
    "in_progress": "fill:#fef3c7,stroke:#f59e0b",
    "waiting_retry": "fill:#ffedd5,stroke:#ea580c",
    "complete": "fill:#dcfce7,stroke:#16a34a",
    "resolved_manually": "fill:#e0e7ff,stroke:#6366f1",
    "skipped": "fill:#f5f5f5,stroke:#a3a3a3",
    "error": "fill:#fee2e2,stroke:#dc2626",
    "cancelled": "fill:#e5e5e5,stroke:#525252",
}


def _mermaid_text(text: str, limit: int = 60) -> str:
    """Text made safe inside a quoted Mermaid label (quotes and markup as entities), shortened."""
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return (
        flat.replace("&", "#amp;")
        .replace('"', "#quot;")
        .replace("<", "#lt;")
        .replace(">", "#gt;")
        .replace("|", "#124;")
    )


def mermaid(
    steps: Sequence[tuple[str, Sequence[str]]],
    states: Mapping[str, str] | None = None,
    *,
    when: Mapping[str, str] | None = None,
    join_any: Collection[str] = (),
    foreach: Mapping[str, str] | None = None,
    notes: Mapping[str, str] | None = None,
    tasks: Mapping[str, str] | None = None,
) -> str:
    """A Mermaid flowchart of the DAG; with `states`, each step is labelled and coloured by its
    state, and `notes` (by step name) add a line under a name. A step's condition (`when`, by step
    name) labels the edges into it (a step without parents shows it under its name); a `join: any`
    step is drawn as a hexagon; a `foreach` step as a stack of pages, with its list; a `task:` step
    (a sub-workflow) as a subroutine, with the template it runs."""
    tasks = tasks or {}
    when = when or {}
    foreach = foreach or {}
    notes = notes or {}
    ids = {name: f"s{i}" for i, (name, _) in enumerate(steps)}
    lines = ["graph TD"]
    for name, parents in steps:
        label = name if not states else f"{name}<br/>{states.get(name, 'pending')}"
        if name in when and not parents:
            label += f"<br/>when {_mermaid_text(when[name])}"
        if name in foreach:
            label += f"<br/>for each in {_mermaid_text(foreach[name])}"
        if name in notes:
            label += f"<br/>{_mermaid_text(notes[name])}"
        if name in tasks:
            label += f"<br/>task {_mermaid_text(tasks[name])}"
        if name in join_any:
            lines.append(f'    {ids[name]}{{{{"{label}<br/>join: any"}}}}')
        elif name in tasks:
            lines.append(f'    {ids[name]}[["{label}"]]')
        elif name in foreach:
            lines.append(f'    {ids[name]}@{{ shape: docs, label: "{label}" }}')
        else:
            lines.append(f'    {ids[name]}["{label}"]')
    for name, parents in steps:
        for p in parents:
            if name in when:
                lines.append(f'    {ids[p]} -->|"{_mermaid_text(when[name])}"| {ids[name]}')
            else:
                lines.append(f"    {ids[p]} --> {ids[name]}")
    if states:
        used = sorted({states.get(n, "pending") for n, _ in steps})
        for st in used:
            lines.append(f"    classDef {st} {STATE_STYLES.get(st, '')}")
        for name, _ in steps:
            lines.append(f"    class {ids[name]} {states.get(name, 'pending')}")
    return "\n".join(lines) + "\n"
