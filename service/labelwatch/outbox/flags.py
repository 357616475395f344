"""The ``flags`` table: every flag once, in write order.

``position`` (increasing with write order, the cursor unit), ``flag_id`` (the
dedupe key, unique: the same example scored twice is one row), ``created_at``
(unix seconds) and the flag's JSON (:meth:`labelwatch.flag_record.Flag.to_json`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

from labelwatch.flag_record import Flag
from labelwatch.outbox.annotators import add_annotator_counts
from labelwatch.outbox.store import Store


def flag_from_row(position: int, payload: str) -> Flag:
    """The flag stored as ``payload`` (JSON) at ``position``."""
    return Flag.from_json(payload).with_position(position)


class FlagRows(Store):
    """Writing and reading flags (methods of :class:`~labelwatch.outbox.Outbox`)."""

    def write(
        self, flags: Sequence[Flag], *, annotators: Mapping[str, tuple[int, int]] | None = None
    ) -> int:
        """Store ``flags`` in one transaction; return how many were new (not duplicates).

        ``annotators``: ``{annotator_id: (scored, flagged)}`` added to the per-annotator
        counts in the same transaction. Raises :class:`OutboxError` (nothing stored)
        when the write fails.
        """
        if not flags and not annotators:
            return 0
        rows = [(f.flag_id, f.flagged_at, f.to_json()) for f in flags]
        started = time.perf_counter()
        with self._transaction() as conn:
            if annotators:
                add_annotator_counts(conn, annotators, self.clock())
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO flags (flag_id, created_at, payload) VALUES (?, ?, ?)",
                rows,
            )
            stored = conn.total_changes - before
        if self.write_observer is not None:
            self.write_observer(time.perf_counter() - started)
        if stored:
            self._notify()
        return stored

    def flags(self, *, after: int = 0, limit: int = 100, since: float | None = None) -> list[Flag]:
        """Flags with position > ``after`` (and created at or after ``since``), oldest first."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT position, payload FROM flags WHERE position > ? AND created_at >= ? "
                "ORDER BY position LIMIT ?",
                (after, -math.inf if since is None else since, limit),
            ).fetchall()
        return [flag_from_row(p, payload) for p, payload in rows]

    def get(self, key: str) -> Flag | None:
        """The flag with this flag id, or at this position (all digits), or None."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT position, payload FROM flags WHERE flag_id = ?", (key,)
            ).fetchone()
            if row is None and key.isdigit():
                row = conn.execute(
                    "SELECT position, payload FROM flags WHERE position = ?", (int(key),)
                ).fetchone()
        return None if row is None else flag_from_row(row[0], row[1])

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
