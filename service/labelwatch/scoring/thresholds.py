"""Per-class confident thresholds (cleanlab's ``get_confident_thresholds``, one-vs-rest)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from labelwatch.scoring.sides import Sides, split_sides
from labelwatch.scoring.types import Thresholds

THRESHOLD_FLOOR = 2e-6
"""cleanlab's ``CONFIDENT_THRESHOLDS_LOWER_BOUND``: thresholds are clipped below at this."""
EMPTY_SIDE = 2.0
"""cleanlab's ``BIG_VALUE``: threshold of a side with no examples, above any probability."""


def as_arrays(
    pred_probs: ArrayLike, labels: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """``(N, K)`` probabilities as float64 and ``(N, K)`` tags as bool (nonzero = tagged).

    Every computation in this package runs in float64: float32 input is widened
    first (cleanlab would compute in float32, see ``docs`` in :mod:`labelwatch.scoring.batch`).
    """
    probs = np.asarray(pred_probs, dtype=np.float64)
    tags = np.asarray(labels).astype(np.bool_)
    if probs.ndim != 2 or tags.shape != probs.shape:
        raise ValueError(f"pred_probs {probs.shape} and labels {tags.shape} must both be (N, K)")
    return probs, tags


def fit_thresholds(pred_probs: ArrayLike, labels: ArrayLike) -> Thresholds:
    """Fit ``t0``/``t1`` per class from ``(N, K)`` probabilities and ``(N, K)`` tags.

    ``t1[k]`` is the mean of ``p[:, k]`` over tagged examples, ``t0[k]`` the mean
    of ``1 - p[:, k]`` over untagged ones, :data:`EMPTY_SIDE` for a side with no
    examples, all clipped below at :data:`THRESHOLD_FLOOR`. Bit for bit as
    cleanlab: ``1 - p`` first, then ``np.mean`` over the masked column.
    """
    probs, tags = as_arrays(pred_probs, labels)
    return thresholds_of(split_sides(probs, tags, keep_values=False))


def thresholds_of(sides: Sides) -> Thresholds:
    """:func:`fit_thresholds` from data already split by :func:`split_sides`.

    Each side's mean is its exact ``np.sum`` (``sides.sums``) over its count, as ``np.mean``.
    """
    n_neg, n_pos = sides.counts[:, 0].copy(), sides.counts[:, 1].copy()
    means = np.divide(sides.sums, np.maximum(sides.counts, 1))
    means[sides.counts == 0] = EMPTY_SIDE
    clipped = np.clip(means, THRESHOLD_FLOOR, None)
    return Thresholds(t0=clipped[:, 0].copy(), t1=clipped[:, 1].copy(), n_pos=n_pos, n_neg=n_neg)
