"""The step DAG of a template: structural checks, execution order and the Mermaid diagram.

Pure functions over (name, parents) pairs, so DAG validation is property-tested without YAML or I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


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
            raise GraphError(name, f"duplicate step name '{name}'; fix: give every step a unique name")
        seen.add(name)
    for name, parents in steps:
        for p in parents:
            if p == name:
                raise GraphError(name, f"step '{name}' depends on itself; fix: remove it from its dependencies")
            if p not in seen:
                raise GraphError(
                    name,
                    f"step '{name}' depends on unknown step '{p}'; fix: use one of "
                    f"{', '.join(sorted(seen - {name})) or '(no other steps)'}",
                )
    cycle = find_cycle({n: list(ps) for n, ps in steps})
    if cycle:
        raise GraphError(
            cycle[0], f"dependency cycle {' -> '.join(cycle)}; fix: remove one of these dependencies"
        )


def find_cycle(parents: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle as a closed path of step names (first == last), or None; follows parent links."""
    white, grey, black = 0, 1, 2
    colour = {n: white for n in parents}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for p in parents.get(node, ()):
            if p not in colour:
                continue
            if colour[p] == grey:
                path = [*stack[stack.index(p):], p]
                path.reverse()  # parent -> child reads in execution direction
                return path
            if colour[p] == white:
                found = visit(p)
                if found:
                    return found
        stack.pop()
        colour[node] = black
        return None

    for n in parents:
        if colour[n] == white:
            found = visit(n)
            if found:
                return found
    return None


def execution_levels(steps: Sequence[tuple[str, Sequence[str]]]) -> list[list[str]]:
    """Steps grouped by depth: every step of a level can run in parallel once the levels before are done."""
    order = {name: i for i, (name, _) in enumerate(steps)}
    parents = {name: list(ps) for name, ps in steps}
    level: dict[str, int] = {}
    for name in execution_order(steps):
        level[name] = 1 + max((level[p] for p in parents[name]), default=-1)
    out: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for name in sorted(level, key=lambda n: order[n]):
        out[level[name]].append(name)
    return out


def execution_order(steps: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    """A topological order that keeps declaration order among steps that are free at the same time."""
    parents = {name: set(ps) for name, ps in steps}
    done: list[str] = []
    placed: set[str] = set()
    remaining = [name for name, _ in steps]
    while remaining:
        progressed = False
        for name in list(remaining):
            if parents[name] <= placed:
                done.append(name)
                placed.add(name)
                remaining.remove(name)
                progressed = True
                break
        if not progressed:
            raise GraphError(remaining[0], "dependency cycle")
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


def mermaid(steps: Sequence[tuple[str, Sequence[str]]], states: Mapping[str, str] | None = None) -> str:
    """A Mermaid flowchart of the DAG; with `states`, each step is labelled and coloured by its state."""
    ids = {name: f"s{i}" for i, (name, _) in enumerate(steps)}
    lines = ["graph TD"]
    for name, _ in steps:
        label = name if not states else f"{name}<br/>{states.get(name, 'pending')}"
        lines.append(f'    {ids[name]}["{label}"]')
    for name, parents in steps:
        for p in parents:
            lines.append(f"    {ids[p]} --> {ids[name]}")
    if states:
        used = sorted({states.get(n, "pending") for n, _ in steps})
        for st in used:
            lines.append(f"    classDef {st} {STATE_STYLES.get(st, '')}")
        for name, _ in steps:
            lines.append(f"    class {ids[name]} {states.get(name, 'pending')}")
    return "\n".join(lines) + "\n"
