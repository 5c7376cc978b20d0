"""The driver-level SQLite statements store times exactly as SQLAlchemy's `UTCDateTime` would, so
rows written by either path sort and compare alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite

from tasker.store.schema import UTCDateTime
from tasker.store.sqlite_cycle import stamp

_DIALECT = sqlite.dialect()
_BIND = sqlite.DATETIME().bind_processor(_DIALECT)  # type: ignore[no-untyped-call]

offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
# Years whose UTC equivalent stays within datetime's range whatever the offset.
aware = st.datetimes(
    min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=offsets
)


def _sqlalchemy_stored(value: datetime) -> str:
    bound = UTCDateTime().process_bind_param(value, _DIALECT)
    assert _BIND is not None
    stored = _BIND(bound)
    assert isinstance(stored, str)
    return stored


@given(aware)
def test_stamp_matches_sqlalchemys_stored_text(value: datetime) -> None:
    assert stamp(value) == _sqlalchemy_stored(value)


def test_stamp_keeps_zero_microseconds_and_early_years() -> None:
    assert stamp(datetime(2026, 5, 1, 3, 4, 5, tzinfo=UTC)) == "2026-05-01 03:04:05.000000"
    assert stamp(datetime(999, 1, 1, tzinfo=UTC)) == "0999-01-01 00:00:00.000000"
    assert stamp(None) is None
