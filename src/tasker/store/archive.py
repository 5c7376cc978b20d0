"""Archiving finished tasks before a purge deletes them: one JSON document per task, written to a
gzip-compressed JSON Lines file or to `tasker_archived_tasks`.

A document holds every row that names the task, each as its table's columns (docs/operations.md,
"Archive format"), so an archived task can be read, audited or loaded elsewhere without Tasker.

The archive is written inside the purge's transaction, before its deletes, and a failure raises
`ArchiveError`, which rolls the transaction back: nothing is deleted that was not archived.

- `TableArchive` inserts the documents in that same transaction: archived and deleted together,
  or neither.
- `FileArchive` appends one gzip member per batch to one file per pass, and flushes it to disk
  (fsync) before the deletes run. Should the transaction then fail, the batch is archived but not
  deleted, and the next pass archives it again: a file archive may hold a task twice (the same
  `task.id` and content), never miss one.
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Table, insert, select
from sqlalchemy.engine import Connection, Row

from tasker.domain.retention import ARCHIVE_TABLE, ArchiveError
from tasker.store.schema import (
    archived_tasks,
    custom_events,
    signals,
    step_edges,
    step_transitions,
    steps,
    task_transitions,
    tasks,
    templates,
)

#: The `format` of every document; a change that removes or renames a key changes its number.
FORMAT = "tasker.task/1"
#: The tables a document lists, by key, in the order they are read.
_LOGS: tuple[tuple[str, Table], ...] = (
    ("step_edges", step_edges),
    ("task_transitions", task_transitions),
    ("step_transitions", step_transitions),
    ("custom_events", custom_events),
    ("signals", signals),
)


@dataclass(frozen=True)
class ArchivedTask:
    """One task as archived: the columns `tasker_archived_tasks` indexes, and its document."""

    id: int
    namespace: str
    name: str
    version: str
    status: str
    finished_at: datetime | None
    document: dict[str, Any]


def _value(value: Any) -> Any:
    """A column's value as JSON: times as ISO 8601 text (UTC), JSON columns as they are."""
    return value.isoformat() if isinstance(value, datetime) else value


def _json_row(row: Row[Any]) -> dict[str, Any]:
    return {key: _value(value) for key, value in row._mapping.items()}


def documents(conn: Connection, ids: Sequence[int], archived_at: datetime) -> list[ArchivedTask]:
    """The documents of these tasks (those that exist), in the order of `ids`."""
    if not ids:
        return []
    task_rows = conn.execute(
        select(tasks, templates.c.content_hash)
        .join(templates, templates.c.id == tasks.c.template_id)
        .where(tasks.c.id.in_(ids))
    ).all()
    by_task: dict[int, dict[str, list[dict[str, Any]]]] = {
        r.id: {"steps": [], **{key: [] for key, _ in _LOGS}} for r in task_rows
    }
    step_rows = conn.execute(
        select(steps).where(steps.c.task_id.in_(ids)).order_by(steps.c.position, steps.c.id)
    )
    for row in step_rows:
        by_task[row.task_id]["steps"].append(_json_row(row))
    for key, table in _LOGS:
        order = [table.c.id] if "id" in table.c else [table.c.parent_id, table.c.child_id]
        for row in conn.execute(select(table).where(table.c.task_id.in_(ids)).order_by(*order)):
            if row.task_id in by_task:
                by_task[row.task_id][key].append(_json_row(row))
    found = {r.id: r for r in task_rows}
    out = []
    for task_id in ids:
        r = found.get(task_id)
        if r is None:
            continue
        task = _json_row(r)
        content_hash = task.pop("content_hash")
        out.append(
            ArchivedTask(
                id=r.id,
                namespace=r.namespace,
                name=r.name,
                version=r.version,
                status=r.status,
                finished_at=r.finished_at,
                document={
                    "format": FORMAT,
                    "archived_at": archived_at.isoformat(),
                    "template": {
                        "namespace": r.namespace,
                        "name": r.name,
                        "version": r.version,
                        "content_hash": content_hash,
                    },
                    "task": task,
                    **by_task[r.id],
                },
            )
        )
    return out


class Archive(Protocol):
    """Where a purge writes tasks before it deletes them."""

    #: `table`, or the directory of a file archive (what the last pass reports).
    @property
    def target(self) -> str: ...

    def write(self, conn: Connection, archived: Sequence[ArchivedTask]) -> None:
        """Write these documents; raise `ArchiveError` when they are not all written."""


class TableArchive:
    """Documents as rows of `tasker_archived_tasks`, in the purge's own transaction."""

    target = ARCHIVE_TABLE

    def __init__(self, archived_at: datetime):
        self.archived_at = archived_at

    def write(self, conn: Connection, archived: Sequence[ArchivedTask]) -> None:
        if not archived:
            return
        rows = [
            {
                "id": a.id,
                "namespace": a.namespace,
                "name": a.name,
                "version": a.version,
                "status": a.status,
                "finished_at": a.finished_at,
                "archived_at": self.archived_at,
                "document": a.document,
            }
            for a in archived
        ]
        # A failed insert is a StoreError: the transaction rolls back, nothing is deleted.
        conn.execute(insert(archived_tasks), rows)


class FileArchive:
    """One gzip-compressed JSON Lines file per pass in `directory`, created on the first write:
    `tasker-archive-<UTC time>-<random>.jsonl.gz`, each batch a gzip member of its own."""

    def __init__(self, directory: str | Path, started_at: datetime):
        self.directory = Path(directory)
        self.started_at = started_at
        #: The file this pass writes (None until its first write).
        self.path: Path | None = None

    @property
    def target(self) -> str:
        return str(self.directory)

    def write(self, conn: Connection, archived: Sequence[ArchivedTask]) -> None:
        if not archived:
            return
        try:
            text = "".join(
                json.dumps(a.document, ensure_ascii=False, separators=(",", ":")) + "\n"
                for a in archived
            )
        except (TypeError, ValueError) as exc:  # a value JSON cannot hold: archive nothing
            raise ArchiveError(f"cannot write a task as JSON ({exc}); nothing was deleted") from exc
        try:
            path = self.path or self._new_file()
            with path.open("ab") as raw:
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as member:
                    member.write(text.encode("utf-8"))
                raw.flush()
                os.fsync(raw.fileno())
        except OSError as exc:
            raise ArchiveError(
                f"cannot write the archive in {self.directory} ({exc.strerror or exc}); nothing"
                " was deleted; fix: make the directory writable, or change the archive setting"
            ) from exc
        self.path = path

    def _new_file(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = self.started_at.strftime("%Y%m%dT%H%M%SZ")
        path = self.directory / f"tasker-archive-{stamp}-{secrets.token_hex(4)}.jsonl.gz"
        path.touch(exist_ok=False)
        _sync_directory(self.directory)  # the new name survives a crash, as its content does
        return path


def _sync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not every platform opens directories (Windows): the file itself is synced
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def open_archive(target: str | None, now: datetime) -> Archive | None:
    """The archive of a purge that starts `now`: `table`, a directory, or None (no archive)."""
    if target is None:
        return None
    if target == ARCHIVE_TABLE:
        return TableArchive(now)
    return FileArchive(target, now)


def read_file(path: str | Path) -> list[dict[str, Any]]:
    """The documents of a file archive, in the order they were written (tests, and a reader's
    reference)."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def read_table(conn: Connection, task_ids: Sequence[int] | None = None) -> list[ArchivedTask]:
    """The documents of the table archive (of these tasks), oldest archive first."""
    q = select(archived_tasks).order_by(archived_tasks.c.archive_id)
    if task_ids is not None:
        q = q.where(archived_tasks.c.id.in_(task_ids))
    return [
        ArchivedTask(
            id=r.id,
            namespace=r.namespace,
            name=r.name,
            version=r.version,
            status=r.status,
            finished_at=r.finished_at,
            document=r.document,
        )
        for r in conn.execute(q)
    ]
