"""Per-annotator counts: the ``annotators`` table, and verdicts grouped by annotator.

``annotators`` holds, per non-empty ``annotator_id``, the examples scored and
flagged; the counts are added in the transaction that stores a batch's flags
(:meth:`~labelwatch.outbox.flags.FlagRows.write`). What the counts mean for an
annotator's error rate is :mod:`labelwatch.annotators`'s.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from labelwatch.outbox.records import AnnotatorCounts
from labelwatch.outbox.store import Store


def add_annotator_counts(
    conn: sqlite3.Connection, counts: Mapping[str, tuple[int, int]], now: float
) -> None:
    """Add ``{annotator_id: (scored, flagged)}`` on ``conn`` (inside the caller's transaction)."""
    conn.executemany(
        "INSERT INTO annotators (annotator_id, scored, flagged, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (annotator_id) DO UPDATE SET scored = scored + excluded.scored, "
        "flagged = flagged + excluded.flagged, updated_at = excluded.updated_at",
        [(who, int(s), int(f), now) for who, (s, f) in counts.items() if who],
    )


class Annotators(Store):
    """Per-annotator counts (methods of :class:`~labelwatch.outbox.Outbox`)."""

    def annotator_counts(self) -> list[AnnotatorCounts]:
        """Every annotator's counts, with the flags confirmed / rejected by verdicts.

        ``confirmed``: flagged examples (flags) with at least one CONFIRMED verdict;
        ``rejected``: flags with verdicts, none CONFIRMED. Annotators known only from
        verdicts (their examples scored before counting began) have 0 scored.
        """
        with self._reading() as conn:
            counted = conn.execute(
                "SELECT annotator_id, scored, flagged FROM annotators"
            ).fetchall()
            judged = conn.execute(
                "SELECT annotator_id, SUM(confirmed > 0), SUM(confirmed = 0) FROM ("
                "SELECT annotator_id, flag_id, SUM(verdict = 'CONFIRMED') AS confirmed "
                "FROM verdicts WHERE annotator_id != '' GROUP BY annotator_id, flag_id"
                ") GROUP BY annotator_id"
            ).fetchall()
        rows: dict[str, list[int]] = {str(a): [int(s), int(f), 0, 0] for a, s, f in counted}
        for who, confirmed, rejected in judged:
            row = rows.setdefault(str(who), [0, 0, 0, 0])
            row[2], row[3] = int(confirmed), int(rejected)
        return [AnnotatorCounts(who, *values) for who, values in sorted(rows.items())]
