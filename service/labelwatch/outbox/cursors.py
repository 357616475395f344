"""Consumer cursors: the ``consumers`` and ``acks`` tables.

``consumers`` has one row per (``kind``, ``name``): ``kind`` is ``sink`` (a
delivery worker) or ``watch`` (a WatchFlags consumer); ``cursor`` = every
position at or below it is done for that consumer. ``acks`` holds the positions
above a consumer's cursor acknowledged one by one (by flag id); the cursor moves
over them once they directly follow it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from labelwatch.flag_record import Flag
from labelwatch.outbox.flags import FLAG_COLUMNS, FlagRows
from labelwatch.outbox.records import AckResult, Consumer, ConsumerKind, UnknownConsumer


class ConsumerCursors(FlagRows):
    """Consumers, their cursors and acks (methods of :class:`~labelwatch.outbox.Outbox`)."""

    def consumer(self, kind: ConsumerKind, name: str) -> Consumer | None:
        """The consumer's state, or None if it never connected."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT kind, name, cursor, created_at, updated_at FROM consumers "
                "WHERE kind = ? AND name = ?",
                (kind, name),
            ).fetchone()
        return None if row is None else Consumer(*row)

    def consumers(self) -> list[Consumer]:
        """Every consumer, sinks first, by name."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT kind, name, cursor, created_at, updated_at FROM consumers "
                "ORDER BY kind, name"
            ).fetchall()
        return [Consumer(*r) for r in rows]

    def ensure_consumer(self, kind: ConsumerKind, name: str, *, cursor: int = 0) -> Consumer:
        """Return the consumer, creating it at ``cursor`` (0 = from the first flag) if new."""
        existing = self.consumer(kind, name)
        if existing is not None:
            return existing
        now = self.clock()
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO consumers (kind, name, cursor, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (kind, name, max(0, cursor), now, now),
            )
        found = self.consumer(kind, name)
        assert found is not None
        return found

    def set_cursor(self, kind: ConsumerKind, name: str, cursor: int) -> Consumer:
        """Move a consumer's cursor (back, for a replay); forget its acks above it."""
        now = self.clock()
        with self._transaction() as conn:
            updated = conn.execute(
                "UPDATE consumers SET cursor = ?, updated_at = ? WHERE kind = ? AND name = ?",
                (max(0, cursor), now, kind, name),
            ).rowcount
            if not updated:
                raise UnknownConsumer(f"no {kind} consumer named {name!r} in {self.path}")
            conn.execute("DELETE FROM acks WHERE kind = ? AND name = ?", (kind, name))
        self._notify()
        found = self.consumer(kind, name)
        assert found is not None
        return found

    def pending(
        self, kind: ConsumerKind, name: str, *, after: int = 0, limit: int = 100
    ) -> tuple[list[Flag], int]:
        """Up to ``limit`` flags above the cursor (and above ``after``) not yet acked.

        Returns the flags and the highest position scanned (for the next
        ``after``; it also covers acked positions that were skipped).
        """
        with self._reading() as conn:
            row = conn.execute(
                "SELECT cursor FROM consumers WHERE kind = ? AND name = ?", (kind, name)
            ).fetchone()
            if row is None:
                raise UnknownConsumer(f"no {kind} consumer named {name!r}")
            start = max(int(row[0]), after)
            rows = conn.execute(
                f"SELECT {FLAG_COLUMNS} FROM flags f WHERE f.position > ? AND NOT EXISTS "
                "(SELECT 1 FROM acks a WHERE a.kind = ? AND a.name = ? AND a.position = f.position)"
                " ORDER BY f.position LIMIT ?",
                (start, kind, name, limit),
            ).fetchall()
            scanned = start
            if rows:
                scanned = int(rows[-1][0])
            else:
                top = conn.execute("SELECT MAX(position) FROM flags").fetchone()[0]
                scanned = max(start, int(top or 0))
            return self._decode(conn, rows), scanned

    def ack(
        self,
        kind: ConsumerKind,
        name: str,
        *,
        up_to: int = 0,
        flag_ids: Iterable[str] = (),
        positions: Iterable[int] = (),
    ) -> AckResult:
        """Acknowledge every flag at or below ``up_to`` and the given flags/positions.

        ``up_to`` is clamped to the last stored position (flags not yet written
        cannot be acknowledged). The cursor then advances over every position
        acknowledged one by one that directly follows it.
        """
        ids = list(dict.fromkeys(flag_ids))
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT cursor FROM consumers WHERE kind = ? AND name = ?", (kind, name)
            ).fetchone()
            if row is None:
                raise UnknownConsumer(f"no {kind} consumer named {name!r}")
            cursor = int(row[0])
            top = int(conn.execute("SELECT COALESCE(MAX(position), 0) FROM flags").fetchone()[0])
            cursor = max(cursor, min(up_to, top))
            acked = set(positions)
            unknown: list[str] = []
            for flag_id in ids:
                found = conn.execute(
                    "SELECT position FROM flags WHERE flag_id = ?", (flag_id,)
                ).fetchone()
                if found is None:
                    unknown.append(flag_id)
                else:
                    acked.add(int(found[0]))
            conn.executemany(
                "INSERT OR IGNORE INTO acks (kind, name, position) VALUES (?, ?, ?)",
                [(kind, name, p) for p in acked if p > cursor],
            )
            cursor = self._advance(conn, kind, name, cursor)
            conn.execute(
                "UPDATE consumers SET cursor = ?, updated_at = ? WHERE kind = ? AND name = ?",
                (cursor, self.clock(), kind, name),
            )
        self._notify()
        return AckResult(cursor, tuple(sorted(acked)), tuple(unknown))

    def still_pending(self, kind: ConsumerKind, name: str, positions: Iterable[int]) -> set[int]:
        """Which of ``positions`` the consumer has not acknowledged (by cursor or one by one)."""
        wanted = sorted(set(positions))
        if not wanted:
            return set()
        with self._reading() as conn:
            row = conn.execute(
                "SELECT cursor FROM consumers WHERE kind = ? AND name = ?", (kind, name)
            ).fetchone()
            cursor = int(row[0]) if row else 0
            above = [p for p in wanted if p > cursor]
            acked = {
                int(r[0])
                for r in conn.execute(
                    "SELECT position FROM acks WHERE kind = ? AND name = ? AND position >= ?",
                    (kind, name, above[0] if above else 0),
                ).fetchall()
            }
        return {p for p in above if p not in acked}

    @staticmethod
    def _advance(conn: sqlite3.Connection, kind: str, name: str, cursor: int) -> int:
        """Move ``cursor`` over acked positions that follow it; drop acks at or below it."""
        first_unacked = conn.execute(
            "SELECT MIN(f.position) FROM flags f WHERE f.position > ? AND NOT EXISTS "
            "(SELECT 1 FROM acks a WHERE a.kind = ? AND a.name = ? AND a.position = f.position)",
            (cursor, kind, name),
        ).fetchone()[0]
        if first_unacked is None:
            top = conn.execute(
                "SELECT MAX(position) FROM acks WHERE kind = ? AND name = ?", (kind, name)
            ).fetchone()[0]
            cursor = max(cursor, int(top or 0))
        else:
            cursor = max(cursor, int(first_unacked) - 1)
        conn.execute(
            "DELETE FROM acks WHERE kind = ? AND name = ? AND position <= ?", (kind, name, cursor)
        )
        return cursor
