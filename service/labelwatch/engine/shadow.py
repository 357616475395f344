"""The shadow model: a candidate scores a sample of live traffic, off the response path.

:meth:`Shadow.offer` is called with each merged batch the live model scored. It
picks about ``fraction`` of the batch's examples and queues them with the live
results; if the queue already holds ``max_queued`` examples they are dropped and
counted instead (``labelwatch_shadow_dropped_total``), so a slow shadow never
slows or grows the live path. One thread scores the queue with the shadow pipeline
(which has no outbox: nothing it flags is stored, sent or returned), merging what
is queued into one model call of at most :data:`MAX_SHADOW_BATCH` examples, and adds the
comparison to :class:`~labelwatch.metrics.models.ShadowMetrics`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from labelwatch.domain import LabeledExample, ScoredBatch
from labelwatch.drift import cap_classes
from labelwatch.metrics.drift import OTHER_CLASS
from labelwatch.metrics.models import FLAGGED_BY, QUALITY_TERMS, ShadowMetrics
from labelwatch.pipeline import Pipeline

log = logging.getLogger(__name__)

SHADOW_QUEUE_EXAMPLES = 4096
"""Most examples waiting for the shadow model; past it, samples are dropped and counted."""

MAX_SHADOW_BATCH = 256
"""Most examples in one shadow model call (queued samples are merged up to it)."""


@dataclass(frozen=True)
class Comparison:
    """Live vs shadow over ``n`` examples and K classes.

    ``class_flags`` ``(K, 3)`` int64: tags flagged by the live model, the shadow, both;
    ``agreeing``: examples with the same flagged tags; ``quality_sums`` (5,): sums of
    x, y, x², y², x·y with x, y the live and shadow label quality.
    """

    n: int
    agreeing: int
    class_flags: NDArray[np.int64]
    quality_sums: NDArray[np.float64]


def compare(
    live_flags: NDArray[np.bool_],
    live_quality: NDArray[np.float64],
    shadow_flags: NDArray[np.bool_],
    shadow_quality: NDArray[np.float64],
) -> Comparison:
    """Compare ``(n, K)`` flag masks and ``(n,)`` label qualities of two models.

    >>> a = np.array([[True, False], [False, False]])
    >>> b = np.array([[True, True], [False, False]])
    >>> c = compare(a, np.array([0.2, 0.9]), b, np.array([0.1, 0.9]))
    >>> c.agreeing, c.class_flags.tolist()
    (1, [[1, 1, 1], [0, 1, 0]])
    """
    both = live_flags & shadow_flags
    class_flags = np.stack(
        [live_flags.sum(axis=0), shadow_flags.sum(axis=0), both.sum(axis=0)], axis=1
    ).astype(np.int64)
    x, y = live_quality, shadow_quality
    sums = np.array([x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum()])
    agreeing = int((live_flags == shadow_flags).all(axis=1).sum())
    return Comparison(len(x), agreeing, class_flags, sums.astype(np.float64))


@dataclass(frozen=True)
class _Item:
    """Sampled examples and what the live model made of them."""

    examples: list[LabeledExample]
    live_version: str
    live_flags: NDArray[np.bool_]  # (n, K)
    live_quality: NDArray[np.float64]  # (n,)


class Shadow:
    """Scores a sample of live batches with ``pipeline`` in a background thread.

    ``fraction`` in [0, 1]: share of examples sampled; ``max_queued``: examples
    waiting at most; ``max_class_series``: per-class series cap (the rest go to
    ``__other__``); ``seed``: the sampler's seed (None: from the OS).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        metrics: ShadowMetrics,
        *,
        fraction: float,
        max_queued: int,
        max_class_series: int,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"shadow fraction must be in [0, 1], got {fraction}")
        self.pipeline = pipeline
        self.version = pipeline.model_version
        self._metrics = metrics
        self._fraction = fraction
        self._max_queued = max_queued
        self._max_series = max_class_series
        self._rng = np.random.default_rng(seed)
        self._queue: deque[_Item] = deque()
        self._queued = 0
        self._cv = threading.Condition()
        self._closed = False
        self._idle = True
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self._thread.start()

    def offer(self, batch: ScoredBatch) -> None:
        """Queue a sample of ``batch`` (scored live) for the shadow, or count it dropped."""
        n = len(batch.examples)
        if n == 0 or self._fraction <= 0.0:
            return
        if self._fraction >= 1.0:
            picked = np.arange(n)
        else:
            picked = np.flatnonzero(self._rng.random(n) < self._fraction)
        if picked.size == 0:
            return
        with self._cv:
            if self._closed:
                return
            if self._queued + picked.size > self._max_queued:
                self._metrics.dropped.inc(int(picked.size))
                return
            item = _Item(
                [batch.examples[int(i)] for i in picked],
                batch.model_version,
                batch.flags[picked],  # fancy indexing copies: the batch may be reused
                batch.label_quality[picked],
            )
            self._queue.append(item)
            self._queued += picked.size
            self._metrics.queued.set(self._queued)
            self._cv.notify()

    def wait_idle(self, timeout: float) -> bool:
        """Block until the queue is empty and nothing is being scored (for tests/bench)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._queue or not self._idle:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cv.wait(remaining)
        return True

    def close(self) -> None:
        """Drop what is queued and stop the thread."""
        with self._cv:
            self._closed = True
            self._queue.clear()
            self._cv.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._idle = True
                    self._cv.notify_all()
                    self._cv.wait()
                if self._closed:
                    self._idle = True
                    self._cv.notify_all()
                    return
                # everything queued in one model call: per-call overhead dominates small samples
                items = [self._queue.popleft()]
                size = len(items[0].examples)
                while self._queue and size + len(self._queue[0].examples) <= MAX_SHADOW_BATCH:
                    items.append(self._queue.popleft())
                    size += len(items[-1].examples)
                self._idle = False
            try:
                self._score(items)
            except Exception as exc:  # the shadow must never take the live path down
                log.warning("event=shadow_failed version=%s error=%s", self.version, exc)
            finally:
                with self._cv:
                    self._queued -= size
                    self._metrics.queued.set(self._queued)

    def _score(self, items: list[_Item]) -> None:
        started = time.perf_counter()
        shadow = self.pipeline.compute([ex for item in items for ex in item.examples])
        self._metrics.seconds.observe(time.perf_counter() - started)
        start = 0
        for item in items:
            stop = start + len(item.examples)
            result = compare(
                item.live_flags,
                item.live_quality,
                shadow.flags[start:stop],
                shadow.label_quality[start:stop],
            )
            self._count(result, item.live_version)
            start = stop

    def _count(self, result: Comparison, live_version: str) -> None:
        versions = (live_version, self.version)
        m = self._metrics
        m.examples.labels(*versions).inc(result.n)
        m.agreeing.labels(*versions).inc(result.agreeing)
        names = self.pipeline.spec.class_names
        per_class = cap_classes(result.class_flags, self._max_series)
        for k, row in enumerate(per_class):
            if not row.any():
                continue
            name = names[k] if k < self._max_series else OTHER_CLASS
            for col, flagged_by in enumerate(FLAGGED_BY):
                if row[col]:
                    m.class_flags.labels(*versions, name, flagged_by).inc(int(row[col]))
        for term, value in zip(QUALITY_TERMS, result.quality_sums, strict=True):
            m.quality_sums.labels(*versions, term).inc(float(value))
