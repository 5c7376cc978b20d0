"""The typed records of `tasker.domain.history` keep the keys the store hands out: a row-shaped one
has exactly its table's columns (the store casts `dict(row._mapping)` to it)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Table

from tasker.domain.history import (
    CircuitChange,
    EventFields,
    EventRecord,
    StepTransition,
    TaskTransition,
    WorkerRecord,
)
from tasker.store.schema import circuit_transitions, step_transitions, task_transitions, workers


def _keys(record: Any) -> set[str]:
    return set(record.__required_keys__) | set(record.__optional_keys__)


@pytest.mark.parametrize(
    ("record", "table"),
    [
        (StepTransition, step_transitions),
        (TaskTransition, task_transitions),
        (CircuitChange, circuit_transitions),
        (WorkerRecord, workers),
    ],
)
def test_a_row_record_has_its_tables_columns(record: Any, table: Table) -> None:
    assert _keys(record) == set(table.c.keys())
    assert not record.__optional_keys__


def test_an_event_record_is_its_fields_and_a_cursor() -> None:
    assert _keys(EventRecord) == _keys(EventFields) | {"cursor"}
    assert not EventRecord.__optional_keys__
