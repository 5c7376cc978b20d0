"""Conditions and joins as pure policy: compiling expressions, deciding one step, and which steps
are gated, with a property over random DAGs that the decisions run exactly the steps the rules
say."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasker.domain.control import (
    Decision,
    JoinRule,
    StepControl,
    Verdict,
    decide,
    gated,
    may_skip,
    skip_cascade,
)
from tasker.domain.expressions import (
    ExpressionFailure,
    ExpressionSyntaxError,
    compile_expression,
)
from tasker.domain.graph import children_of
from tasker.domain.states import StepState
from tasker.domain.templates import (
    WIDE_TEMPLATE_STEPS,
    ControlError,
    StepTemplate,
    TaskTemplate,
    build_controls,
)
from tasker.engine.resolver import Resolver
from tasker.registry import TemplateRegistry

S = StepState


# -- expressions ------------------------------------------------------------------------------
def test_an_expression_reads_context_and_results() -> None:
    e = compile_expression('results.check.amount > 100 && context.region == "eu"')
    assert e.steps == {"check"}
    assert e.evaluate({"region": "eu"}, {"check": {"amount": 150}}) is True
    assert e.evaluate({"region": "us"}, {"check": {"amount": 150}}) is False


def test_references_are_found_by_member_and_by_index_not_inside_strings() -> None:
    e = compile_expression(
        'results.a.x == 1 || results["b-2"].y == 2 || "results.c" == context.s || has(results.d)'
    )
    assert e.steps == {"a", "b-2", "d"}
    positions = {r.step: (r.line, r.column) for r in e.references}
    assert positions["a"] == (1, 1)


def test_a_macro_variable_is_not_an_unknown_name() -> None:
    e = compile_expression("context.items.all(i, i.qty > 0)")
    assert e.evaluate({"items": [{"qty": 1}, {"qty": 2}]}, {}) is True


@pytest.mark.parametrize(
    ("source", "line", "column", "words"),
    [
        ("results.a.amount >* 3", 1, 19, "Syntax error"),
        ("context.x >\n  ", 2, 3, "Syntax error"),
        ("ctx.amount > 3", 1, 1, "unknown name 'ctx'"),
        ("context.a && order.b", 1, 14, "unknown name 'order'"),
    ],
)
def test_a_bad_expression_is_refused_with_its_position(
    source: str, line: int, column: int, words: str
) -> None:
    with pytest.raises(ExpressionSyntaxError) as caught:
        compile_expression(source)
    assert (caught.value.line, caught.value.column) == (line, column)
    assert words in caught.value.message


def test_an_empty_expression_is_refused() -> None:
    with pytest.raises(ExpressionSyntaxError, match="empty"):
        compile_expression("  ")


@pytest.mark.parametrize(
    ("source", "context", "results", "reason"),
    [
        ("results.a.amount > 1", {}, {"a": {}}, "no such key 'amount'"),
        ("results.a.amount > 1", {}, {}, "no such key 'a'"),
        ("context.n + 1.5 > 2", {"n": 1}, {}, "No such overload"),
        ("context.n / 0 > 1", {"n": 1}, {}, "division by zero"),
    ],
)
def test_an_expression_that_fails_says_why(
    source: str, context: dict[str, Any], results: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ExpressionFailure, match=reason):
        compile_expression(source).evaluate(context, results)


# -- one decision -------------------------------------------------------------------------------
def _c(
    name: str, parents: tuple[str, ...] = (), join: JoinRule = JoinRule.ALL, when: str | None = None
) -> StepControl:
    return StepControl(name, parents, join, compile_expression(when) if when else None)


def test_join_all_skips_after_a_skipped_parent_without_evaluating() -> None:
    control = _c("c", ("a", "b"), when="results.missing.x == 1")
    d = decide(control, {"a": S.COMPLETE, "b": S.SKIPPED}, {}, {})
    assert d == Decision(Verdict.SKIP, "parent 'b' skipped (join: all)")


def test_join_any_runs_when_one_parent_completed_or_was_resolved() -> None:
    control = _c("c", ("a", "b"), JoinRule.ANY)
    assert decide(control, {"a": S.SKIPPED, "b": S.COMPLETE}, {}, {}).verdict == Verdict.RUN
    resolved = {"a": S.SKIPPED, "b": S.RESOLVED_MANUALLY}
    assert decide(control, resolved, {}, {}).verdict == Verdict.RUN
    none = decide(control, {"a": S.SKIPPED, "b": S.SKIPPED}, {}, {})
    assert none == Decision(Verdict.SKIP, "no parent completed (join: any)")


def test_a_condition_decides_and_its_value_is_recorded() -> None:
    control = _c("r", ("check",), when="results.check.amount > 100")
    yes = decide(control, {"check": S.COMPLETE}, {}, {"check": {"amount": 500}})
    no = decide(control, {"check": S.COMPLETE}, {}, {"check": {"amount": 5}})
    assert yes == Decision(Verdict.RUN, "when `results.check.amount > 100` was true", True)
    assert no == Decision(Verdict.SKIP, "when `results.check.amount > 100` was false", False)


def test_a_condition_that_fails_or_is_no_boolean_fails_the_step() -> None:
    control = _c("r", ("check",), when="results.check.amount")
    failed = decide(control, {"check": S.COMPLETE}, {}, {"check": {}})
    assert failed.verdict == Verdict.FAIL and "no such key 'amount'" in failed.reason
    number = decide(control, {"check": S.COMPLETE}, {}, {"check": {"amount": 5}})
    assert number.verdict == Verdict.FAIL
    assert "must be true or false, got int 5" in number.reason


def test_a_skipped_ancestor_is_absent_from_results_so_has_tells() -> None:
    control = _c("pay", ("review", "auto"), JoinRule.ANY, when="has(results.review)")
    parents = {"review": S.SKIPPED, "auto": S.COMPLETE}
    assert decide(control, parents, {}, {}).verdict == Verdict.SKIP
    assert decide(control, parents, {}, {"review": {}}).verdict == Verdict.RUN


# -- which steps are gated --------------------------------------------------------------------
def test_only_steps_that_can_meet_a_rule_are_gated() -> None:
    controls = [
        _c("a"),
        _c("b", ("a",), when="results.a.x == 1"),
        _c("c", ("b",)),  # a skippable parent
        _c("d", ("a",)),  # plain
        _c("e", ("c", "d"), JoinRule.ANY),  # join any
        _c("f", ("e",)),  # e can be skipped only if both c and d can: d cannot
        _c("g", ("a", "d")),
    ]
    assert may_skip(controls) == {"b", "c"}
    assert gated(controls) == {"b", "c", "e"}


def test_build_controls_refuses_what_cannot_work() -> None:
    def steps(*raw: dict[str, Any]) -> list[StepTemplate]:
        return [StepTemplate.model_validate({"handler_class": "m:C", **r}) for r in raw]

    with pytest.raises(ControlError, match=r"results.c at line 1, column 1 is not a step"):
        build_controls(steps({"name": "a"}, {"name": "b", "depends_on_step": "a",
                                             "when": "results.c.x"}))  # fmt: skip
    with pytest.raises(ControlError, match="is not an ancestor of 'b'"):
        build_controls(
            steps(
                {"name": "a"},
                {"name": "b", "depends_on_step": "a", "when": "results.d.x == 1"},
                {"name": "d", "depends_on_step": "a"},
            )
        )
    with pytest.raises(ControlError, match="join: any on a step without parents"):
        build_controls(steps({"name": "a", "join": "any"}))
    with pytest.raises(ControlError, match="Syntax error"):
        build_controls(steps({"name": "a", "when": "context.x >"}))


def test_join_accepts_all_and_any_only() -> None:
    assert (
        StepTemplate.model_validate({"name": "a", "handler_class": "m:C", "join": "all"}).join
        is None
    )
    with pytest.raises(ValueError, match="join is 'all'"):
        StepTemplate.model_validate({"name": "a", "handler_class": "m:C", "join": "some"})


# -- the property: over random DAGs, decisions run exactly the steps the rules say ---------------
@st.composite
def _dags(draw: st.DrawFn) -> tuple[list[StepControl], dict[str, bool]]:
    """A random DAG in topological order: each step's parents among the earlier ones, a join
    rule, and a condition whose outcome is drawn (`true` or `false`, or none)."""
    n = draw(st.integers(1, 9))
    controls: list[StepControl] = []
    outcomes: dict[str, bool] = {}
    for i in range(n):
        name = f"s{i}"
        parents = tuple(
            sorted(draw(st.sets(st.sampled_from([f"s{j}" for j in range(i)]), max_size=3)))
            if i
            else ()
        )
        join = draw(st.sampled_from(list(JoinRule))) if parents else JoinRule.ALL
        cond = draw(st.sampled_from([None, True, False]))
        when = None if cond is None else f"context.{name} == true"
        if cond is not None:
            outcomes[name] = cond
        controls.append(_c(name, parents, join, when))
    return controls, outcomes


def _oracle(controls: list[StepControl], outcomes: dict[str, bool]) -> dict[str, bool]:
    """The rules, read directly: a step runs iff its join holds over the parents that ran and its
    condition (if any) is true."""
    ran: dict[str, bool] = {}
    for c in controls:
        parents_ran = [ran[p] for p in c.parents]
        joined = all(parents_ran) if c.join == JoinRule.ALL else any(parents_ran)
        ran[c.name] = joined and outcomes.get(c.name, True)
    return ran


def _engine(
    controls: list[StepControl], outcomes: dict[str, bool], *, cascade: bool = False
) -> dict[str, StepState]:
    """What the engine does: release children as parents finish; an ungated child becomes ready at
    zero, a gated one is decided. Every step runs at most once. With `cascade`, a skip decides at
    once what follows from it alone (`skip_cascade`, as the store does) and releases the rest."""
    by_name = {c.name: c for c in controls}
    gates = gated(controls)
    children: dict[str, list[str]] = {c.name: [] for c in controls}
    for c in controls:
        for p in c.parents:
            children[p].append(c.name)
    pending = {c.name: len(c.parents) for c in controls}
    state: dict[str, StepState] = {c.name: S.PENDING for c in controls}
    runs: dict[str, int] = {c.name: 0 for c in controls}
    queue: list[str] = []

    def arrive(name: str) -> None:
        c = by_name[name]
        if name not in gates:
            assert all(state[p] == S.COMPLETE for p in c.parents), f"{name} ran unchecked"
            queue.append(name)
            return
        d = decide(c, {p: state[p] for p in c.parents}, outcomes, {})
        if d.verdict == Verdict.RUN:
            queue.append(name)
        else:
            assert d.verdict == Verdict.SKIP
            state[name] = S.SKIPPED
            if cascade:
                skip_down(name)
            else:
                finish(name)

    def skip_down(name: str) -> None:
        followed = skip_cascade(
            by_name, children_of({n: c.parents for n, c in by_name.items()}), [name]
        )
        for skipped in followed.skipped:
            assert state[skipped] == S.PENDING and pending[skipped] > 0, skipped
            state[skipped] = S.SKIPPED
        for child, edges in followed.released.items():
            assert state[child] == S.PENDING, child
            pending[child] -= edges
            if pending[child] == 0:
                arrive(child)

    def finish(name: str) -> None:
        for child in children[name]:
            pending[child] -= 1
            if pending[child] == 0:
                arrive(child)

    for c in controls:
        if not c.parents:
            arrive(c.name)
    while queue:
        name = queue.pop(0)
        runs[name] += 1
        state[name] = S.COMPLETE
        finish(name)
    assert all(n <= 1 for n in runs.values()), runs
    return state


@settings(max_examples=300, deadline=None)
@given(_dags())
def test_over_random_dags_a_step_runs_iff_its_rule_says_so(
    dag: tuple[list[StepControl], dict[str, bool]],
) -> None:
    controls, outcomes = dag
    states = _engine(controls, outcomes)
    expected = _oracle(controls, outcomes)
    assert all(s in (S.COMPLETE, S.SKIPPED) for s in states.values())  # every step finished
    assert {n: s == S.COMPLETE for n, s in states.items()} == expected
    assert _engine(controls, outcomes, cascade=True) == states  # a skip cascade decides alike


def test_a_skip_cascade_stops_where_a_child_has_a_parent_outside_it() -> None:
    controls = {
        c.name: c
        for c in (
            _c("a", ()),
            _c("b", ("a",), when="context.b"),
            _c("b2", ("b",)),
            _c("b3", ("b2",), JoinRule.ANY),
            _c("c", ("a",)),
            _c("end", ("b3", "c"), JoinRule.ANY),
            _c("both", ("b2", "b3")),
        )
    }
    followed = skip_cascade(
        controls, children_of({n: c.parents for n, c in controls.items()}), ["b"]
    )
    assert list(followed.skipped) == ["b2", "b3", "both"]
    assert followed.skipped["b2"].reason == "parent 'b' skipped (join: all)"
    assert followed.skipped["b3"].reason == "no parent completed (join: any)"
    assert dict(followed.released) == {"end": 1}


def test_a_claim_of_a_wide_template_reads_its_steps_ancestors_and_descendants() -> None:
    def template(branches: int) -> TaskTemplate:
        steps: list[dict[str, Any]] = [{"name": "root", "handler_class": "m:C"}]
        for i in range(branches):
            steps.append({"name": f"a{i}", "handler_class": "m:C", "depends_on_step": "root"})
            steps.append({"name": f"b{i}", "handler_class": "m:C", "depends_on_step": f"a{i}"})
        last = [f"b{i}" for i in range(branches)]
        steps.append({"name": "end", "handler_class": "m:C", "depends_on_steps": last})
        return TaskTemplate.model_validate({"name": "w", "step_templates": steps})

    wide = template(WIDE_TEMPLATE_STEPS // 2)
    assert wide.wide and not template(3).wide
    assert wide.related_steps("a1") == {"root", "b1", "end"}
    assert wide.related_steps("end") == {s.name for s in wide.step_templates} - {"end"}
    resolver = Resolver(TemplateRegistry())
    resolver.add_snapshot(1, wide.model_dump(mode="json"))
    resolver.add_snapshot(2, template(3).model_dump(mode="json"))
    assert resolver.related_steps(1, "a1[3]") == wide.related_steps("a1")  # an instance: its step's
    assert resolver.related_steps(1, "end") is None  # related to most: the whole task, in one read
    assert resolver.related_steps(2, "a1") is None  # small: the whole task
    assert resolver.related_steps(3, "a1") is None  # not loaded here yet
