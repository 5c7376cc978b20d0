"""The rows a task leaves in the store are the same however they were written (issue 13, point 7).

Performance work rewrites how rows are written (one statement for a whole creation on PostgreSQL,
fused flushes), never what is written. This test runs a small workflow that covers creation,
fan-out, fan-in, a retry and a permanent failure, normalizes every row the tasks left (ids become
names, times and random keys are dropped) and compares them with `stored_rows.json`, which was
written by the engine before that work began (commit 9e8fd5a). Both stores must match it.

Regenerate only when a change of what is stored is intended, and say so in the commit:

    python -m tests.integration.test_stored_rows > tests/integration/stored_rows.json
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tasker import Tasker
from tests.integration.support import step, template_yaml

GOLDEN = Path(__file__).with_name("stored_rows.json")
H = "tests.integration.handlers"


def _template(directory: Path) -> Path:
    steps = [
        step("fetch", handler_config={"fail": ["retryable"]}, default_retry_limit=3),
        step("left", after="fetch"),
        step("right", after="fetch", handler_config={"value": 7}),
        step("join", after=["left", "right"]),
    ]
    path = directory / "rows.yaml"
    path.write_text(template_yaml("rows", steps))
    failing = [step("only", handler_config={"always_fail": "retryable"}, default_retry_limit=2)]
    (directory / "failing.yaml").write_text(template_yaml("rows_failing", failing))
    return directory


def _normalized(url: str, task_ids: list[int]) -> list[dict[str, Any]]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    out = []
    with engine.connect() as conn:
        for task_id in task_ids:
            task = conn.execute(
                sa.text(
                    "SELECT namespace, name, version, status, context, annotations"
                    " FROM tasker_tasks WHERE id = :id"
                ),
                {"id": task_id},
            ).one()
            steps = conn.execute(
                sa.text(
                    "SELECT id, name, position, namespace, dependent_system, state,"
                    " pending_parents, attempts, retry_limit, retryable, claim_token, results,"
                    " last_error FROM tasker_steps WHERE task_id = :id ORDER BY position"
                ),
                {"id": task_id},
            ).all()
            name_of = {s.id: s.name for s in steps}
            edges = conn.execute(
                sa.text("SELECT parent_id, child_id FROM tasker_step_edges WHERE task_id = :id"),
                {"id": task_id},
            ).all()
            step_moves = conn.execute(
                sa.text(
                    "SELECT step_id, from_state, to_state, attempt, error_class"
                    " FROM tasker_step_transitions WHERE task_id = :id ORDER BY id"
                ),
                {"id": task_id},
            ).all()
            task_moves = conn.execute(
                sa.text(
                    "SELECT from_state, to_state FROM tasker_task_transitions"
                    " WHERE task_id = :id ORDER BY id"
                ),
                {"id": task_id},
            ).all()

            def js(value: Any) -> Any:
                return json.loads(value) if isinstance(value, str) else value

            def error_class(value: Any) -> Any:
                error = js(value)
                return None if error is None else error.get("class")

            out.append(
                {
                    "task": {
                        "namespace": task.namespace,
                        "name": task.name,
                        "version": task.version,
                        "status": task.status,
                        "context": js(task.context),
                        "annotations": js(task.annotations),
                    },
                    "steps": [
                        {
                            "name": s.name,
                            "position": s.position,
                            "namespace": s.namespace,
                            "dependent_system": s.dependent_system,
                            "state": s.state,
                            "pending_parents": s.pending_parents,
                            "attempts": s.attempts,
                            "retry_limit": s.retry_limit,
                            "retryable": bool(s.retryable),
                            "claim_token": s.claim_token,
                            "results": _without_timing(js(s.results)),
                            "error_class": error_class(s.last_error),
                        }
                        for s in steps
                    ],
                    "edges": sorted([name_of[e.parent_id], name_of[e.child_id]] for e in edges),
                    # Per step, its moves are a sequence; across steps, only the set is defined.
                    "step_transitions": {
                        name: [
                            [m.from_state, m.to_state, m.attempt, m.error_class]
                            for m in step_moves
                            if name_of[m.step_id] == name
                        ]
                        for name in sorted(name_of.values())
                    },
                    "task_transitions": [[m.from_state, m.to_state] for m in task_moves],
                }
            )
    engine.dispose()
    return out


def _without_timing(results: Any) -> Any:
    """Step results name the attempt and echo the config; drop the handler's clock readings."""
    if not isinstance(results, dict):
        return results
    return {k: v for k, v in results.items() if k not in ("start", "end", "thread")}


def stored_rows(url: str, directory: Path) -> list[dict[str, Any]]:
    """Run the workflow on a fresh store at `url`; the normalized rows of its tasks."""
    engine = Tasker(url, templates=_template(directory), backoff_scale=0.0, poll_interval=0.05)
    try:
        ids = [
            engine.create_task("itest/rows", {"key": f"rows-{i}"}).id for i in range(3)
        ]  # the first creations store the template snapshot, the later ones take the fast path
        ids += engine.create_tasks("itest/rows", [{"key": f"rows-batch-{i}"} for i in range(2)])
        ids.append(engine.create_task("itest/rows_failing", {"key": "rows-failing"}).id)
        for task_id in ids:
            engine.run(task_id)
    finally:
        engine.close()
    return _normalized(url, ids)


def test_stored_rows_match_those_of_the_engine_before_the_performance_work(
    store_url: str, tmp_path: Path
) -> None:
    expected = json.loads(GOLDEN.read_text())
    assert stored_rows(store_url, tmp_path) == expected


if __name__ == "__main__":  # regenerate the golden file (see the module's docstring)
    with tempfile.TemporaryDirectory() as d:
        rows = stored_rows(f"sqlite:///{d}/rows.db", Path(d))
    json.dump(rows, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


def test_the_driver_read_of_a_task_is_the_records_sqlalchemy_builds(
    store_url: str, tmp_path: Path
) -> None:
    """`read_task` reads on the driver (fixed statements on SQLite, one prepared statement on
    PostgreSQL); the `Task` it builds must equal `get_task`'s (through SQLAlchemy's types) for
    tasks in every kind of state, and a missing task is None."""
    from tasker.store import tasks as task_store

    engine = Tasker(store_url, templates=_template(tmp_path), backoff_scale=0.0, poll_interval=0.05)
    try:
        done = engine.create_task("itest/rows", {"key": "done", "nested": {"a": [1, None]}}).id
        failing = engine.create_task("itest/rows_failing", {"key": "failing"}).id
        waiting = engine.create_task("itest/rows", {"key": "waiting"}).id
        for task_id in (done, failing):
            engine.run(task_id)
        task_store.annotate(engine.db, done, {"note": "é", "n": 1.5})
        for task_id in (done, failing, waiting, 999_999):
            with engine.db.read() as conn:
                expected = task_store.get_task(conn, task_id)
            assert task_store.read_task(engine.db, task_id) == expected
        read = task_store.read_task(engine.db, failing)
        assert read is not None and read.steps[0].last_error is not None
    finally:
        engine.close()
