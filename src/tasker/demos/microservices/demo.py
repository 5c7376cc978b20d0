"""The registration-outage demo: BillingService goes down while users register, then comes back.

The story's night, re-enacted with real HTTP services and real worker processes:

- **naive side**: the same registrations through `naive.register`, the sequential coordinator,
  during the same outage. Every registration stops at billing and leaves a user with no billing
  profile, no preferences and no welcome mail, counted from the services' own tables;
- **engine side**: the four services on free ports, a fresh store, worker processes
  (`tasker worker`), BillingService taken down ("connection refused"), the registrations submitted
  as `blog_examples/user_registration` tasks. The billing steps fail, the billing circuit opens, the
  registrations wait without spending attempts; BillingService comes back after `outage_seconds` and
  the next circuit probe lets them all finish. The timeline is read back from the durable event log,
  which holds the events of every worker process; the services are reconciled for duplicates.

`run_registration_outage()` returns `{"naive": {...}, "engine": {...}}`;
`tasker demo registration-outage` renders it (docs/microservices.md).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from tasker import StepState, Task, Tasker, TaskState
from tasker.demos.microservices import naive
from tasker.demos.microservices.reconcile import partial, reconcile
from tasker.demos.microservices.services.runner import ServiceFleet
from tasker.domain.history import EventRecord

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = "blog_examples/user_registration"
NAMESPACE = "blog_examples"
#: The service that goes down, its dependent system in the template, and the step that calls it.
OUTAGE_SERVICE, OUTAGE_SYSTEM, OUTAGE_STEP = "billing", "billing_service", "setup_billing_profile"
SYSTEMS = ("user_service", "billing_service", "preferences_service", "notification_service")
STEPS = (
    "create_user_account",
    "setup_billing_profile",
    "initialize_preferences",
    "send_welcome_sequence",
    "update_user_status",
)
#: Events that only an operator causes: each one is a manual intervention.
MANUAL_EVENTS = frozenset({"task.retried", "step.resolved", "task.resolved"})
#: How long the demo waits, after the service is back, for the registrations to finish.
RECOVERY_TIMEOUT_SECONDS = 120.0
WORKER_START_TIMEOUT_SECONDS = 30.0
FINISHED = frozenset({"complete", "error", "cancelled", "resolved_manually"})

OutageMode = Literal["refuse", "unavailable"]


@dataclass
class Progress:
    """One frame of the live display, reported about twice a second."""

    phase: str  # naive | starting | outage | recovery | done
    total: int
    elapsed: float = 0.0  # seconds since the outage began
    outage_left: float | None = None  # seconds until the service comes back (None once it is back)
    completed: int = 0
    failed: int = 0
    waiting: int = 0  # registrations whose billing step has not finished
    circuit: str = "closed"
    service_up: bool = True
    steps: dict[str, dict[str, int]] = field(default_factory=dict)  # step -> status -> count


Monitor = Callable[[Progress], None]


def generate_registrations(count: int, seed: int) -> list[dict[str, Any]]:
    """`count` sign-ups, reproducible from `seed`: mostly pro, some enterprise and free; paid ones
    have a card."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        plan = rng.choices(("free", "pro", "enterprise"), (25, 55, 20))[0]
        context: dict[str, Any] = {
            "user_info": {
                "email": f"user{i:04d}@growthcorp.example",
                "name": f"User {i:04d}",
                "plan": plan,
                "source": rng.choice(("web", "web", "mobile", "api")),
            },
            "preferences": {
                "marketing_emails": rng.random() < 0.4,
                "product_updates": rng.random() < 0.6,
                "newsletter": rng.random() < 0.3,
            },
            "correlation_id": f"reg-{seed % 100_000:05d}-{i:04d}",
        }
        if plan != "free":
            context["billing_info"] = {
                "payment_method": rng.choice(("card", "card", "paypal")),
                "billing_address": {
                    "street": f"{i + 1} Main Street",
                    "city": "Springfield",
                    "state": "IL",
                    "zip": f"{62700 + i % 100}",
                },
            }
        out.append(context)
    return out


def run_registration_outage(
    registrations: int = 47,
    outage_seconds: float = 60.0,
    *,
    workers: int = 2,
    concurrency: int = 16,
    outage_mode: OutageMode = "refuse",
    latency_ms: float = 20.0,
    database_url: str | None = None,
    seed: int | None = None,
    monitor: Monitor | None = None,
) -> dict[str, dict[str, Any]]:
    """Both sides of the story; `workers` worker processes (0: one worker inside this process).

    Without `database_url` the engine uses a fresh temporary SQLite file; the services always keep
    their state in a temporary directory, one per side, so each side is reconciled on its own.
    """
    if registrations < 1:
        raise ValueError("registrations must be at least 1")
    if outage_seconds <= 0:
        raise ValueError("outage_seconds must be greater than 0")
    seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
    batch = generate_registrations(registrations, seed)
    report = monitor or (lambda progress: None)
    with tempfile.TemporaryDirectory(prefix="tasker-registration-outage-") as tmp:
        naive_side = run_naive(
            batch,
            Path(tmp) / "naive",
            outage_mode=outage_mode,
            latency_ms=latency_ms,
            monitor=report,
        )
        engine_side = run_engine(
            batch,
            Path(tmp) / "engine",
            outage_seconds,
            workers=workers,
            concurrency=concurrency,
            outage_mode=outage_mode,
            latency_ms=latency_ms,
            database_url=database_url,
            monitor=report,
        )
    engine_side["seed"] = naive_side["seed"] = seed
    return {"naive": naive_side, "engine": engine_side}


# -- the naive side --------------------------------------------------------------------------------
def run_naive(
    batch: Sequence[dict[str, Any]],
    data_dir: Path,
    *,
    outage_mode: OutageMode = "refuse",
    latency_ms: float = 20.0,
    monitor: Monitor | None = None,
) -> dict[str, Any]:
    """Every registration through the sequential coordinator while the service is down, then the
    tally."""
    report = monitor or (lambda progress: None)
    failed_at: Counter[str] = Counter()
    started = time.perf_counter()
    with ServiceFleet(data_dir) as fleet:
        _slow_down(fleet, latency_ms)
        _take_down(fleet, outage_mode)
        with httpx.Client(timeout=10.0) as client:
            for n, context in enumerate(batch, 1):
                try:
                    naive.register(client, fleet.urls, context)
                except naive.RegistrationFailed as exc:
                    failed_at[exc.step] += 1
                report(
                    Progress(
                        "naive",
                        len(batch),
                        completed=n - sum(failed_at.values()),
                        failed=sum(failed_at.values()),
                        service_up=False,
                    )
                )
        fleet[OUTAGE_SERVICE].resume()
        figures = reconcile(fleet)
    failed = sum(failed_at.values())
    return {
        "registrations": len(batch),
        "completed": len(batch) - failed,
        "failed": failed,
        "failed_by_step": dict(sorted(failed_at.items())),
        **figures,
        "retries": 0,
        "manual_interventions": partial(figures),
        "wall_seconds": round(time.perf_counter() - started, 3),
    }


# -- the engine side -------------------------------------------------------------------------------
def confirm_email(tasker: Tasker, task_id: int) -> None:
    """The user clicks the link in their welcome e-mail: the application sends the signal that
    `confirm_email` waits for. The demo's users are quick, so they confirm as soon as they signed
    up; the signal is kept until the step waits for it (docs/microservices.md)."""
    tasker.signal(
        task_id,
        "email_confirmed",
        {"confirmed_via": "welcome_link"},
        idempotency_key=f"confirm-{task_id}",
    )


def run_engine(
    batch: Sequence[dict[str, Any]],
    data_dir: Path,
    outage_seconds: float,
    *,
    workers: int = 2,
    concurrency: int = 16,
    outage_mode: OutageMode = "refuse",
    latency_ms: float = 20.0,
    database_url: str | None = None,
    monitor: Monitor | None = None,
) -> dict[str, Any]:
    """The registrations as tasks, worked by `workers` processes through the outage; figures and
    timeline."""
    report = monitor or (lambda progress: None)
    total = len(batch)
    report(Progress("starting", total))
    started = time.perf_counter()
    with (
        ServiceFleet(data_dir) as fleet,
        _environment(fleet.env()),
        _database(database_url, data_dir) as url,
    ):
        tasker = Tasker(url, poll_interval=0.1, migrate=True)
        try:
            tasker.load_templates(TEMPLATES)  # also stores the template's circuit-breaker settings
            for (
                system
            ) in SYSTEMS:  # a store used before may hold an open circuit from an earlier run
                if _circuit_state(tasker, system) != "closed":
                    tasker.systems.reset_circuit(system)
            cursor = tasker.history.events_tail()
            _slow_down(fleet, latency_ms)
            with _workers(tasker, url, workers, concurrency, fleet.env(), data_dir):
                run_id = uuid.uuid4().hex[:10]
                down_at = _now()
                deadline = time.monotonic() + outage_seconds
                _take_down(fleet, outage_mode)
                ids = [
                    tasker.create_task(
                        TEMPLATE, context, idempotency_key=f"outage-{run_id}-{i:05d}"
                    ).id
                    for i, context in enumerate(batch)
                ]
                for task_id in ids:
                    confirm_email(tasker, task_id)
                while (left := deadline - time.monotonic()) > 0:
                    report(_progress(tasker, ids, "outage", down_at, left, service_up=False))
                    time.sleep(min(0.5, left))
                fleet[OUTAGE_SERVICE].resume()
                up_at = _now()
                give_up = time.monotonic() + RECOVERY_TIMEOUT_SECONDS
                while True:
                    frame = _progress(tasker, ids, "recovery", down_at, None, service_up=True)
                    report(frame)
                    if frame.completed + frame.failed >= total or time.monotonic() > give_up:
                        break
                    time.sleep(0.25)
            tasks = tasker.get_tasks(ids)
            report(_progress(tasker, ids, "done", down_at, None, service_up=True, tasks=tasks))
            events = _read_events(
                tasker, cursor, set(ids), expected_completions=_count(tasks, "complete")
            )
        finally:
            tasker.close()
        figures = reconcile(fleet)
    side = _engine_figures(tasks, events, figures, down_at=down_at, up_at=up_at)
    side["outage_seconds"] = outage_seconds
    side["outage_mode"] = outage_mode
    side["workers"] = workers
    side["wall_seconds"] = round(time.perf_counter() - started, 3)
    side["timeline"] = timeline(
        events, down_at=down_at, up_at=up_at, total=total, outage_mode=outage_mode
    )
    return side


def _engine_figures(
    tasks: list[Task],
    events: Sequence[Mapping[str, Any]],
    figures: dict[str, int],
    *,
    down_at: datetime,
    up_at: datetime,
) -> dict[str, Any]:
    completed_at = [_at(e) for e in events if e["event"] == "task.completed"]
    last = max(completed_at) if completed_at else None
    attempts: dict[str, dict[str, int]] = {}
    over = 0
    for name in STEPS:
        steps = [s for t in tasks for s in t.steps if s.name == name]
        counts = [s.attempts for s in steps]
        attempts[name] = {
            "max": max(counts, default=0),
            "total": sum(counts),
            "retry_limit": max((s.retry_limit for s in steps), default=0),
        }
        over += sum(1 for s in steps if s.attempts > s.retry_limit)
    circuit = [
        e
        for e in events
        if e["event"].startswith("circuit.") and e["data"].get("system") == OUTAGE_SYSTEM
    ]
    return {
        "registrations": len(tasks),
        "completed": _count(tasks, "complete"),
        "failed": sum(1 for t in tasks if t.status != TaskState.COMPLETE),
        "failed_by_step": dict(
            sorted(
                Counter(
                    s.name for t in tasks for s in t.steps if s.status == StepState.ERROR
                ).items()
            )
        ),
        **figures,
        "retries": sum(1 for e in events if e["event"] == "step.retry_scheduled"),
        "manual_interventions": sum(1 for e in events if e["event"] in MANUAL_EVENTS),
        "waiting_at_recovery": sum(
            1 for t in tasks if t.finished_at is None or _aware(t.finished_at) > up_at
        ),
        "recovery_to_last_completion_seconds": (
            round((last - up_at).total_seconds(), 3) if last else None
        ),
        "outage_started_at": down_at.isoformat(),
        "service_recovered_at": up_at.isoformat(),
        "last_completion_at": last.isoformat() if last else None,
        "attempts": attempts,
        "steps_over_retry_limit": over,
        "circuit_opened": sum(
            1
            for e in circuit
            if e["event"] == "circuit.opened" and e["data"].get("from_state") == "closed"
        ),
        "circuit_probes": sum(1 for e in circuit if e["event"] == "circuit.half_open"),
    }


def timeline(
    events: Sequence[Mapping[str, Any]],
    *,
    down_at: datetime,
    up_at: datetime,
    total: int,
    outage_mode: OutageMode = "refuse",
) -> list[dict[str, Any]]:
    """The story's log, from the event log plus the two moments the demo itself caused (down, back
    up)."""
    how = "connection refused" if outage_mode == "refuse" else "503 Service Unavailable"
    entries: list[tuple[datetime, str, str]] = [
        (down_at, "demo", f"BillingService goes down ({how})")
    ]
    billing = [e for e in events if e.get("step") == OUTAGE_STEP]
    failure = next(
        (e for e in billing if e["event"] in ("step.retry_scheduled", "step.failed")), None
    )
    if failure is not None:
        error = str((failure["data"].get("error") or {}).get("message") or "failed")
        error = error.split(" failed: ", 1)[
            -1
        ]  # the API handler's "POST <url> failed: connect error (...)"
        entries.append(
            (_at(failure), "event log", f"BillingService failure detected: {_short(error)}")
        )
    circuit = [
        e
        for e in events
        if e["event"].startswith("circuit.") and e["data"].get("system") == OUTAGE_SYSTEM
    ]
    opened = next((e for e in circuit if e["event"] == "circuit.opened" and _at(e) < up_at), None)
    if opened is not None:
        entries.append(
            (
                _at(opened),
                "event log",
                f"circuit {OUTAGE_SYSTEM} opened: {opened['data'].get('reason')}",
            )
        )
    # Registrations still waiting for billing when it came back, queued from when they got there (or
    # from the moment the circuit opened, when they stop spending attempts), whichever is later.
    waiting_since: dict[int, datetime] = {}
    for e in billing:
        if e["event"] in ("step.ready", "step.retry_scheduled") and _at(e) < up_at:
            waiting_since.setdefault(int(e["task_id"]), _at(e))
    done_before = {
        int(e["task_id"]) for e in billing if e["event"] == "step.completed" and _at(e) < up_at
    }
    queued = [at for t, at in waiting_since.items() if t not in done_before]
    if queued:
        at = max([*queued, *([_at(opened)] if opened is not None and _at(opened) < up_at else [])])
        entries.append(
            (
                at,
                "event log",
                (
                    f"{len(queued)} user registrations automatically queued for retry, waiting for"
                    " BillingService"
                ),
            )
        )
    probes = [e for e in circuit if e["event"] == "circuit.half_open" and _at(e) < up_at]
    if probes:
        entries.append(
            (
                _at(probes[-1]),
                "event log",
                (
                    f"{len(probes)} circuit probe(s) while it was down, each one failed and was"
                    " given back"
                ),
            )
        )
    entries.append((up_at, "demo", "BillingService healthy again"))
    closed = next((e for e in circuit if e["event"] == "circuit.closed" and _at(e) >= up_at), None)
    if closed is not None:
        reason = closed["data"].get("reason")
        entries.append(
            (
                _at(closed),
                "event log",
                f"circuit {OUTAGE_SYSTEM} closed ({reason}): processing queued registrations",
            )
        )
    completions = [e for e in events if e["event"] == "task.completed"]
    failures = [e for e in events if e["event"] == "task.failed"]
    if completions:
        last = max(_at(e) for e in completions)
        word = "All" if len(completions) == total else "Only"
        entries.append(
            (last, "event log", f"{word} {len(completions)} of {total} registrations completed")
        )
    if failures:
        entries.append(
            (max(_at(e) for e in failures), "event log", f"{len(failures)} registrations failed")
        )
    manual = sum(1 for e in events if e["event"] in MANUAL_EVENTS)
    entries.append(
        (
            max(at for at, _, _ in entries),
            "summary",
            (
                f"{manual if manual else 'Zero'} manual intervention{'s' if manual != 1 else ''} "
                "required"
            ),
        )
    )
    entries.sort(key=lambda item: item[0])
    return [
        {
            "at": at.isoformat(),
            "offset_seconds": round((at - down_at).total_seconds(), 3),
            "source": source,
            "text": text,
        }
        for at, source, text in entries
    ]


# -- helpers ---------------------------------------------------------------------------------------
def _progress(
    tasker: Tasker,
    ids: Sequence[int],
    phase: str,
    down_at: datetime,
    left: float | None,
    *,
    service_up: bool,
    tasks: list[Task] | None = None,
) -> Progress:
    tasks = tasks if tasks is not None else tasker.get_tasks(ids)
    steps: dict[str, Counter[str]] = {name: Counter() for name in STEPS}
    waiting = 0
    for t in tasks:
        for s in t.steps:
            steps.setdefault(s.name, Counter())[s.status] += 1
            if s.name == OUTAGE_STEP and s.status not in FINISHED:
                waiting += 1
    return Progress(
        phase,
        len(ids),
        elapsed=(_now() - down_at).total_seconds(),
        outage_left=left,
        completed=_count(tasks, "complete"),
        failed=sum(1 for t in tasks if t.status in (TaskState.ERROR, TaskState.CANCELLED)),
        waiting=waiting,
        circuit=_circuit_state(tasker, OUTAGE_SYSTEM),
        service_up=service_up,
        steps={k: dict(v) for k, v in steps.items()},
    )


def _circuit_state(tasker: Tasker, system: str) -> str:
    for row in tasker.systems.report():
        if row.get("name") == system:
            return str(row.get("circuit_state") or row.get("circuit") or "closed")
    return "closed"


def _read_events(
    tasker: Tasker, cursor: str, ids: set[int], *, expected_completions: int
) -> list[EventRecord]:
    """Every lifecycle event of this run's tasks, and the outage system's circuit changes, oldest
    first.

    The log may hold back the newest rows for a moment (PostgreSQL commits out of id order), so
    reading goes on until every completion the tasks show has been seen, for at most a few seconds.
    """
    out: list[EventRecord] = []
    give_up = time.monotonic() + 5.0
    while True:
        page = tasker.history.read_events(
            cursor, names=["task.*", "step.*", "circuit.*"], limit=1000
        )
        cursor = page.cursor
        for e in page.events:
            if e.get("task_id") in ids or (
                e["event"].startswith("circuit.") and (e.get("data") or {}).get("system") in SYSTEMS
            ):
                out.append(e)
        if page.more:
            continue
        seen = sum(1 for e in out if e["event"] == "task.completed")
        if seen >= expected_completions or time.monotonic() > give_up:
            return out
        time.sleep(0.25)


def _count(tasks: Sequence[Task], status: str) -> int:
    return sum(1 for t in tasks if t.status == status)


def _slow_down(fleet: ServiceFleet, latency_ms: float) -> None:
    """A little latency on every call, as real services have (and so that parallel branches
    overlap)."""
    if latency_ms:
        for handle in fleet.handles.values():
            handle.set_faults(latency_ms=latency_ms)


def _take_down(fleet: ServiceFleet, mode: OutageMode) -> None:
    if mode == "refuse":
        fleet[OUTAGE_SERVICE].refuse()
    else:
        fleet[OUTAGE_SERVICE].set_faults(down=True, down_mode="unavailable")


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _at(event: Mapping[str, Any]) -> datetime:
    at = event["at"]
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    return _aware(at)


def _short(text: str, limit: int = 110) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set the service URLs the template reads while the engine side runs, and restore them
    after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _database(url: str | None, data_dir: Path) -> Iterator[str]:
    if url:
        yield url
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    yield f"sqlite:///{data_dir / 'tasker.db'}"


@contextmanager
def _workers(
    tasker: Tasker, url: str, count: int, concurrency: int, env: dict[str, str], log_dir: Path
) -> Iterator[None]:
    """`count` `tasker worker` processes on the store (0: one worker thread in this process),
    stopped after.

    Their logs go to worker-N.log in `log_dir` (a pipe nobody reads would fill up and block them).
    """
    if count <= 0:
        worker = tasker.worker(concurrency=concurrency, namespaces=[NAMESPACE])
        thread = threading.Thread(
            target=tasker.work,
            kwargs={"worker": worker, "until_idle": False},
            name="registration-worker",
            daemon=True,
        )
        thread.start()
        try:
            yield
        finally:
            worker.stop()
            thread.join(timeout=30)
        return
    # The store URL goes in the environment, not on the command line where `ps` would show its
    # password. The handlers live in the `tasker` package the workers run, so no path needs adding
    # for them.
    child_env = {**os.environ, **env, "TASKER_DATABASE_URL": url, "TASKER_POLL_INTERVAL": "0.1"}
    command = [
        sys.executable,
        "-c",
        "from tasker.cli.main import main; main()",
        "worker",
        "--concurrency",
        str(concurrency),
        "--namespaces",
        NAMESPACE,
        "--grace-seconds",
        "5",
        "--templates",
        str(TEMPLATES),
    ]
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        for n in range(count):
            logs.append(log_dir / f"worker-{n + 1}.log")
            with logs[-1].open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        command,
                        env=child_env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        _wait_for_workers(tasker, procs, logs)
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class WorkerStartError(RuntimeError):
    """A worker process exited or did not register in time."""


def _wait_for_workers(
    tasker: Tasker, procs: Sequence[subprocess.Popen[bytes]], logs: Sequence[Path]
) -> None:
    """Until every process has registered in the store's worker registry, so the outage starts on a
    live fleet."""
    pids = {p.pid for p in procs}
    give_up = time.monotonic() + WORKER_START_TIMEOUT_SECONDS
    while time.monotonic() < give_up:
        for p, log in zip(procs, logs):
            if p.poll() is not None:
                lines = log.read_text(errors="replace").strip().splitlines()
                raise WorkerStartError(
                    f"a worker process exited with code {p.returncode}: "
                    f"{lines[-1] if lines else 'no output'}"
                )
        if pids <= {int(w["pid"]) for w in tasker.systems.workers(within_seconds=60)}:
            return
        time.sleep(0.1)
    raise WorkerStartError(
        f"the worker processes did not start within {WORKER_START_TIMEOUT_SECONDS:.0f} s"
    )
