"""The Label Studio write-back queue: the ``ls_writebacks`` table.

Scored annotations waiting to be written to Label Studio, in the same file as
the flags (so they share its WAL, durability setting and lock) and surviving a
restart. ``key`` = ``<task>:<annotation>`` (a newer version of an annotation
replaces the write still waiting for an older one), ``version`` (the
annotation's ``updated_at``), the write as JSON, ``created_at``, ``attempts``
(failed tries so far), ``due_at`` (unix seconds; a claimed row is leased by
moving it into the future) and the last ``error``.

What the JSON means, and the worker that drains the queue, are
:mod:`labelwatch.labelstudio.writequeue`'s. Several processes (``--workers``)
may drain the same table: a row is claimed in a transaction, so only one of them
writes it at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

from labelwatch.outbox.records import QueuedWrite
from labelwatch.outbox.store import Store


class WriteBacks(Store):
    """The write-back queue (methods of :class:`~labelwatch.outbox.Outbox`)."""

    def put_writeback(self, key: str, version: str, payload: str) -> None:
        """Queue ``payload`` for ``key``, replacing a waiting write of an older version."""
        now = self.clock()
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO ls_writebacks "
                "(key, version, payload, created_at, attempts, due_at, error) "
                "VALUES (?, ?, ?, ?, 0, ?, '')",
                (key, version, payload, now, now),
            )

    def claim_writebacks(self, limit: int, *, lease_seconds: float) -> list[QueuedWrite]:
        """Up to ``limit`` due writes, oldest due first, leased for ``lease_seconds``."""
        now = self.clock()
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT key, version, payload, attempts FROM ls_writebacks WHERE due_at <= ? "
                "ORDER BY due_at LIMIT ?",
                (now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE ls_writebacks SET due_at = ? WHERE key = ?",
                [(now + lease_seconds, row[0]) for row in rows],
            )
        return [QueuedWrite(key, version, payload, int(n)) for key, version, payload, n in rows]

    def finish_writeback(self, key: str, version: str) -> None:
        """Remove the write (kept if a newer version of ``key`` replaced it meanwhile)."""
        with self._transaction() as conn:
            conn.execute(
                "DELETE FROM ls_writebacks WHERE key = ? AND version = ?",
                (key, version),
            )

    def retry_writeback(self, key: str, version: str, *, due_at: float, error: str) -> None:
        """Count a failed try and make the write due again at ``due_at`` (unix seconds)."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE ls_writebacks SET attempts = attempts + 1, due_at = ?, error = ? "
                "WHERE key = ? AND version = ?",
                (due_at, error[:2000], key, version),
            )

    def release_writebacks(self, keys: Sequence[tuple[str, str]]) -> None:
        """Make claimed but unattempted writes, as (key, version), due again now."""
        now = self.clock()
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE ls_writebacks SET due_at = ? WHERE key = ? AND version = ?",
                [(now, key, version) for key, version in keys],
            )

    def writeback_backlog(self) -> tuple[int, float | None]:
        """(writes waiting, created_at of the oldest one or None)."""
        with self._reading() as conn:
            count, oldest = conn.execute(
                "SELECT COUNT(*), MIN(created_at) FROM ls_writebacks"
            ).fetchone()
        return int(count), None if oldest is None else float(oldest)

    def next_writeback_due_in(self) -> float | None:
        """Seconds until the next write is due (0 if one is due now), None when empty."""
        with self._reading() as conn:
            (due,) = conn.execute("SELECT MIN(due_at) FROM ls_writebacks").fetchone()
        return None if due is None else max(0.0, float(due) - self.clock())
