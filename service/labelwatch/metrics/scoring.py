"""The scoring server's own families: examples, flags, scores, timings, model and build.

:class:`Metrics` also carries the gRPC server families (:mod:`labelwatch.metrics.grpc`)
and the drift gauges (:mod:`labelwatch.metrics.drift`), so one object is passed to
the pipeline and the interceptor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from labelwatch.domain import ScoredBatch
from labelwatch.drift import DEFAULT_WINDOW_EXAMPLES, SparseFlags, cap_classes
from labelwatch.metrics.buckets import LATENCY_BUCKETS
from labelwatch.metrics.drift import (
    DEFAULT_MAX_CLASS_SERIES,
    KINDS,
    OTHER_CLASS,
    DriftCollector,
)
from labelwatch.metrics.grpc import GrpcServerMetrics

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
_QUALITY_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))


class Metrics:
    """The scoring server's metrics on ``registry`` (docs/metrics.md describes each one).

    ``max_class_series``: per-class series are capped; the first
    ``max_class_series`` classes get their own ``class`` label value, the rest
    are summed under ``__other__``, so a model with thousands of classes keeps
    a bounded series count. ``drift_window_examples``: size of the drift window,
    in examples (see :mod:`labelwatch.drift`). ``process_metrics``: also register
    prometheus_client's process, platform and GC collectors on ``registry``.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        max_class_series: int = DEFAULT_MAX_CLASS_SERIES,
        drift_window_examples: int = DEFAULT_WINDOW_EXAMPLES,
        process_metrics: bool = True,
    ) -> None:
        if max_class_series < 0:
            raise ValueError(f"max_class_series must be >= 0, got {max_class_series}")
        self.registry = registry
        self.max_class_series = max_class_series
        self.drift = DriftCollector(max_class_series, drift_window_examples)
        registry.register(self.drift)
        if process_metrics:
            # process_* (CPU, memory, fds, start time), python_info, python_gc_*
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            if GC_COLLECTOR is not None:
                GCCollector(registry=registry)
        self.examples_scored = Counter(
            "labelwatch_examples_scored_total",
            "Examples scored.",
            ["model_version"],
            registry=registry,
        )
        self.examples_flagged = Counter(
            "labelwatch_examples_flagged_total",
            "Examples with at least one suspected label issue.",
            ["model_version"],
            registry=registry,
        )
        self.class_flags = Counter(
            "labelwatch_class_flags_total",
            "Suspected label issues by class and kind (MISSING or SPURIOUS).",
            ["class", "kind"],
            registry=registry,
        )
        self._class_flag_series: dict[tuple[str, str], Counter] = {}
        """The children of ``class_flags`` by (class label, kind), looked up once each."""
        self.label_quality = Histogram(
            "labelwatch_label_quality",
            "Label-quality score of scored examples (0 = surely mislabeled, 1 = clean).",
            buckets=_QUALITY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "labelwatch_batch_size_examples",
            "Examples per scored batch.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.inference_seconds = Histogram(
            "labelwatch_model_inference_seconds",
            "Wall time of one model call over a batch.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.scoring_seconds = Histogram(
            "labelwatch_scoring_seconds",
            "Wall time of thresholding and pooling over a batch.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.model_info = Gauge(
            "labelwatch_model_info",
            "The loaded model (value 1).",
            ["name", "version", "sha256"],
            registry=registry,
        )
        grpc = GrpcServerMetrics(registry)
        self.grpc_started = grpc.started
        self.grpc_handled = grpc.handled
        self.grpc_handling_seconds = grpc.handling_seconds
        self.flag_budget = Gauge(
            "labelwatch_flag_budget",
            "Flagged (example, tag) pairs per example the budget rule aims at (--flag-budget, "
            "or the artifact's default); not exported under other rules.",
            registry=registry,
        )
        self.build_info = Gauge(
            "labelwatch_build_info", "labelwatch build (value 1).", ["version"], registry=registry
        )

    def _class_label(self, index: int, class_names: tuple[str, ...]) -> str:
        return class_names[index] if index < self.max_class_series else OTHER_CLASS

    def set_calibration(
        self, class_names: Sequence[str], flag_rates: NDArray[np.float64] | None
    ) -> None:
        """Set the per-class flag rates measured at calibration (the drift baseline).

        ``flag_rates`` is the artifact's ``fit.flag_rates[rule]`` for the rule being
        served, ``(K, 2)`` (column 0 MISSING, column 1 SPURIOUS), or None when the
        artifact has none (then only the recent rates are exported).
        """
        self.drift.set_calibration(tuple(class_names), flag_rates)

    def record_batch(self, batch: ScoredBatch, class_names: tuple[str, ...]) -> None:
        """Count one scored batch: examples, flags per class and kind, scores, drift window.

        One update per family, class and bucket, whatever the batch size: the values
        are those of one ``observe`` / ``inc`` per example.
        """
        n = len(batch.examples)
        self.batch_size.observe(n)
        if n == 0:
            return
        self.examples_scored.labels(batch.model_version).inc(n)
        flagged = int(np.count_nonzero(batch.flags.any(axis=1)))
        if flagged:
            self.examples_flagged.labels(batch.model_version).inc(flagged)
        flags = SparseFlags.from_masks(batch.flags, batch.labels)
        self.drift.record(class_names, flags)
        # fold the classes past the cap first: at most max_class_series + 1 series to touch
        per_class = cap_classes(flags.per_class(), self.max_class_series)
        ks, cols = np.nonzero(per_class)
        counts = per_class[ks, cols].tolist()
        for k, col, count in zip(ks.tolist(), cols.tolist(), counts, strict=True):
            key = (self._class_label(k, class_names), KINDS[col])
            child = self._class_flag_series.get(key)
            if child is None:
                child = self._class_flag_series[key] = self.class_flags.labels(*key)
            child.inc(count)
        observe_many(self.label_quality, batch.label_quality)


def observe_many(histogram: Histogram, values: NDArray[np.float64]) -> None:
    """``histogram.observe(v)`` for every ``v`` of ``values`` ``(n,)``, one update per bucket.

    For a histogram without labels. The bucket counts are exactly those of ``n``
    calls (a value lands in the first bucket whose bound is >= it; NaN in none); the
    sum grows by the values' sum. prometheus_client has no bulk observe, so this
    updates the histogram's bucket and sum values the way ``observe`` does.
    """
    if not len(values):
        return
    bounds = np.asarray(histogram._upper_bounds, dtype=np.float64)  # +Inf last
    which = np.searchsorted(bounds, values, side="left")  # first bound >= value
    counts = np.bincount(which, minlength=len(bounds) + 1)[: len(bounds)]
    buckets = histogram._buckets
    for i in np.flatnonzero(counts).tolist():
        buckets[i].inc(int(counts[i]))
    histogram._sum.inc(sum(np.asarray(values, dtype=np.float64).tolist()))
