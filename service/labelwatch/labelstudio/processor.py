"""Score annotation events off the webhook thread, through the server's batcher.

The HTTP handler only parses and enqueues (bounded), so Label Studio gets its
answer at once. One worker scores each event with ``score`` (the server's
:meth:`Batcher.score`, which also records flags in the outbox, so every sink
and WatchFlags sees them) and hands the :class:`WriteBack` to ``on_scored``
(the durable write-back queue, :mod:`labelwatch.labelstudio.writequeue`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from labelwatch.domain import LabeledExample, ScoredBatch
from labelwatch.labelstudio.webhook import AnnotationEvent
from labelwatch.labelstudio.writequeue import WriteBack

log = logging.getLogger(__name__)


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


class AnnotationProcessor:
    """Bounded queue of :class:`AnnotationEvent` -> score -> ``on_scored(write)``.

    ``score``: examples -> :class:`ScoredBatch`; ``on_scored`` may raise (logged:
    the annotation is then not written back). ``observe(outcome, seconds)`` is
    called per event with ``scored`` or ``failed`` and the seconds it took from
    leaving the queue to being handed on (metrics).
    """

    def __init__(
        self,
        score: Callable[[Sequence[LabeledExample]], ScoredBatch],
        class_names: Sequence[str],
        *,
        max_queued: int,
        on_scored: Callable[[WriteBack], None] | None = None,
        observe: Callable[[str, float], None] = lambda outcome, seconds: None,
    ) -> None:
        self._score = score
        self._class_names = tuple(class_names)
        self._on_scored = on_scored
        self._observe = observe
        self._queue: queue.Queue[AnnotationEvent | None] = queue.Queue(maxsize=max_queued)
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
    def depth(self) -> int:
        """Annotations waiting to be scored."""
        return self._queue.qsize()

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
            event = self._queue.get()
            if event is None:
                return
            started = time.perf_counter()
            ok = self._process(event)
            self._observe("scored" if ok else "failed", time.perf_counter() - started)

    def _process(self, event: AnnotationEvent) -> bool:
        ids = f"task={event.task_id} annotation={event.annotation_id}"
        try:
            batch = self._score([event.example])
        except Exception as exc:  # logged with the ids; Label Studio already got its 202
            log.error("event=ls_annotation_not_scored %s error=%s", ids, exc)
            return False
        result = annotation_score(event, batch, self._class_names)
        log.info(
            "event=ls_annotation_scored project=%d %s label_quality=%.4f flagged=%s "
            "unknown_tags=%d",
            event.project_id,
            ids,
            result.label_quality,
            result.flagged,
            len(event.unknown_tags),
        )
        if self._on_scored is None:
            return True
        try:
            self._on_scored(result)
        except Exception as exc:  # e.g. the outbox cannot be written right now
            log.error("event=ls_writeback_not_queued %s error=%s", ids, exc)
            return False
        return True
