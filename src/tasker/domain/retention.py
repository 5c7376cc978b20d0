"""Retention: how long finished tasks are kept, by state, store-wide and per template.

Pure, so that the rule "which cut-off applies to which task" is decided and tested in one place:
the housekeeping job (`tasker.engine.housekeeping_job`) turns the `cutoffs` into deletions, and
health and `tasker retention` show the same `RetentionPolicy` values.

- The store-wide default comes from the settings (`retention`, docs/configuration.md); none set
  means no task is deleted automatically.
- A template may declare `retention: {complete: 30d, error: never}`. The newest version of a
  template that the store holds (by semantic version, then the latest snapshot) speaks for the
  tasks of all its versions: an operator thinks of "the billing tasks", not of the version each
  was created with, and a longer retention declared in a new version then protects the old
  tasks too.
- Per state, a template's entry wins over the default; `never` keeps that state's tasks forever
  even when the default would delete them. A state the template leaves out follows the default.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tasker.domain.errors import TaskerError
from tasker.domain.states import FINISHED_TASK_STATES, TaskState
from tasker.domain.waits import duration_seconds

#: The states a retention may name, in a stable order: only a finished task is ever deleted.
RETAINED_STATES: tuple[TaskState, ...] = tuple(sorted(FINISHED_TASK_STATES))
#: The value that keeps a state's tasks forever.
NEVER = "never"
#: A retention's period for one state: seconds, or None for `never`.
Period = float | None
#: (namespace, name) of a template.
TemplateName = tuple[str, str]

_STATES = ", ".join(s.value for s in RETAINED_STATES)
_ACCEPTED = "use seconds (86400), an ISO-8601 duration (P30D), 30d, 12h, 2w, or never"
#: The longest period a retention or a purge takes: records kept for years (seven, for
#: bookkeeping, is common) must be expressible; a century is past any such rule.
MAX_RETENTION_SECONDS = 36_500 * 86_400.0


def parse_period(value: Any) -> Period:
    """One state's period: a duration (as `duration_seconds` reads it) or `never` (None)."""
    if isinstance(value, str) and value.strip().lower() == NEVER:
        return None
    if value is None:
        raise ValueError(f"a period is required; {_ACCEPTED}")
    try:
        return duration_seconds(value, MAX_RETENTION_SECONDS)
    except ValueError as exc:
        raise ValueError(f"{exc}; or never to keep them forever") from None


def _state(key: Any) -> TaskState:
    text = key.strip().lower() if isinstance(key, str) else key
    try:
        state = TaskState(text)
    except ValueError:
        raise ValueError(f"{key!r} is not a task state; use one of {_STATES}") from None
    if state not in FINISHED_TASK_STATES:
        raise ValueError(
            f"{state.value} is not a finished state (only finished tasks are deleted); use one of"
            f" {_STATES}"
        )
    return state


def _pairs(value: Any) -> list[tuple[Any, Any]]:
    """The (state, period) pairs of a mapping, or of text like `complete=30d,error=90d` (an
    environment variable)."""
    if isinstance(value, Mapping):
        return list(value.items())
    if isinstance(value, str):
        pairs: list[tuple[Any, Any]] = []
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            key, sep, period = part.partition("=")
            if not sep:
                raise ValueError(
                    f"{part!r} is not state=duration; write e.g. complete=30d,error=90d"
                )
            pairs.append((key.strip(), period.strip()))
        return pairs
    raise ValueError(
        f"{type(value).__name__} is not a retention; map finished states to durations, e.g."
        " {complete: 30d, error: 90d}"
    )


@dataclass(frozen=True)
class RetentionPolicy:
    """How long the tasks of each finished state are kept; a state absent from `periods` is not
    decided here (it follows the default, or is kept)."""

    periods: Mapping[TaskState, Period] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: Any) -> RetentionPolicy:
        """From a mapping (`{complete: 30d, error: never}`) or text (`complete=30d,error=90d`);
        None or an empty mapping is the empty policy. Raises `ValueError` naming the state."""
        if value is None:
            return cls()
        if isinstance(value, RetentionPolicy):
            return value
        periods: dict[TaskState, Period] = {}
        for key, raw in _pairs(value):
            state = _state(key)
            if state in periods:
                raise ValueError(f"{state.value} is given twice")
            try:
                periods[state] = parse_period(raw)
            except ValueError as exc:
                raise ValueError(f"{state.value}: {exc}") from None
        return cls(periods)

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any] | None) -> RetentionPolicy:
        """From `as_stored()` (a template snapshot's `retention`)."""
        return cls.parse(stored)

    def __bool__(self) -> bool:
        return bool(self.periods)

    def __hash__(self) -> int:  # a value (in frozen settings), though its periods are a mapping
        return hash(tuple(sorted(self.periods.items())))

    def decides(self, state: TaskState) -> bool:
        return state in self.periods

    def period(self, state: TaskState) -> Period:
        """This state's period (None: kept forever, or not decided here: see `decides`)."""
        return self.periods.get(state)

    def as_stored(self) -> dict[str, float | str]:
        """The JSON form kept in a template's snapshot: seconds, or `never`."""
        return {s.value: NEVER if p is None else p for s, p in sorted(self.periods.items())}

    def as_text(self) -> dict[str, str]:
        """Each state's period as people write it (`30d`, `never`), in state order."""
        return {s.value: describe(p) for s, p in sorted(self.periods.items())}


def describe(period: Period) -> str:
    """A period as people write it: `never`, `30d`, `12h`, `90m`, `45s`, or seconds."""
    if period is None:
        return NEVER
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
        if period >= seconds and float(period / seconds).is_integer():
            return f"{int(period // seconds)}{unit}"
    return f"{int(period)}s" if float(period).is_integer() else f"{period:g}s"


# -- which policy speaks for a template --------------------------------------------------------
@dataclass(frozen=True)
class StoredTemplate:
    """One template snapshot the store holds, with the retention it declares (empty: none)."""

    row_id: int
    namespace: str
    name: str
    version_key: tuple[Any, ...]
    policy: RetentionPolicy


@dataclass(frozen=True)
class TemplateRetention:
    """The retention a template declares, from its newest version the store holds."""

    namespace: str
    name: str
    policy: RetentionPolicy

    @property
    def key(self) -> TemplateName:
        return (self.namespace, self.name)


def newest_per_template(rows: Iterable[StoredTemplate]) -> list[TemplateRetention]:
    """Each template's newest snapshot (highest version, then the latest row), kept when it
    declares a retention; sorted by template."""
    newest: dict[TemplateName, StoredTemplate] = {}
    for row in rows:
        key = (row.namespace, row.name)
        seen = newest.get(key)
        if seen is None or (row.version_key, row.row_id) > (seen.version_key, seen.row_id):
            newest[key] = row
    return [
        TemplateRetention(ns, name, row.policy)
        for (ns, name), row in sorted(newest.items())
        if row.policy
    ]


# -- which cut-off applies to which tasks ------------------------------------------------------
@dataclass(frozen=True)
class Cutoff:
    """Delete the tasks in `status` finished more than `seconds` ago, of the `templates` listed,
    or (when `templates` is None) of every template except those in `exclude` (which declare
    their own period for this state)."""

    status: TaskState
    seconds: float
    templates: tuple[TemplateName, ...] | None = None
    exclude: tuple[TemplateName, ...] = ()

    def covers(self, namespace: str, name: str) -> bool:
        key = (namespace, name)
        if self.templates is not None:
            return key in self.templates
        return key not in self.exclude


def effective(
    default: RetentionPolicy,
    templates: Sequence[TemplateRetention],
    namespace: str,
    name: str,
    status: TaskState,
) -> Period:
    """How long a finished task of this template and status is kept (None: forever). The
    specification `cutoffs` implements for all templates at once."""
    for t in templates:
        if t.key == (namespace, name) and t.policy.decides(status):
            return t.policy.period(status)
    return default.period(status)


def cutoffs(default: RetentionPolicy, templates: Sequence[TemplateRetention]) -> list[Cutoff]:
    """The deletions a housekeeping pass makes: per state, one cut-off for the templates that
    follow the default and one per distinct period the templates declare themselves. A state
    kept forever (or decided by nobody) has none. Ordered by state, then period."""
    out: list[Cutoff] = []
    for state in RETAINED_STATES:
        own: dict[float, list[TemplateName]] = {}
        deciding: list[TemplateName] = []
        for t in templates:
            if not t.policy.decides(state):
                continue
            deciding.append(t.key)
            period = t.policy.period(state)
            if period is not None:
                own.setdefault(period, []).append(t.key)
        fallback = default.period(state)
        if fallback is not None:
            out.append(Cutoff(state, fallback, None, tuple(sorted(deciding))))
        for period in sorted(own):
            out.append(Cutoff(state, period, tuple(sorted(own[period]))))
    return out


class ArchiveError(TaskerError):
    """Tasks could not be archived; the purge deleted none of them."""


# -- the housekeeping job's settings -----------------------------------------------------------
#: Archive finished tasks into `tasker_archived_tasks` rather than into files.
ARCHIVE_TABLE = "table"
#: The defaults of `HousekeepingConfig` (docs/configuration.md).
INTERVAL_SECONDS = 30.0
BATCH = 500
#: Worker rows not seen for this long are deleted (a day: long enough to look at a dead worker).
WORKER_ROWS_SECONDS = 86_400.0


def parse_archive(value: Any) -> str | None:
    """An archive setting: `table`, a directory, or None/``/`none`/`off` for no archive."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an archive; use table, a directory, or none")
    text = value.strip()
    if text.lower() in ("", "none", "off", "false", "no"):
        return None
    if text.lower() == ARCHIVE_TABLE:
        return ARCHIVE_TABLE
    return text


@dataclass(frozen=True)
class HousekeepingConfig:
    """What the housekeeping job does: delete by `default` (and the templates' own retention),
    archiving first into `archive` (None: no archive, `table`, or a directory), a pass every
    `interval_seconds` deleting `batch` tasks per transaction, and forget worker rows not seen
    for `worker_rows_seconds`."""

    default: RetentionPolicy = field(default_factory=RetentionPolicy)
    archive: str | None = None
    interval_seconds: float = INTERVAL_SECONDS
    batch: int = BATCH
    worker_rows_seconds: float = WORKER_ROWS_SECONDS

    def __post_init__(self) -> None:
        if not (math.isfinite(self.interval_seconds) and self.interval_seconds > 0):
            raise ValueError("interval_seconds must be a number of seconds above 0")
        if not 1 <= self.batch <= 10_000:
            raise ValueError("batch must be between 1 and 10,000")
        if not (math.isfinite(self.worker_rows_seconds) and self.worker_rows_seconds >= 60):
            raise ValueError("worker_rows_seconds must be at least 60")


# -- what a pass did -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PurgePass:
    """What one pass of the housekeeping job did; kept in `tasker_jobs.last_pass` for health and
    `tasker retention`."""

    started_at: datetime
    worker: str
    seconds: float
    #: Tasks deleted, per status.
    deleted: Mapping[str, int] = field(default_factory=dict)
    archived: int = 0
    #: Where they were archived: `table`, a directory, or None.
    archive: str | None = None
    workers_pruned: int = 0
    #: False: the pass stopped before it was done (its time was up, it lost the job, or it
    #: failed); the next pass goes on where it stopped.
    complete: bool = True
    error: str | None = None
    #: The retention it applied: the default, and the templates' own (`ns/name` -> periods).
    default: Mapping[str, str] = field(default_factory=dict)
    templates: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.deleted.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at.isoformat(),
            "worker": self.worker,
            "seconds": self.seconds,
            "deleted": dict(self.deleted),
            "archived": self.archived,
            "archive": self.archive,
            "workers_pruned": self.workers_pruned,
            "complete": self.complete,
            "error": self.error,
            "default": dict(self.default),
            "templates": {k: dict(v) for k, v in self.templates.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> PurgePass | None:
        """The record `as_json` wrote; None for none, or for one this release cannot read."""
        if not data:
            return None
        try:
            return cls(
                started_at=datetime.fromisoformat(str(data["started_at"])),
                worker=str(data["worker"]),
                seconds=float(data["seconds"]),
                deleted={str(k): int(v) for k, v in dict(data.get("deleted") or {}).items()},
                archived=int(data.get("archived") or 0),
                archive=data.get("archive"),
                workers_pruned=int(data.get("workers_pruned") or 0),
                complete=bool(data.get("complete", True)),
                error=data.get("error"),
                default={str(k): str(v) for k, v in dict(data.get("default") or {}).items()},
                templates={
                    str(k): {str(s): str(p) for s, p in dict(v).items()}
                    for k, v in dict(data.get("templates") or {}).items()
                },
            )
        except (KeyError, TypeError, ValueError):
            return None
