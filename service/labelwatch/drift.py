"""Drift math: per-class flag rates over the last W scored examples, against calibration.

Pure numpy, no Prometheus: :mod:`labelwatch.metrics` exports what this computes.

Definitions (also in ``docs/metrics.md``):

* The **window** holds exactly the last ``window_examples`` scored examples (default
  10,000), counted by example, not by time, so a quiet service keeps its last
  picture instead of decaying to nothing.
* The **recent flag rate** of class k and kind (MISSING or SPURIOUS) is the number of
  window examples flagged for k with that kind, divided by the examples in the window.
  It is directly comparable to the calibration artifact's ``flag_rates[rule]``,
  the same fraction measured on the calibration set.
* The **overall flag rate** is the sum of the per-class rates over every class and
  both kinds: the mean number of suspected label issues per example.
* The **drift ratio** is recent overall flag rate / calibration overall flag rate.
  1.0 means flags arrive as often as at calibration; 2.0 twice as often. It is NaN
  while the window is empty; when the calibration rate is 0 it is 1.0 if the recent
  rate is 0 too, else +Inf.

Flags are stored sparsely (one entry per flagged class of an example), so the memory
is proportional to the flags in the window, not to ``window_examples * n_classes``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

DEFAULT_WINDOW_EXAMPLES = 10_000
"""Examples in the drift window unless told otherwise."""

MISSING, SPURIOUS = 0, 1
"""Column of each kind in the ``(K, 2)`` count and rate arrays (as in ``flag_rates``)."""


@dataclass
class _Chunk:
    """Flags of one recorded batch still (partly) in the window.

    ``rows`` is sorted; rows ``< start`` have already left the window.
    """

    n_rows: int
    start: int
    rows: NDArray[np.int64]
    classes: NDArray[np.int64]
    kinds: NDArray[np.int64]

    @property
    def live_rows(self) -> int:
        return self.n_rows - self.start


class FlagWindow:
    """Per-class MISSING/SPURIOUS flag counts over the last ``size`` examples.

    >>> w = FlagWindow(n_classes=2, size=3)
    >>> missing = np.array([[True, False], [False, False]])
    >>> spurious = np.array([[False, False], [False, True]])
    >>> w.add(missing, spurious)
    >>> w.n_examples, w.counts.tolist()
    (2, [[1, 0], [0, 1]])
    >>> w.add(np.zeros((2, 2), bool), np.zeros((2, 2), bool))  # first example leaves
    >>> w.n_examples, w.counts.tolist()
    (3, [[0, 0], [0, 1]])
    """

    def __init__(self, n_classes: int, size: int = DEFAULT_WINDOW_EXAMPLES) -> None:
        if size < 1:
            raise ValueError(f"window size must be at least 1 example, got {size}")
        self.n_classes = n_classes
        self.size = size
        self._chunks: deque[_Chunk] = deque()
        self._n = 0
        self._counts = np.zeros((n_classes, 2), dtype=np.int64)

    @property
    def n_examples(self) -> int:
        """Examples currently in the window, ``0 <= n_examples <= size``."""
        return self._n

    @property
    def counts(self) -> NDArray[np.int64]:
        """``(n_classes, 2)`` flags in the window; column 0 MISSING, column 1 SPURIOUS."""
        out: NDArray[np.int64] = self._counts.copy()
        return out

    def add(self, missing: NDArray[np.bool_], spurious: NDArray[np.bool_]) -> None:
        """Append a batch: ``missing``/``spurious`` are ``(n, n_classes)`` bool masks."""
        if missing.shape != spurious.shape or missing.shape[1:] != (self.n_classes,):
            raise ValueError(
                f"expected two (n, {self.n_classes}) masks, got {missing.shape} and "
                f"{spurious.shape}"
            )
        n = missing.shape[0]
        if n == 0:
            return
        if n > self.size:  # only the last `size` rows can be in the window
            missing, spurious = missing[-self.size :], spurious[-self.size :]
            n = self.size
        flags = np.stack([missing, spurious], axis=2)  # (n, K, 2)
        rows, classes, kinds = (a.astype(np.int64) for a in np.nonzero(flags))
        np.add.at(self._counts, (classes, kinds), 1)
        self._chunks.append(_Chunk(n, 0, rows, classes, kinds))
        self._n += n
        self._evict(self._n - self.size)

    def _evict(self, excess: int) -> None:
        while excess > 0:
            chunk = self._chunks[0]
            take = min(excess, chunk.live_rows)
            stop = chunk.start + take
            cut = int(np.searchsorted(chunk.rows, stop, side="left"))
            np.subtract.at(self._counts, (chunk.classes[:cut], chunk.kinds[:cut]), 1)
            chunk.rows, chunk.classes, chunk.kinds = (
                chunk.rows[cut:],
                chunk.classes[cut:],
                chunk.kinds[cut:],
            )
            chunk.start = stop
            if chunk.live_rows == 0:
                self._chunks.popleft()
            self._n -= take
            excess -= take

    def rates(self) -> NDArray[np.float64]:
        """``(n_classes, 2)`` recent flag rates (flags / examples); zeros while empty."""
        if self._n == 0:
            return np.zeros((self.n_classes, 2), dtype=np.float64)
        return self._counts / float(self._n)


def cap_classes(rates: NDArray[np.float64], max_series: int) -> NDArray[np.float64]:
    """Fold classes past the first ``max_series`` into one extra row (their sum).

    ``rates`` is ``(K, 2)``; returns ``(min(K, max_series) + 1, 2)`` when
    ``K > max_series`` (last row: the rest, summed), else ``rates`` unchanged.

    >>> cap_classes(np.array([[0.1, 0.0], [0.2, 0.1], [0.3, 0.2]]), 1).round(3).tolist()
    [[0.1, 0.0], [0.5, 0.3]]
    """
    if rates.shape[0] <= max_series:
        return rates
    return np.vstack([rates[:max_series], rates[max_series:].sum(axis=0, keepdims=True)])


def drift_ratio(recent_rate: float, calibration_rate: float, n_examples: int) -> float:
    """Recent overall flag rate / calibration overall flag rate (see the module docstring).

    >>> drift_ratio(0.4, 0.2, 100)
    2.0
    >>> drift_ratio(0.0, 0.0, 100), drift_ratio(0.1, 0.0, 100)
    (1.0, inf)
    >>> math.isnan(drift_ratio(0.0, 0.2, 0))
    True
    """
    if n_examples == 0:
        return math.nan
    if calibration_rate <= 0.0:
        return 1.0 if recent_rate <= 0.0 else math.inf
    return recent_rate / calibration_rate
