"""Dependent systems across engines: in-flight limits per system and per namespace, and the circuit
breaker.

Every test runs on SQLite and on PostgreSQL. Several `Tasker` engines on one store stand for several
worker processes: they share nothing but the database. Handlers report to a `Board` (per task key
and group) how many of them run at once and when each call started and ended, so the tests observe
what the limits and the circuit let through instead of trusting the engine's own counters.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from tasker import PermanentError, RetryableError, StepContext, StepHandler, Tasker
from tasker.cli.main import cli
from tests.fixture_types import MakeTasker, WriteTemplate
from tests.integration.support import FAST_RETRY, step, template_yaml, work_in_threads

HANDLER = "tests.integration.test_systems:Tracked"


# -- what the handlers report ----------------------------------------------------------------------
@dataclass
class Call:
    step_id: int
    attempt: int
    start: float  # time.time(), comparable with the UTC timestamps the engine writes
    end: float = 0.0
    failed: str | None = None


@dataclass
class Board:
    """Concurrency and calls of one group of handlers; `fail_calls` fails the first N calls,
    `failing` all."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    current: int = 0
    max_seen: int = 0
    calls: list[Call] = field(default_factory=list)
    fail_calls: int = 0
    failing: bool = False

    def snapshot(self) -> list[Call]:
        with self.lock:
            return list(self.calls)


_boards: dict[str, Board] = {}
_boards_lock = threading.Lock()


def board(name: str) -> Board:
    with _boards_lock:
        return _boards.setdefault(name, Board())


class Tracked(StepHandler):
    """Counts concurrent calls on board `key:group`; sleeps `handler_config.sleep`; fails as the
    board says.

    `handler_config.kind` is the failure raised: `retryable` (default) or `permanent`.
    """

    def process(self, ctx: StepContext) -> dict[str, Any]:
        cfg = ctx.handler_config
        b = board(f"{ctx.context['key']}:{cfg.get('group', 'all')}")
        call = Call(ctx.step_id, ctx.attempt, time.time())
        with b.lock:
            b.calls.append(call)
            fail = b.failing or len(b.calls) <= b.fail_calls
            b.current += 1
            b.max_seen = max(b.max_seen, b.current)
        try:
            time.sleep(float(cfg.get("sleep", 0)))
        finally:
            with b.lock:
                b.current -= 1
                call.end = time.time()
        if fail:
            call.failed = cfg.get("kind", "retryable")
            if call.failed == "permanent":
                raise PermanentError(f"{ctx.step_name}: declined", error_code="DECLINED")
            raise RetryableError(f"{ctx.step_name}: the system is down", error_code="DOWN")
        return {"step": ctx.step_name, "attempt": ctx.attempt}


# -- helpers ---------------------------------------------------------------------------------------
def tracked(name: str, group: str = "all", **extra: Any) -> dict[str, Any]:
    cfg = {"group": group, **extra.pop("config", {})}
    return {"name": name, "handler_class": HANDLER, "handler_config": cfg, **extra}


def load(
    engine: Tasker,
    write_template: Callable[..., Path],
    name: str,
    steps: list[dict[str, Any]],
    **top: Any,
) -> str:
    t = engine.load_templates(write_template(template_yaml(name, steps, **top), f"{name}.yaml"))[0]
    return f"{t.namespace_name}/{t.name}"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def circuit(engine: Tasker, system: str) -> Mapping[str, Any] | None:
    return next((r for r in engine.systems.report() if r["name"] == system), None)


def circuit_state(engine: Tasker, system: str) -> str | None:
    row = circuit(engine, system)
    return row["circuit_state"] if row else None


def moves(engine: Tasker, system: str) -> list[tuple[str, str]]:
    return [(r["from_state"], r["to_state"]) for r in engine.systems.circuit_history(system)]


def ts(value: datetime) -> float:
    return value.timestamp()


@contextmanager
def background_worker(engine: Tasker, **options: Any) -> Iterator[Any]:
    """A long-running worker of `engine` in its own thread (like `tasker worker`), stopped on
    exit."""
    w = engine.worker(**options)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(engine.awork(worker=w, until_idle=False))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"worker-{w.id}", daemon=True)
    thread.start()
    try:
        yield w
    finally:
        w.stop()
        thread.join(30)
        assert not thread.is_alive(), "the worker did not stop"
        assert errors == []


def statuses(engine: Tasker, ids: list[int]) -> Counter[str]:
    return Counter(t.status for t in engine.get_tasks(ids))


# -- in-flight limits ------------------------------------------------------------------------------
def test_system_max_in_flight_holds_across_engines(
    make_tasker: MakeTasker, write_template: WriteTemplate, key: str
) -> None:
    producer = make_tasker()
    ref = load(
        producer,
        write_template,
        "limited",
        [
            tracked("charge", "gateway", dependent_system="gateway", config={"sleep": 0.04}),
            tracked("ship", "warehouse", dependent_system="warehouse", config={"sleep": 0.04}),
        ],
        retry=FAST_RETRY,
    )
    producer.systems.configure("gateway", max_in_flight=2)
    ids = [producer.create_task(ref, {"key": key, "n": i}).id for i in range(24)]
    engines = [make_tasker(), make_tasker(), make_tasker()]

    ran = work_in_threads(engines, concurrency=8, timeout=60)

    assert sum(ran) == 48
    assert statuses(producer, ids) == {"complete": 24}
    gateway, warehouse = board(f"{key}:gateway"), board(f"{key}:warehouse")
    assert len(gateway.calls) == 24
    assert gateway.max_seen == 2, (
        f"gateway ran {gateway.max_seen} steps at once with max_in_flight 2"
    )
    assert warehouse.max_seen > 2, "a system without a limit should not be held back"
    row = circuit(producer, "gateway")
    assert row is not None and row["max_in_flight"] == 2 and row["in_flight"] == 0


def test_namespace_limit_holds_across_engines(
    make_tasker: MakeTasker, write_template: WriteTemplate, key: str
) -> None:
    producer = make_tasker()
    capped = load(
        producer,
        write_template,
        "capped",
        [tracked("work", "capped", config={"sleep": 0.04})],
        namespace="capped_ns",
        retry=FAST_RETRY,
    )
    free = load(
        producer,
        write_template,
        "free",
        [tracked("work", "free", config={"sleep": 0.04})],
        namespace="free_ns",
        retry=FAST_RETRY,
    )
    producer.systems.set_namespace_limit("capped_ns", 3)
    ids = [
        producer.create_task(ref, {"key": key, "n": i}).id
        for i in range(20)
        for ref in (capped, free)
    ]
    engines = [make_tasker(), make_tasker(), make_tasker()]

    work_in_threads(engines, concurrency=8, timeout=60)

    assert statuses(producer, ids) == {"complete": 40}
    assert producer.systems.namespace_limits() == {"capped_ns": 3}
    assert board(f"{key}:capped").max_seen == 3
    assert board(f"{key}:free").max_seen > 3


def test_a_limit_set_elsewhere_binds_a_worker_that_read_the_systems_before(
    make_tasker: MakeTasker, write_template: WriteTemplate, key: str
) -> None:
    """The driver-level cycle checks for limits and circuits in its own transaction, so a worker
    whose cached view is fresh and empty still obeys a limit another process set a moment ago."""
    worker, operator = make_tasker(), make_tasker()
    ref = load(
        worker,
        write_template,
        "late_limit",
        [tracked("work", "late", config={"sleep": 0.03})],
        namespace="late_ns",
        retry=FAST_RETRY,
    )
    worker.run(worker.create_task(ref, {"key": key, "n": "warm"}).id)
    assert worker.systems.views.last().empty  # what it knows of the systems: no limit
    operator.systems.set_namespace_limit("late_ns", 1)
    ids = [worker.create_task(ref, {"key": key, "n": i}).id for i in range(6)]

    assert worker.work(concurrency=8, until_idle=True) == 6

    assert statuses(worker, ids) == {"complete": 6}
    assert board(f"{key}:late").max_seen == 1


def test_the_driver_gate_agrees_with_the_systems_view(tasker: Tasker) -> None:
    """`GATE_SQL` (checked by the driver-level cycles) says "open" exactly when the systems view
    the general path reads is empty, for every kind of row that makes it non-empty."""
    from tasker.store import systems as system_store
    from tasker.store.cycle_rows import GATE_SQL

    def agree() -> bool:
        with tasker.db.read() as conn:
            open_ = bool(conn.exec_driver_sql(f"SELECT {GATE_SQL}").scalar())
            assert open_ == system_store.load_view(conn).empty
            return open_

    assert agree()
    tasker.systems.configure("billing", cooldown_seconds=5)  # configured, nothing restrictive
    assert agree()
    tasker.systems.configure("billing", max_in_flight=3)
    assert not agree()
    tasker.systems.configure("billing", max_in_flight=None)
    assert agree()
    tasker.systems.configure("default", failure_threshold=4)
    assert not agree()
    tasker.systems.configure("default", failure_threshold=None)
    assert agree()
    with tasker.db.write() as conn:
        conn.exec_driver_sql(
            "UPDATE tasker_dependent_systems SET consecutive_failures = 2 WHERE name = 'billing'"
        )
    assert not agree()
    with tasker.db.write() as conn:
        conn.exec_driver_sql(
            "UPDATE tasker_dependent_systems SET consecutive_failures = 0,"
            " circuit_state = 'half_open' WHERE name = 'billing'"
        )
    assert not agree()
    with tasker.db.write() as conn:
        conn.exec_driver_sql(
            "UPDATE tasker_dependent_systems SET circuit_state = 'closed' WHERE name = 'billing'"
        )
    assert agree()
    tasker.systems.set_namespace_limit("capped", 2)
    assert not agree()
    tasker.systems.set_namespace_limit("capped", None)
    assert agree()


def test_limits_declared_in_yaml_are_stored(
    tasker: Tasker, write_template: WriteTemplate, key: str
) -> None:
    load(
        tasker,
        write_template,
        "declared",
        [tracked("work", dependent_system="mail")],
        namespace="yaml_ns",
        namespace_max_in_flight=7,
        dependent_systems={
            "mail": {"max_in_flight": 4, "failure_threshold": 9, "cooldown_seconds": 0.5}
        },
    )

    row = circuit(tasker, "mail")
    assert row is not None
    assert (row["max_in_flight"], row["failure_threshold"], row["cooldown_seconds"]) == (4, 9, 0.5)
    assert tasker.systems.namespace_limits() == {"yaml_ns": 7}


# -- circuit breaker -------------------------------------------------------------------------------
def test_circuit_opens_after_threshold_and_open_circuit_spends_no_attempts(
    tasker: Tasker, write_template: WriteTemplate, key: str
) -> None:
    ref = load(
        tasker,
        write_template,
        "ledger",
        [tracked("post")],
        default_dependent_system="ledger",
        retry=FAST_RETRY,
    )
    tasker.systems.configure("ledger", failure_threshold=3, cooldown_seconds=60)
    b = board(f"{key}:all")
    b.failing = True
    first = [tasker.create_task(ref, {"key": key, "n": i}).id for i in range(3)]

    with background_worker(tasker, concurrency=4):
        wait_for(lambda: circuit_state(tasker, "ledger") == "open", 20, "the circuit to open")
        history = tasker.systems.circuit_history("ledger")
        assert [(r["from_state"], r["to_state"]) for r in history] == [("closed", "open")]
        assert "3 consecutive retryable failures" in (history[0]["reason"] or "")
        assert "threshold 3" in (history[0]["reason"] or "")

        # While it is open, new and failed steps wait: no handler call, no attempt spent.
        later = [tasker.create_task(ref, {"key": key, "n": 100 + i}).id for i in range(3)]
        time.sleep(0.3)  # anything already running settles
        calls_before = len(b.snapshot())
        attempts_before = {
            s.id: s.attempts for t in tasker.get_tasks(first + later) for s in t.steps
        }
        time.sleep(1.0)  # twenty polls of the worker
        assert len(b.snapshot()) == calls_before
        assert {
            s.id: s.attempts for t in tasker.get_tasks(first + later) for s in t.steps
        } == attempts_before
        assert all(
            s.attempts == 0 and s.status == "ready"
            for t in tasker.get_tasks(later)
            for s in t.steps
        )
        assert (circuit(tasker, "ledger") or {})["waiting"] == 6

        # An operator closes it; the system is healthy again, everything runs.
        b.failing = False
        assert tasker.systems.reset_circuit("ledger") is True
        wait_for(
            lambda: statuses(tasker, first + later) == {"complete": 6}, 20, "every task to complete"
        )

    assert moves(tasker, "ledger") == [("closed", "open"), ("open", "closed")]
    assert tasker.systems.circuit_history("ledger")[-1]["reason"] == "reset by an operator"
    final = {s.id: s.attempts for t in tasker.get_tasks(first + later) for s in t.steps}
    assert final == {sid: n + 1 for sid, n in attempts_before.items()}
    assert all(n <= 3 for n in final.values())
    assert tasker.systems.reset_circuit("no_such_system") is False


def test_steps_ready_when_the_circuit_opens_are_not_claimed(
    tasker: Tasker, write_template: WriteTemplate, key: str
) -> None:
    ref = load(
        tasker,
        write_template,
        "queue",
        [tracked("send")],
        default_dependent_system="queue_api",
        retry=FAST_RETRY,
    )
    tasker.systems.configure("queue_api", failure_threshold=2, cooldown_seconds=60)
    b = board(f"{key}:all")
    b.failing = True
    ids = [tasker.create_task(ref, {"key": key, "n": i}).id for i in range(5)]

    with background_worker(tasker, concurrency=1):  # one step at a time: steps wait in the queue
        wait_for(lambda: circuit_state(tasker, "queue_api") == "open", 20, "the circuit to open")
        time.sleep(0.5)

    (opened,) = tasker.systems.circuit_history("queue_api")
    late = [c for c in b.snapshot() if c.start >= ts(opened["at"])]
    assert late == [], (
        "a step of an open system was run (the cycle that opened the circuit claimed it)"
    )
    assert len(b.snapshot()) == 2
    assert sorted(s.attempts for t in tasker.get_tasks(ids) for s in t.steps) == [0, 0, 0, 1, 1]


def test_half_open_lets_one_probe_through_and_its_success_closes(
    tasker: Tasker, write_template: WriteTemplate, key: str
) -> None:
    ref = load(
        tasker,
        write_template,
        "probe_ok",
        [tracked("call", config={"sleep": 0.15})],
        default_dependent_system="flaky",
        retry=FAST_RETRY,
    )
    tasker.systems.configure("flaky", failure_threshold=2, cooldown_seconds=0.3)
    b = board(f"{key}:all")
    b.fail_calls = (
        4  # the first attempt of each of the 4 steps fails; from then on the system is fine
    )
    events: list[tuple[str, str, str]] = []
    tasker.bus.subscribe(
        lambda e: events.append((e.name, e.payload["from_state"], e.payload["to_state"])),
        "circuit.*",
    )
    ids = [tasker.create_task(ref, {"key": key, "n": i}).id for i in range(4)]

    with background_worker(tasker, concurrency=8):
        wait_for(lambda: statuses(tasker, ids) == {"complete": 4}, 20, "every task to complete")

    history = tasker.systems.circuit_history("flaky")
    assert [(r["from_state"], r["to_state"]) for r in history] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    opened, half_open, closed = (ts(r["at"]) for r in history)
    assert half_open - opened >= 0.3 - 1e-3, "the probe came before the cool-down was over"
    assert history[2]["reason"] == "probe succeeded"
    assert events == [
        ("circuit.opened", "closed", "open"),
        ("circuit.half_open", "open", "half_open"),
        ("circuit.closed", "half_open", "closed"),
    ]
    calls = b.snapshot()
    assert len(calls) == 8
    in_window = [c for c in calls if half_open <= c.start < closed]
    assert len(in_window) == 1, f"half-open let {len(in_window)} calls through"
    assert in_window[0].failed is None and in_window[0].attempt == 2
    overlapping = [c for c in calls if c.start < in_window[0].end and c.end > in_window[0].start]
    assert overlapping == in_window, "another call ran during the probe"
    assert {s.attempts for t in tasker.get_tasks(ids) for s in t.steps} == {2}


def test_half_open_admits_one_probe_across_engines(
    make_tasker: MakeTasker, write_template: WriteTemplate, key: str
) -> None:
    producer = make_tasker()
    ref = load(
        producer,
        write_template,
        "probe_many",
        [tracked("call", config={"sleep": 0.15})],
        default_dependent_system="flaky_many",
        retry=FAST_RETRY,
    )
    producer.systems.configure("flaky_many", failure_threshold=2, cooldown_seconds=0.5)
    b = board(f"{key}:all")
    b.failing = True
    ids = [producer.create_task(ref, {"key": key, "n": i}).id for i in range(9)]
    engines = [make_tasker(), make_tasker(), make_tasker()]

    with (
        background_worker(engines[0], concurrency=4),
        background_worker(engines[1], concurrency=4),
        background_worker(engines[2], concurrency=4),
    ):
        wait_for(
            lambda: ("half_open", "open") in moves(producer, "flaky_many"), 20, "a probe to fail"
        )
        b.failing = False  # healthy from now on: the next probe closes the circuit
        wait_for(lambda: statuses(producer, ids) == {"complete": 9}, 30, "every task to complete")

    history = producer.systems.circuit_history("flaky_many")
    assert history[0]["from_state"] == "closed" and history[0]["to_state"] == "open"
    assert history[-1]["to_state"] == "closed" and history[-1]["reason"] == "probe succeeded"
    assert sum(1 for r in history if r["to_state"] == "closed") == 1
    calls = b.snapshot()
    windows = [
        (ts(r["at"]), ts(nxt["at"])) for r, nxt in pairwise(history) if r["to_state"] == "half_open"
    ]
    assert len(windows) >= 2
    for start, end in windows:
        inside = [c for c in calls if start <= c.start < end]
        assert len(inside) == 1, f"{len(inside)} calls in one half-open window"
        probe = inside[0]
        assert [c for c in calls if c.start < probe.end and c.end > probe.start] == [probe]
    assert all(s.attempts <= 3 for t in producer.get_tasks(ids) for s in t.steps)


def test_failed_probe_reopens_with_doubled_cooldown_and_keeps_its_attempt(
    tasker: Tasker, write_template: WriteTemplate, key: str
) -> None:
    # retry limit 2: a failed probe on the last attempt would put the step in error, were the
    # attempt counted
    ref = load(
        tasker,
        write_template,
        "probe_fail",
        [tracked("call", default_retry_limit=2)],
        default_dependent_system="shaky",
        retry=FAST_RETRY,
    )
    tasker.systems.configure(
        "shaky", failure_threshold=2, cooldown_seconds=0.2, max_cooldown_seconds=0.5
    )
    b = board(f"{key}:all")
    b.fail_calls = 6  # 4 first attempts, then two probes fail; the third probe succeeds
    ids = [tasker.create_task(ref, {"key": key, "n": i}).id for i in range(4)]

    with background_worker(tasker, concurrency=8):
        wait_for(lambda: statuses(tasker, ids) == {"complete": 4}, 20, "every task to complete")

    history = tasker.systems.circuit_history("shaky")
    assert [(r["from_state"], r["to_state"]) for r in history] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    at = [ts(r["at"]) for r in history]
    assert at[1] - at[0] >= 0.2 - 1e-3
    assert history[2]["reason"] == "probe failed; next probe in 0.4s"  # doubled
    assert at[3] - at[2] >= 0.4 - 1e-3
    assert history[4]["reason"] == "probe failed; next probe in 0.5s"  # doubled, then capped
    assert at[5] - at[4] >= 0.5 - 1e-3

    calls = b.snapshot()
    assert len(calls) == 4 + 2 + 1 + 3
    executions = Counter(c.step_id for c in calls)
    steps = {s.id: s for t in tasker.get_tasks(ids) for s in t.steps}
    assert all(s.status == "complete" and s.attempts == 2 for s in steps.values())
    probed_twice = [sid for sid, n in executions.items() if n > 2]
    assert probed_twice, "some step should have run more often than its attempts say"
    for sid in probed_twice:
        assert (
            max(c.attempt for c in calls if c.step_id == sid) == 2
        )  # the refund is what the handler saw
    assert (circuit(tasker, "shaky") or {})["consecutive_failures"] == 0


def test_permanent_errors_do_not_trip_the_circuit(
    tasker: Tasker, write_template: WriteTemplate, key: str
) -> None:
    ref = load(
        tasker,
        write_template,
        "declines",
        [tracked("charge", config={"kind": "permanent"})],
        default_dependent_system="cards",
        retry=FAST_RETRY,
    )
    tasker.systems.configure("cards", failure_threshold=2, cooldown_seconds=60)
    board(f"{key}:all").failing = True
    ids = [tasker.create_task(ref, {"key": key, "n": i}).id for i in range(5)]

    tasker.work(concurrency=4)

    assert statuses(tasker, ids) == {"error": 5}
    assert all(s.attempts == 1 for t in tasker.get_tasks(ids) for s in t.steps)
    row = circuit(tasker, "cards")
    assert row is not None and row["circuit_state"] == "closed" and row["consecutive_failures"] == 0
    assert tasker.systems.circuit_history("cards") == []


def test_systems_cli_lists_systems_and_resets_a_circuit(
    tasker: Tasker, store_url: str, write_template: WriteTemplate, key: str
) -> None:
    ref = load(
        tasker,
        write_template,
        "cli_sys",
        [tracked("call")],
        default_dependent_system="smtp",
        retry=FAST_RETRY,
    )
    tasker.systems.configure("smtp", failure_threshold=1, cooldown_seconds=60)
    tasker.systems.configure("gateway", max_in_flight=5)
    board(f"{key}:all").failing = True
    task_id = tasker.create_task(ref, {"key": key}).id
    with background_worker(tasker, concurrency=2):
        wait_for(lambda: circuit_state(tasker, "smtp") == "open", 20, "the circuit to open")

    runner = CliRunner()
    result = runner.invoke(cli, ["--database-url", store_url, "systems"])
    assert result.exit_code == 0, result.output
    lines = {
        line.split()[1]: line
        for line in result.output.splitlines()
        if line.split()[1:2] in (["smtp"], ["gateway"])
    }
    assert set(lines) == {"smtp", "gateway"}, result.output
    assert "open" in lines["smtp"]
    assert "closed" in lines["gateway"] and "5" in lines["gateway"]

    result = runner.invoke(cli, ["--database-url", store_url, "systems", "reset", "smtp"])
    assert result.exit_code == 0, result.output
    assert "smtp: circuit closed" in result.output
    assert circuit_state(tasker, "smtp") == "closed"
    assert tasker.get_task(task_id).status in (
        "pending",
        "in_progress",
    )  # waits, attempts kept for later

    result = runner.invoke(cli, ["--database-url", store_url, "systems", "reset", "nothing_here"])
    assert result.exit_code == 2


def test_not_ready_yet_is_retried_without_counting_against_the_system(
    tasker: Tasker, write_template: WriteTemplate, key: str
) -> None:
    """`RetryableError(system_fault=False)`: the step polls (spending attempts) but the circuit
    stays closed."""
    ref = load(
        tasker,
        write_template,
        "poller",
        [
            step(
                "wait", "Scripted", handler_config={"fail": ["not_yet"] * 5}, default_retry_limit=10
            ),
        ],
        default_dependent_system="reports",
        retry=FAST_RETRY,
    )
    tasker.systems.configure("reports", failure_threshold=2, cooldown_seconds=60)
    task = tasker.run(tasker.create_task(ref, {"key": key}).id)
    assert task.status == "complete" and task.step("wait").attempts == 6
    assert circuit_state(tasker, "reports") == "closed"
    assert tasker.systems.circuit_history("reports") == []


def test_the_same_failures_as_system_faults_open_the_circuit(
    tasker: Tasker, write_template: WriteTemplate, key: str
) -> None:
    ref = load(
        tasker,
        write_template,
        "poller_control",
        [
            step("wait", "Scripted", handler_config={"fail": ["retryable"]}, default_retry_limit=1),
        ],
        default_dependent_system="reports2",
        retry=FAST_RETRY,
    )
    # a short outage allowance: the steps may not wait for reports2 longer than 50 ms (issue 11)
    tasker.systems.configure(
        "reports2", failure_threshold=2, cooldown_seconds=0.05, max_outage_seconds=0.05
    )
    for n in range(2):
        assert tasker.run(tasker.create_task(ref, {"key": key, "n": n}).id).status == "error"
    assert circuit_state(tasker, "reports2") == "open"


# -- settings out of range are refused before they are stored (issue 9, point 6) -------------------
def test_configure_system_refuses_non_finite_boolean_and_absurd_values(tasker: Tasker) -> None:
    from tasker import TaskerInputError

    tasker.systems.configure("bounded", cooldown_seconds=2, failure_threshold=3)
    for setting, value in [
        ("cooldown_seconds", float("nan")),
        ("cooldown_seconds", float("inf")),
        ("cooldown_seconds", 1e300),
        ("max_cooldown_seconds", -1.0),
        ("failure_threshold", True),
        ("max_in_flight", 2.5),
        ("max_in_flight", 10**9),
    ]:
        try:
            tasker.systems.configure("bounded", **{setting: value})
        except TaskerInputError as exc:
            assert f"dependent system 'bounded': {setting}:" in str(exc) and "\n" not in str(exc)
        else:
            raise AssertionError(f"{setting}={value!r} was accepted")
    row = circuit(tasker, "bounded")
    assert row is not None and row["cooldown_seconds"] == 2 and row["failure_threshold"] == 3


def test_systems_set_cli_refuses_nan_inf_and_huge_cooldowns(tasker: Tasker, store_url: str) -> None:
    runner = CliRunner()
    base = ["--database-url", store_url, "systems", "set", "cli_bounded"]
    ok = runner.invoke(cli, [*base, "--cooldown-seconds", "1.5", "--max-in-flight", "3"])
    assert ok.exit_code == 0, ok.output
    for option, text in [
        ("--cooldown-seconds", "nan"),
        ("--cooldown-seconds", "inf"),
        ("--cooldown-seconds", "1e300"),
        ("--max-cooldown-seconds", "-inf"),
        ("--cooldown-seconds", "0"),
        ("--failure-threshold", "true"),
        ("--max-in-flight", "2.5"),
    ]:
        result = runner.invoke(cli, [*base, option, text])
        assert result.exit_code == 2, (option, text, result.output)
        assert "Traceback" not in result.output and option in result.output, result.output
        assert "at most" in result.output, result.output
    row = circuit(tasker, "cli_bounded")
    assert row is not None and row["cooldown_seconds"] == 1.5 and row["max_in_flight"] == 3
    limits = runner.invoke(cli, ["--database-url", store_url, "limits", "set", "ns_bounded", "nan"])
    assert limits.exit_code == 2 and "not a finite number" in limits.output, limits.output
