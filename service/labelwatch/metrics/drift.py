"""The drift gauges, computed at scrape time from a :class:`~labelwatch.drift.FlagWindow`.

``labelwatch_class_flag_rate{class,kind,window}``, ``labelwatch_drift_ratio`` and
``labelwatch_drift_window_examples``. Computing at scrape time keeps the cost of a
scored batch independent of the number of classes' series. The math lives in
:mod:`labelwatch.drift` (pure numpy); this module only exports it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray
from prometheus_client.core import GaugeMetricFamily, Metric

from labelwatch.drift import FlagWindow, SparseFlags, cap_classes, drift_ratio

OTHER_CLASS = "__other__"
"""Label value standing for every class past the ``max_class_series`` cap."""

DEFAULT_MAX_CLASS_SERIES = 200
"""Classes that get their own ``class`` label value; the rest share ``__other__``."""

KINDS = ("MISSING", "SPURIOUS")
"""``kind`` label values, in the column order of ``flag_rates`` arrays."""


class DriftCollector:
    """Exports the drift gauges of the classes seen last, capped at ``max_class_series``.

    ``window_examples``: size of the drift window, in examples. Thread-safe:
    :meth:`record` runs on the scoring path, :meth:`collect` on the scrape thread.
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
        """Set the calibration baseline, ``(K, 2)`` (MISSING, SPURIOUS), or None for none."""
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
        """Add one scored batch's flags to the window."""
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
        rate, ratio, size, per_example = self._families()
        for name, rates in (("recent", recent), ("calibration", calibration)):
            if rates is None:
                continue
            capped = cap_classes(rates, self._max)
            for row, class_label in enumerate(labels):
                for col, kind in enumerate(KINDS):
                    rate.add_metric([class_label, kind, name], float(capped[row, col]))
            per_example.add_metric([name], float(rates.sum()))
        if recent is not None:
            size.add_metric([], float(n))
            cal_total = float(calibration.sum()) if calibration is not None else None
            if cal_total is not None:
                ratio.add_metric([], drift_ratio(float(recent.sum()), cal_total, n))
        return [rate, ratio, size, per_example]

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily
    ]:
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
            GaugeMetricFamily(
                "labelwatch_flags_per_example",
                "Flagged (example, tag) pairs per example: window=recent over the drift window, "
                "window=calibration on the calibration set (compare with labelwatch_flag_budget).",
                labels=["window"],
            ),
        )
