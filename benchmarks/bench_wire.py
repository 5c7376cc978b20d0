"""Database work per 5-step task, counted, not timed (issue 13, point 5), on SQLite and PostgreSQL.

Two workloads of the no-op chain in benchmarks/templates/linear5.yaml, each on a scratch store:
  a. sequential: `create_task` then `Tasker.run()` for one task at a time; per-task medians over
     `--tasks` tasks (after 3 warm-up tasks);
  b. batch: `create_tasks` of `--batch` tasks, then `work(concurrency=32, until_idle=True)`;
     totals divided by the number of tasks (creation and working are also reported apart).

What is counted, in the client (SQLAlchemy events on every engine the `Database` owns: writer,
reader, cycles; on SQLite, sqlite3's trace callback instead, which also sees the statements of the
driver-level cycle and counts one statement per parameter set of an executemany):
  statements   `before_cursor_execute`, one per cursor execution: an `executemany` batch (or an
               insertmanyvalues batch) is one statement, its parameter sets are counted as rows;
               SQLite's `BEGIN [IMMEDIATE]` (issued by the store's `begin` hook) is not a statement
               here but a BEGIN;
  BEGIN        Connection `begin` events (on PostgreSQL psycopg sends BEGIN before the first
               statement of the transaction);
  COMMIT / ROLLBACK   Connection `commit` / `rollback` events;
  checkouts    pool `checkout` events; new connections: pool `connect` events;
  pre-pings    calls of the engine dialect's `do_ping` (SQLAlchemy runs the ping on the raw DBAPI
               connection, so no cursor event shows it);
  pool resets  pool `reset` events that really roll back the DBAPI connection at check-in.
The estimate of round trips is statements + BEGIN + COMMIT + ROLLBACK + pre-pings (a pool reset at
check-in sends nothing, as the connection is no longer in a transaction: the wire shows it).

On PostgreSQL the client connects through a counting TCP proxy, so the wire is counted too:
  round trips  client messages that wait for the server: simple Query ('Q') and Sync ('S'), each
               answered by a ReadyForQuery, and, in pipeline mode, a Flush ('H') that asks for the
               answers of the statements sent since the last Sync or Flush (the transaction goes on:
               no ReadyForQuery); connection start-up is excluded and reported as connections;
  executions   Execute ('E') plus simple Query messages, prepares (Parse of a named statement
               without Execute in its round trip) and `DEALLOCATE ALL`s, as psycopg sends them;
and the server: WAL bytes (`pg_current_wal_insert_lsn()` before and after, read from a separate
admin connection to the `postgres` database; the insert position, as the write position may lag
it) and the scratch database's `pg_stat_database` deltas. A backend flushes its statistics at most
once a second and an idle one may hold them for up to 10 s, so every measured phase ends by closing
the engine's connections (a backend flushes them when it exits), then polls until the figures
settle; one `xact_commit` per backend start is subtracted (start-up reads the catalogs in a
transaction). Autovacuum is disabled on the scratch tables so it cannot write during a phase.

Run from the repository root:

    python benchmarks/bench_wire.py [--store sqlite|postgresql|both] [--tasks 20] [--batch 500]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from sqlalchemy import event  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from benchmarks.fleet import ADMIN_URL, scratch_database  # noqa: E402
from tasker import Tasker  # noqa: E402

TEMPLATES = ROOT / "benchmarks" / "templates"
REF = "bench/linear5"
STEPS = 5
CONCURRENCY = 32

# --- what a statement is -------------------------------------------------------------------------

_TABLE = re.compile(r"\b(?:from|into|update|join)\s+\"?([a-z_][a-z0-9_]*)", re.IGNORECASE)


def kind(sql: str) -> str:
    """The first SQL keyword and the first table a statement names: 'UPDATE tasker_steps'."""
    s = " ".join(sql.split())
    if s in ("", ";"):
        return "; (empty query: the pre-ping)"
    verb = s.split(" ", 1)[0].upper()
    if verb in ("BEGIN", "COMMIT", "ROLLBACK", "DEALLOCATE", "PRAGMA", "SAVEPOINT", "RELEASE"):
        return s.upper()[:40]
    if verb == "WITH":
        # the statement proper: the first data verb after the CTEs' own parentheses close
        depth, body = 0, ""
        for i, ch in enumerate(s):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and ch == ")":
                rest = s[i + 1 :].lstrip(" ,")
                if re.match(r"(?i)(select|insert|update|delete)\b", rest):
                    body = rest
                    break
        inner = kind(body) if body else "?"
        return f"WITH ... {inner}"
    m = _TABLE.search(s)
    if m:
        return f"{verb} {m.group(1)}"
    return s[:40]


# --- client-side counts --------------------------------------------------------------------------


@dataclass
class Counts:
    statements: int = 0
    executemany: int = 0
    rows: int = 0
    begin: int = 0
    commit: int = 0
    rollback: int = 0
    checkouts: int = 0
    connects: int = 0
    pings: int = 0
    resets: int = 0
    kinds: Counter[str] = field(default_factory=Counter)

    def minus(self, other: Counts) -> Counts:
        out = Counts(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in NUMERIC})
        out.kinds = self.kinds - other.kinds
        return out

    def copy(self) -> Counts:
        out = Counts(**{f.name: getattr(self, f.name) for f in NUMERIC})
        out.kinds = Counter(self.kinds)
        return out

    @property
    def round_trips_estimate(self) -> int:
        # not the pool resets: psycopg sends no ROLLBACK on a connection that is not in a
        # transaction, which after a COMMIT or ROLLBACK it never is (the wire shows it)
        return self.statements + self.begin + self.commit + self.rollback + self.pings


NUMERIC = [f for f in fields(Counts) if f.name != "kinds"]


class Probe:
    """SQLAlchemy engine and pool events of one `Database`, counted under a lock (several threads
    use the engines: the caller, the runner's loop, its database thread)."""

    def __init__(self, engines: list[sa.Engine]):
        self.lock = threading.Lock()
        self.counts = Counts()
        # One listener per pool: the PostgreSQL reader is the writer with autocommit (an option
        # engine whose events are the writer's), so attaching to both would count twice.
        for engine in {id(e.pool): e for e in reversed(engines)}.values():
            self._attach(engine)

    def snapshot(self) -> Counts:
        with self.lock:
            return self.counts.copy()

    def _attach(self, engine: sa.Engine) -> None:
        c = self.counts
        lock = self.lock
        if engine.dialect.name == "sqlite":
            self._attach_sqlite(engine)
            return

        def before(
            conn: Any, cursor: Any, stmt: str, params: Any, context: Any, many: bool
        ) -> None:
            if stmt.lstrip().upper().startswith("BEGIN"):
                return  # SQLite's own BEGIN, counted by the begin event
            with lock:
                c.statements += 1
                c.kinds[kind(stmt)] += 1
                if many:
                    c.executemany += 1
                    if (
                        isinstance(params, (list, tuple))
                        and params
                        and isinstance(params[0], (dict, list, tuple))
                    ):
                        c.rows += len(params)
                    else:  # an insertmanyvalues batch: the rows of the whole execution, once
                        if context is not None and not getattr(context, "_wire_counted", False):
                            context._wire_counted = True
                            c.rows += len(getattr(context, "compiled_parameters", None) or [1])
                else:
                    c.rows += 1

        def bump(name: str) -> Callable[..., None]:
            def fn(*_: Any) -> None:
                with lock:
                    setattr(c, name, getattr(c, name) + 1)

            return fn

        def bump_txn(name: str) -> Callable[..., None]:
            """BEGIN/COMMIT/ROLLBACK events, except on autocommit connections (nothing is sent)."""
            count = bump(name)

            def fn(conn: Any, *_: Any) -> None:
                if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
                    count()

            return fn

        def reset(dbapi_conn: Any, record: Any, state: Any) -> None:
            if not state.transaction_was_reset and not state.terminate_only:
                with lock:
                    c.resets += 1

        event.listen(engine, "before_cursor_execute", before)
        event.listen(engine, "begin", bump_txn("begin"))
        event.listen(engine, "commit", bump_txn("commit"))
        event.listen(engine, "rollback", bump_txn("rollback"))
        event.listen(engine.pool, "checkout", bump("checkouts"))
        event.listen(engine.pool, "connect", bump("connects"))
        event.listen(engine.pool, "reset", reset)
        ping = engine.dialect.do_ping
        count_ping = bump("pings")

        def do_ping(dbapi_connection: Any) -> bool:
            count_ping()
            return ping(dbapi_connection)

        engine.dialect.do_ping = do_ping  # type: ignore[method-assign]

    def _attach_sqlite(self, engine: sa.Engine) -> None:
        """SQLite: sqlite3's trace callback sees every statement the library runs, whoever sends
        it (SQLAlchemy, or the driver-level cycle that bypasses it), one per parameter set."""
        c, lock = self.counts, self.lock

        def trace(stmt: str) -> None:
            head = stmt.lstrip()[:8].upper()
            with lock:
                if head.startswith("BEGIN"):
                    c.begin += 1
                elif head.startswith("COMMIT"):
                    c.commit += 1
                elif head.startswith("ROLLBACK"):
                    c.rollback += 1
                elif not head.startswith("PRAGMA"):
                    c.statements += 1
                    c.rows += 1
                    c.kinds[kind(stmt)] += 1

        def checkout(dbapi_conn: Any, *_: Any) -> None:
            dbapi_conn.set_trace_callback(trace)
            with lock:
                c.checkouts += 1

        def reset(dbapi_conn: Any, record: Any, state: Any) -> None:
            if not state.transaction_was_reset and not state.terminate_only:
                with lock:
                    c.resets += 1

        event.listen(engine.pool, "checkout", checkout)
        event.listen(engine.pool, "connect", lambda *_: setattr(c, "connects", c.connects + 1))
        event.listen(engine.pool, "reset", reset)


# --- the wire ------------------------------------------------------------------------------------


@dataclass
class Wire:
    connections: int = 0
    round_trips: int = 0
    ready: int = 0  # ReadyForQuery after start-up, from the server: should equal round_trips
    #: Flushes that asked for the answers of statements sent since the last Sync or Flush: in
    #: pipeline mode the client waits for them without ending the transaction (a round trip
    #: that no ReadyForQuery answers).
    flushes: int = 0
    executions: int = 0
    prepares: int = 0
    deallocate_all: int = 0
    kinds: Counter[str] = field(default_factory=Counter)

    def minus(self, other: Wire) -> Wire:
        out = Wire(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in WIRE_NUM})
        out.kinds = self.kinds - other.kinds
        return out


WIRE_NUM = [f for f in fields(Wire) if f.name != "kinds"]


class WireProxy:
    """A TCP proxy in front of PostgreSQL that parses the v3 protocol just enough to count."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.lock = threading.Lock()
        self.wire = Wire()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="wire-accept").start()

    def snapshot(self) -> Wire:
        with self.lock:
            out = Wire(**{f.name: getattr(self.wire, f.name) for f in WIRE_NUM})
            out.kinds = Counter(self.wire.kinds)
            return out

    def close(self) -> None:
        self._closed = True
        self.sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.wire.connections += 1
            threading.Thread(target=self._client_side, args=(client, server), daemon=True).start()
            threading.Thread(target=self._server_side, args=(server, client), daemon=True).start()

    @staticmethod
    def _pump(
        src: socket.socket,
        dst: socket.socket,
        on_message: Callable[[int, bytes], None],
        startup: bool,
    ) -> None:
        buf = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                buf += data
                pos = 0
                while True:
                    if startup:  # the untyped start-up message
                        if len(buf) - pos < 4:
                            break
                        n = int.from_bytes(buf[pos : pos + 4], "big")
                        if len(buf) - pos < n:
                            break
                        code = int.from_bytes(buf[pos + 4 : pos + 8], "big")
                        assert code >> 16 == 3, "use sslmode=disable and gssencmode=disable"
                        pos += n
                        startup = False
                        continue
                    if len(buf) - pos < 5:
                        break
                    n = int.from_bytes(buf[pos + 1 : pos + 5], "big")
                    if len(buf) - pos < 1 + n:
                        break
                    on_message(buf[pos], buf[pos + 5 : pos + 1 + n])
                    pos += 1 + n
                buf = buf[pos:]
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def _client_side(self, client: socket.socket, server: socket.socket) -> None:
        names: dict[bytes, str] = {}
        batch: dict[str, Any] = {"kind": None, "execute": False, "parse_named": False}
        w, lock = self.wire, self.lock

        def on_message(t: int, body: bytes) -> None:
            if t == ord("Q"):
                sql = body.rstrip(b"\0").decode(errors="replace")
                k = kind(sql)
                with lock:
                    w.round_trips += 1
                    w.executions += 1
                    w.deallocate_all += k.startswith("DEALLOCATE ALL")
                    w.kinds[k] += 1
            elif t == ord("P"):
                name, rest = body.split(b"\0", 1)
                sql = rest.split(b"\0", 1)[0].decode(errors="replace")
                names[name] = kind(sql)
                if name:
                    batch["parse_named"] = True
                batch["kind"] = batch["kind"] or names[name]
            elif t == ord("B"):
                stmt = body.split(b"\0", 2)[1]
                batch["kind"] = batch["kind"] or names.get(stmt, "?")
            elif t == ord("E"):
                batch["execute"] = True
                with lock:
                    w.executions += 1
            elif t == ord("H"):
                if batch["kind"] is None:
                    return  # nothing sent since the last Sync or Flush: no answer to wait for
                k = batch["kind"]
                with lock:
                    w.round_trips += 1
                    w.flushes += 1
                    w.kinds[k] += 1
                batch.update(kind=None, execute=False, parse_named=False)
            elif t == ord("S"):
                k = batch["kind"] or "(sync)"
                prepare = batch["parse_named"] and not batch["execute"]
                with lock:
                    w.round_trips += 1
                    w.prepares += prepare
                    w.deallocate_all += k.startswith("DEALLOCATE ALL")
                    w.kinds[f"prepare {k}" if prepare else k] += 1
                batch.update(kind=None, execute=False, parse_named=False)

        self._pump(client, server, on_message, startup=True)

    def _server_side(self, server: socket.socket, client: socket.socket) -> None:
        started = False
        w, lock = self.wire, self.lock

        def on_message(t: int, body: bytes) -> None:
            nonlocal started
            if t == ord("Z"):
                if started:
                    with lock:
                        w.ready += 1
                started = True

        self._pump(server, client, on_message, startup=False)


# --- the server ----------------------------------------------------------------------------------

STAT_COLUMNS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted")


class Server:
    """The admin connection: WAL position and the scratch database's statistics."""

    def __init__(self, database: str):
        self.database = database
        self.engine = sa.create_engine(
            ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
        )
        self.conn = self.engine.connect()

    def lsn(self) -> int:
        return int(
            self.conn.exec_driver_sql(
                "select pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')"
            ).scalar_one()
        )

    def stats(self) -> dict[str, int]:
        self.conn.exec_driver_sql("select pg_stat_clear_snapshot()")
        row = self.conn.execute(
            sa.text(f"select {', '.join(STAT_COLUMNS)} from pg_stat_database where datname = :d"),
            {"d": self.database},
        ).one()
        return dict(zip(STAT_COLUMNS, (int(v) for v in row)))

    def settled_stats(self, timeout: float = 15.0) -> dict[str, int]:
        """The statistics once they stop moving for a second (the backends have exited)."""
        last, since = self.stats(), time.monotonic()
        deadline = since + timeout
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = self.stats()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= 1.0:
                break
        return last

    def others_active(self) -> int:
        return int(
            self.conn.exec_driver_sql(
                "select count(*) from pg_stat_activity where backend_type = 'client backend'"
                " and state <> 'idle' and pid <> pg_backend_pid()"
            ).scalar_one()
        )

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()


# --- one store -----------------------------------------------------------------------------------


@dataclass
class Measured:
    """Totals of one phase and the number of tasks they cover."""

    tasks: int
    counts: Counts
    wire: Wire | None = None
    server: dict[str, int] | None = None


class Store:
    def __init__(self, name: str, url: str, proxy: WireProxy | None, server: Server | None):
        self.name, self.url, self.proxy, self.server = name, url, proxy, server
        self.t = Tasker(url, poll_interval=0.5, migrate=True)
        self.t.load_templates(TEMPLATES / "linear5.yaml")
        db = self.t.db
        self.probe = Probe([db.writer, db.reader, db.cycles])
        if server is not None:
            with db.write() as c:
                for (table,) in c.exec_driver_sql(
                    "select tablename from pg_tables where schemaname = current_schema()"
                ):
                    c.exec_driver_sql(f'alter table "{table}" set (autovacuum_enabled = false)')

    def run_one(self, i: int) -> None:
        task = self.t.create_task(REF, {"i": i})
        assert self.t.run(task.id).status == "complete"

    @contextmanager
    def phase(self, tasks: int, out: list[Measured]) -> Iterator[None]:
        """Count what the block does (on PostgreSQL: from idle to idle, connections closed)."""
        if self.server is not None:
            self.t.db.dispose()
            before_stats = self.server.settled_stats()
            before_lsn = self.server.lsn()
        c0 = self.probe.snapshot()
        w0 = self.proxy.snapshot() if self.proxy else None
        yield
        counts = self.probe.snapshot().minus(c0)
        m = Measured(tasks, counts)
        if self.proxy is not None and w0 is not None and self.server is not None:
            m.wire = self.proxy.snapshot().minus(w0)
            wal = self.server.lsn() - before_lsn
            self.t.db.dispose()
            after = self.server.settled_stats()
            m.server = {k: after[k] - before_stats[k] for k in STAT_COLUMNS}
            m.server["xact_commit"] -= m.wire.connections  # one per backend start-up
            m.server["wal_bytes"] = wal
        out.append(m)

    def close(self) -> None:
        self.t.close()


def per_task(m: Measured) -> dict[str, float]:
    n = m.tasks
    d: dict[str, float] = {f.name: getattr(m.counts, f.name) / n for f in NUMERIC}
    d["round_trips_estimate"] = m.counts.round_trips_estimate / n
    if m.wire is not None:
        for f in WIRE_NUM:
            d[f"wire_{f.name}"] = getattr(m.wire, f.name) / n
    if m.server is not None:
        for k, v in m.server.items():
            d[f"server_{k}"] = v / n
    return d


def top_kinds(counter: Counter[str], tasks: int, k: int = 12) -> list[tuple[str, float]]:
    return [(name, n / tasks / STEPS) for name, n in counter.most_common(k)]


def measure(store: str, tasks: int, batch: int, workdir: Path) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with scratch(store, workdir) as (url, proxy, server):
        s = Store(store, url, proxy, server)
        try:
            for i in range(3):  # warm-up: imports, statement caches, pools
                s.run_one(-1 - i)
            if server is not None:
                result["other_active_backends"] = server.others_active()
            singles: list[Measured] = []
            wal: list[int] = []
            for i in range(tasks):
                lsn = server.lsn() if server else 0
                with _plain(s, singles):
                    s.run_one(i)
                if server is not None:
                    wal.append(server.lsn() - lsn)
            # the server's statistics of the same tasks, run again from idle to idle
            whole: list[Measured] = []
            with s.phase(tasks, whole):
                for i in range(tasks):
                    s.run_one(1000 + i)
        finally:
            s.close()
        rows = [per_task(m) for m in singles]
        seq = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        seq["tasks"] = tasks
        if server is not None:
            seq["server_wal_bytes"] = statistics.median(wal)
            for key, v in per_task(whole[0]).items():
                if key.startswith("server_") and key != "server_wal_bytes":
                    seq[key] = v
            seq["server_wal_bytes_mean"] = per_task(whole[0])["server_wal_bytes"]
        result["sequential"] = seq
        allkinds: Counter[str] = Counter()
        wirekinds: Counter[str] = Counter()
        for m in singles:
            allkinds.update(m.counts.kinds)
            if m.wire:
                wirekinds.update(m.wire.kinds)
        result["sequential_kinds"] = top_kinds(allkinds, tasks)
        if proxy is not None:
            result["sequential_wire_kinds"] = top_kinds(wirekinds, tasks)
    with scratch(store, workdir) as (url, proxy, server):
        s = Store(store, url, proxy, server)
        try:
            s.run_one(-1)
            parts: list[Measured] = []
            with s.phase(batch, parts):
                s.t.create_tasks(REF, [{"i": i} for i in range(batch)])
            with s.phase(batch, parts):
                ran = s.t.work(concurrency=CONCURRENCY, until_idle=True)
                assert ran == batch * STEPS, ran
        finally:
            s.close()
        create, work = (per_task(m) for m in parts)
        result["batch_create"] = create | {"tasks": batch}
        result["batch_work"] = work | {"tasks": batch}
        result["batch"] = {k: create[k] + work[k] for k in create} | {"tasks": batch}
        kinds = parts[0].counts.kinds + parts[1].counts.kinds
        result["batch_kinds"] = top_kinds(kinds, batch)
        if proxy is not None:
            w0, w1 = parts[0].wire, parts[1].wire
            assert w0 is not None and w1 is not None
            result["batch_wire_kinds"] = top_kinds(w0.kinds + w1.kinds, batch)
    return result


def measure_dbos(tasks: int, workdir: Path) -> dict[str, Any]:
    """The same sequential workload on DBOS through the same proxy: a 5-step workflow (no-op
    steps) called directly, one at a time. Counted on the wire and in the server only (DBOS's own
    SQLAlchemy engines are not instrumented): per workflow, the median of `tasks` for round trips,
    executions and WAL bytes; the server's statistics over all of them, from idle to idle."""
    from benchmarks import dbos_fleet

    with scratch("postgresql", workdir) as (url, proxy, server):
        assert proxy is not None and server is not None
        linear5 = dbos_fleet.launch(url)
        try:
            for i in range(3):
                linear5(-1 - i)
            wires: list[Wire] = []
            wal: list[int] = []
            before_stats = server.settled_stats()
            w_all = proxy.snapshot()
            for i in range(tasks):
                lsn, w0 = server.lsn(), proxy.snapshot()
                linear5(i)
                wires.append(proxy.snapshot().minus(w0))
                wal.append(server.lsn() - lsn)
            whole = proxy.snapshot().minus(w_all)
        finally:
            dbos_fleet.destroy()
        after = server.settled_stats()
    seq: dict[str, Any] = {
        f"wire_{f.name}": statistics.median(getattr(w, f.name) for w in wires) for f in WIRE_NUM
    }
    for k in STAT_COLUMNS:
        seq[f"server_{k}"] = (after[k] - before_stats[k]) / tasks
    seq["server_xact_commit"] -= whole.connections / tasks
    seq["server_wal_bytes"] = statistics.median(wal)
    seq["tasks"] = tasks
    kinds: Counter[str] = Counter()
    for w in wires:
        kinds.update(w.kinds)
    return {"sequential": seq, "sequential_wire_kinds": top_kinds(kinds, tasks)}


@contextmanager
def _plain(s: Store, out: list[Measured]) -> Iterator[None]:
    """Client and wire counts of the block, without closing connections (warm pools)."""
    c0 = s.probe.snapshot()
    w0 = s.proxy.snapshot() if s.proxy else None
    yield
    m = Measured(1, s.probe.snapshot().minus(c0))
    if s.proxy is not None and w0 is not None:
        m.wire = s.proxy.snapshot().minus(w0)
    out.append(m)


@contextmanager
def scratch(store: str, workdir: Path) -> Iterator[tuple[str, WireProxy | None, Server | None]]:
    if store == "sqlite":
        yield f"sqlite:///{workdir / f'wire-{uuid.uuid4().hex[:8]}.db'}", None, None
        return
    with scratch_database("tasker_wire") as direct:
        u = make_url(direct)
        proxy = WireProxy((u.host or "127.0.0.1", u.port or 5432))
        server = Server(u.database or "")
        url = u.set(
            port=proxy.port, query={"sslmode": "disable", "gssencmode": "disable"}
        ).render_as_string(hide_password=False)
        try:
            yield url, proxy, server
        finally:
            server.close()
            proxy.close()


# --- report --------------------------------------------------------------------------------------

ROWS: list[tuple[str, str]] = [
    ("statements", "SQL statements (client)"),
    ("executemany", "  of which executemany batches"),
    ("rows", "  rows bound"),
    ("begin", "BEGIN"),
    ("commit", "COMMIT"),
    ("rollback", "ROLLBACK"),
    ("checkouts", "pool checkouts"),
    ("pings", "pre-pings"),
    ("resets", "pool resets (rollback at check-in)"),
    ("connects", "new connections"),
    ("round_trips_estimate", "round trips, estimated (stmts+txn+pings)"),
    ("wire_round_trips", "round trips on the wire (Query + Sync + Flush)"),
    ("wire_flushes", "  of which pipeline flushes"),
    ("wire_executions", "server executions (Execute + Query)"),
    ("wire_prepares", "  prepares (extra round trip)"),
    ("wire_deallocate_all", "  DEALLOCATE ALL"),
    ("server_xact_commit", "server xact_commit"),
    ("server_xact_rollback", "server xact_rollback"),
    ("server_tup_inserted", "server tup_inserted"),
    ("server_tup_updated", "server tup_updated"),
    ("server_tup_deleted", "server tup_deleted"),
    ("server_wal_bytes", "WAL bytes"),
]


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}"


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    console = Console()
    cols: list[tuple[str, dict[str, float]]] = []
    for store, r in results.items():
        if store == "dbos":
            cols.append(("DBOS (PostgreSQL), one workflow", r["sequential"]))
            continue
        cols.append((f"{store} run()", r["sequential"]))
        cols.append((f"{store} batch", r["batch"]))
    table = Table(
        title=(
            f"Database work per 5-step task / per step, counted ({os.cpu_count()} CPUs; run():"
            f" median of {args.tasks} tasks; batch: {args.batch} tasks, concurrency {CONCURRENCY})"
        )
    )
    table.add_column("measure")
    for name, _ in cols:
        table.add_column(f"{name}\ntask / step", justify="right")
    for key, label in ROWS:
        if not any(key in c for _, c in cols):
            continue
        cells = []
        for _, c in cols:
            v = c.get(key)
            cells.append("-" if v is None else f"{fmt(v)} / {fmt(v / STEPS)}")
        table.add_row(label, *cells)
    console.print(table)
    if "dbos" in results and "postgresql" in results:
        ours, theirs = results["postgresql"]["sequential"], results["dbos"]["sequential"]
        side = Table(title="Sequential 5-step task on PostgreSQL: Tasker run() / DBOS workflow")
        for col in ("per task", "Tasker", "DBOS", "Tasker / DBOS"):
            side.add_column(col, justify="left" if col == "per task" else "right")
        for key, label in (
            ("wire_round_trips", "round trips on the wire"),
            ("wire_executions", "server executions"),
            ("server_xact_commit", "commits"),
            ("server_tup_inserted", "rows inserted"),
            ("server_tup_updated", "rows updated"),
            ("server_wal_bytes", "WAL bytes"),
        ):
            a, b = ours.get(key), theirs.get(key)
            ratio = f"{a / b:.2f}" if a is not None and b else "-"
            side.add_row(label, fmt(a), fmt(b), ratio)
        console.print(side)
    for store, r in results.items():
        if "other_active_backends" in r:
            agree = all(
                r[p]["wire_ready"] == r[p]["wire_round_trips"] - r[p]["wire_flushes"]
                for p in ("sequential", "batch")
            )
            console.print(
                f"{store}: other busy client backends at the start:"
                f" {r['other_active_backends']}; every Query/Sync answered by one ReadyForQuery:"
                f" {'yes' if agree else 'NO'}"
            )
    for store, r in results.items():
        for key, title in (
            ("sequential_kinds", "statements per step, run()"),
            ("batch_kinds", "statements per step, batch"),
            ("sequential_wire_kinds", "round trips per step on the wire, run()"),
            ("batch_wire_kinds", "round trips per step on the wire, batch"),
        ):
            if key not in r:
                continue
            t = Table(title=f"{store}: {title}")
            t.add_column("kind (first keyword, first table)")
            t.add_column("per step", justify="right")
            for name, v in r[key]:
                t.add_row(name, f"{v:.2f}")
            console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--tasks", type=int, default=20, help="sequential tasks (median reported)")
    ap.add_argument("--batch", type=int, default=500, help="tasks in the batch")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--no-dbos", action="store_true", help="skip DBOS's workflow on PostgreSQL (the peer)"
    )
    args = ap.parse_args()
    stores = ["sqlite", "postgresql"] if args.store == "both" else [args.store]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for store in stores:
            results[store] = measure(store, args.tasks, args.batch, Path(tmp))
        if "postgresql" in stores and not args.no_dbos:
            results["dbos"] = measure_dbos(args.tasks, Path(tmp))
    if args.json:
        print(json.dumps(results, indent=1))
        return
    report(results, args)


if __name__ == "__main__":
    main()
