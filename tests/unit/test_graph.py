"""The step DAG: random DAGs are accepted and ordered, back edges are cycles, defects name their
step."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasker.domain.graph import (
    STATE_STYLES,
    GraphError,
    check_graph,
    execution_levels,
    execution_order,
    find_cycle,
    mermaid,
)

Steps = list[tuple[str, list[str]]]


@st.composite
def dags(draw: st.DrawFn, min_size: int = 1, max_size: int = 25) -> Steps:
    """A random DAG: each step's parents are drawn among earlier steps, then declarations are
    shuffled."""
    size = draw(st.integers(min_value=min_size, max_value=max_size))
    names = [f"step_{i}" for i in range(size)]
    steps: Steps = []
    for i, name in enumerate(names):
        parents = draw(st.lists(st.sampled_from(names[:i]), unique=True, max_size=4)) if i else []
        steps.append((name, parents))
    return draw(st.permutations(steps))


def edges(steps: Sequence[tuple[str, Sequence[str]]]) -> set[tuple[str, str]]:
    """(parent, child) pairs."""
    return {(p, name) for name, ps in steps for p in ps}


def assert_topological(order: list[str], steps: Steps) -> None:
    assert sorted(order) == sorted(name for name, _ in steps)
    assert len(order) == len(set(order))
    pos = {name: i for i, name in enumerate(order)}
    for parent, child in edges(steps):
        assert pos[parent] < pos[child], (parent, child)


@given(dags())
def test_random_dags_pass_and_order_topologically(steps: Steps) -> None:
    check_graph(steps)
    assert find_cycle(dict(steps)) is None
    assert_topological(execution_order(steps), steps)


@given(dags())
def test_execution_levels_put_each_step_after_its_parents(steps: Steps) -> None:
    levels = execution_levels(steps)
    level_of = {name: i for i, level in enumerate(levels) for name in level}
    assert sorted(level_of) == sorted(name for name, _ in steps)
    assert sum(len(level) for level in levels) == len(steps)
    assert all(levels), "no empty level"
    parents = dict(steps)
    for name, lvl in level_of.items():
        for p in parents[name]:
            assert level_of[p] < lvl
        # Each step sits as early as it can: one level after its deepest parent.
        assert lvl == 1 + max((level_of[p] for p in parents[name]), default=-1)
    # Within a level, declaration order is kept.
    declared = [name for name, _ in steps]
    for level in levels:
        assert level == sorted(level, key=declared.index)


@given(dags())
def test_execution_order_keeps_declaration_order_among_free_steps(steps: Steps) -> None:
    roots = [name for name, ps in steps if not ps]
    order = execution_order(steps)
    assert order[0] == roots[0]
    # Steps without parents keep their relative declaration order.
    assert [n for n in order if n in roots] == roots


def test_execution_order_example() -> None:
    steps: Steps = [("c", ["a", "b"]), ("a", []), ("b", ["a"]), ("d", [])]
    assert execution_order(steps) == ["a", "b", "c", "d"]
    assert execution_levels(steps) == [["a", "d"], ["b"], ["c"]]
    assert execution_levels([]) == []
    assert execution_order([]) == []


@st.composite
def dags_with_back_edge(draw: st.DrawFn) -> tuple[Steps, str, str]:
    """A DAG with a path from `anc` down to `desc`, plus an added edge desc -> anc (a cycle)."""
    steps = draw(dags(min_size=2))
    parents = {n: set(ps) for n, ps in steps}
    ancestors: dict[str, set[str]] = {}

    def anc_of(n: str) -> set[str]:
        if n not in ancestors:
            ancestors[n] = set().union(*([{p} | anc_of(p) for p in parents[n]] or [set()]))
        return ancestors[n]

    pairs = sorted((a, d) for d in parents for a in anc_of(d))
    if not pairs:
        # No edge at all: connect two steps first so that a cycle can be closed.
        (a, _), (d, _) = steps[0], steps[1]
        steps = [(n, [*ps, a] if n == d else list(ps)) for n, ps in steps]
        pairs = [(a, d)]
    anc, desc = draw(st.sampled_from(pairs))
    # The back edge: the ancestor now also depends on its descendant.
    with_back = [(n, [*ps, desc] if n == anc else list(ps)) for n, ps in steps]
    return with_back, anc, desc


def assert_closed_path(cycle: list[str], steps: Steps) -> None:
    assert len(cycle) >= 3, cycle  # at least x -> y -> x (self edges are refused earlier)
    assert cycle[0] == cycle[-1]
    assert len(set(cycle[:-1])) == len(cycle) - 1, "a simple cycle visits each step once"
    known = edges(steps)
    for a, b in itertools.pairwise(cycle):
        assert (a, b) in known, f"{a} -> {b} is not an edge of the graph"


@given(dags_with_back_edge())
def test_back_edge_is_reported_as_a_real_cycle(case: tuple[Steps, str, str]) -> None:
    steps, _, _ = case
    cycle = find_cycle(dict(steps))
    assert cycle is not None
    assert_closed_path(cycle, steps)
    with pytest.raises(GraphError) as info:
        check_graph(steps)
    message = str(info.value)
    m = re.search(r"dependency cycle ((?:[\w.\-]+ -> )+[\w.\-]+);", message)
    assert m, message
    reported = m.group(1).split(" -> ")
    assert_closed_path(reported, steps)
    assert info.value.step == reported[0]
    assert "fix:" in message
    with pytest.raises(GraphError):
        execution_order(steps)


def test_two_step_cycle_message() -> None:
    steps: Steps = [("a", ["b"]), ("b", ["a"])]
    with pytest.raises(GraphError) as info:
        check_graph(steps)
    assert "a -> b -> a" in str(info.value) or "b -> a -> b" in str(info.value)


def test_duplicate_name_is_refused_naming_the_step() -> None:
    with pytest.raises(GraphError) as info:
        check_graph([("a", []), ("fetch", ["a"]), ("fetch", [])])
    assert info.value.step == "fetch"
    assert (
        "duplicate" in str(info.value)
        and "'fetch'" in str(info.value)
        and "fix:" in str(info.value)
    )


def test_unknown_parent_is_refused_naming_the_step_and_the_parent() -> None:
    with pytest.raises(GraphError) as info:
        check_graph([("a", []), ("charge", ["a", "validate_cart"])])
    assert info.value.step == "charge"
    msg = str(info.value)
    assert "'charge'" in msg and "'validate_cart'" in msg and "fix:" in msg
    assert "a" in msg.split("fix:")[1]  # the known steps are suggested


def test_self_dependency_is_refused_naming_the_step() -> None:
    with pytest.raises(GraphError) as info:
        check_graph([("a", []), ("loop", ["a", "loop"])])
    assert info.value.step == "loop"
    assert "'loop'" in str(info.value) and "itself" in str(info.value) and "fix:" in str(info.value)


@given(dags(), st.data())
def test_any_unknown_parent_is_refused(steps: Steps, data: st.DataObject) -> None:
    i = data.draw(st.integers(min_value=0, max_value=len(steps) - 1))
    name, ps = steps[i]
    broken = [*steps[:i], (name, [*ps, "no_such_step"]), *steps[i + 1 :]]
    with pytest.raises(GraphError) as info:
        check_graph(broken)
    assert info.value.step == name
    assert "no_such_step" in str(info.value)


@given(dags(min_size=2), st.data())
def test_any_duplicate_is_refused(steps: Steps, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from([n for n, _ in steps]))
    with pytest.raises(GraphError) as info:
        check_graph([*steps, (name, [])])
    assert info.value.step == name


# --- mermaid --------------------------------------------------------------------------------------


def parse_mermaid(
    text: str,
) -> tuple[dict[str, str], set[tuple[str, str]], dict[str, str], set[str]]:
    """Node labels by id, edges as id pairs, class by id, classDef names."""
    nodes = dict(re.findall(r'^\s+(\w+)\["([^"]*)"\]$', text, re.M))
    found = set(re.findall(r"^\s+(\w+) --> (\w+)$", text, re.M))
    classes = dict(re.findall(r"^\s+class (\w+) (\w+)$", text, re.M))
    defs = set(re.findall(r"^\s+classDef (\w+) ", text, re.M))
    return nodes, found, classes, defs


@given(dags())
def test_mermaid_has_every_node_and_edge(steps: Steps) -> None:
    text = mermaid(steps)
    assert text.startswith("graph TD\n") and text.endswith("\n")
    nodes, found, classes, _ = parse_mermaid(text)
    label_to_id = {label: node_id for node_id, label in nodes.items()}
    assert set(label_to_id) == {name for name, _ in steps}
    assert len(nodes) == len(steps)
    assert found == {(label_to_id[p], label_to_id[c]) for p, c in edges(steps)}
    assert classes == {}


@given(dags(), st.data())
def test_mermaid_with_states_gives_each_step_a_class(steps: Steps, data: st.DataObject) -> None:
    names = [n for n, _ in steps]
    states = data.draw(
        st.dictionaries(st.sampled_from(names), st.sampled_from(sorted(STATE_STYLES)), min_size=1)
    )
    text = mermaid(steps, states)
    nodes, found, classes, defs = parse_mermaid(text)
    by_name = {label.split("<br/>")[0]: node_id for node_id, label in nodes.items()}
    assert set(by_name) == set(names)
    assert found == {(by_name[p], by_name[c]) for p, c in edges(steps)}
    for name in names:
        state = states.get(name, "pending")
        assert nodes[by_name[name]] == f"{name}<br/>{state}"
        assert classes[by_name[name]] == state
    assert defs == set(classes.values())
    for state in defs:
        assert f"classDef {state} {STATE_STYLES[state]}" in text


def test_mermaid_example() -> None:
    text = mermaid([("a", []), ("b", ["a"])], {"a": "complete"})
    assert (
        text == "graph TD\n"
        '    s0["a<br/>complete"]\n'
        '    s1["b<br/>pending"]\n'
        "    s0 --> s1\n"
        f"    classDef complete {STATE_STYLES['complete']}\n"
        f"    classDef pending {STATE_STYLES['pending']}\n"
        "    class s0 complete\n"
        "    class s1 pending\n"
    )


# -- depth: the graph code is iterative ------------------------------------------------------------
def _reference_order(steps: Steps) -> list[str]:
    """The specification of `execution_order`: repeatedly take the first declared step that is
    free."""
    placed: list[str] = []
    remaining = [name for name, _ in steps]
    parents = {name: set(ps) for name, ps in steps}
    while remaining:
        name = next(n for n in remaining if parents[n] <= set(placed))
        placed.append(name)
        remaining.remove(name)
    return placed


@given(dags())
def test_execution_order_takes_the_earliest_declared_free_step(steps: Steps) -> None:
    assert execution_order(steps) == _reference_order(steps)


def _chain(n: int) -> Steps:
    """step_0 <- step_1 <- ... declared child-first, the worst case for a recursive walk."""
    return [(f"step_{i}", [f"step_{i - 1}"] if i else []) for i in reversed(range(n))]


def test_a_chain_of_5000_steps_declared_child_first_is_checked_and_ordered() -> None:
    steps = _chain(5000)
    check_graph(steps)
    assert execution_order(steps) == [f"step_{i}" for i in range(5000)]
    levels = execution_levels(steps)
    assert len(levels) == 5000 and levels[-1] == ["step_4999"]


def test_a_cycle_closing_a_5000_step_chain_is_found_without_recursion() -> None:
    steps = _chain(5000)
    steps[-1] = ("step_0", ["step_4999"])  # the root now waits for the last step
    cycle = find_cycle(dict(steps))
    assert cycle is not None and len(cycle) == 5001
    assert_closed_path(cycle, steps)
    with pytest.raises(GraphError, match="dependency cycle"):
        check_graph(steps)
    with pytest.raises(GraphError):
        execution_order(steps)
