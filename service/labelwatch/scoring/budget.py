"""The flag budget: one global cut on the per-pair error score, fitted to a flag volume.

A budget ``R`` is the expected number of flagged ``(example, tag)`` pairs per example on
data like the calibration set. Calibration sorts the cross-fitted error scores of all
``N * K`` calibration pairs and records, on a log-spaced grid of budgets from ``1 / N`` to
``K``, the score that exactly ``R * N`` pairs reach. Online a pair is flagged when its
error score is at least the cut-off of the served budget (interpolated on that grid in
``log R``), so changing the volume needs no recalibration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

DEFAULT_BUDGET = 0.1
"""Flagged pairs per example when the operator sets none (see docs/detection.md)."""

GRID_PER_DOUBLING = 8
"""Grid points per doubling of the budget (interpolation error well under 1 % of volume)."""


@dataclass(frozen=True)
class BudgetCurve:
    """Error-score cut-off as a function of the budget.

    ``budgets``: ``(B,)`` increasing, in (0, K]; ``cutoffs``: ``(B,)`` non-increasing
    error scores in [0, 1]; ``default``: the budget served when none is given.
    """

    budgets: NDArray[np.float64]
    cutoffs: NDArray[np.float64]
    default: float

    def cutoff(self, budget: float | None = None) -> float:
        """The error-score cut-off for ``budget`` (``None``: :attr:`default`)."""
        b = self.default if budget is None else float(budget)
        x = np.log(self.budgets)
        return float(np.interp(math.log(b), x, self.cutoffs))


def budget_grid(n_examples: int, n_classes: int) -> NDArray[np.float64]:
    """``(B,)`` log-spaced budgets from ``1 / n_examples`` to ``n_classes`` (both included)."""
    lo, hi = 1.0 / max(n_examples, 1), float(n_classes)
    points = max(2, math.ceil(math.log2(hi / lo) * GRID_PER_DOUBLING) + 1)
    grid: NDArray[np.float64] = np.geomspace(lo, hi, points)
    return grid


def fit_budget_curve(scores: NDArray[np.float64], default: float = DEFAULT_BUDGET) -> BudgetCurve:
    """Fit the curve on ``(N, K)`` cross-fitted calibration error scores.

    At grid budget ``b`` (the grid includes ``default``) the cut-off is the
    ``ceil(b * N)``-th largest score, so the calibration set flags ``ceil(b * N)`` pairs
    (more only on ties at the cut).
    """
    n, k = scores.shape
    check_budget(default, k)
    grid = np.union1d(budget_grid(n, k), [default])  # the default budget exactly
    ordered = np.sort(scores, axis=None)[::-1]
    ranks = np.clip(np.ceil(grid * n - 1e-9).astype(np.int64), 1, ordered.shape[0])
    cutoffs = ordered[ranks - 1]
    return BudgetCurve(budgets=grid, cutoffs=np.asarray(cutoffs, dtype=np.float64), default=default)


def check_budget(budget: float, n_classes: int) -> float:
    """``budget`` if it is a finite number in (0, K]; else ``ValueError`` naming the range."""
    b = float(budget)
    if not (math.isfinite(b) and 0.0 < b <= n_classes):
        raise ValueError(
            f"flag budget must be in (0, {n_classes}] flagged tags per example "
            f"(the model has {n_classes} classes), got {budget}"
        )
    return b
