"""Reviewers' verdicts on flagged classes: the ``verdicts`` table.

One row per (``flag_id``, ``label``, ``reviewer``): a reviewer who reports again
replaces their verdict (and note); the same report twice changes nothing. Each
row also keeps what the flag said about the class (``kind``, ``probability``)
and the flag's ``annotator_id``, so precision and annotator statistics do not
depend on the flag still being in the outbox. What a verdict means is
:mod:`labelwatch.verdicts`'s.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from labelwatch.outbox.records import VerdictRow
from labelwatch.outbox.store import Store

_COLUMNS = (
    "flag_id, label, reviewer, verdict, note, source, kind, probability, annotator_id, "
    "error_probability, decided_at"
)


def _row(values: Sequence[Any]) -> VerdictRow:
    f, label, who, verdict, note, source, kind, p, annotator, chance, at = values
    return VerdictRow(
        flag_id=str(f),
        label=str(label),
        reviewer=str(who),
        verdict=str(verdict),
        note=str(note),
        source=str(source),
        kind=str(kind),
        probability=float(p),
        annotator_id=str(annotator),
        error_probability=None if chance is None else float(chance),
        decided_at=float(at),
    )


def upsert_verdicts(conn: sqlite3.Connection, rows: Sequence[VerdictRow], now: float) -> list[bool]:
    """Store ``rows`` on ``conn`` (inside the caller's transaction); per row, whether it
    was new or changed (False: the same verdict and note were already stored)."""
    changed: list[bool] = []
    for row in rows:
        old = conn.execute(
            "SELECT verdict, note FROM verdicts WHERE flag_id = ? AND label = ? AND reviewer = ?",
            (row.flag_id, row.label, row.reviewer),
        ).fetchone()
        if old is not None and (str(old[0]), str(old[1])) == (row.verdict, row.note):
            changed.append(False)
            continue
        conn.execute(
            f"INSERT OR REPLACE INTO verdicts ({_COLUMNS}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.flag_id,
                row.label,
                row.reviewer,
                row.verdict,
                row.note,
                row.source,
                row.kind,
                row.probability,
                row.annotator_id,
                row.error_probability,
                now,
            ),
        )
        changed.append(True)
    return changed


class Verdicts(Store):
    """The verdicts table (methods of :class:`~labelwatch.outbox.Outbox`)."""

    def record_verdicts(self, rows: Sequence[VerdictRow]) -> list[bool]:
        """Store ``rows`` in one transaction; per row, whether it was new or changed."""
        now = self.clock()
        with self._transaction() as conn:
            return upsert_verdicts(conn, rows, now)

    def verdicts_of(self, flag_ids: Sequence[str]) -> dict[str, list[VerdictRow]]:
        """The verdicts of each of ``flag_ids`` that has any, oldest decision first."""
        if not flag_ids:
            return {}
        out: dict[str, list[VerdictRow]] = {}
        with self._reading() as conn:
            for start in range(0, len(flag_ids), 500):
                chunk = list(flag_ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                for values in conn.execute(
                    f"SELECT {_COLUMNS} FROM verdicts WHERE flag_id IN ({marks}) "
                    "ORDER BY decided_at, label, reviewer",
                    chunk,
                ):
                    row = _row(values)
                    out.setdefault(row.flag_id, []).append(row)
        return out

    def all_verdicts(self) -> list[VerdictRow]:
        """Every stored verdict, oldest decision first (statistics, calibration)."""
        with self._reading() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM verdicts ORDER BY decided_at, flag_id, label, reviewer"
            ).fetchall()
        return [_row(values) for values in rows]

    def verdict_counts(self) -> list[tuple[str, str, int]]:
        """``(label, verdict, count)`` over every stored verdict, by label."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT label, verdict, COUNT(*) FROM verdicts GROUP BY label, verdict "
                "ORDER BY label, verdict"
            ).fetchall()
        return [(str(label), str(verdict), int(n)) for label, verdict, n in rows]
