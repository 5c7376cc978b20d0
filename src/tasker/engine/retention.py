"""Deleting finished tasks: `engine.retention.purge(...)`, `tasker tasks purge`.

Finished tasks (complete, error, cancelled, resolved by hand, compensated) older than a duration are
deleted with all their rows, oldest first, in batches that each commit by themselves, so a purge of
millions never blocks the workers for long. `dry_run` only counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from tasker.domain.errors import TaskerInputError
from tasker.domain.states import FINISHED_TASK_STATES
from tasker.domain.waits import duration_seconds
from tasker.engine import clock
from tasker.store import purge as purge_store
from tasker.store.database import Database

_FINISHED = sorted(s.value for s in FINISHED_TASK_STATES)


@dataclass(frozen=True)
class PurgeReport:
    """What a purge found and deleted (`deleted` is 0 for a dry run)."""

    matched: int
    deleted: int
    dry_run: bool


class Retention:
    """The store's finished tasks, and their deletion."""

    def __init__(self, db: Database):
        self.db = db

    def purge(
        self,
        older_than: float | str | timedelta,
        *,
        statuses: Sequence[str] | None = None,
        namespace: str | None = None,
        dry_run: bool = False,
        batch: int = 500,
    ) -> PurgeReport:
        """Delete the finished tasks that finished more than `older_than` ago (seconds, `30d`,
        `P30D`), of these `statuses` (finished ones only) and this `namespace`, with every row
        that names them; returns how many matched and were deleted."""
        try:
            seconds = duration_seconds(older_than)
        except ValueError as exc:
            raise TaskerInputError(f"older_than: {exc}") from None
        wrong = [s for s in statuses or () if s not in _FINISHED]
        if wrong:
            raise TaskerInputError(
                f"only finished tasks are purged; {', '.join(wrong)} is not a finished state"
                f" ({', '.join(_FINISHED)})"
            )
        if not 1 <= batch <= 10_000:
            raise TaskerInputError("batch must be between 1 and 10,000")
        before = clock.now() - timedelta(seconds=seconds)
        with self.db.read() as conn:
            matched = purge_store.count(conn, before, statuses, namespace)
        if dry_run:
            return PurgeReport(matched, 0, True)
        deleted = 0
        while True:
            with self.db.write() as conn:
                done = purge_store.purge_batch(conn, before, statuses, namespace, batch)
            deleted += done
            if done < batch:
                return PurgeReport(matched, deleted, False)
