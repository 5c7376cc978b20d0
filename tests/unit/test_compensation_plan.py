"""The compensation plan as pure policy: which completed steps are undone, what each undo waits
for, and the newest-first order, with properties over random DAGs."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasker.domain.compensation import newest_first, plan_compensation
from tasker.domain.states import StepState

S = StepState
T0 = datetime(2026, 12, 6, 12, 0, 0)
#: A random task: each step's parents, each step's state, the steps with a compensation, and when
#: each finished.
Task = tuple[dict[str, list[str]], dict[str, StepState], set[str], dict[str, datetime]]


def test_a_diamond_is_undone_bottom_up_and_its_branches_in_parallel() -> None:
    parents = {"pay": [], "reserve": ["pay"], "ship": ["pay"], "notify": ["reserve", "ship"]}
    states = dict.fromkeys(parents, S.COMPLETE)
    plan = plan_compensation(parents, states, {"pay", "reserve", "ship", "notify"})
    assert plan.waits_for == {
        "pay": ("reserve", "ship"),
        "reserve": ("notify",),
        "ship": ("notify",),
        "notify": (),
    }
    assert plan.first == ("notify",)
    assert plan.steps[0] == "notify" and plan.steps[-1] == "pay"


def test_only_completed_steps_with_a_compensation_are_undone_and_others_are_passed_over() -> None:
    parents = {"charge": [], "log": ["charge"], "reserve": ["log"], "ship": ["reserve"]}
    states = {
        "charge": S.COMPLETE,
        "log": S.COMPLETE,  # no compensation: passed over, its descendants still ordered
        "reserve": S.COMPLETE,
        "ship": S.ERROR,  # failed: nothing of its own to undo
    }
    plan = plan_compensation(parents, states, {"charge", "reserve", "ship"})
    assert plan.steps == ("reserve", "charge")
    assert plan.waits_for == {"reserve": (), "charge": ("reserve",)}


def test_skipped_cancelled_and_manually_resolved_steps_are_not_undone() -> None:
    parents: dict[str, list[str]] = {"a": [], "b": [], "c": [], "d": []}
    states = {"a": S.SKIPPED, "b": S.CANCELLED, "c": S.RESOLVED_MANUALLY, "d": S.COMPLETE}
    assert plan_compensation(parents, states, set(parents)).steps == ("d",)


def test_a_fan_outs_instances_are_undone_before_what_they_were_built_on() -> None:
    parents = {
        "list": [],
        "each[0]": ["list"],
        "each[1]": ["list"],
        "each": ["each[0]", "each[1]"],
        "report": ["each"],
    }
    states = dict.fromkeys(parents, S.COMPLETE)
    plan = plan_compensation(parents, states, {"list", "each[0]", "each[1]", "report"})
    assert plan.waits_for["list"] == ("each[0]", "each[1]")
    assert plan.waits_for["each[0]"] == ("report",) == plan.waits_for["each[1]"]


def test_among_undos_free_to_go_the_newest_goes_first() -> None:
    waits = {"a": (), "b": (), "c": ("a",)}
    done = {"a": T0, "b": T0 + timedelta(seconds=1), "c": T0 - timedelta(seconds=5)}
    assert newest_first(waits, done) == ("b", "a", "c")
    with pytest.raises(ValueError, match="cycle"):
        newest_first({"a": ("b",), "b": ("a",)}, {})


# -- properties over random DAGs ------------------------------------------------------------------
@st.composite
def _tasks(draw: st.DrawFn) -> Task:
    n = draw(st.integers(1, 10))
    parents: dict[str, list[str]] = {}
    for i in range(n):
        earlier = [f"s{j}" for j in range(i)]
        parents[f"s{i}"] = sorted(draw(st.sets(st.sampled_from(earlier), max_size=3))) if i else []
    states = {
        s: draw(st.sampled_from([S.COMPLETE, S.COMPLETE, S.ERROR, S.SKIPPED, S.CANCELLED]))
        for s in parents
    }
    declares = draw(st.sets(st.sampled_from(sorted(parents))))
    done = {s: T0 + timedelta(seconds=draw(st.integers(0, 50))) for s in parents}
    return parents, states, declares, done


def _descendants(parents: dict[str, list[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {s: set() for s in parents}
    for s in reversed(list(parents)):  # children come later in the topological order
        for p in parents[s]:
            out[p] |= {s} | out[s]
    return out


@settings(max_examples=300, deadline=None)
@given(_tasks())
def test_every_undo_waits_for_exactly_the_undos_of_its_descendants(
    task: Task,
) -> None:
    parents, states, declares, done = task
    plan = plan_compensation(parents, states, declares, done)
    undone = {s for s in parents if s in declares and states[s] == S.COMPLETE}
    assert set(plan.steps) == undone and len(plan.steps) == len(undone)

    below = _descendants(parents)
    # what each undo waits for, directly or through others
    waits: dict[str, set[str]] = {}
    for s in plan.steps:  # plan.steps is a valid order: everything waited for comes earlier
        direct = set(plan.waits_for[s])
        assert all(plan.steps.index(w) < plan.steps.index(s) for w in direct)
        waits[s] = direct.union(*(waits[w] for w in direct))
    for s in undone:
        assert waits[s] == undone & below[s], s  # all of its undone descendants, and no more
        for w in plan.waits_for[s]:  # no wait that another already implies
            others = set(plan.waits_for[s]) - {w}
            assert not any(w in waits[o] for o in others), (s, w)
    # newest first: at each point the chosen undo finished last among those free to go
    taken: set[str] = set()
    for s in plan.steps:
        free = [x for x in plan.steps if x not in taken and set(plan.waits_for[x]) <= taken]
        assert (done[s], s) == max((done[x], x) for x in free)
        taken.add(s)
