"""What the API knows of the workers embedded in its own process (`tasker serve --workers N`).

The serving layer (`tasker.cli.serving`) supervises those workers and hands the app a source of
`EmbeddedWorkerState` snapshots; the health routes only read them. The dependency points downwards:
the API defines this small protocol and never imports the command that serves it. An app with
no source attached (served without `--workers`, or built in code) has no embedded workers, and
its health answers are what they always were.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from fastapi import FastAPI, Request

#: starting: launched, not yet running; running: its loop runs; restarting: it died and waits out
#: its backoff before the next start; stopped: the server is shutting down.
EmbeddedState = Literal["starting", "running", "restarting", "stopped"]


@dataclass(frozen=True)
class EmbeddedWorkerState:
    """One embedded worker slot as the supervisor sees it now (its number survives restarts)."""

    index: int
    total: int
    state: EmbeddedState
    worker_id: str | None
    since: datetime
    restarts: int
    last_error: str | None
    last_error_at: datetime | None
    restart_in_seconds: float | None

    @property
    def down(self) -> bool:
        """Not running steps, and not merely about to start: what readiness must report."""
        return self.state in ("restarting", "stopped")

    def reason(self) -> str:
        """One line for `/health/ready` and `/health/status`: which, since when, why, what next."""
        since = self.since.strftime("%Y-%m-%dT%H:%M:%SZ")
        line = f"embedded worker {self.index} of {self.total} is down since {since}"
        if self.state == "stopped":
            line += " (stopped: the server is shutting down)"
        if self.last_error:
            line += f", last error: {self.last_error}"
        if self.restart_in_seconds is not None:
            line += f", restarting in {self.restart_in_seconds:.0f} s"
        return line


class EmbeddedWorkers(Protocol):
    """A source of snapshots of the embedded workers; safe to call from any thread."""

    def snapshot(self) -> Sequence[EmbeddedWorkerState]: ...


def attach(app: FastAPI, workers: EmbeddedWorkers) -> None:
    """Let the health routes of `app` see the embedded workers (`tasker serve --workers N` does)."""
    app.state.embedded_workers = workers


def get_embedded_workers(request: Request) -> EmbeddedWorkers | None:
    """The dependency the health routes take: None when this process embeds no workers."""
    workers: EmbeddedWorkers | None = getattr(request.app.state, "embedded_workers", None)
    return workers
