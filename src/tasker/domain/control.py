"""Control flow between steps: conditions (`when:`), joins (`join: any`) and skip propagation.

Pure policy, decided for one step at the moment its last parent finishes (or, for a step without
parents, when its task is created), from that step's parents and the results its condition reads:
never from the task's whole graph. The store persists the decision in the same transaction as the
parent's completion (`tasker.store.decisions`).

The rules (docs/templates.md, "Conditions and joins"):

- `join: all` (the default): a step with a skipped parent is skipped too, without evaluating its
  condition;
- `join: any`: the step runs once every parent is finished and at least one completed or was
  resolved by an operator; when all were skipped, it is skipped;
- then its `when:` condition, if any: `true` runs the step, `false` skips it (the value and the
  expression are recorded), anything else, or an evaluation error, fails the step for good.

Only steps that can meet one of these rules are *gated*: a step with a condition, a `join: any`, or
a parent that may end skipped. The others are made ready by their parents' completion alone, on the
fast path, as before control flow existed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tasker.domain.expressions import Expression, ExpressionFailure
from tasker.domain.states import StepState

#: The parent states a decision can meet: every parent is finished by then.
_RAN = frozenset({StepState.COMPLETE, StepState.RESOLVED_MANUALLY})
#: The class recorded on a step whose condition failed to evaluate.
CONDITION_ERROR = "ConditionError"
#: The class recorded on a fan-out whose `foreach` failed: not a list, too long, an error.
FANOUT_ERROR = "FanOutError"
#: The longest list a `foreach` may give unless the step says otherwise (`max_items`).
DEFAULT_MAX_ITEMS = 10_000
#: `step[i]`; never an undo row's `undo:step[i]` (a step name holds no colon).
_INSTANCE = re.compile(r"^([^:]+)\[(\d+)\]$")


class JoinRule(StrEnum):
    ALL = "all"
    ANY = "any"


class Verdict(StrEnum):
    RUN = "run"
    SKIP = "skip"
    FAIL = "fail"


@dataclass(frozen=True)
class Decision:
    """What becomes of a gated step: run it, skip it (with the reason), or fail it (with the
    reason); `value` is the condition's value when one was evaluated."""

    verdict: Verdict
    reason: str = ""
    value: Any = None


@dataclass(frozen=True)
class StepControl:
    """The control-flow rules of one step template."""

    name: str
    parents: tuple[str, ...]
    join: JoinRule = JoinRule.ALL
    when: Expression | None = None
    foreach: Expression | None = None
    max_parallel: int | None = None
    max_items: int = DEFAULT_MAX_ITEMS
    #: A `task:` step's child context: expressions (and constants) by key; None: the parent's.
    child_context: dict[str, Any] | None = None
    #: A `sleep:` given as an expression (a constant duration is the step template's).
    sleep: Expression | None = None
    #: The step can end `skipped` by itself when it runs (a `wait_for` with `on_timeout: skip`).
    skips_itself: bool = False

    @property
    def reads(self) -> frozenset[str]:
        """The steps whose state or results a decision reads: the parents and the condition's
        references."""
        refs = [e.steps for e in (self.when, self.foreach) if e is not None]
        return frozenset(self.parents).union(*refs)


def may_skip(controls: Sequence[StepControl]) -> set[str]:
    """The steps that can end `skipped`: those with a condition, a `join: all` step with such a
    parent, a `join: any` step whose parents all are. `controls` in a topological order."""
    out: set[str] = set()
    for c in controls:
        skippable = [p in out for p in c.parents]
        joined = any(skippable) if c.join == JoinRule.ALL else bool(c.parents) and all(skippable)
        if c.when is not None or joined or c.skips_itself:
            out.add(c.name)
    return out


def gated(controls: Sequence[StepControl]) -> set[str]:
    """The steps that need a decision before they run (see the module's doc; a `foreach` step's
    decision is its expansion). `controls` in a topological order."""
    skippable = may_skip(controls)
    return {
        c.name
        for c in controls
        if c.when is not None
        or c.foreach is not None
        or c.join == JoinRule.ANY
        or any(p in skippable for p in c.parents)
    }


def decide(
    control: StepControl,
    parents: Mapping[str, StepState | str],
    context: Any,
    results: Mapping[str, Any],
) -> Decision:
    """Decide a gated step whose parents are all finished.

    `parents` maps each parent to its state; `results` holds the results of the ancestors the
    condition reads that completed or were resolved (a skipped ancestor is absent, so `has()` tells
    it apart).
    """
    states = {p: StepState(parents[p]) for p in control.parents}
    skipped = [p for p in control.parents if states[p] == StepState.SKIPPED]
    if control.join == JoinRule.ALL and skipped:
        noun = "parent" if len(skipped) == 1 else "parents"
        return Decision(
            Verdict.SKIP, f"{noun} {', '.join(repr(p) for p in skipped)} skipped (join: all)"
        )
    if control.join == JoinRule.ANY and not any(states[p] in _RAN for p in control.parents):
        return Decision(Verdict.SKIP, "no parent completed (join: any)")
    if control.when is None:
        return Decision(Verdict.RUN)
    expr = control.when.source
    try:
        value = control.when.evaluate(context, dict(results))
    except ExpressionFailure as exc:
        return Decision(Verdict.FAIL, f"when `{expr}` failed: {exc}")
    if value is True:
        return Decision(Verdict.RUN, f"when `{expr}` was true", True)
    if value is False:
        return Decision(Verdict.SKIP, f"when `{expr}` was false", False)
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return Decision(
        Verdict.FAIL,
        f"when `{expr}` must be true or false, got {type(value).__name__} {shown}",
        None,
    )


@dataclass(frozen=True)
class SkipCascade:
    """What skipping some steps decides without reading anything (`skip_cascade`)."""

    #: The descendants skipped in turn, each with its decision: all their parents were skipped.
    skipped: dict[str, Decision]
    #: The other children of every skipped step, with how many of their parents were skipped: the
    #: store releases them as a completion would (their other parents decide the rest).
    released: Counter[str]


def skip_cascade(
    controls: Mapping[str, StepControl],
    children: Mapping[str, Sequence[str]],
    skipped: Iterable[str],
) -> SkipCascade:
    """Follow the skip of `skipped` down the graph as far as it decides alone: a descendant all of
    whose parents are skipped is skipped whatever its rule (`join: all` meets a skipped parent,
    `join: any` finds none that ran) and whatever its condition, which is not evaluated. Where a
    child has a parent outside the cascade, the cascade stops and that child is released."""
    gone = set(skipped)
    decided: dict[str, Decision] = {}
    todo = list(gone)
    while todo:
        for child in children.get(todo.pop(), ()):
            control = controls[child]
            if child in gone or not all(p in gone for p in control.parents):
                continue
            decision = decide(control, dict.fromkeys(control.parents, StepState.SKIPPED), None, {})
            if decision.verdict == Verdict.SKIP:
                gone.add(child)
                decided[child] = decision
                todo.append(child)
    released: Counter[str] = Counter(
        child for step in gone for child in children.get(step, ()) if child not in gone
    )
    return SkipCascade(decided, released)


def items_of(
    control: StepControl, context: Any, results: Mapping[str, Any]
) -> list[Any] | Decision:
    """The items a decided-to-run fan-out expands into, or the failure that stops it: an error
    evaluating `foreach`, a value that is not a list, or more items than `max_items`."""
    assert control.foreach is not None
    expr = control.foreach.source
    try:
        value = control.foreach.evaluate(context, dict(results))
    except ExpressionFailure as exc:
        return Decision(Verdict.FAIL, f"foreach `{expr}` failed: {exc}")
    if not isinstance(value, list):
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        return Decision(
            Verdict.FAIL,
            f"foreach `{expr}` must give a list, got {type(value).__name__} {shown}",
        )
    if len(value) > control.max_items:
        return Decision(
            Verdict.FAIL,
            f"foreach `{expr}` gave {len(value):,} items, more than the {control.max_items:,}"
            f" allowed; fix: split the work, or raise max_items on step '{control.name}' (up to"
            " 100,000)",
        )
    return value


def instance_name(step: str, index: int) -> str:
    """The name of a fan-out's instance: `step[index]` (a template's step names have no `[`)."""
    return f"{step}[{index}]"


def is_instance(name: str) -> bool:
    """Whether a step name is a fan-out instance's (cheap: only instance names hold a `[`)."""
    return "[" in name


def parse_instance(name: str) -> tuple[str, int] | None:
    """(the fan-out step, the index) of an instance's name, or None for any other step."""
    m = _INSTANCE.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def fanout_results(stored: Any) -> Any:
    """What dependents read of a completed fan-out: the list of its instances' results in item
    order, stored as `{"results": [...], "count": n}` (a step's results are an object)."""
    if isinstance(stored, dict) and isinstance(stored.get("results"), list):
        return stored["results"]
    return stored


def child_context(control: StepControl, context: Any, results: Mapping[str, Any]) -> Any:
    """A `task:` step's child context: each expression of its `context:` evaluated over the
    parent's context and results (constants kept), or the parent's context when it has none.
    Raises `ExpressionFailure` naming the key that failed."""
    if control.child_context is None:
        return context
    out: dict[str, Any] = {}
    for key, value in control.child_context.items():
        if isinstance(value, Expression):
            try:
                out[key] = value.evaluate(context, dict(results))
            except ExpressionFailure as exc:
                raise ExpressionFailure(f"context.{key}: `{value.source}` failed: {exc}") from None
        else:
            out[key] = value
    return out
