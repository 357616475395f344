"""Label Studio events: the ``ls_events`` inbox and the ``ls_annotations`` it feeds.

``ls_events`` holds every webhook event labelwatch answered 202 for, stored (and
committed) before the answer leaves: ``id`` (arrival order), ``annotation_id``
(an event about several annotations is stored as one row each), ``action``, the
body as JSON, ``received_at``, ``attempts`` (failed tries), ``due_at`` (unix
seconds; a claimed row is leased by moving it into the future, so the row of a
process killed mid-way comes back) and the last ``error``. Only the oldest row of
each annotation can be claimed: the events of one annotation are processed in
the order they arrived, even by several processes (``--workers``).

``ls_annotations`` keeps the last scored version of each annotation (its task,
annotator, and what was given and flagged), so a later deletion, which Label
Studio reports by annotation id only, finds its task.

A processed event leaves in the same transaction that queues its write-back and
records its annotation (:meth:`LsEvents.finish_ls_event`): no event is lost or
applied twice by a crash between the two.
"""

from __future__ import annotations

from collections.abc import Sequence

from labelwatch.outbox.records import NewWrite, QueuedEvent, SeenAnnotation, VerdictRow
from labelwatch.outbox.store import Store
from labelwatch.outbox.verdicts import upsert_verdicts
from labelwatch.outbox.writeback import UPSERT_WRITEBACK


class LsEvents(Store):
    """The event inbox and the annotations seen (methods of :class:`~labelwatch.outbox.Outbox`)."""

    def put_ls_events(self, rows: Sequence[tuple[int, str, str]], *, max_queued: int) -> bool:
        """Store ``(annotation_id, action, payload)`` rows; False (nothing stored) when
        more than ``max_queued`` events would wait. Committed when this returns True."""
        now = self.clock()
        with self._transaction() as conn:
            (waiting,) = conn.execute("SELECT COUNT(*) FROM ls_events").fetchone()
            if int(waiting) + len(rows) > max_queued:
                return False
            conn.executemany(
                "INSERT INTO ls_events (annotation_id, action, payload, received_at, due_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(annotation, action, payload, now, now) for annotation, action, payload in rows],
            )
        return True

    def claim_ls_events(
        self, limit: int, *, lease_seconds: float, owner: str = ""
    ) -> list[QueuedEvent]:
        """Up to ``limit`` due events, oldest first, at most one per annotation, leased
        for ``lease_seconds`` by ``owner`` (see :meth:`release_leases_of`)."""
        now = self.clock()
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT e.id, e.annotation_id, e.action, e.payload, e.attempts FROM ls_events e "
                "WHERE e.due_at <= ? AND e.id = "
                "(SELECT MIN(o.id) FROM ls_events o WHERE o.annotation_id = e.annotation_id) "
                "ORDER BY e.id LIMIT ?",
                (now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE ls_events SET due_at = ?, lease_owner = ? WHERE id = ?",
                [(now + lease_seconds, owner, row[0]) for row in rows],
            )
        return [QueuedEvent(int(i), int(a), str(act), str(p), int(n)) for i, a, act, p, n in rows]

    def finish_ls_event(
        self,
        event_id: int,
        *,
        write: NewWrite | None = None,
        seen: SeenAnnotation | None = None,
        forget_annotation: int | None = None,
        verdicts: Sequence[VerdictRow] = (),
    ) -> list[bool]:
        """Remove the event; in the same transaction queue ``write`` (replacing a waiting
        write of the same key), record ``seen``, forget ``forget_annotation`` and store
        ``verdicts``. Returns, per verdict, whether it was new or changed."""
        now = self.clock()
        with self._transaction() as conn:
            changed = upsert_verdicts(conn, verdicts, now)
            conn.execute("DELETE FROM ls_events WHERE id = ?", (event_id,))
            if write is not None:
                conn.execute(
                    UPSERT_WRITEBACK,
                    (write.key, write.task_id, write.version, write.payload, now, now),
                )
            if forget_annotation is not None:
                conn.execute(
                    "DELETE FROM ls_annotations WHERE annotation_id = ?", (forget_annotation,)
                )
            if seen is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO ls_annotations (annotation_id, project_id, task_id, "
                    "version, annotator, payload, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        seen.annotation_id,
                        seen.project_id,
                        seen.task_id,
                        seen.version,
                        seen.annotator,
                        seen.payload,
                        now,
                    ),
                )
        return changed

    def retry_ls_event(self, event_id: int, *, due_at: float, error: str) -> None:
        """Count a failed try of the event and make it due again at ``due_at``."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE ls_events SET attempts = attempts + 1, due_at = ?, error = ?, "
                "lease_owner = '' WHERE id = ?",
                (due_at, error[:2000], event_id),
            )

    def release_ls_events(self, event_ids: Sequence[int]) -> None:
        """Make claimed but unprocessed events due again now (no attempt counted)."""
        now = self.clock()
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE ls_events SET due_at = ?, lease_owner = '' WHERE id = ?",
                [(now, i) for i in event_ids],
            )

    def lease_owners(self) -> set[str]:
        """Owners holding a lease on a Label Studio event or write-back now."""
        now = self.clock()
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT lease_owner FROM ls_events WHERE lease_owner != '' AND due_at > ? "
                "UNION SELECT lease_owner FROM ls_writebacks "
                "WHERE lease_owner != '' AND lease_until > ?",
                (now, now),
            ).fetchall()
        return {str(row[0]) for row in rows}

    def release_leases_of(self, owners: Sequence[str]) -> int:
        """End every lease ``owners`` hold (they are known to be dead: a process killed
        mid-way); their events and write-backs are due at once. Returns the rows freed."""
        now = self.clock()
        freed = 0
        with self._transaction() as conn:
            for owner in owners:
                freed += conn.execute(
                    "UPDATE ls_events SET due_at = ?, lease_owner = '' "
                    "WHERE lease_owner = ? AND due_at > ?",
                    (now, owner, now),
                ).rowcount
                freed += conn.execute(
                    "UPDATE ls_writebacks SET lease_until = 0, lease_owner = '' "
                    "WHERE lease_owner = ?",
                    (owner,),
                ).rowcount
        return freed

    def ls_event_backlog(self) -> tuple[int, float | None]:
        """(events waiting, received_at of the oldest one or None)."""
        with self._reading() as conn:
            count, oldest = conn.execute(
                "SELECT COUNT(*), MIN(received_at) FROM ls_events"
            ).fetchone()
        return int(count), None if oldest is None else float(oldest)

    def next_ls_event_due_in(self) -> float | None:
        """Seconds until the next event is due (0 if one is due now), None when empty."""
        with self._reading() as conn:
            (due,) = conn.execute("SELECT MIN(due_at) FROM ls_events").fetchone()
        return None if due is None else max(0.0, float(due) - self.clock())

    def ls_annotation(self, annotation_id: int) -> SeenAnnotation | None:
        """The last scored version of ``annotation_id``, or None if never scored (or deleted)."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT annotation_id, project_id, task_id, version, annotator, payload "
                "FROM ls_annotations WHERE annotation_id = ?",
                (annotation_id,),
            ).fetchone()
        if row is None:
            return None
        a, p, t, v, who, payload = row
        return SeenAnnotation(int(a), int(p), int(t), str(v), str(who), str(payload))
