"""Compensation (the saga's undo) as pure policy: which completed steps a failed or cancelled task
undoes, in which order, and where the task goes while and after it does.

A compensation is durable work like any step (DESIGN.md section 7, "Undo is durable work"): the
store writes one compensation row per step to undo, and an edge from the compensation of each
step to the compensation of each of its nearest undone ancestors, so that the ordinary readiness
machinery runs a step's undo only after the undo of everything that was built on it. This module
decides those rows and edges (`plan_compensation`); it reads nothing and writes nothing.

The rules (issue 15; the user's documentation comes with the feature):

- a step is undone when it `complete`d and its template declares a `compensation`; a step that was
  skipped, cancelled, failed, or resolved by an operator did nothing of the engine's to undo, and a
  step without a compensation is passed over (its descendants' undos still wait for each other
  through it);
- a step's undo waits for the undo of every undone step that descends from it (through any path),
  and for nothing else: independent branches are undone in parallel;
- among undos that are ready together, the one of the step that completed last goes first
  (`newest_first`), the order a person undoing by hand would choose.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from tasker.domain.graph import children_of, reachable
from tasker.domain.states import StepState

#: The name of a step's undo row is its name behind this prefix (`undo:charge`, `undo:each[3]`): a
#: step name cannot hold a colon, so no undo is mistaken for a step, nor a step for an undo.
UNDO_PREFIX = "undo:"


def undo_name(step: str) -> str:
    """The name of the row that undoes `step`."""
    return UNDO_PREFIX + step


def undone_by(name: str) -> str | None:
    """The step an undo row undoes (None for any other row)."""
    return name[len(UNDO_PREFIX) :] if name.startswith(UNDO_PREFIX) else None


def is_undo(name: str) -> bool:
    return name.startswith(UNDO_PREFIX)


@dataclass(frozen=True)
class CompensationPlan:
    """The undos of one task: the steps to undo, and for each, the steps whose undo must finish
    before its own starts (its nearest undone descendants; the rest follows transitively)."""

    steps: tuple[str, ...]
    waits_for: Mapping[str, tuple[str, ...]]

    @property
    def first(self) -> tuple[str, ...]:
        """The undos that can start at once (nothing undone descends from their step)."""
        return tuple(s for s in self.steps if not self.waits_for[s])


def plan_compensation(
    parents: Mapping[str, Sequence[str]],
    states: Mapping[str, StepState | str],
    declares: Collection[str],
    finished_at: Mapping[str, datetime] | None = None,
) -> CompensationPlan:
    """The compensation plan of a task whose steps have `parents` (every step of the task, a
    fan-out's instances included, each with its parents' names), are in `states`, and of which
    the steps named in `declares` have a compensation. `finished_at` orders the plan's steps newest
    first (within the dependency order); without it, the steps come in a reverse topological
    order."""
    undone = [
        s
        for s in parents
        if s in declares and StepState(states.get(s, StepState.PENDING)) == StepState.COMPLETE
    ]
    children = children_of(parents)
    undo = set(undone)
    waits_for = {s: tuple(sorted(_nearest(s, children, undo))) for s in undone}
    return CompensationPlan(newest_first(waits_for, finished_at or {}), waits_for)


def _nearest(step: str, children: Mapping[str, Sequence[str]], undo: Collection[str]) -> set[str]:
    """The undone steps below `step` with no other undone step between it and them."""
    found: set[str] = set()
    seen: set[str] = set()
    todo = list(children.get(step, ()))
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        if node in undo:
            found.add(node)  # its own undo waits for what lies below it
        else:
            todo.extend(children.get(node, ()))
    # A step reached both directly and below another undone step need not be waited for twice.
    below: set[str] = set()
    for f in found:
        below |= reachable(f, children)
    return found - below


def newest_first(
    waits_for: Mapping[str, Sequence[str]], finished_at: Mapping[str, datetime]
) -> tuple[str, ...]:
    """An order of the undos that respects `waits_for` and, among those free to go, takes the step
    that finished last first (then by name, so that the order is total)."""
    left = {s: set(w) for s, w in waits_for.items()}
    order: list[str] = []
    oldest = datetime.min

    def key(s: str) -> tuple[datetime, str]:
        return (finished_at.get(s, oldest), s)

    while left:
        free = [s for s, w in left.items() if not w]
        if not free:
            raise ValueError(f"compensations wait for each other in a cycle: {sorted(left)}")
        nxt = max(free, key=key)
        order.append(nxt)
        del left[nxt]
        for w in left.values():
            w.discard(nxt)
    return tuple(order)
