"""The ``flags`` table: every flag once, in write order.

``position`` (increasing with write order, the cursor unit), ``flag_id`` (the
dedupe key, unique: the same example scored twice is one row) and ``created_at``
(unix seconds), then the flag in one of two forms:

* JSON in ``payload`` (:meth:`labelwatch.flag_record.Flag.to_json`), ``classes``
  NULL: flags written as :class:`~labelwatch.flag_record.Flag` objects, and every
  row written before schema version 6;
* columns (:mod:`labelwatch.flag_columns`), ``payload`` empty: the flags of scored
  batches. ``classes`` refers to ``flag_classes``, one row per class list (a JSON
  array of names), which the packed class indices of ``given`` and
  ``issue_classes`` refer to; class lists are never deleted.

Both read back as the same :class:`~labelwatch.flag_record.Flag`.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any

from labelwatch.flag_columns import FlagColumns, flag_from_columns
from labelwatch.flag_record import Flag
from labelwatch.outbox.annotators import add_annotator_counts
from labelwatch.outbox.store import Store

FLAG_COLUMNS = (
    "position, payload, classes, flag_id, created_at, example_id, model_version, "
    "annotator_id, input_text, input_kind, label_quality, metadata, given, issue_classes, "
    "issue_values"
)
"""What to select from ``flags`` for :meth:`FlagRows._decode` (``f.``-free: no joins)."""

_INSERT_COLUMNS = (
    "INSERT OR IGNORE INTO flags (flag_id, created_at, payload, classes, example_id, "
    "model_version, annotator_id, input_text, input_kind, label_quality, metadata, given, "
    "issue_classes, issue_values) VALUES (?, ?, '', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def flag_from_row(position: int, payload: str) -> Flag:
    """The flag stored as ``payload`` (JSON) at ``position``."""
    return Flag.from_json(payload).with_position(position)


class FlagRows(Store):
    """Writing and reading flags (methods of :class:`~labelwatch.outbox.Outbox`)."""

    def write(
        self,
        flags: Sequence[Flag],
        *,
        columns: Sequence[FlagColumns] = (),
        annotators: Mapping[str, tuple[int, int]] | None = None,
    ) -> int:
        """Store ``flags`` and ``columns`` in one transaction; return how many were new.

        ``flags`` are stored first, then each :class:`FlagColumns` in order (their
        positions follow that order); a flag whose id is already stored is skipped.
        ``annotators``: ``{annotator_id: (scored, flagged)}`` added to the
        per-annotator counts in the same transaction. Raises :class:`OutboxError`
        (nothing stored) when the write fails.
        """
        if not flags and not any(len(c) for c in columns) and not annotators:
            return 0
        rows = [(f.flag_id, f.flagged_at, f.to_json()) for f in flags]
        new_lists: dict[tuple[str, ...], int] = {}
        started = time.perf_counter()
        with self._transaction() as conn:
            if annotators:
                add_annotator_counts(conn, annotators, self.clock())
            list_ids = []
            for batch in columns:
                names = batch.class_names
                list_id = self._class_list_ids.get(names) or new_lists.get(names)
                if list_id is None and len(batch):
                    list_id = new_lists[names] = _class_list_id(conn, names)
                list_ids.append(list_id)
            before = conn.total_changes  # flags only from here on
            if rows:
                conn.executemany(
                    "INSERT OR IGNORE INTO flags (flag_id, created_at, payload) VALUES (?, ?, ?)",
                    rows,
                )
            for batch, list_id in zip(columns, list_ids, strict=True):
                if not len(batch):
                    continue
                conn.executemany(
                    _INSERT_COLUMNS,
                    zip(
                        batch.flag_ids,
                        repeat(batch.flagged_at),
                        repeat(list_id),
                        batch.example_ids,
                        repeat(batch.model_version),
                        batch.annotator_ids,
                        batch.texts,
                        batch.input_kinds,
                        batch.label_quality,
                        batch.metadata,
                        batch.given,
                        batch.issue_classes,
                        batch.issue_values,
                    ),
                )
            stored = conn.total_changes - before
        # known only once committed: a rolled-back id may be another list's tomorrow
        self._class_list_ids.update(new_lists)
        if self.write_observer is not None:
            self.write_observer(time.perf_counter() - started)
        if stored:
            self._notify()
        return stored

    def _decode(self, conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> list[Flag]:
        """The flags of ``rows`` selected as :data:`FLAG_COLUMNS`, in their order."""
        out: list[Flag] = []
        for row in rows:
            (position, payload, classes, flag_id, created_at, example_id, version) = row[:7]
            if classes is None:
                out.append(flag_from_row(position, payload))
                continue
            names = self._class_lists.get(classes)
            if names is None:
                names = self._class_lists[classes] = _class_list(conn, classes)
            out.append(
                flag_from_columns(
                    names,
                    position=position,
                    flag_id=flag_id,
                    flagged_at=created_at,
                    example_id=example_id,
                    model_version=version,
                    annotator_id=row[7],
                    text=row[8],
                    input_kind=row[9],
                    label_quality=row[10],
                    metadata=row[11],
                    given=row[12],
                    issue_classes=row[13],
                    issue_values=row[14],
                )
            )
        return out

    def flags(self, *, after: int = 0, limit: int = 100, since: float | None = None) -> list[Flag]:
        """Flags with position > ``after`` (and created at or after ``since``), oldest first."""
        with self._reading() as conn:
            rows = conn.execute(
                f"SELECT {FLAG_COLUMNS} FROM flags WHERE position > ? AND created_at >= ? "
                "ORDER BY position LIMIT ?",
                (after, -math.inf if since is None else since, limit),
            ).fetchall()
            return self._decode(conn, rows)

    def get(self, key: str) -> Flag | None:
        """The flag with this flag id, or at this position (all digits), or None."""
        with self._reading() as conn:
            row = conn.execute(
                f"SELECT {FLAG_COLUMNS} FROM flags WHERE flag_id = ?", (key,)
            ).fetchone()
            if row is None and key.isdigit():
                row = conn.execute(
                    f"SELECT {FLAG_COLUMNS} FROM flags WHERE position = ?", (int(key),)
                ).fetchone()
            return None if row is None else self._decode(conn, [row])[0]

    def last_position(self) -> int:
        """The highest position ever assigned (0 for an empty outbox)."""
        with self._reading() as conn:
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'flags'").fetchone()
        return int(row[0]) if row else 0

    def position_before(self, created_at: float) -> int:
        """The cursor that starts a consumer at ``created_at`` (unix seconds)."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT MIN(position) FROM flags WHERE created_at >= ?", (created_at,)
            ).fetchone()
        if row[0] is None:
            return self.last_position()
        return int(row[0]) - 1

    def count(self) -> int:
        """Flags currently stored."""
        with self._reading() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM flags").fetchone()[0])


def _class_list_id(conn: sqlite3.Connection, names: tuple[str, ...]) -> int:
    """The ``flag_classes`` id of ``names``, added if new (inside the caller's transaction)."""
    text = json.dumps(list(names), ensure_ascii=False, separators=(",", ":"))
    conn.execute("INSERT OR IGNORE INTO flag_classes (names) VALUES (?)", (text,))
    return int(conn.execute("SELECT id FROM flag_classes WHERE names = ?", (text,)).fetchone()[0])


def _class_list(conn: sqlite3.Connection, list_id: int) -> tuple[str, ...]:
    """The class names of ``flag_classes`` row ``list_id``."""
    row = conn.execute("SELECT names FROM flag_classes WHERE id = ?", (list_id,)).fetchone()
    if row is None:
        raise sqlite3.DatabaseError(f"flag_classes has no row {list_id}")
    return tuple(str(name) for name in json.loads(row[0]))
