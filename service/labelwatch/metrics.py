"""Every Prometheus metric labelwatch exports, defined once on an injectable registry.

``docs/metrics.md`` lists each metric with its labels and meaning.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

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
from prometheus_client.core import GaugeMetricFamily, Metric

from labelwatch.domain import ScoredBatch
from labelwatch.drift import (
    DEFAULT_WINDOW_EXAMPLES,
    FlagWindow,
    SparseFlags,
    cap_classes,
    drift_ratio,
)

OTHER_CLASS = "__other__"
"""Label value standing for every class past :attr:`Metrics.max_class_series`."""

DEFAULT_MAX_CLASS_SERIES = 200
"""Classes that get their own ``class`` label value; the rest share ``__other__``."""

KINDS = ("MISSING", "SPURIOUS")
"""``kind`` label values, in the column order of ``flag_rates`` arrays."""

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
_QUALITY_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))


class Metrics:
    """labelwatch's metrics on ``registry`` (docs/metrics.md describes each one).

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
        self.drift = _DriftCollector(max_class_series, drift_window_examples)
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
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.scoring_seconds = Histogram(
            "labelwatch_scoring_seconds",
            "Wall time of thresholding and pooling over a batch.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.model_info = Gauge(
            "labelwatch_model_info",
            "The loaded model (value 1).",
            ["name", "version", "sha256"],
            registry=registry,
        )
        grpc_labels = ["grpc_service", "grpc_method", "grpc_type"]
        self.grpc_started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server.",
            grpc_labels,
            registry=registry,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            [*grpc_labels, "grpc_code"],
            registry=registry,
        )
        self.grpc_handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its end, as seen by the server.",
            grpc_labels,
            buckets=_LATENCY_BUCKETS,
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
        """Count one scored batch: examples, flags per class and kind, scores, drift window."""
        n = len(batch.examples)
        self.batch_size.observe(n)
        if n == 0:
            return
        self.examples_scored.labels(batch.model_version).inc(n)
        flagged = int(batch.flags.any(axis=1).sum())
        if flagged:
            self.examples_flagged.labels(batch.model_version).inc(flagged)
        flags = SparseFlags.from_masks(batch.flags, batch.labels)
        self.drift.record(class_names, flags)
        # fold the classes past the cap first: at most max_class_series + 1 series to touch
        per_class = cap_classes(flags.per_class(), self.max_class_series)
        for k, col in zip(*np.nonzero(per_class), strict=True):
            label = self._class_label(int(k), class_names)
            self.class_flags.labels(label, KINDS[col]).inc(int(per_class[k, col]))
        for value in batch.label_quality:
            self.label_quality.observe(float(value))


class _DriftCollector:
    """Exports the drift gauges, computed at scrape time from a :class:`FlagWindow`.

    ``labelwatch_class_flag_rate{class,kind,window}``, ``labelwatch_drift_ratio`` and
    ``labelwatch_drift_window_examples``. Computing at scrape time keeps the cost of a
    scored batch independent of the number of classes' series.
    """

    def __init__(self, max_class_series: int, window_examples: int) -> None:
        self._max = max_class_series
        self._window_examples = window_examples
        self._lock = threading.Lock()
        self._class_names: tuple[str, ...] = ()
        self._window: FlagWindow | None = None
        self._calibration: NDArray[np.float64] | None = None

    def _ensure_window(self, class_names: tuple[str, ...]) -> FlagWindow:
        if self._window is None or self._window.n_classes != len(class_names):
            self._window = FlagWindow(len(class_names), self._window_examples)
        self._class_names = class_names
        return self._window

    def set_calibration(
        self, class_names: tuple[str, ...], flag_rates: NDArray[np.float64] | None
    ) -> None:
        if flag_rates is not None and flag_rates.shape != (len(class_names), 2):
            raise ValueError(
                f"flag_rates must be ({len(class_names)}, 2) for {len(class_names)} classes, "
                f"got {flag_rates.shape}"
            )
        with self._lock:
            self._ensure_window(class_names)
            self._calibration = (
                None if flag_rates is None else np.asarray(flag_rates, dtype=np.float64).copy()
            )

    def record(
        self,
        class_names: tuple[str, ...],
        flags: SparseFlags,
    ) -> None:
        with self._lock:
            self._ensure_window(class_names).add(flags)

    def _labels(self) -> list[str]:
        names = list(self._class_names[: self._max])
        if len(self._class_names) > self._max:
            names.append(OTHER_CLASS)
        return names

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            window = self._window
            n = window.n_examples if window is not None else 0
            recent = window.rates() if window is not None else None
            calibration = self._calibration
            labels = self._labels()
        rate, ratio, size = self._families()
        for name, rates in (("recent", recent), ("calibration", calibration)):
            if rates is None:
                continue
            capped = cap_classes(rates, self._max)
            for row, class_label in enumerate(labels):
                for col, kind in enumerate(KINDS):
                    rate.add_metric([class_label, kind, name], float(capped[row, col]))
        if recent is not None:
            size.add_metric([], float(n))
            cal_total = float(calibration.sum()) if calibration is not None else None
            if cal_total is not None:
                ratio.add_metric([], drift_ratio(float(recent.sum()), cal_total, n))
        return [rate, ratio, size]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "labelwatch_class_flag_rate",
                "Fraction of examples flagged per class and kind: window=recent over the "
                "drift window, window=calibration on the calibration set.",
                labels=["class", "kind", "window"],
            ),
            GaugeMetricFamily(
                "labelwatch_drift_ratio",
                "Flags per example in the drift window / flags per example at calibration "
                "(1 = as calibrated).",
            ),
            GaugeMetricFamily(
                "labelwatch_drift_window_examples",
                "Examples currently in the drift window (at most its size).",
            ),
        )
