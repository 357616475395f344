"""Per-annotator quality on ``/metrics``: aggregates always, single annotators only if asked.

Read from the outbox when scraped (at most every ``min_interval_seconds``; a
scrape in between gets the last values):

* ``labelwatch_annotators``: annotators with counted examples;
* ``labelwatch_annotator_error_rate_global``: the rate few-example annotators are
  shrunk towards (:mod:`labelwatch.annotators`);
* with ``top`` > 0 (``--annotator-metrics N``): ``labelwatch_annotator_error_rate``
  and ``labelwatch_annotator_examples_scored`` labelled ``annotator`` for the N
  annotators with the highest shrunk error rate, so the series count stays bounded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily, Metric

from labelwatch.annotators import QualityReport, page
from labelwatch.errors import PublicError


class AnnotatorCollector:
    """A prometheus_client collector over ``report()`` (see the module docstring)."""

    def __init__(
        self,
        report: Callable[[], QualityReport],
        *,
        top: int = 0,
        min_interval_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if top < 0:
            raise ValueError(f"top must be >= 0, got {top}")
        self._report = report
        self._top = top
        self._interval = min_interval_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, QualityReport] | None = None

    def _families(self) -> list[GaugeMetricFamily]:
        out = [
            GaugeMetricFamily("labelwatch_annotators", "Annotators with counted examples."),
            GaugeMetricFamily(
                "labelwatch_annotator_error_rate_global",
                "Estimated share of mislabeled examples over all annotators (the rate "
                "annotators with few examples are shrunk towards).",
            ),
        ]
        if self._top:
            out += [
                GaugeMetricFamily(
                    "labelwatch_annotator_error_rate",
                    "Shrunk error-rate estimate of the annotators with the highest one "
                    "(--annotator-metrics N of them).",
                    labels=["annotator"],
                ),
                GaugeMetricFamily(
                    "labelwatch_annotator_examples_scored",
                    "Examples scored of the annotators in labelwatch_annotator_error_rate.",
                    labels=["annotator"],
                ),
            ]
        return out

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def _current(self) -> QualityReport | None:
        with self._lock:
            now = self._clock()
            if self._cached is None or now - self._cached[0] >= self._interval:
                try:
                    self._cached = (now, self._report())
                except PublicError:
                    return None if self._cached is None else self._cached[1]
            return self._cached[1]

    def collect(self) -> Iterable[Metric]:
        report = self._current()
        if report is None:
            return []  # labelwatch_outbox_writable says why
        families = self._families()
        families[0].add_metric([], float(len(report.annotators)))
        families[1].add_metric([], report.global_rate)
        if self._top:
            worst, _ = page(
                report, order_by="error_rate", descending=True, offset=0, limit=self._top
            )
            for q in worst:
                families[2].add_metric([q.annotator_id], q.error_rate)
                families[3].add_metric([q.annotator_id], float(q.scored))
        return families
