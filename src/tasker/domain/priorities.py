"""Priorities with ageing: which due step a claim takes first.

A task's `priority` (0, the default, to `MAX_PRIORITY`; higher first) moves each of its steps ahead
in the claim order by one minute per level: a claim takes due steps in the order of
`claim_key = run_at - priority minutes`, then id. So a priority-5 step goes before a priority-0
step that became due less than five minutes earlier, and after one that has waited longer. That is
the ageing rule: a step never waits more than `(p_high - p) minutes` behind work of priority
`p_high` that came due after it, however steady the stream of that work; a plain "higher first"
order would let it wait forever.

Priorities are not negative: a claim merges the queue of steps without a priority (in `run_at`
order) with the queue of prioritized steps (in `claim_key` order), which gives the exact order only
because no step's key is later than its `run_at` (`tasker.store.claims`). The store computes the key
in SQL (`tasker.store.schema.PRIORITY_KEY`); `tests/integration/test_priorities.py` checks that it
orders steps as `claim_key` does.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TypeVar

#: What one level of priority is worth in waiting time.
LEVEL = timedelta(minutes=1)
#: The highest priority: about 16 hours ahead of a step of priority 0.
MAX_PRIORITY = 1000

Row = TypeVar("Row")


def claim_key(run_at: datetime, priority: int) -> datetime:
    """A due step's place in the claim order: its `run_at`, `priority` minutes earlier."""
    return run_at - priority * LEVEL


def in_claim_order(rows: Iterable[tuple[int, datetime, int, Row]]) -> list[Row]:
    """`(id, run_at, priority, row)` in the order a claim takes them: by `claim_key`, then id."""
    ordered = sorted(rows, key=lambda r: (claim_key(r[1], r[2]), r[0]))
    return [r[3] for r in ordered]
