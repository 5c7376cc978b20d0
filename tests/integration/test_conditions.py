"""Conditions (`when:`), joins (`join: any`) and skip propagation, on both stores: branch
selection, skips that follow a skipped parent, joins, conditions decided at creation, conditions
that fail, operator actions on them, several workers, and random DAGs run by the real engine."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasker import Tasker
from tasker.domain.errors import OperationError, TemplateError
from tests.fixture_types import LoadTemplate, MakeTasker, WriteTemplate
from tests.integration import handlers as h
from tests.integration.support import step, step_history, template_yaml, to_states, work_in_threads

REFUND = [
    step("check", handler_config={"value": 0}),
    step("review", after="check", when="context.amount > 100"),
    step("auto_approve", after="check", when="context.amount <= 100"),
    step("pay", after=["review", "auto_approve"], join="any"),
    step("audit", after="review"),
    step("notify", after="pay"),
]


def _states(task: Any) -> dict[str, str]:
    return {s.name: str(s.status) for s in task.steps}


def _ran(key: str) -> list[str]:
    return sorted({c["step"] for c in h.calls(key, kind="attempt")})


@pytest.mark.parametrize(
    ("amount", "taken", "passed_over"),
    [(50, "auto_approve", ["review", "audit"]), (500, "review", ["auto_approve"])],
)
def test_a_decision_point_runs_one_branch_and_the_join_after_it(
    tasker: Tasker, load: LoadTemplate, key: str, amount: int, taken: str, passed_over: list[str]
) -> None:
    ref = load("refund", REFUND)
    task = tasker.run(tasker.create_task(ref, {"key": key, "amount": amount}).id)

    assert task.status == "complete"
    states = _states(task)
    assert all(states[n] == "skipped" for n in passed_over)
    assert states[taken] == states["pay"] == states["notify"] == "complete"
    assert _ran(key) == sorted(set(states) - set(passed_over))
    # The join saw the branch that ran and not the one that was skipped.
    (pay,) = h.calls(key, "pay")
    assert taken in pay["results"] and not set(passed_over) & set(pay["results"])
    # Each decision is on the step and in its transition.
    other = "review" if taken == "auto_approve" else "auto_approve"
    skipped = task.step(other)
    assert skipped.decision is not None and skipped.decision.endswith("was false")
    assert skipped.attempts == 0 and skipped.results is None
    rows = step_history(tasker, task.id, other)
    assert to_states(rows) == ["pending", "skipped"]
    assert rows[-1]["reason"] == skipped.decision
    ran = step_history(tasker, task.id, taken)
    assert to_states(ran)[:2] == ["pending", "ready"]
    assert ran[1]["reason"] is not None and ran[1]["reason"].endswith("was true")
    if taken == "auto_approve":
        assert task.step("audit").decision == "parent 'review' skipped (join: all)"


def test_skips_propagate_down_a_chain_and_the_task_completes(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "chain",
        [
            step("a"),
            step("b", after="a", when="results.a.value == 'never'"),
            step("c", after="b"),
            step("d", after="c"),
            step("e", after="a"),
        ],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "complete"
    assert _states(task) == {
        "a": "complete",
        "b": "skipped",
        "c": "skipped",
        "d": "skipped",
        "e": "complete",
    }
    assert task.step("d").decision == "parent 'c' skipped (join: all)"
    assert _ran(key) == ["a", "e"]
    events = [r["to_state"] for r in tasker.history.task_transitions(task.id)]
    assert events == ["pending", "in_progress", "complete"]


def test_join_any_is_skipped_when_no_parent_completed(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "nobody",
        [
            step("a"),
            step("b", after="a", when="context.go"),
            step("c", after="a", when="context.go"),
            step("join", after=["b", "c"], join="any"),
        ],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key, "go": False}).id)
    assert task.status == "complete"
    assert task.step("join").status == "skipped"
    assert task.step("join").decision == "no parent completed (join: any)"


def test_a_condition_reads_a_skipped_ancestor_with_has(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "has",
        [
            step("a"),
            step("b", after="a", when="context.review"),
            step("c", after="a"),
            step(
                "only_without_review",
                after=["b", "c"],
                join="any",
                when="!has(results.b) && results.c.value == 'c'",
            ),
        ],
    )
    without = tasker.run(tasker.create_task(ref, {"key": key, "review": False}).id)
    with_review = tasker.run(tasker.create_task(ref, {"key": key, "review": True}).id)
    assert without.step("only_without_review").status == "complete"
    assert with_review.step("only_without_review").status == "skipped"


def test_a_condition_without_parents_is_decided_when_the_task_is_created(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "root",
        [
            step("eu_only", when="context.region == 'eu'"),
            step("after_eu", after="eu_only"),
            step("always"),
        ],
    )
    us = tasker.create_task(ref, {"key": key, "region": "us"})
    assert _states(us) == {"eu_only": "skipped", "after_eu": "skipped", "always": "ready"}
    eu = tasker.create_task(ref, {"key": key, "region": "eu"})
    assert _states(eu) == {"eu_only": "ready", "after_eu": "pending", "always": "ready"}
    assert tasker.run(us.id).status == "complete"
    assert _states(tasker.run(eu.id)) == dict.fromkeys(
        ("eu_only", "after_eu", "always"), "complete"
    )


def test_a_task_whose_every_step_is_skipped_is_complete_at_once(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("none", [step("a", when="context.run"), step("b", after="a")])
    task = tasker.create_task(ref, {"key": key, "run": False})
    assert task.status == "complete"
    assert task.finished_at is not None
    assert _states(task) == {"a": "skipped", "b": "skipped"}
    assert [r["to_state"] for r in tasker.history.task_transitions(task.id)] == [
        "pending",
        "complete",
    ]


def test_a_condition_that_fails_fails_its_step_for_good_and_the_rest_finishes(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "broken",
        [
            step("a"),
            step("b", after="a", when="results.a.missing > 3"),
            step("c", after="b"),
            step("d", after="a"),
        ],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "error"
    b = task.step("b")
    assert b.status == "error" and b.attempts == 0
    assert b.last_error is not None and b.last_error["class"] == "ConditionError"
    assert b.last_error["message"] == "when `results.a.missing > 3` failed: no such key 'missing'"
    assert task.step("c").status == "pending"
    assert task.step("d").status == "complete"
    assert "b" not in _ran(key)
    assert to_states(step_history(tasker, task.id, "b")) == ["pending", "error"]

    # A retry would decide the same: refused, saying what to do instead.
    with pytest.raises(OperationError, match=r"failed deciding a condition.*resolve the step"):
        tasker.retry_step(task.id, "b")
    with pytest.raises(OperationError, match="failed deciding a condition"):
        tasker.retry_task(task.id)
    # Resolving it by hand lets the task go on.
    tasker.resolve_step(task.id, "b", {"by": "hand"})
    done = tasker.run(task.id)
    assert done.status == "resolved_manually"
    assert done.step("c").status == "complete"


def test_a_condition_that_is_no_boolean_fails_its_step(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("number", [step("a"), step("b", after="a", when="context.amount")])
    task = tasker.run(tasker.create_task(ref, {"key": key, "amount": 5}).id)
    assert task.step("b").status == "error"
    error = task.step("b").last_error
    assert error is not None
    assert error["message"] == "when `context.amount` must be true or false, got int 5"


def test_retrying_a_task_leaves_a_failed_condition_and_re_arms_the_rest(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "mixed",
        [
            step("a"),
            step("b", after="a", when="context.nope.x"),
            step("flaky", "Toggle", after="a"),
        ],
    )
    h.set_fault(key, "flaky")
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert _states(task) == {"a": "complete", "b": "error", "flaky": "error"}
    h.set_fault(key, "flaky", on=False)
    tasker.retry_task(task.id)
    again = tasker.run(task.id)
    assert _states(again) == {"a": "complete", "b": "error", "flaky": "complete"}
    assert again.status == "error"


def test_a_resolved_parent_counts_as_completed_for_a_join_and_a_condition(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load(
        "resolved",
        [
            step("a", handler_config={"fail": ["permanent"]}),
            step("b", after="a", join="any", when="results.a.ok == true"),
        ],
    )
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.step("a").status == "error"
    tasker.resolve_step(task.id, "a", {"ok": True})
    done = tasker.run(task.id)
    assert done.step("b").status == "complete"
    assert done.step("b").decision == "when `results.a.ok == true` was true"


def test_cancelling_a_task_cancels_its_undecided_steps(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("cancel", [step("a"), step("b", after="a", when="true")])
    task = tasker.create_task(ref, {"key": key})
    cancelled = tasker.cancel_task(task.id)
    assert _states(cancelled) == {"a": "cancelled", "b": "cancelled"}


def test_two_workers_decide_each_join_exactly_once(
    make_tasker: MakeTasker, write_template: WriteTemplate, key: str
) -> None:
    path = write_template(
        template_yaml(
            "fanin",
            [
                step("start", "Effect"),
                step("left", "Effect", after="start", when="context.n % 2 == 0"),
                step("right", "Effect", after="start"),
                step("middle", "Effect", after="start", when="context.n % 3 == 0"),
                step("join", "Effect", after=["left", "right", "middle"], join="any"),
                step("tail", "Effect", after="join", when="has(results.left)"),
            ],
        )
    )
    producer = make_tasker()
    producer.load_templates(path)
    ids = [producer.create_task("itest/fanin", {"key": key, "n": i}).id for i in range(30)]
    work_in_threads([make_tasker(), make_tasker()], concurrency=4, timeout=90)
    calls = Counter(c["idem"] for c in h.calls(key, kind="call"))
    assert set(calls.values()) == {1}, "a step ran more than once"
    for task in producer.get_tasks(ids):
        assert task.status == "complete", task.id
        states = _states(task)
        i = ids.index(task.id)
        assert states["left"] == ("complete" if i % 2 == 0 else "skipped")
        assert states["middle"] == ("complete" if i % 3 == 0 else "skipped")
        assert states["join"] == "complete"
        assert states["tail"] == states["left"]
        join_rows = step_history(producer, task.id, "join")
        assert to_states(join_rows).count("ready") == 1


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("results.a.amount >* 3", "when: Syntax error: extraneous input '*' at line 1, column 19"),
        ("results.zz.x == 1", "when: results.zz at line 1, column 1 is not a step of 'b'"),
        ("results.b.x == 1", "is not an ancestor of 'b'; fix: read the results of its ancestors"),
        ("ctx.amount > 1", "unknown name 'ctx'"),
    ],
)
def test_a_bad_condition_is_refused_when_the_template_loads(
    tasker: Tasker, write_template: WriteTemplate, when: str, message: str
) -> None:
    path = write_template(template_yaml("bad", [step("a"), step("b", after="a", when=when)]))
    with pytest.raises(TemplateError) as caught:
        tasker.load_templates(path)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: step 'b': ") and message in text


# -- random DAGs through the real engine --------------------------------------------------------
@st.composite
def _dag(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(2, 7))
    steps: list[dict[str, Any]] = []
    for i in range(n):
        parents: list[int] = sorted(draw(st.sets(st.integers(0, i - 1), max_size=2))) if i else []
        extra: dict[str, Any] = {}
        join_any: bool = draw(st.booleans())
        if parents and join_any:
            extra["join"] = "any"
        if draw(st.integers(0, 2)) == 0:
            extra["when"] = f"context.go[{i}]"
        steps.append(step(f"s{i}", after=[f"s{p}" for p in parents] or None, **extra))
    return steps


def _expected(steps: list[dict[str, Any]], go: list[bool]) -> dict[str, str]:
    ran: dict[str, bool] = {}
    for i, s in enumerate(steps):
        parents = s.get("depends_on_steps", [])
        joined = [ran[p] for p in parents]
        ok = any(joined) if s.get("join") == "any" else all(joined)
        ran[s["name"]] = ok and (go[i] if "when" in s else True)
    return {n: "complete" if r else "skipped" for n, r in ran.items()}


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=_dag(), go=st.lists(st.booleans(), min_size=7, max_size=7))
def test_over_random_dags_the_engine_runs_a_step_iff_its_rule_says_so(
    tasker: Tasker, write_template: WriteTemplate, key: str, steps: list[dict[str, Any]], go: Any
) -> None:
    name = f"dag{abs(hash(str(steps))) % 10**8}"
    tasker.load_templates(write_template(template_yaml(name, steps), f"{name}.yaml"))
    run_key = f"{key}-{uuid.uuid4().hex[:8]}"  # hypothesis may replay an example: its own calls
    task = tasker.run(tasker.create_task(f"itest/{name}", {"key": run_key, "go": go}).id)
    assert task.status == "complete"
    expected = _expected(steps, go)
    assert _states(task) == expected
    ran = Counter(c["step"] for c in h.calls(run_key, kind="attempt"))
    assert set(ran) == {n for n, s in expected.items() if s == "complete"}
    assert set(ran.values()) <= {1}
