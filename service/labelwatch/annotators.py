"""Per-annotator quality: counts while scoring, and error rates shrunk towards the global rate.

While serving, :class:`AnnotatorTally` counts per ``annotator_id`` the examples
scored and flagged; the counts go to the outbox with the next batch's flags (or
after ``flush_seconds`` without flags), in the same transaction.

:func:`annotator_quality` turns the counts and the verdicts into an error-rate
estimate per annotator:

1. ``precision`` = confirmed / (confirmed + rejected) flags over all annotators
   (1.0 while there are no verdicts: flags are then taken at face value);
2. estimated errors ``e_i`` = confirmed_i + precision x (flags of i without a
   verdict): a confirmed flag is an error, a rejected one is not, an unreviewed
   one counts as an error with the measured precision;
3. a Beta(a, b) prior is fitted to all annotators' ``e_i / scored_i`` by the
   method of moments (beta-binomial empirical Bayes,
   :func:`labelwatch.stats.beta_binomial_prior`), and each annotator's rate is the
   posterior Beta(a + e_i, b + scored_i - e_i): its mean, and an equal-tailed
   interval. An annotator with few examples stays near the global rate; one with
   many is judged by their own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from labelwatch.domain import ScoredBatch
from labelwatch.outbox import AnnotatorCounts
from labelwatch.stats import Interval, beta_binomial_prior, shrunk_rate


class AnnotatorTally:
    """Counts per annotator ``(scored, flagged)`` until they are handed to the outbox.

    Thread-safe. ``clock`` is monotonic seconds.
    """

    def __init__(
        self, *, flush_seconds: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._flush = flush_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, list[int]] = {}
        self._since = clock()

    def add(self, batches: Sequence[ScoredBatch], *, force: bool) -> dict[str, tuple[int, int]]:
        """Count ``batches``; return what to store now (all pending counts when ``force``
        or ``flush_seconds`` passed since the last hand-over, else ``{}``)."""
        with self._lock:
            for batch in batches:
                hits = np.asarray(batch.flags.any(axis=1), dtype=np.bool_).tolist()
                flagged: list[bool] = [bool(x) for x in hits]
                for ex, hit in zip(batch.examples, flagged, strict=True):
                    if ex.annotator_id:
                        row = self._pending.setdefault(ex.annotator_id, [0, 0])
                        row[0] += 1
                        row[1] += int(hit)
            if not self._pending or not (force or self._clock() - self._since >= self._flush):
                return {}
            out = {who: (s, f) for who, (s, f) in self._pending.items()}
            self._pending = {}
            self._since = self._clock()
            return out

    def give_back(self, counts: dict[str, tuple[int, int]]) -> None:
        """Counts that could not be stored: keep them for the next hand-over."""
        with self._lock:
            for who, (s, f) in counts.items():
                row = self._pending.setdefault(who, [0, 0])
                row[0] += s
                row[1] += f


@dataclass(frozen=True)
class AnnotatorQuality:
    """One annotator's counts and error-rate estimate (see the module docstring).

    ``estimated_errors``: ``e_i``; ``raw_rate``: ``e_i / scored`` (0 with nothing
    scored); ``error_rate``: the shrunk estimate (its interval: :func:`interval_of`,
    computed only for the rows shown, as it costs far more than the estimate).
    """

    annotator_id: str
    scored: int
    flagged: int
    confirmed: int
    rejected: int
    estimated_errors: float
    raw_rate: float
    error_rate: float


@dataclass(frozen=True)
class QualityReport:
    """Every annotator's :class:`AnnotatorQuality`, and what they were shrunk towards."""

    annotators: tuple[AnnotatorQuality, ...]
    precision: float  # of flags, from verdicts (1.0 without verdicts)
    global_rate: float  # the prior's mean
    prior: tuple[float, float]
    confidence: float


def annotator_quality(counts: Sequence[AnnotatorCounts], confidence: float = 0.95) -> QualityReport:
    """Estimate each annotator's error rate from ``counts`` (see the module docstring).

    >>> from labelwatch.outbox import AnnotatorCounts as C
    >>> r = annotator_quality([C("a", 1000, 100, 0, 0), C("b", 1000, 10, 0, 0), C("c", 2, 2, 0, 0)])
    >>> [round(q.raw_rate, 3) for q in r.annotators]
    [0.1, 0.01, 1.0]
    >>> 0.01 < r.annotators[2].error_rate < 0.2  # 2 of 2 flagged: pulled to the pool
    True
    """
    confirmed = sum(c.confirmed for c in counts)
    rejected = sum(c.rejected for c in counts)
    precision = confirmed / (confirmed + rejected) if confirmed + rejected else 1.0
    errors = []
    for c in counts:
        unreviewed = max(0, c.flagged - c.confirmed - c.rejected)
        e = min(float(c.scored), c.confirmed + precision * unreviewed) if c.scored else 0.0
        errors.append(e)
    prior = beta_binomial_prior(errors, [c.scored for c in counts])
    rows = tuple(
        AnnotatorQuality(
            annotator_id=c.annotator_id,
            scored=c.scored,
            flagged=c.flagged,
            confirmed=c.confirmed,
            rejected=c.rejected,
            estimated_errors=e,
            raw_rate=e / c.scored if c.scored else 0.0,
            error_rate=(prior[0] + e) / (prior[0] + prior[1] + c.scored),
        )
        for c, e in zip(counts, errors, strict=True)
    )
    return QualityReport(rows, precision, prior[0] / sum(prior), prior, confidence)


SORT_KEYS: dict[str, Callable[[AnnotatorQuality], tuple[float, str]]] = {
    "error_rate": lambda q: (q.error_rate, q.annotator_id),
    "scored": lambda q: (float(q.scored), q.annotator_id),
    "flagged": lambda q: (float(q.flagged), q.annotator_id),
    "confirmed": lambda q: (float(q.confirmed), q.annotator_id),
    "annotator_id": lambda q: (0.0, q.annotator_id),
}
"""Orders of :func:`page`."""


def page(
    report: QualityReport, *, order_by: str, descending: bool, offset: int, limit: int
) -> tuple[list[AnnotatorQuality], int | None]:
    """Rows ``[offset, offset + limit)`` in the order asked; and the next offset or None."""
    rows = sorted(report.annotators, key=SORT_KEYS[order_by], reverse=descending)
    chunk = rows[offset : offset + limit]
    following = offset + limit if offset + limit < len(rows) else None
    return chunk, following


def interval_of(q: AnnotatorQuality, report: QualityReport) -> Interval:
    """``q``'s shrunk error rate with its equal-tailed interval at ``report.confidence``."""
    return shrunk_rate(q.estimated_errors, q.scored, report.prior, report.confidence)
