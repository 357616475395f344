"""Sink delivery state: the ``dead_letters`` table, delivered marks and each sink's backlog.

``dead_letters`` holds, per sink, the flags that exhausted their delivery
attempts, with a copy of the flag JSON (retention never removes them);
``requeued_at`` set = deliver again, before newer flags.
"""

from __future__ import annotations

from collections.abc import Sequence

from labelwatch.flag_record import Flag
from labelwatch.outbox.cursors import ConsumerCursors
from labelwatch.outbox.flags import flag_from_row
from labelwatch.outbox.records import Backlog, ConsumerKind, DeadLetter


class DeadLetters(ConsumerCursors):
    """Sink progress and dead letters (methods of :class:`~labelwatch.outbox.Outbox`)."""

    def backlog(self, kind: ConsumerKind, name: str) -> Backlog:
        """Flags waiting for a consumer (individual acks not subtracted) and the oldest's time."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT cursor FROM consumers WHERE kind = ? AND name = ?", (kind, name)
            ).fetchone()
            cursor = int(row[0]) if row else 0
            count = conn.execute(
                "SELECT COUNT(*) FROM flags WHERE position > ?", (cursor,)
            ).fetchone()[0]
            oldest = conn.execute(
                "SELECT created_at FROM flags WHERE position > ? ORDER BY position LIMIT 1",
                (cursor,),
            ).fetchone()
            requeued_count, requeued_oldest = 0, None
            if kind == "sink":
                requeued_count, requeued_oldest = conn.execute(
                    "SELECT COUNT(*), MIN(dead_at) FROM dead_letters "
                    "WHERE sink = ? AND requeued_at IS NOT NULL",
                    (name,),
                ).fetchone()
        times = [t for t in (oldest[0] if oldest else None, requeued_oldest) if t is not None]
        return Backlog(int(count) + int(requeued_count), min(times) if times else None)

    def dead_letter(self, sink: str, flag: Flag, *, attempts: int, error: str) -> None:
        """Set ``flag`` aside for ``sink`` and move the sink's cursor past it (one transaction)."""
        now = self.clock()
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO dead_letters "
                "(sink, flag_id, position, payload, attempts, error, dead_at, requeued_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                (sink, flag.flag_id, flag.position, flag.to_json(), attempts, error[:2000], now),
            )
            conn.execute(
                "UPDATE consumers SET cursor = MAX(cursor, ?), updated_at = ? "
                "WHERE kind = 'sink' AND name = ?",
                (flag.position, now, sink),
            )

    def dead_letters(
        self, sink: str | None = None, *, requeued: bool | None = None
    ) -> list[DeadLetter]:
        """Dead letters (of one sink, and requeued or not), oldest position first."""
        query = (
            "SELECT sink, position, payload, attempts, error, dead_at, requeued_at "
            "FROM dead_letters WHERE (? IS NULL OR sink = ?)"
        )
        if requeued is True:
            query += " AND requeued_at IS NOT NULL"
        elif requeued is False:
            query += " AND requeued_at IS NULL"
        with self._reading() as conn:
            rows = conn.execute(query + " ORDER BY sink, position", (sink, sink)).fetchall()
        return [
            DeadLetter(s, flag_from_row(p, payload), a, e, d, r)
            for s, p, payload, a, e, d, r in rows
        ]

    def requeue_dead(self, sink: str, flag_ids: Sequence[str] = ()) -> int:
        """Mark a sink's dead letters (all, or those ids) for delivery again; return the count."""
        now = self.clock()
        with self._transaction() as conn:
            if flag_ids:
                count = sum(
                    conn.execute(
                        "UPDATE dead_letters SET requeued_at = ? WHERE sink = ? AND flag_id = ?",
                        (now, sink, flag_id),
                    ).rowcount
                    for flag_id in flag_ids
                )
            else:
                count = conn.execute(
                    "UPDATE dead_letters SET requeued_at = ? "
                    "WHERE sink = ? AND requeued_at IS NULL",
                    (now, sink),
                ).rowcount
        if count:
            self._notify()
        return int(count)

    def delivered(self, sink: str, flags: Sequence[Flag]) -> None:
        """Record ``flags`` (a prefix of what :meth:`next_for_sink` gave) as delivered."""
        if not flags:
            return
        now = self.clock()
        with self._transaction() as conn:
            conn.executemany(
                "DELETE FROM dead_letters WHERE sink = ? AND flag_id = ? "
                "AND requeued_at IS NOT NULL",
                [(sink, f.flag_id) for f in flags],
            )
            conn.execute(
                "UPDATE consumers SET cursor = MAX(cursor, ?), updated_at = ? "
                "WHERE kind = 'sink' AND name = ? AND cursor < ?",
                (
                    max(f.position for f in flags),
                    now,
                    sink,
                    max(f.position for f in flags),
                ),
            )

    def next_for_sink(self, sink: str, limit: int) -> tuple[list[Flag], bool]:
        """The next flags for a sink, in order: requeued dead letters first, then new ones.

        Returns the flags and whether they are requeued dead letters.
        """
        requeued = self.dead_letters(sink, requeued=True)[:limit]
        if requeued:
            return [d.flag for d in requeued], True
        flags, _ = self.pending("sink", sink, limit=limit)
        return flags, False
