"""Per-class confident thresholds (cleanlab's ``get_confident_thresholds``, one-vs-rest)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from labelwatch.scoring.sides import Sides, split_sides
from labelwatch.scoring.types import Thresholds

THRESHOLD_FLOOR = 2e-6
"""cleanlab's ``CONFIDENT_THRESHOLDS_LOWER_BOUND``: thresholds are clipped below at this."""
TOLERANCE = 1e-6
"""cleanlab's ``FLOATING_POINT_COMPARISON``: a side clears its threshold within this."""
EMPTY_SIDE = 2.0
"""cleanlab's ``BIG_VALUE``: threshold of a side with no examples, above any probability."""


def as_arrays(
    pred_probs: ArrayLike, labels: ArrayLike, *, keep_float32: bool = False
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """``(N, K)`` probabilities as float64 and ``(N, K)`` tags as bool (nonzero = tagged).

    ``keep_float32``: float32 probabilities stay float32 (the batch path then
    computes what cleanlab computes on them, see :mod:`labelwatch.scoring.batch`);
    otherwise, and for any other dtype, they are widened to float64.
    """
    probs = np.asarray(pred_probs)
    if not (keep_float32 and probs.dtype == np.float32):
        probs = np.asarray(probs, dtype=np.float64)
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
    float32 sides: cleanlab's means are float32 and, for a class with both sides
    non-empty, so is its threshold array, clipped at float32 ``2e-6``; with an empty
    side (``[mean, 2.0]``) the array is float64 (see :func:`cut_points`).
    """
    n_neg, n_pos = sides.counts[:, 0].copy(), sides.counts[:, 1].copy()
    means = np.divide(sides.sums, np.maximum(sides.counts, 1), dtype=np.float64)
    if sides.sums.dtype == np.float32:
        means = means.astype(np.float32).astype(np.float64)  # np.mean's float32 result
    means[sides.counts == 0] = EMPTY_SIDE
    clipped = np.clip(means, THRESHOLD_FLOOR, None)
    narrow = single_precision(n_pos, n_neg, sides.sums.dtype)
    if narrow.any():
        clipped[narrow] = np.maximum(means[narrow], float(np.float32(THRESHOLD_FLOOR)))
    return Thresholds(t0=clipped[:, 0].copy(), t1=clipped[:, 1].copy(), n_pos=n_pos, n_neg=n_neg)


def single_precision(
    n_pos: NDArray[np.int64], n_neg: NDArray[np.int64], dtype: np.dtype[np.generic]
) -> NDArray[np.bool_]:
    """``(K,)``: classes whose threshold arithmetic cleanlab does in float32.

    For ``float32`` probabilities, those with tagged and untagged examples (an empty
    side adds the Python float ``2.0`` to the class's threshold list, making it float64).
    """
    return (n_pos > 0) & (n_neg > 0) & (dtype == np.float32)


def cut_points(thresholds: Thresholds, dtype: np.dtype[np.generic]) -> NDArray[np.float64]:
    """``(K, 2)`` float64: ``[t0, t1] - 1e-6`` per class, in cleanlab's precision.

    ``dtype``: that of the probabilities. Classes in :func:`single_precision`
    subtract in float32; the values are exact in float64, so comparing float32
    probabilities with them is comparing in float32.
    """
    t = np.stack([thresholds.t0, thresholds.t1], axis=1)
    out = t - TOLERANCE
    narrow = single_precision(thresholds.n_pos, thresholds.n_neg, dtype)
    if narrow.any():
        out[narrow] = t[narrow].astype(np.float32) - np.float32(TOLERANCE)
    return out
