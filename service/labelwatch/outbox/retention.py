"""Retention: prune flags by age and by size, and count what was pruned unsent (``meta``).

:meth:`Retention.prune` removes the oldest flags (a prefix of positions) beyond
the :class:`~labelwatch.outbox.records.RetentionPolicy`; dead letters are kept.
Consumers whose cursor lies in the pruned range move past it, and the flags they
had not acknowledged are counted as unsent. The ``meta`` table keeps the counters
(``pruned_total`` / ``pruned_unsent_total``) across restarts.
"""

from __future__ import annotations

import logging
import math

from labelwatch.outbox.records import PruneResult, RetentionPolicy
from labelwatch.outbox.store import Store

log = logging.getLogger(__name__)


class Retention(Store):
    """Pruning and its counters (methods of :class:`~labelwatch.outbox.Outbox`)."""

    def size_bytes(self) -> int:
        """Bytes of database pages in use (freed pages are reused, not counted)."""
        with self._reading() as conn:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def prune(self, policy: RetentionPolicy) -> PruneResult:
        """Remove the oldest flags beyond the age or size limit (dead letters are kept).

        Consumers whose cursor is below the pruned range move past it; the
        flags they had not acknowledged are counted as ``unsent``.
        """
        pruned = unsent = 0
        if policy.max_age_seconds > 0:
            cutoff = self.clock() - policy.max_age_seconds
            with self._reading() as conn:
                row = conn.execute(
                    "SELECT MAX(position) FROM flags WHERE created_at < ?", (cutoff,)
                ).fetchone()
            if row[0] is not None:
                pruned, unsent = self._delete_through(int(row[0]))
        # freed space is spread over B-tree pages, so the estimate may take a few rounds
        for _ in range(5):
            if policy.max_bytes <= 0:
                break
            cut = self._size_cut(policy.max_bytes)
            if cut is None:
                break
            more, more_unsent = self._delete_through(cut)
            pruned, unsent = pruned + more, unsent + more_unsent
        if unsent:
            log.warning("event=outbox_pruned_unsent pruned=%d unsent=%d", pruned, unsent)
        return PruneResult(pruned, unsent)

    def _size_cut(self, max_bytes: int) -> int | None:
        """The position through which to delete to get under ~90% of ``max_bytes``."""
        used = self.size_bytes()
        if used <= max_bytes:
            return None
        with self._reading() as conn:
            count = int(conn.execute("SELECT COUNT(*) FROM flags").fetchone()[0])
            if not count:
                return None
            excess = used - 0.9 * max_bytes
            drop = min(count, max(1, math.ceil(excess / (used / count))))
            row = conn.execute(
                "SELECT position FROM flags ORDER BY position LIMIT 1 OFFSET ?", (drop - 1,)
            ).fetchone()
        return int(row[0])

    def _delete_through(self, cut: int) -> tuple[int, int]:
        """Delete flags at or below ``cut``; return (deleted, not acknowledged by someone)."""
        with self._transaction() as conn:
            low = conn.execute("SELECT MIN(cursor) FROM consumers").fetchone()[0]
            unsent = 0
            if low is not None:
                unsent = int(
                    conn.execute(
                        "SELECT COUNT(*) FROM flags WHERE position > ? AND position <= ?",
                        (int(low), cut),
                    ).fetchone()[0]
                )
            pruned = int(conn.execute("DELETE FROM flags WHERE position <= ?", (cut,)).rowcount)
            conn.execute("UPDATE consumers SET cursor = ? WHERE cursor < ?", (cut, cut))
            conn.execute("DELETE FROM acks WHERE position <= ?", (cut,))
            for key, add in (("pruned_total", pruned), ("pruned_unsent_total", unsent)):
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) "
                    "DO UPDATE SET value = CAST(value AS INTEGER) + ?",
                    (key, str(add), add),
                )
        return pruned, unsent

    def counters(self) -> dict[str, int]:
        """Persistent counters (``pruned_total``, ``pruned_unsent_total``)."""
        with self._reading() as conn:
            rows = conn.execute("SELECT key, value FROM meta WHERE key LIKE '%_total'").fetchall()
        return {k: int(v) for k, v in rows}
