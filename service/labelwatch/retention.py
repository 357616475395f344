"""Outbox retention: prune flags by age and by size, and count what was pruned unsent.

:func:`prune` removes the oldest flags (a prefix of positions) beyond the
:class:`RetentionPolicy`; dead letters are kept. Consumers whose cursor lies in
the pruned range move past it, and the flags they had not acknowledged are
counted as unsent (``meta`` counters ``pruned_total`` / ``pruned_unsent_total``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from labelwatch.outbox import Outbox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionPolicy:
    """Keep flags at most ``max_age_seconds`` old and the database under ``max_bytes``.

    0 turns a limit off. Size pruning removes the oldest flags until the data
    uses at most 90% of ``max_bytes`` (so it does not prune on every write).
    """

    max_age_seconds: float = 7 * 24 * 3600.0
    max_bytes: int = 512 * 1024 * 1024


@dataclass(frozen=True)
class PruneResult:
    """Flags removed by one :func:`prune`; ``unsent`` were pending for a consumer."""

    pruned: int
    unsent: int


def size_bytes(outbox: Outbox) -> int:
    """Bytes of database pages in use (freed pages are reused, not counted)."""
    with outbox.reading() as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


def prune(outbox: Outbox, policy: RetentionPolicy) -> PruneResult:
    """Remove the oldest flags beyond the age or size limit (dead letters are kept).

    Consumers whose cursor is below the pruned range move past it; the
    flags they had not acknowledged are counted as ``unsent``.
    """
    pruned = unsent = 0
    if policy.max_age_seconds > 0:
        cutoff = outbox.clock() - policy.max_age_seconds
        with outbox.reading() as conn:
            row = conn.execute(
                "SELECT MAX(position) FROM flags WHERE created_at < ?", (cutoff,)
            ).fetchone()
        if row[0] is not None:
            pruned, unsent = _delete_through(outbox, int(row[0]))
    # freed space is spread over B-tree pages, so the estimate may take a few rounds
    for _ in range(5):
        if policy.max_bytes <= 0:
            break
        cut = _size_cut(outbox, policy.max_bytes)
        if cut is None:
            break
        more, more_unsent = _delete_through(outbox, cut)
        pruned, unsent = pruned + more, unsent + more_unsent
    if unsent:
        log.warning("event=outbox_pruned_unsent pruned=%d unsent=%d", pruned, unsent)
    return PruneResult(pruned, unsent)


def _size_cut(outbox: Outbox, max_bytes: int) -> int | None:
    """The position through which to delete to get under ~90% of ``max_bytes``."""
    used = size_bytes(outbox)
    if used <= max_bytes:
        return None
    with outbox.reading() as conn:
        count = int(conn.execute("SELECT COUNT(*) FROM flags").fetchone()[0])
        if not count:
            return None
        excess = used - 0.9 * max_bytes
        drop = min(count, max(1, math.ceil(excess / (used / count))))
        row = conn.execute(
            "SELECT position FROM flags ORDER BY position LIMIT 1 OFFSET ?", (drop - 1,)
        ).fetchone()
    return int(row[0])


def _delete_through(outbox: Outbox, cut: int) -> tuple[int, int]:
    """Delete flags at or below ``cut``; return (deleted, not acknowledged by someone)."""
    with outbox.transaction() as conn:
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


def counters(outbox: Outbox) -> dict[str, int]:
    """Persistent counters (``pruned_total``, ``pruned_unsent_total``)."""
    with outbox.reading() as conn:
        rows = conn.execute("SELECT key, value FROM meta WHERE key LIKE '%_total'").fetchall()
    return {k: int(v) for k, v in rows}
