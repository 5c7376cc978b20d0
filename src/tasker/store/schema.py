"""The database schema, one definition for SQLite and PostgreSQL.

The steps table is both the state and the queue: a partial index over claimable rows keeps finding
work an indexed lookup however many finished steps the table holds, and `pending_parents` makes
readiness incremental instead of a scan of the task's graph.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

from tasker.domain.circuits import CircuitState
from tasker.domain.states import StepState


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps are stored in UTC and always read back timezone-aware, whatever the dialect."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        if dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Json: Any = JSON().with_variant(JSONB(), "postgresql")
Id: Any = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _state_in(*states: StepState) -> str:
    """A partial index's condition on the steps' state (the text the migrations created)."""
    return f"state IN ({', '.join(repr(s.value) for s in states)})"


#: `CLAIMABLE_STEP_STATES`, in the order of the index the migrations made.
CLAIMABLE = _state_in(StepState.READY, StepState.WAITING_RETRY)
#: `REPORTED_STEP_STATES`: queued, running or stuck in error (the systems report, the overview).
ACTIVE = _state_in(StepState.READY, StepState.WAITING_RETRY, StepState.IN_PROGRESS, StepState.ERROR)
RUNNING = f"state = '{StepState.IN_PROGRESS.value}'"
#: The partial index of attempt outcomes on step transitions (the overview's reads repeat it).
#: Unfinished tasks with a deadline (the deadline sweep's partial index).
DEADLINED = "deadline_at IS NOT NULL AND status IN ('pending', 'in_progress')"
#: Claimable steps with a priority: the second claim index holds only these, so a store where no
#: task has a priority pays nothing for priorities (migration 0017).
PRIORITIZED = f"{CLAIMABLE} AND priority > 0"
#: A prioritized step's place in the claim order: its `run_at` moved earlier by one minute per
#: priority level (`tasker.domain.priorities.claim_key`), as each dialect's index computes it.
PRIORITY_KEY = {
    "postgresql": "(run_at AT TIME ZONE 'UTC') - priority * interval '1 minute'",
    "sqlite": "julianday(run_at) - priority / 1440.0",
}
#: Running steps of tasks with a fair-share key: the in-flight count per key reads only these.
KEYED_RUNNING = f"{RUNNING} AND concurrency_key IS NOT NULL"
OUTCOMES = (
    f"to_state IN ('{StepState.COMPLETE.value}', '{StepState.WAITING_RETRY.value}', "
    f"'{StepState.ERROR.value}')"
)

templates = Table(
    "tasker_templates",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("namespace", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column("version", String(64), nullable=False),
    Column("content_hash", String(64), nullable=False, unique=True),
    Column("definition", Json, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

tasks = Table(
    "tasker_tasks",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("namespace", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column("version", String(64), nullable=False),
    Column("template_id", Id, ForeignKey("tasker_templates.id"), nullable=False),
    Column("status", String(32), nullable=False),
    Column("context", Json, nullable=False),
    Column("idempotency_key", String(255), nullable=False),
    Column("correlation_id", String(128), nullable=False),
    Column("annotations", Json, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    # A child task (a parent's `task:` step created it): that step and its task (migration 0014).
    Column("parent_task_id", Id, nullable=True),
    Column("parent_step_id", Id, nullable=True),
    # A delayed start: when its first steps become claimable (None: at creation); and the task's
    # deadline, past which it ends in `error` (`deadline_exceeded`), migration 0016.
    Column("starts_at", UTCDateTime, nullable=True),
    Column("deadline_at", UTCDateTime, nullable=True),
    # Claims take steps of higher priority first, with ageing (`tasker.domain.priorities`), and its
    # fair-share key (`concurrency_key` of its template, evaluated at creation), migration 0017.
    Column("priority", Integer, nullable=False, server_default=text("0")),
    Column("concurrency_key", String(255), nullable=True),
    UniqueConstraint("namespace", "name", "idempotency_key"),
    # The deadline sweep: only unfinished tasks with a deadline enter it.
    Index(
        "ix_tasker_tasks_deadlines",
        "deadline_at",
        postgresql_where=text(DEADLINED),
        sqlite_where=text(DEADLINED),
    ),
    Index(
        "ix_tasker_tasks_children",
        "parent_task_id",
        "parent_step_id",
        postgresql_where=text("parent_task_id IS NOT NULL"),
        sqlite_where=text("parent_task_id IS NOT NULL"),
    ),
    Index(None, "status", "created_at"),
    # Keyset listings (tasker.store.listing): each filter's tasks come out of its index in id order.
    Index(None, "created_at", "id"),
    Index(None, "namespace", "id"),
    Index(None, "namespace", "name", "id"),
    Index(None, "namespace", "name", "version", "id"),
    Index(None, "status", "id"),
    Index(None, "idempotency_key"),
    Index(None, "correlation_id"),
    # The overview's tasks finished in the last hour and day.
    Index(None, "status", "finished_at"),
    # The task list sorted by priority: the tasks that have one (those of priority 0 come from the
    # primary key, so their updates write no entry here).
    Index(
        None,
        "priority",
        "id",
        postgresql_where=text("priority > 0"),
        sqlite_where=text("priority > 0"),
    ),
)

steps = Table(
    "tasker_steps",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("task_id", Id, ForeignKey("tasker_tasks.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("position", Integer, nullable=False),
    Column("namespace", String(64), nullable=False),
    Column("dependent_system", String(128), nullable=False),
    Column("state", String(32), nullable=False),
    Column("pending_parents", Integer, nullable=False),
    Column("run_at", UTCDateTime, nullable=True),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("retry_limit", Integer, nullable=False),
    Column("retryable", Boolean, nullable=False),
    Column("lease_owner", String(128), nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    Column("claim_token", Integer, nullable=False, server_default=text("0")),
    Column("idempotency_key", String(64), nullable=False),
    Column("results", Json, nullable=True),
    Column("last_error", Json, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    # Waits for a control-flow decision when its parents finish instead of becoming ready
    # (`tasker.domain.control.gated`; migration 0012).
    Column("gated", Boolean, nullable=False, server_default=text("false")),
    # That decision's reason: why the step was skipped, or that its condition held.
    Column("decision", Text, nullable=True),
    # A fan-out's instance: the fan-out step's id, and its item (migration 0013).
    Column("instance_of", Id, nullable=True),
    Column("item_index", Integer, nullable=True),
    Column("item", Json, nullable=True),
    # A fan-out step: how many instances it expanded into.
    Column("fanout", Integer, nullable=True),
    # A compensation (`undo:<step>`): the id of the step it undoes (migration 0015).
    Column("compensates", Id, nullable=True),
    # A step to undo if its task fails: its template declares a compensation, on_failure compensate.
    Column("undo", Boolean, nullable=False, server_default=text("false")),
    # A step whose failure leaves its task in error instead of compensating it (`on_failure: stop`).
    Column("stops", Boolean, nullable=False, server_default=text("false")),
    # A durable wait (`tasker.domain.waits.Wait`, JSON): what a parked step sleeps or waits for,
    # and the state its handler left (migration 0016). None when the step is not waiting.
    Column("wait", Json, nullable=True),
    # Its task's priority and fair-share key, copied so that claims read them from the step
    # (migration 0017).
    Column("priority", Integer, nullable=False, server_default=text("0")),
    Column("concurrency_key", String(255), nullable=True),
    # Also how every read of a task's steps finds them (by its `task_id` prefix).
    UniqueConstraint("task_id", "name"),
    # The claim's order, `run_at, id`, read straight from the index (migration 0008).
    Index(
        "ix_tasker_steps_claimable",
        "run_at",
        "id",
        postgresql_where=text(CLAIMABLE),
        sqlite_where=text(CLAIMABLE),
    ),
    Index(
        "ix_tasker_steps_leased",
        "lease_expires_at",
        postgresql_where=text(RUNNING),
        sqlite_where=text(RUNNING),
    ),
    # Systems report and overview: active steps by system, without reading the finished millions.
    Index(
        "ix_tasker_steps_active",
        "dependent_system",
        "state",
        postgresql_where=text(ACTIVE),
        sqlite_where=text(ACTIVE),
    ),
    # Fair share: the running steps of each key (migration 0017).
    Index(
        "ix_tasker_steps_keyed_running",
        "concurrency_key",
        postgresql_where=text(KEYED_RUNNING),
        sqlite_where=text(KEYED_RUNNING),
    ),
)
# The prioritized steps in claim order (`PRIORITY_KEY`), an expression index of each dialect's own.
for _dialect, _key in PRIORITY_KEY.items():
    Index(
        "ix_tasker_steps_prioritized",
        text(_key),
        steps.c.id,
        **{f"{_dialect}_where": text(PRIORITIZED)},  # type: ignore[arg-type]
    ).ddl_if(dialect=_dialect)

step_edges = Table(
    "tasker_step_edges",
    metadata,
    # No foreign keys on the log tables (edges, transitions, custom events): the store writes their
    # rows with the task and step they name (migration 0007).
    Column("task_id", Id, nullable=False),
    Column("parent_id", Id, primary_key=True),
    Column("child_id", Id, primary_key=True),
    Index(None, "child_id"),
)

task_transitions = Table(
    "tasker_task_transitions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("task_id", Id, nullable=False),
    Column("from_state", String(32), nullable=True),
    Column("to_state", String(32), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("worker", String(128), nullable=True),
    Column("reason", Text, nullable=True),
    Index(None, "task_id"),
)

step_transitions = Table(
    "tasker_step_transitions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("step_id", Id, nullable=False),
    Column("task_id", Id, nullable=False),
    Column("from_state", String(32), nullable=True),
    Column("to_state", String(32), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("worker", String(128), nullable=True),
    Column("error_class", String(255), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("duration_ms", Float, nullable=True),
    # Why the step moved when no attempt moved it: a skip's condition and value (migration 0012).
    Column("reason", Text, nullable=True),
    # A task's history; one step's earlier outcomes are read by task and step (migration 0010).
    Index(None, "task_id"),
    # The overview's attempts per minute and latest failures: the last rows of one outcome. Only
    # outcomes are entered (one row of a step's three), migration 0011.
    Index(
        "ix_tasker_step_transitions_outcomes",
        "to_state",
        "at",
        postgresql_where=text(OUTCOMES),
        sqlite_where=text(OUTCOMES),
    ),
)

dependent_systems = Table(
    "tasker_dependent_systems",
    metadata,
    Column("name", String(128), primary_key=True),
    Column(
        "circuit_state",
        String(16),
        nullable=False,
        server_default=text(f"'{CircuitState.CLOSED.value}'"),
    ),
    Column("consecutive_failures", Integer, nullable=False, server_default=text("0")),
    Column("failure_threshold", Integer, nullable=True),
    Column("cooldown_seconds", Float, nullable=True),
    Column("max_cooldown_seconds", Float, nullable=True),
    Column("current_cooldown_seconds", Float, nullable=True),
    Column("opened_at", UTCDateTime, nullable=True),
    Column("open_until", UTCDateTime, nullable=True),
    Column("probe_step_id", Id, nullable=True),
    Column("max_in_flight", Integer, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    #: When the current streak of failures that are the system's fault began (None: it answers).
    Column("failing_since", UTCDateTime, nullable=True),
    Column("max_outage_seconds", Float, nullable=True),
    # A rate limit: at most `rate_limit` steps started per `rate_per_seconds`, shared by all
    # workers (`tasker.domain.rates`); the time up to which deferred steps have been given slots,
    # and how many deferrals there were (migration 0017).
    Column("rate_limit", Integer, nullable=True),
    Column("rate_per_seconds", Float, nullable=True),
    Column("rate_horizon", UTCDateTime, nullable=True),
    Column("rate_deferrals", BigInteger, nullable=False, server_default=text("0")),
)

#: When each step of a rate-limited system started: the sliding window the limit counts.
rate_starts = Table(
    "tasker_rate_starts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("system", String(128), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index(None, "system", "at"),
)

#: Fair share: the most steps in flight per `concurrency_key` value of a template version (its
#: `tasker.domain.fairness.key_scope`), synced when the template loads (migration 0017).
key_limits = Table(
    "tasker_key_limits",
    metadata,
    Column("scope", String(200), primary_key=True),
    Column("max_in_flight", Integer, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

namespace_limits = Table(
    "tasker_namespace_limits",
    metadata,
    Column("namespace", String(64), primary_key=True),
    Column("max_in_flight", Integer, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

circuit_transitions = Table(
    "tasker_circuit_transitions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("system", String(128), nullable=False),
    Column("from_state", String(16), nullable=False),
    Column("to_state", String(16), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("worker", String(128), nullable=True),
    Column("reason", Text, nullable=True),
    Index(None, "system", "at"),
)

#: Custom events published by handlers (`ctx.publish`). Lifecycle events need no table of their own:
#: each is exactly one transition row, so the transition tables plus this one are the durable event
#: log.
custom_events = Table(
    "tasker_custom_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False),
    Column("task_id", Id, nullable=True),
    Column("step_id", Id, nullable=True),
    Column("namespace", String(64), nullable=True),
    Column("payload", Json, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("worker", String(128), nullable=True),
    Index(None, "task_id"),
)

#: Signals sent to tasks (`Tasker.signal`): kept until the task is deleted, so that a signal that
#: arrives before its step waits is not lost; a repeated idempotency key is one signal.
signals = Table(
    "tasker_signals",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("task_id", Id, nullable=False),
    Column("name", String(128), nullable=False),
    Column("payload", Json, nullable=True),
    Column("idempotency_key", String(255), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("sender", String(128), nullable=True),
    Index(None, "task_id", "name", "id"),
    UniqueConstraint("task_id", "name", "idempotency_key"),
)

#: Schedules: a template's cron ticks, each creating one task (`tasker.engine.schedules`).
schedules = Table(
    "tasker_schedules",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("namespace", String(64), nullable=False),
    Column("task_name", String(128), nullable=False),
    # A pinned version, or None for the newest the firing worker has loaded.
    Column("version", String(64), nullable=True),
    Column("name", String(128), nullable=False),
    Column("cron", String(255), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("context", Json, nullable=False),
    Column("catch_up", String(8), nullable=False),
    Column("paused", Boolean, nullable=False, server_default=text("false")),
    # `template` (declared in YAML, synced when workers load it) or `api` (added at run time).
    Column("origin", String(16), nullable=False),
    Column("next_at", UTCDateTime, nullable=False),
    Column("last_at", UTCDateTime, nullable=True),
    Column("last_task_id", Id, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("namespace", "task_name", "name"),
    Index(None, "next_at"),
)

#: Jobs that one worker at a time does for all (schedules, deadlines): a lease row each, taken by
#: whichever worker finds it free or expired.
jobs = Table(
    "tasker_jobs",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("last_run_at", UTCDateTime, nullable=True),
    # The last pass of a job that reports one (`housekeeping`: what it deleted, how long it took),
    # JSON; health and `tasker retention` read it (migration 0018).
    Column("last_pass", Json, nullable=True),
)

#: Finished tasks written here by a purge before it deleted them (`archive = "table"`): one row per
#: task, its `document` the same JSON object a file archive holds (docs/operations.md). `id` is the
#: task's id; not unique, since SQLite may give a deleted task's id to a later task.
archived_tasks = Table(
    "tasker_archived_tasks",
    metadata,
    Column("archive_id", Id, primary_key=True, autoincrement=True),
    Column("id", Id, nullable=False),
    Column("namespace", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column("version", String(64), nullable=False),
    Column("status", String(32), nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("archived_at", UTCDateTime, nullable=False),
    Column("document", Json, nullable=False),
    Index(None, "id"),
    Index(None, "namespace", "name", "finished_at"),
)

#: Worker processes announce themselves and refresh `last_seen_at` with their heartbeat, so health
#: and status can say which workers are alive without asking them.
workers = Table(
    "tasker_workers",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("namespaces", Json, nullable=True),
    Column("concurrency", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),
    Column("stopped_at", UTCDateTime, nullable=True),
    Column("steps_run", BigInteger, nullable=False, server_default=text("0")),
    Index(None, "last_seen_at"),
)

#: API keys: only a SHA-256 digest of the secret is stored; `prefix` (the first characters of the
#: key) lets an operator recognise a key in listings without it being usable.
api_keys = Table(
    "tasker_api_keys",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("permissions", Json, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
)

# -- analytics rollups (tasker.store.rollups, docs/analytics.md) ----------------------------------
#: Attempt outcomes per 30-minute slot of task creation (`hour`: the slot's start), template step
#: and outcome: the counts that `bottlenecks` and `performance` add up instead of joining every
#: attempt of the period to its step.
step_rollups = Table(
    "tasker_step_rollups",
    metadata,
    Column("hour", UTCDateTime, primary_key=True),
    Column("namespace", String(64), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("step", String(128), primary_key=True),
    Column("dependent_system", String(128), primary_key=True),
    Column("outcome", String(32), primary_key=True),
    Column("error_class", String(255), primary_key=True),  # '' when the attempt carried no error
    Column("attempts", BigInteger, nullable=False),
    Column("after_retries", BigInteger, nullable=False),
    Column("first_outcomes", BigInteger, nullable=False),
    Column("retry_limit", Integer, nullable=False),
)

#: Attempt durations (ms) per slot of task creation and template step: count, sum, min, max and a
#: sparse log-bucket histogram (JSON) from which p50/p95 are read.
step_duration_rollups = Table(
    "tasker_step_duration_rollups",
    metadata,
    Column("hour", UTCDateTime, primary_key=True),
    Column("namespace", String(64), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("step", String(128), primary_key=True),
    Column("dependent_system", String(128), primary_key=True),
    Column("samples", BigInteger, nullable=False),
    Column("total", Float, nullable=False),
    Column("low", Float, nullable=False),
    Column("high", Float, nullable=False),
    Column("buckets", Text, nullable=False),
)

#: Tasks in a final state (complete, cancelled, resolved_manually: they never change again) per slot
#: of creation, template and state, with the durations (s) of the completed ones.
task_rollups = Table(
    "tasker_task_rollups",
    metadata,
    Column("hour", UTCDateTime, primary_key=True),
    Column("namespace", String(64), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("status", String(32), primary_key=True),
    Column("tasks", BigInteger, nullable=False),
    Column("started", BigInteger, nullable=False),
    Column("samples", BigInteger, nullable=False),
    Column("total", Float, nullable=False),
    Column("low", Float, nullable=True),
    Column("high", Float, nullable=True),
    Column("buckets", Text, nullable=False),
    #: The steps of these tasks by state (JSON {state: count}): a final task's steps never change.
    Column("step_states", Text, nullable=False, server_default="{}"),
)

#: How far each rollup has read its transitions table: every id <= `last_id` is rolled up except the
#: `gaps` (JSON [[lo, hi, first_seen_epoch], ...]): ids not visible yet, from transactions still
#: open.
rollup_cursors = Table(
    "tasker_rollup_cursors",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("last_id", BigInteger, nullable=False),
    Column("gaps", Text, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
