"""Process Label Studio events from the outbox's inbox, off the webhook thread.

The HTTP handler stores each event in the outbox (``ls_events``, committed)
before it answers 202, so an event Label Studio was told about survives a crash
or a kill -9 of labelwatch; it is processed by whichever process runs next. One
worker per process claims stored events (leased; see
:mod:`labelwatch.outbox.ls_events`) and for each:

* an annotation created or updated: scores it with ``score`` (the server's
  :meth:`Batcher.score`, which also records flags in the outbox, so every sink
  and WatchFlags sees them), then, in one transaction, removes the event, queues
  the :class:`WriteBack` (when write-back is on) and records the annotation as
  seen (task, annotator, tags given and flagged);
* an annotation updated after a version of it was flagged (and implicit verdicts
  are on): records one verdict per flagged tag of that version, in the same
  transaction (:func:`labelwatch.verdicts.implicit_verdicts`: toggled the
  suggested way = CONFIRMED, left as it was = REJECTED; the reviewer is the
  user who saved the update);
* an annotation deleted: looks up the task the annotation was scored for and
  queues a deleting write-back (entry removed, task summary recomputed, stale
  review prediction deleted); an annotation never scored is only logged.

An event that fails (scoring failed, the outbox could not be written) is retried
with backoff up to ``max_attempts`` times, then dropped and logged; an event
that no longer parses is dropped at once. Flags are keyed by example, model and
tags, so an event scored again after a crash records no second flag.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from labelwatch.domain import LabeledExample, ScoredBatch
from labelwatch.flag_record import dedupe_key
from labelwatch.labelstudio.leases import lease_owner
from labelwatch.labelstudio.webhook import (
    AnnotationEvent,
    Deletion,
    Mappings,
    PayloadError,
    parse_stored,
)
from labelwatch.labelstudio.writequeue import WriteBack
from labelwatch.outbox import Outbox, OutboxError, QueuedEvent, SeenAnnotation, VerdictRow
from labelwatch.sinks.base import RetryPolicy
from labelwatch.verdicts import SOURCE_LABEL_STUDIO, implicit_verdicts

log = logging.getLogger(__name__)

LEASE_SECONDS = 120.0
"""How long a claimed event stays invisible to other processes (a killed one's come back)."""


def annotation_score(
    event: AnnotationEvent, batch: ScoredBatch, class_names: Sequence[str]
) -> WriteBack:
    """Row 0 of ``batch`` (scored from ``event.example``) as the write for its task.

    ``suggested`` is the given tags with every flagged class toggled, the same as
    ``ScoreResult.suggested_labels`` of the gRPC API.
    """
    labels = batch.labels[0]
    flags = batch.flags[0]
    issues = tuple(
        (
            class_names[k],
            "spurious" if bool(labels[k]) else "missing",
            float(batch.probabilities[0, k]),
        )
        for k in range(len(class_names))
        if bool(flags[k])
    )
    suggested = tuple(class_names[k] for k in range(len(class_names)) if labels[k] ^ flags[k])
    chances = None if batch.error_probability is None else batch.error_probability[0][flags]
    error_probability = float(chances.max()) if chances is not None and chances.size else None
    return WriteBack(
        project_id=event.project_id,
        task_id=event.task_id,
        annotation_id=event.annotation_id,
        version=event.version,
        label_quality=float(batch.label_quality[0]),
        flagged=bool(flags.any()),
        issues=issues,
        suggested=suggested,
        model_version=batch.model_version,
        error_probability=error_probability,
        choices_name=event.choices_name,
        to_name=event.to_name,
    )


def seen_annotation(
    event: AnnotationEvent, write: WriteBack, batch: ScoredBatch, class_names: Sequence[str]
) -> SeenAnnotation:
    """What the outbox keeps of a scored annotation version (row 0 of ``batch``).

    ``payload``: ``{"given": [tags among the classes], "issues": [[label, kind,
    probability], ...], "error_probabilities": {label: p} (flagged classes that have
    one), "model_version": ..., "flag_id": the flag's id or null}``.
    """
    labels = event.example.labels
    given = [name for k, name in enumerate(class_names) if bool(labels[k])]
    chances: dict[str, float] = {}
    if batch.error_probability is not None:
        for k in map(int, np.flatnonzero(batch.flags[0])):
            value = float(batch.error_probability[0, k])
            if not math.isnan(value):
                chances[class_names[k]] = value
    payload = {
        "error_probabilities": chances,
        "given": given,
        "issues": [list(issue) for issue in write.issues],
        "model_version": write.model_version,
        "flag_id": dedupe_key(event.example.id, write.model_version, given)
        if write.flagged
        else None,
    }
    return SeenAnnotation(
        annotation_id=event.annotation_id,
        project_id=event.project_id,
        task_id=event.task_id,
        version=event.version,
        annotator=event.example.annotator_id,
        payload=json.dumps(payload, ensure_ascii=False, sort_keys=True),
    )


def verdicts_of_update(
    previous: SeenAnnotation, event: AnnotationEvent, class_names: Sequence[str]
) -> list[VerdictRow]:
    """The implicit verdicts of ``event`` (an update) on the flag of ``previous``, if any."""
    seen = json.loads(previous.payload)
    if not seen.get("flag_id") or previous.version == event.version:
        return []
    labels = event.example.labels
    now = {name for k, name in enumerate(class_names) if bool(labels[k])}
    reviewer = f"{SOURCE_LABEL_STUDIO}:{event.reviewer or 'unknown'}"
    chances = seen.get("error_probabilities") or {}
    return [
        VerdictRow(
            flag_id=str(seen["flag_id"]),
            label=label,
            reviewer=reviewer,
            verdict=verdict.value,
            note=f"annotation {event.annotation_id} updated at {event.version}",
            source=SOURCE_LABEL_STUDIO,
            kind=kind,
            probability=probability,
            annotator_id=previous.annotator,
            error_probability=chances.get(label),
        )
        for label, verdict, kind, probability in implicit_verdicts(seen["issues"], now)
    ]


class AnnotationProcessor:
    """A thread processing the stored Label Studio events of ``outbox`` (see the module doc).

    ``score``: examples -> :class:`ScoredBatch`; ``writeback``: whether to queue
    write-backs (``--ls-writeback-url`` set); ``on_queued()`` is called after a
    write-back was queued (wakes the write-back worker); ``implicit_verdicts``:
    record verdicts on updates of flagged annotations, each new or changed one
    passed to ``on_verdict`` (metrics). ``observe(outcome,
    seconds)`` is called per event with ``scored``, ``deleted`` or ``failed`` and
    the seconds it took to process (metrics).
    """

    def __init__(
        self,
        outbox: Outbox,
        score: Callable[[Sequence[LabeledExample]], ScoredBatch],
        class_names: Sequence[str],
        mappings: Mappings,
        *,
        writeback: bool,
        policy: RetryPolicy,
        on_queued: Callable[[], None] = lambda: None,
        implicit_verdicts: bool = True,
        on_verdict: Callable[[VerdictRow], None] = lambda row: None,
        observe: Callable[[str, float], None] = lambda outcome, seconds: None,
        max_attempts: int = 5,
        batch: int = 16,
        idle_seconds: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self._outbox = outbox
        self._score = score
        self._class_names = tuple(class_names)
        self._mappings = mappings
        self._writeback = writeback
        self._policy = policy
        self._on_queued = on_queued
        self._implicit = implicit_verdicts
        self._on_verdict = on_verdict
        self._observe = observe
        self._max_attempts = max_attempts
        self._batch = batch
        self._idle = idle_seconds
        self._rng = rng or random.Random()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ls-annotations", daemon=True)

    def start(self) -> None:
        """Start processing (events stored by an earlier run, or another process, first)."""
        self._thread.start()

    def wake(self) -> None:
        """An event was stored: look now rather than at the next idle poll."""
        self._wake.set()

    @property
    def depth(self) -> int:
        """Events stored and not processed yet (all processes sharing the outbox)."""
        try:
            return self._outbox.ls_event_backlog()[0]
        except OutboxError:
            return 0

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the event in progress; what is left stays stored for the next start."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                pause = self.drain_once()
                failures = 0
            except OutboxError as exc:
                failures += 1
                log.error("event=ls_inbox_error error=%r", str(exc))
                pause = self._policy.backoff(failures, self._rng)
            except Exception:  # a bug must not stop processing silently
                failures += 1
                log.exception("event=ls_inbox_worker_error")
                pause = self._policy.backoff(failures, self._rng)
            if pause > 0:
                self._wake.clear()
                self._wake.wait(pause)

    def drain_once(self) -> float:
        """Process the due events; return how long to wait before the next pass (seconds)."""
        claimed = self._outbox.claim_ls_events(
            self._batch, lease_seconds=LEASE_SECONDS, owner=lease_owner()
        )
        for i, item in enumerate(claimed):
            if self._stopping.is_set():
                self._outbox.release_ls_events([c.event_id for c in claimed[i:]])
                return 0.0
            started = time.perf_counter()
            outcome = self._process(item)
            self._observe(outcome, time.perf_counter() - started)
        if claimed:
            return 0.0
        due = self._outbox.next_ls_event_due_in()
        return self._idle if due is None else min(self._idle, due)

    def _process(self, item: QueuedEvent) -> str:
        """Process one stored event; returns ``scored``, ``deleted``, ``failed`` or ``retry``."""
        try:
            event = parse_stored(item.payload, self._mappings, self._class_names)
        except (PayloadError, ValueError) as exc:
            log.error("event=ls_event_dropped id=%d reason=%r", item.event_id, str(exc))
            self._outbox.finish_ls_event(item.event_id)
            return "failed"
        if event is None:
            self._outbox.finish_ls_event(item.event_id)
            return "failed"
        try:
            if isinstance(event, Deletion):
                return self._delete(item, event)
            return self._annotation(item, event)
        except OutboxError:
            raise  # the loop backs off; the lease returns the event later
        except Exception as exc:  # logged with the ids; Label Studio already got its 202
            return self._failed(item, exc)

    def _annotation(self, item: QueuedEvent, event: AnnotationEvent) -> str:
        verdicts: list[VerdictRow] = []
        if self._implicit and event.action == "ANNOTATION_UPDATED":
            previous = self._outbox.ls_annotation(event.annotation_id)
            if previous is not None:
                verdicts = verdicts_of_update(previous, event, self._class_names)
        batch = self._score([event.example])
        result = annotation_score(event, batch, self._class_names)
        changed = self._outbox.finish_ls_event(
            item.event_id,
            write=result.queued() if self._writeback else None,
            seen=seen_annotation(event, result, batch, self._class_names),
            verdicts=verdicts,
        )
        for row, new in zip(verdicts, changed, strict=True):
            if new:
                self._on_verdict(row)
                log.info(
                    "event=ls_implicit_verdict flag=%s label=%r verdict=%s reviewer=%s",
                    row.flag_id,
                    row.label,
                    row.verdict,
                    row.reviewer,
                )
        if self._writeback:
            self._on_queued()
        log.info(
            "event=ls_annotation_scored project=%d task=%d annotation=%d label_quality=%.4f "
            "flagged=%s unknown_tags=%d",
            event.project_id,
            event.task_id,
            event.annotation_id,
            result.label_quality,
            result.flagged,
            len(event.unknown_tags),
        )
        return "scored"

    def _delete(self, item: QueuedEvent, event: Deletion) -> str:
        seen = self._outbox.ls_annotation(event.annotation_id)
        if seen is None:
            self._outbox.finish_ls_event(item.event_id)
            log.info("event=ls_annotation_deleted_unknown annotation=%d", event.annotation_id)
            return "deleted"
        write = WriteBack(
            project_id=seen.project_id,
            task_id=seen.task_id,
            annotation_id=seen.annotation_id,
            version=f"deleted:{item.event_id}",
            label_quality=1.0,
            flagged=False,
            issues=(),
            suggested=(),
            model_version="",
            choices_name="",
            to_name="",
            deleted=True,
        )
        self._outbox.finish_ls_event(
            item.event_id,
            write=write.queued() if self._writeback else None,
            forget_annotation=seen.annotation_id,
        )
        if self._writeback:
            self._on_queued()
        log.info(
            "event=ls_annotation_deleted task=%d annotation=%d", seen.task_id, seen.annotation_id
        )
        return "deleted"

    def _failed(self, item: QueuedEvent, exc: Exception) -> str:
        attempt = item.attempts + 1
        if attempt >= self._max_attempts:
            self._outbox.finish_ls_event(item.event_id)
            log.error(
                "event=ls_event_dropped id=%d annotation=%d attempts=%d error=%r",
                item.event_id,
                item.annotation_id,
                attempt,
                str(exc),
            )
            return "failed"
        wait = self._policy.backoff(attempt, self._rng)
        self._outbox.retry_ls_event(
            item.event_id, due_at=self._outbox.clock() + wait, error=str(exc)
        )
        log.warning(
            "event=ls_event_failed id=%d annotation=%d attempt=%d retry_in=%.1fs error=%r",
            item.event_id,
            item.annotation_id,
            attempt,
            wait,
            str(exc),
        )
        return "retry"
