"""Fill a store with many tasks fast: one set-based INSERT ... SELECT per table, on SQLite and
PostgreSQL.

`Tasker.create_tasks` writes a task, its steps, their transitions and two events per task, which
takes 30 s to over a minute for 100,000 tasks on a busy 2-core machine; the tasks list only needs
the rows of `tasker_tasks` and `tasker_steps`. The rows written here are what `insert_tasks` writes
for a new task of a template whose steps have no parents (pending task, ready steps), with keys
`<prefix>-<n>`; only the journal (transitions and events) is left out. It is real data in the real
store: no mock.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Integer, String, cast, literal, select
from sqlalchemy.sql import Select

from tasker import Tasker
from tasker.store.schema import steps, tasks
from tasker.store.tasks import template_id


def _numbers(count: int) -> Select[tuple[int]]:
    """SELECT n FROM 1..count, as a recursive CTE both SQLite and PostgreSQL run."""
    seed = select(literal(1, Integer).label("n")).cte("numbers", recursive=True)
    numbers = seed.union_all(select(seed.c.n + 1).where(seed.c.n < count))
    return select(numbers.c.n)


def bulk_tasks(engine: Tasker, template: str, count: int, prefix: str = "bulk") -> list[int]:
    """Insert `count` pending tasks of `template` (steps without parents only); returns their ids,
    oldest first."""
    tmpl = engine.registry.get(template)
    assert all(not st.parents for st in tmpl.step_templates), "bulk_tasks writes no step edges"
    now = datetime.now(UTC)
    numbers = _numbers(count).subquery()
    key = literal(f"{prefix}-", String) + cast(numbers.c.n, String)
    with engine.db.write() as conn:
        tid = template_id(conn, tmpl, now)
        conn.execute(
            tasks.insert().from_select(
                [
                    "namespace",
                    "name",
                    "version",
                    "template_id",
                    "status",
                    "context",
                    "idempotency_key",
                    "correlation_id",
                    "created_at",
                    "updated_at",
                ],
                select(
                    literal(tmpl.namespace_name, String),
                    literal(tmpl.name, String),
                    literal(tmpl.version, String),
                    literal(tid, Integer),
                    literal("pending", String),
                    literal({"bulk": True}, tasks.c.context.type),
                    key,
                    key,
                    literal(now, tasks.c.created_at.type),
                    literal(now, tasks.c.updated_at.type),
                )
                .select_from(numbers)
                .order_by(numbers.c.n),
            )
        )
        mine = (
            (tasks.c.namespace == tmpl.namespace_name)
            & (tasks.c.name == tmpl.name)
            & tasks.c.idempotency_key.like(f"{prefix}-%")
        )
        for position, st in enumerate(tmpl.step_templates):
            policy = tmpl.retry_policy(st)
            conn.execute(
                steps.insert().from_select(
                    [
                        "task_id",
                        "name",
                        "position",
                        "namespace",
                        "dependent_system",
                        "state",
                        "pending_parents",
                        "run_at",
                        "attempts",
                        "retry_limit",
                        "retryable",
                        "claim_token",
                        "idempotency_key",
                        "created_at",
                        "updated_at",
                    ],
                    select(
                        tasks.c.id,
                        literal(st.name, String),
                        literal(position, Integer),
                        literal(tmpl.namespace_name, String),
                        literal(tmpl.dependent_system_of(st), String),
                        literal("ready", String),
                        literal(0, Integer),
                        literal(now, steps.c.run_at.type),
                        literal(0, Integer),
                        literal(policy.max_attempts, Integer),
                        literal(policy.retryable, steps.c.retryable.type),
                        literal(0, Integer),
                        literal(f"{prefix}-{position}-", String) + cast(tasks.c.id, String),
                        literal(now, steps.c.created_at.type),
                        literal(now, steps.c.updated_at.type),
                    ).where(mine),
                )
            )
        ids = [int(r[0]) for r in conn.execute(select(tasks.c.id).where(mine).order_by(tasks.c.id))]
    assert len(ids) == count, f"inserted {len(ids)} tasks, not {count}"
    return ids
