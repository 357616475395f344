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
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

_Num = TypeVar("_Num", bound=np.number[Any])

DEFAULT_WINDOW_EXAMPLES = 10_000
"""Examples in the drift window unless told otherwise."""

MISSING, SPURIOUS = 0, 1
"""Column of each kind in the ``(K, 2)`` count and rate arrays (as in ``flag_rates``)."""


@dataclass(frozen=True)
class SparseFlags:
    """The flags of a batch of ``n_rows`` examples, one entry per flagged (example, class).

    ``rows``, ``classes``, ``kinds`` are equal-length int64 arrays, sorted by row;
    ``kinds`` holds :data:`MISSING` (class not tagged) or :data:`SPURIOUS` (tagged).
    """

    n_rows: int
    n_classes: int
    rows: NDArray[np.int64]
    classes: NDArray[np.int64]
    kinds: NDArray[np.int64]

    @classmethod
    def from_masks(cls, flags: NDArray[np.bool_], labels: NDArray[np.bool_]) -> SparseFlags:
        """From ``(n, K)`` bool flags and tags: a flagged tagged class is SPURIOUS, else MISSING.

        >>> f = SparseFlags.from_masks(np.array([[True, True]]), np.array([[False, True]]))
        >>> f.rows.tolist(), f.classes.tolist(), f.kinds.tolist()
        ([0, 0], [0, 1], [0, 1])
        """
        if flags.shape != labels.shape or flags.ndim != 2:
            raise ValueError(f"expected two (n, K) masks, got {flags.shape} and {labels.shape}")
        n, k = flags.shape
        flat = np.flatnonzero(flags)  # row-major: sorted by row; ~10x faster than np.nonzero
        rows, classes = np.divmod(flat, k)
        kinds = labels.ravel()[flat].astype(np.int64)
        return cls(n, k, rows.astype(np.int64), classes.astype(np.int64), kinds)

    def per_class(self) -> NDArray[np.int64]:
        """``(K, 2)`` flag counts per class; column 0 MISSING, column 1 SPURIOUS."""
        counts = np.bincount(self.classes * 2 + self.kinds, minlength=2 * self.n_classes)
        out: NDArray[np.int64] = counts.astype(np.int64).reshape(self.n_classes, 2)
        return out

    def tail(self, n: int) -> SparseFlags:
        """The flags of the last ``n`` rows only, renumbered from 0."""
        if n >= self.n_rows:
            return self
        first = self.n_rows - n
        cut = int(np.searchsorted(self.rows, first, side="left"))
        return SparseFlags(
            n, self.n_classes, self.rows[cut:] - first, self.classes[cut:], self.kinds[cut:]
        )


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
    >>> labels = np.array([[False, False], [False, True]])
    >>> w.add(SparseFlags.from_masks(np.array([[True, False], [False, True]]), labels))
    >>> w.n_examples, w.counts.tolist()  # ex0 class 0 MISSING, ex1 class 1 SPURIOUS
    (2, [[1, 0], [0, 1]])
    >>> w.add(SparseFlags.from_masks(np.zeros((2, 2), bool), labels))  # ex0 leaves
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

    def add(self, flags: SparseFlags) -> None:
        """Append a batch's flags; the oldest examples leave once the window is full."""
        if flags.n_classes != self.n_classes:
            raise ValueError(
                f"flags are over {flags.n_classes} classes, the window over {self.n_classes}"
            )
        if flags.n_rows == 0:
            return
        flags = flags.tail(self.size)  # only the last `size` rows can be in the window
        self._counts += flags.per_class()
        self._chunks.append(_Chunk(flags.n_rows, 0, flags.rows, flags.classes, flags.kinds))
        self._n += flags.n_rows
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


def cap_classes(values: NDArray[_Num], max_series: int) -> NDArray[_Num]:
    """Fold the rows of classes past the first ``max_series`` into one extra row (their sum).

    ``values`` is ``(K, m)`` per-class counts or rates; returns
    ``(max_series + 1, m)`` when ``K > max_series`` (last row: the rest, summed),
    else ``values`` unchanged.

    >>> cap_classes(np.array([[0.1, 0.0], [0.2, 0.1], [0.3, 0.2]]), 1).round(3).tolist()
    [[0.1, 0.0], [0.5, 0.3]]
    """
    if values.shape[0] <= max_series:
        return values
    rest = values[max_series:].sum(axis=0, keepdims=True, dtype=values.dtype)
    return np.vstack([values[:max_series], rest])


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
