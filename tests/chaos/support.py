"""Helpers of the fault tests: real `tasker worker` processes, killing them, waiting, restarting
PostgreSQL.

Every process started here is tracked by a `Fleet` and killed when the `with` block ends, whatever
happened in it; as a second line of defence each child asks Linux to SIGKILL it when the test
process dies (`PR_SET_PDEATHSIG`), so that a test killed by its timeout leaves no worker behind. The
death signal fires when the *thread* that spawned the child ends, so spawn workers from the test's
main thread only.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tasker.store.schema import metadata

REPO = Path(__file__).resolve().parents[2]
STORES = [
    s.strip()
    for s in os.environ.get("TASKER_TEST_STORES", "sqlite,postgresql").split(",")
    if s.strip()
]
_STARTED = re.compile(r"worker (\S+) started")
_PR_SET_PDEATHSIG = 1
HANDLERS = "tests.chaos.handlers"


def require_postgres() -> None:
    if "postgresql" not in STORES:
        pytest.skip("the fault tests need PostgreSQL (TASKER_TEST_STORES excludes it)")


def tasker_command() -> list[str]:
    """The `tasker` console script of this interpreter's environment (or the same entry point
    through -c)."""
    script = Path(sys.executable).parent / "tasker"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from tasker.cli.main import main; main()"]


def libpq_url(url: str) -> str:
    """`postgresql+psycopg://...` as a plain libpq URL that psycopg.connect and psql accept."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def worker_id(self) -> str | None:
        m = _STARTED.search(self.log())
        return m.group(1) if m else None

    def wait_started(self, timeout: float = 30) -> str:
        """The worker's id once it has logged its start line."""
        wid = wait_for(
            lambda: self.worker_id() or (None if self.alive() else "exited"),
            timeout,
            f"worker {self.pid} to start",
        )
        if wid == "exited":
            raise AssertionError(
                f"worker {self.pid} exited with {self.proc.returncode}:\n{self.log()[-3000:]}"
            )
        return str(wid)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


class Fleet:
    """Starts `tasker worker` processes on one store and guarantees they are gone when the block
    ends."""

    def __init__(
        self,
        database_url: str,
        templates: Path | Sequence[Path],
        log_dir: Path,
        *,
        concurrency: int = 8,
        lease_seconds: float = 2.0,
        grace_seconds: float | None = None,
        poll_interval: float = 0.1,
        env: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ):
        self.database_url = database_url
        self.templates = [templates] if isinstance(templates, Path) else list(templates)
        self.log_dir = log_dir
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.grace_seconds = grace_seconds
        self.poll_interval = poll_interval
        self.env = env or {}
        self.extra_args = list(extra_args)
        self.processes: list[WorkerProcess] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_all()

    def spawn(self) -> WorkerProcess:
        args = [
            *tasker_command(),
            "--database-url",
            self.database_url,
            "worker",
            "--concurrency",
            str(self.concurrency),
            "--lease-seconds",
            str(self.lease_seconds),
        ]
        if self.grace_seconds is not None:
            args += ["--grace-seconds", str(self.grace_seconds)]
        for t in self.templates:
            args += ["--templates", str(t)]
        args += self.extra_args
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env["TASKER_POLL_INTERVAL"] = str(self.poll_interval)
        env.pop("TASKER_DATABASE_URL", None)
        log_path = (
            self.log_dir / f"worker-{len(self.processes) + 1}.log"
        )  # stderr, where the worker logs
        with open(log_path, "wb") as log, open(log_path.with_suffix(".out"), "wb") as out:
            proc = subprocess.Popen(
                args,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log,
                preexec_fn=_die_with_parent,
            )
        w = WorkerProcess(proc, log_path)
        self.processes.append(w)
        return w

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.processes if w.alive()]

    def kill(self, w: WorkerProcess) -> None:
        """SIGKILL, and reap the process."""
        w.signal(signal.SIGKILL)
        w.wait(10)

    def stop_all(self, timeout: float = 30) -> dict[int, int | None]:
        """SIGTERM every live worker and wait for them; returns pid -> exit code (None: still
        running). A worker spawned moments ago is first given the time to start: until it logs its
        start line it has no handler for the signal, and would die of it (-15) instead of
        stopping."""
        live = self.alive()
        for w in live:
            wait_for(
                lambda w=w: w.worker_id() is not None or not w.alive(),  # type: ignore[misc]
                timeout,
                f"worker {w.pid} to start before it is stopped",
            )
            w.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        return {w.pid: w.wait(max(0.1, deadline - time.monotonic())) for w in live}

    def pause(self, w: WorkerProcess, db: sa.Engine, attempts: int = 50) -> None:
        """SIGSTOP `w` at a moment it holds no open transaction (no row locks), as a stalled process
        would.

        A process stopped inside its short claim transaction would keep its rows locked until it
        resumes; that is another scenario, so stop again until no session but this one is in a
        transaction.
        """
        for _ in range(attempts):
            w.signal(signal.SIGSTOP)
            time.sleep(0.1)
            busy = scalar(
                db,
                "select count(*) from pg_stat_activity where datname = current_database() "
                "and pid <> pg_backend_pid() and state <> 'idle'",
            )
            if not busy:
                return
            w.signal(signal.SIGCONT)
            time.sleep(0.05)
        raise AssertionError(f"could not pause worker {w.pid} outside a transaction")

    def kill_all(self) -> None:
        for w in self.processes:
            if w.alive():
                w.signal(signal.SIGKILL)
        for w in self.processes:
            w.wait(10)

    def logs(self, tail: int = 2000) -> str:
        return "\n".join(
            f"--- {w.log_path.name} (pid {w.pid}, exit {w.proc.returncode})\n{w.log()[-tail:]}"
            for w in self.processes
        )


def chain(n: int, handler: str, **step: Any) -> list[dict[str, Any]]:
    """Template entries of n steps s1 -> s2 -> ... -> sn, each run by `handler` of
    tests.chaos.handlers."""
    out = []
    for i in range(1, n + 1):
        s: dict[str, Any] = {"name": f"s{i}", "handler_class": f"{HANDLERS}:{handler}", **step}
        if i > 1:
            s["depends_on_step"] = f"s{i - 1}"
        out.append(s)
    return out


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout`
    seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# -- the store -------------------------------------------------------------------------------------
def wipe_store(url: str) -> None:
    """Empty every tasker table of the scratch database (the chaos tests use `pg_url` directly)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            names = {t.name for t in metadata.sorted_tables} | set(
                conn.execute(
                    sa.text(
                        "select tablename from pg_tables where schemaname = 'public' and tablename"
                        " like 'tasker_%'"
                    )
                ).scalars()
            )
            present = set(
                conn.execute(
                    sa.text("select tablename from pg_tables where schemaname = 'public'")
                ).scalars()
            )
            names &= present
            if names:
                conn.exec_driver_sql(
                    f"TRUNCATE {', '.join(sorted(names))} RESTART IDENTITY CASCADE"
                )
    finally:
        engine.dispose()


@contextlib.contextmanager
def scratch_engine(url: str) -> Iterator[sa.Engine]:
    """An engine for the test's own queries that survives a server restart (no pooled
    connections)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


def scalar(engine: sa.Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def rows(engine: sa.Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql), params))


def complete_transition_counts(engine: sa.Engine) -> dict[int, int]:
    """step id -> number of transitions of that step into `complete`."""
    return {
        r[0]: r[1]
        for r in rows(
            engine,
            "select s.id, count(t.id) from tasker_steps s left join "
            "tasker_step_transitions t on t.step_id = s.id and "
            "t.to_state = 'complete' group by s.id",
        )
    }


# -- the server ------------------------------------------------------------------------------------
def pg_cluster() -> tuple[str, str]:
    versions = sorted(os.listdir("/etc/postgresql"))
    if not versions:
        pytest.skip("no local PostgreSQL cluster under /etc/postgresql to restart")
    return versions[-1], "main"


def pg_ready(timeout: float = 2) -> bool:
    return (
        subprocess.run(
            ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432", "-t", str(int(max(1, timeout)))],
            check=False,
        ).returncode
        == 0
    )


def restart_postgres(down_seconds: float = 0.0, timeout: float = 60) -> float:
    """Restart the local cluster (as root, `pg_ctlcluster`; fast shutdown: every connection is
    closed and open transactions are rolled back), staying down `down_seconds`, and wait until it
    accepts connections.

    Returns the seconds from the stop command to the server being ready again.
    """
    version, name = pg_cluster()
    ctl = ["pg_ctlcluster", "--skip-systemctl-redirect", version, name]
    t0 = time.monotonic()
    if down_seconds <= 0:
        subprocess.run([*ctl, "restart"], check=True, timeout=timeout, capture_output=True)
    else:
        subprocess.run([*ctl, "stop"], check=True, timeout=timeout, capture_output=True)
        time.sleep(down_seconds)
        subprocess.run([*ctl, "start"], check=True, timeout=timeout, capture_output=True)
    wait_for(pg_ready, timeout, "PostgreSQL to accept connections again", interval=0.1)
    return time.monotonic() - t0


def ensure_postgres_up(timeout: float = 60) -> None:
    """Start the cluster if it is down (a failed restart must not leave the shared server
    stopped)."""
    if pg_ready():
        return
    version, name = pg_cluster()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"],
        check=False,
        timeout=timeout,
        capture_output=True,
    )
    wait_for(pg_ready, timeout, "PostgreSQL to start", interval=0.2)


def drop_dead_pooled_connections() -> None:
    """After a server restart every pooled connection of this process is dead: empty every engine's
    pool.

    Fixtures outlive the test (the session's admin engine of `pg_url`, engines of other helpers) and
    do not pre-ping; without this their next statement would fail on a connection the restart
    closed.
    """
    for obj in gc.get_objects():
        if isinstance(obj, sa.Engine) and obj.dialect.name == "postgresql":
            with contextlib.suppress(Exception):
                obj.dispose()


def make_effect_tables(url: str) -> None:
    """The tables `handlers.Effect` writes: one row per effect (keyed by idempotency key) and one
    per raw execution."""
    with scratch_engine(url) as db, db.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS chaos_effects, chaos_attempts")
        conn.exec_driver_sql(
            "CREATE TABLE chaos_effects (idempotency_key text PRIMARY KEY, step text NOT NULL, "
            "at timestamptz NOT NULL DEFAULT now())"
        )
        conn.exec_driver_sql(
            "CREATE TABLE chaos_attempts (id bigserial PRIMARY KEY, idempotency_key text NOT NULL, "
            "step text NOT NULL, attempt int NOT NULL, pid int NOT NULL, "
            "at timestamptz NOT NULL DEFAULT now())"
        )
