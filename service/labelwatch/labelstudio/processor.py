"""Score annotation events off the webhook thread, through the server's batcher.

The HTTP handler only parses and enqueues (bounded), so Label Studio gets its
answer at once. One worker scores each event with ``score`` (the server's
:meth:`Batcher.score`, which also records flags in the outbox, so every sink
and WatchFlags sees them) and hands the result to ``write_back``. A write-back
that fails (Label Studio down) is kept and retried with backoff.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from labelwatch.domain import LabeledExample, ScoredBatch
from labelwatch.labelstudio.webhook import AnnotationEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnnotationScore:
    """What labelwatch concluded about one annotation."""

    event: AnnotationEvent
    label_quality: float  # in [0, 1]; low = likely mislabeled
    flagged: bool
    issues: tuple[tuple[str, str, float], ...]  # (label, "missing"/"spurious", probability)
    suggested: tuple[str, ...]  # the tags labelwatch suggests
    model_version: str


def annotation_score(
    event: AnnotationEvent, batch: ScoredBatch, class_names: Sequence[str]
) -> AnnotationScore:
    """Row 0 of ``batch`` (scored from ``event.example``) as an :class:`AnnotationScore`."""
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
    return AnnotationScore(
        event=event,
        label_quality=float(batch.label_quality[0]),
        flagged=bool(flags.any()),
        issues=issues,
        suggested=suggested,
        model_version=batch.model_version,
    )


class AnnotationProcessor:
    """Bounded queue of :class:`AnnotationEvent` -> score -> optional write-back.

    ``score``: examples -> :class:`ScoredBatch`; ``write_back``: raises on failure
    (the score is then retried after ``retry_initial_seconds``, doubling up to
    ``retry_max_seconds``).
    """

    def __init__(
        self,
        score: Callable[[Sequence[LabeledExample]], ScoredBatch],
        class_names: Sequence[str],
        *,
        max_queued: int,
        write_back: Callable[[AnnotationScore], None] | None = None,
        retry_initial_seconds: float = 0.5,
        retry_max_seconds: float = 30.0,
    ) -> None:
        self._score = score
        self._class_names = tuple(class_names)
        self._write_back = write_back
        self._queue: queue.Queue[AnnotationEvent | None] = queue.Queue(maxsize=max_queued)
        self._retry_initial = retry_initial_seconds
        self._retry_max = retry_max_seconds
        self._pending: list[tuple[float, float, AnnotationScore]] = []  # (due, delay, score)
        self._lock = threading.Lock()
        self.results: dict[int, AnnotationScore] = {}  # annotation id -> latest score
        self._worker = threading.Thread(target=self._run, name="ls-annotations", daemon=True)
        self._worker.start()

    def submit(self, event: AnnotationEvent) -> bool:
        """Queue ``event``; False when the queue is full (the caller answers 503)."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            return False
        return True

    @property
    def pending_writes(self) -> int:
        """Write-backs waiting for a retry."""
        with self._lock:
            return len(self._pending)

    def close(self, timeout: float = 5.0) -> None:
        """Score what is queued (within ``timeout`` seconds), then stop the worker."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.warning("event=ls_queue_not_drained queued=%d", self._queue.qsize())
            return
        self._worker.join(timeout)

    def _run(self) -> None:
        while True:
            try:
                event = self._queue.get(timeout=self._next_retry_in())
            except queue.Empty:
                self._retry_due()
                continue
            if event is None:
                return
            self._process(event)
            self._retry_due()

    def _next_retry_in(self) -> float:
        with self._lock:
            if not self._pending:
                return 1.0
            return max(0.0, min(due for due, _, _ in self._pending) - time.monotonic())

    def _process(self, event: AnnotationEvent) -> None:
        try:
            batch = self._score([event.example])
        except Exception as exc:  # logged with the ids; Label Studio already got its 200
            log.error(
                "event=ls_annotation_not_scored task=%d annotation=%d error=%s",
                event.task_id,
                event.annotation_id,
                exc,
            )
            return
        result = annotation_score(event, batch, self._class_names)
        with self._lock:
            self.results[event.annotation_id] = result
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
        self._write(result, self._retry_initial)

    def _write(self, result: AnnotationScore, delay: float) -> None:
        if self._write_back is None:
            return
        try:
            self._write_back(result)
        except Exception as exc:  # kept and retried: Label Studio may be restarting
            log.warning(
                "event=ls_writeback_failed task=%d annotation=%d retry_in=%.1fs error=%s",
                result.event.task_id,
                result.event.annotation_id,
                delay,
                exc,
            )
            with self._lock:
                self._pending.append(
                    (time.monotonic() + delay, min(delay * 2, self._retry_max), result)
                )

    def _retry_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [p for p in self._pending if p[0] <= now]
            self._pending = [p for p in self._pending if p[0] > now]
        for _, delay, result in due:
            self._write(result, delay)
