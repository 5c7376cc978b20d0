"""Wide templates (more than `WIDE_TEMPLATE_STEPS` steps), on both stores: a claim reads only the
steps related to the one it claims, and still every handler sees the results of all of its
ancestors, however the claims fall between workers and cycles, with skip cascades decided in one
go."""

from __future__ import annotations

from typing import Any

from tasker import Tasker
from tasker.domain.states import StepState
from tasker.domain.templates import WIDE_TEMPLATE_STEPS
from tasker.store.claims import Claim, read_steps
from tests.fixture_types import LoadTemplate, MakeTasker, WriteTemplate
from tests.integration import handlers as h
from tests.integration.support import step, step_history, template_yaml, work_in_threads

BRANCHES = 36


def _wide(when: str | None = None) -> list[dict[str, Any]]:
    """A root, `BRANCHES` branches of two steps (the odd ones behind `when`, if given), a step
    that crosses two branches, and a join of every branch's end: more than a wide template's
    threshold."""
    steps = [step("root")]
    for i in range(BRANCHES):
        extra = {"when": when} if when and i % 2 else {}
        steps.append(step(f"a{i}", after="root", **extra))
        steps.append(step(f"b{i}", after=f"a{i}"))
    steps.append(step("cross", after=["a0", "b1"], join="any"))
    steps.append(step("end", after=[f"b{i}" for i in range(BRANCHES)], join="any"))
    assert len(steps) > WIDE_TEMPLATE_STEPS
    return steps


def _ancestors(steps: list[dict[str, Any]]) -> dict[str, set[str]]:
    parents = {
        s["name"]: (
            [s["depends_on_step"]] if "depends_on_step" in s else s.get("depends_on_steps", [])
        )
        for s in steps
    }
    out: dict[str, set[str]] = {}
    for name in parents:
        seen: set[str] = set()
        todo = list(parents[name])
        while todo:
            p = todo.pop()
            if p not in seen:
                seen.add(p)
                todo += parents[p]
        out[name] = seen
    return out


def test_every_handler_of_a_wide_template_sees_all_its_ancestors_results(
    make_tasker: MakeTasker, write_template: WriteTemplate, key: str
) -> None:
    steps = _wide()
    producer = make_tasker()
    producer.load_templates(write_template(template_yaml("wide", steps)))
    ids = [producer.create_task("itest/wide", {"key": key, "n": i}).id for i in range(4)]
    work_in_threads([make_tasker(), make_tasker()], concurrency=6, timeout=120)

    ancestors = _ancestors(steps)
    tasks = producer.get_tasks(ids)
    assert all(t.status == "complete" for t in tasks), [
        (t.id, t.status, [(s.name, str(s.status)) for s in t.steps if s.status != "complete"])
        for t in tasks
    ]
    attempts = h.calls(key, kind="attempt")
    assert len({c["idem"] for c in attempts}) == len(ids) * len(steps), "a step never ran"
    for call in attempts:  # every ancestor's, and maybe others' that had completed by then
        missing = ancestors[call["step"]] - set(call["results"])
        assert not missing, (call["step"], call["attempt"], sorted(missing))


def test_a_skip_cascade_in_a_wide_template_skips_whole_branches_at_once(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    steps = _wide(when="context.odd")
    ref = load("wide_skips", steps)
    task = tasker.run(tasker.create_task(ref, {"key": key, "odd": False}).id)

    assert task.status == "complete"
    states = {s.name: str(s.status) for s in task.steps}
    odd = [i for i in range(BRANCHES) if i % 2]
    assert all(states[f"a{i}"] == states[f"b{i}"] == "skipped" for i in odd)
    assert states["cross"] == states["end"] == "complete"
    # the branch's second step was skipped by its first, in the root's completion
    b1 = task.step("b1")
    assert b1.decision == "parent 'a1' skipped (join: all)"
    (root_done,) = [r for r in step_history(tasker, task.id, "root") if r["to_state"] == "complete"]
    (b1_skipped,) = [r for r in step_history(tasker, task.id, "b1") if r["to_state"] == "skipped"]
    assert b1_skipped["at"] == root_done["at"], "the cascade is not in the root's transaction"
    ran = {c["step"] for c in h.calls(key, kind="attempt")}
    assert ran == {n for n, s in states.items() if s == "complete"}
    (end,) = h.calls(key, "end")
    completed = {n for n, s in states.items() if s == "complete"}
    assert completed - {"end", "cross"} <= set(end["results"]) <= completed - {"end"}


def test_a_claim_reads_a_wide_tasks_steps_by_name_on_both_stores(
    tasker: Tasker, load: LoadTemplate, key: str
) -> None:
    ref = load("wide_reads", _wide())
    task = tasker.create_task(ref, {"key": key})
    ids = {s.name: s.id for s in task.steps}
    claim = Claim(ids["b3"], task.id, "b3", 1, 3, 1, "k", "default", StepState.READY)
    wanted = frozenset({"root", "a3"})
    with tasker.db.read() as conn:
        narrow = read_steps(conn, [claim], {task.id: 1}, lambda _t, _s: wanted)
        whole = read_steps(conn, [claim], {task.id: 1}, lambda _t, _s: None)
    assert sorted(r[2] for r in narrow) == ["a3", "root"]
    assert [r[1] for r in sorted(narrow, key=lambda r: r[2])] == [ids["a3"], ids["root"]]
    assert len(whole) == len(task.steps)
