"""Versions of the per-class cut-offs adapted to verdicts: the ``cutoffs`` table.

Each change of the cut-offs (:mod:`labelwatch.adaptation`) is a new row:
``version`` (increasing), the ``model_version`` it applies to, ``created_at``
(unix seconds) and ``payload``, JSON owned by :mod:`labelwatch.adaptation` (the
cut-offs and the changes that made them). Nothing is updated in place, so the
history of every change stays.
"""

from __future__ import annotations

from labelwatch.outbox.records import CutoffVersion
from labelwatch.outbox.store import Store


class Cutoffs(Store):
    """The cut-off versions (methods of :class:`~labelwatch.outbox.Outbox`)."""

    def add_cutoffs(self, model_version: str, payload: str) -> CutoffVersion:
        """Store a new version for ``model_version``; return it."""
        now = self.clock()
        with self._transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO cutoffs (model_version, created_at, payload) VALUES (?, ?, ?)",
                (model_version, now, payload),
            )
            version = int(cursor.lastrowid or 0)
        return CutoffVersion(version, model_version, now, payload)

    def latest_cutoffs(self, model_version: str) -> CutoffVersion | None:
        """The newest version for ``model_version``, or None."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT version, model_version, created_at, payload FROM cutoffs "
                "WHERE model_version = ? ORDER BY version DESC LIMIT 1",
                (model_version,),
            ).fetchone()
        return (
            None
            if row is None
            else CutoffVersion(int(row[0]), str(row[1]), float(row[2]), str(row[3]))
        )

    def cutoff_history(self, model_version: str) -> list[CutoffVersion]:
        """Every version for ``model_version``, oldest first."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT version, model_version, created_at, payload FROM cutoffs "
                "WHERE model_version = ? ORDER BY version",
                (model_version,),
            ).fetchall()
        return [CutoffVersion(int(v), str(m), float(t), str(p)) for v, m, t, p in rows]
