"""Per-class confident thresholds (cleanlab's ``get_confident_thresholds``, one-vs-rest)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from labelwatch.scoring.types import Thresholds

THRESHOLD_FLOOR = 2e-6
"""cleanlab's ``CONFIDENT_THRESHOLDS_LOWER_BOUND``: thresholds are clipped below at this."""
EMPTY_SIDE = 2.0
"""Threshold of a side with no examples (no tagged or no untagged ones): unreachable."""


def as_arrays(pred_probs: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return ``pred_probs`` as a float array (dtype kept if floating) and ``labels`` as bool."""
    probs = np.asarray(pred_probs)
    if not np.issubdtype(probs.dtype, np.floating):
        probs = probs.astype(np.float64)
    tags = np.asarray(labels).astype(np.bool_)
    if probs.ndim != 2 or tags.shape != probs.shape:
        raise ValueError(f"pred_probs {probs.shape} and labels {tags.shape} must be (N, K)")
    return probs, tags


def fit_thresholds(pred_probs: ArrayLike, labels: ArrayLike) -> Thresholds:
    """Fit ``t0``/``t1`` per class from ``(N, K)`` probabilities and ``(N, K)`` tags.

    Computed as cleanlab does, bit for bit: ``1 - p`` first, then ``np.mean``
    over the masked column, then a clip below at 2e-6.
    """
    probs, tags = as_arrays(pred_probs, labels)
    k = probs.shape[1]
    t0 = np.empty(k, dtype=np.float64)
    t1 = np.empty(k, dtype=np.float64)
    n_pos = tags.sum(axis=0).astype(np.int64)
    n_neg = (tags.shape[0] - n_pos).astype(np.int64)
    for c in range(k):
        p = probs[:, c]
        y = tags[:, c]
        t0[c] = np.mean((1 - p)[~y]) if n_neg[c] else EMPTY_SIDE
        t1[c] = np.mean(p[y]) if n_pos[c] else EMPTY_SIDE
    return Thresholds(
        t0=np.clip(t0, THRESHOLD_FLOOR, None),
        t1=np.clip(t1, THRESHOLD_FLOOR, None),
        n_pos=n_pos,
        n_neg=n_neg,
    )
