"""The Label Studio write-back queue: the ``ls_writebacks`` table.

Scored annotations waiting to be written to Label Studio, in the same file as
the flags (so they share its WAL, durability setting and lock) and surviving a
restart. ``key`` = ``<task>:<annotation>`` (a newer version of an annotation
replaces the write still waiting for an older one), ``task_id``, ``version`` (the
annotation's ``updated_at``), the write as JSON, ``created_at``, ``attempts``
(failed tries so far), ``due_at`` (unix seconds), ``lease_until`` (unix seconds; a
claimed row is leased, and a crashed process's lease expires) and the last ``error``.

What the JSON means, and the worker that drains the queue, are
:mod:`labelwatch.labelstudio.writequeue`'s. Several processes (``--workers``)
may drain the same table: rows are claimed in a transaction and leased
(``lease_until``) per task: while one process holds a write of a task, no other
claims any write of that task, so two annotations of one task are never written
at once (Label Studio's task update is a read-merge-patch).
"""

from __future__ import annotations

from collections.abc import Sequence

from labelwatch.outbox.records import QueuedWrite
from labelwatch.outbox.store import Store

UPSERT_WRITEBACK = (
    "INSERT INTO ls_writebacks (key, task_id, version, payload, created_at, attempts, due_at, "
    "error, lease_until) VALUES (?, ?, ?, ?, ?, 0, ?, '', 0) "
    "ON CONFLICT (key) DO UPDATE SET task_id = excluded.task_id, version = excluded.version, "
    "payload = excluded.payload, created_at = excluded.created_at, attempts = 0, "
    "due_at = excluded.due_at, error = ''"
)
"""Queue a write (key, task_id, version, payload, now, now); a waiting write of the key is
replaced, but its lease stays: the process writing the older version finishes first."""


class WriteBacks(Store):
    """The write-back queue (methods of :class:`~labelwatch.outbox.Outbox`)."""

    def put_writeback(self, key: str, version: str, payload: str, *, task_id: int) -> None:
        """Queue ``payload`` for ``key``, replacing a waiting write of an older version."""
        now = self.clock()
        with self._transaction() as conn:
            conn.execute(UPSERT_WRITEBACK, (key, task_id, version, payload, now, now))

    def claim_writebacks(
        self, limit: int, *, lease_seconds: float, owner: str = ""
    ) -> list[QueuedWrite]:
        """Up to ``limit`` due writes, oldest due first, leased for ``lease_seconds`` by
        ``owner`` (see :meth:`~labelwatch.outbox.ls_events.LsEvents.release_leases_of`).

        A write whose task has a write leased (by this or another process) is not
        claimed until that lease ends (finished, retried, released or expired).
        """
        now = self.clock()
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT w.key, w.version, w.payload, w.attempts FROM ls_writebacks w "
                "WHERE w.due_at <= ? AND NOT EXISTS (SELECT 1 FROM ls_writebacks o "
                "WHERE o.task_id = w.task_id AND o.lease_until > ?) "
                "ORDER BY w.due_at LIMIT ?",
                (now, now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE ls_writebacks SET lease_until = ?, lease_owner = ? WHERE key = ?",
                [(now + lease_seconds, owner, row[0]) for row in rows],
            )
        return [QueuedWrite(key, version, payload, int(n)) for key, version, payload, n in rows]

    def finish_writeback(self, key: str, version: str) -> None:
        """Remove the write (kept, unleased, if a newer version of ``key`` replaced it)."""
        with self._transaction() as conn:
            conn.execute(
                "DELETE FROM ls_writebacks WHERE key = ? AND version = ?",
                (key, version),
            )
            conn.execute(
                "UPDATE ls_writebacks SET lease_until = 0, lease_owner = '' WHERE key = ?", (key,)
            )

    def retry_writeback(self, key: str, version: str, *, due_at: float, error: str) -> None:
        """Count a failed try and make the write due again at ``due_at`` (unix seconds)."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE ls_writebacks SET attempts = attempts + 1, due_at = ?, error = ? "
                "WHERE key = ? AND version = ?",
                (due_at, error[:2000], key, version),
            )
            conn.execute(
                "UPDATE ls_writebacks SET lease_until = 0, lease_owner = '' WHERE key = ?", (key,)
            )

    def release_writebacks(self, keys: Sequence[tuple[str, str]]) -> None:
        """End the lease of claimed but unattempted writes, as (key, version)."""
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE ls_writebacks SET lease_until = 0, lease_owner = '' WHERE key = ?",
                [(key,) for key, _version in keys],
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
            (due,) = conn.execute(
                "SELECT MIN(MAX(due_at, lease_until)) FROM ls_writebacks"
            ).fetchone()
        return None if due is None else max(0.0, float(due) - self.clock())
