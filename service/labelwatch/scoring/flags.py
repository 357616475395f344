"""Per-class flag rules over ``(N, K)`` arrays, as cleanlab applies them one-vs-rest."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

TOLERANCE = 1e-6
"""cleanlab's ``FLOATING_POINT_COMPARISON``: fuzzy comparisons use this margin."""


def confident_labels(
    probs: np.ndarray, t0: NDArray[np.float64], t1: NDArray[np.float64]
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Confident-joint assignment of every (example, class) pair.

    Returns ``(counted, label)``, both ``(N, K)`` bool: ``counted`` where at
    least one side clears its threshold (``p >= t1 - 1e-6`` or ``1 - p >= t0 -
    1e-6``), ``label`` the confident side (when both clear, the larger
    probability wins and a tie goes to "not tagged", as ``argmax`` does).
    """
    p1 = probs
    p0 = 1 - probs
    above1 = p1 >= t1 - TOLERANCE
    above0 = p0 >= t0 - TOLERANCE
    label = np.where(above1 & above0, p1 > p0, above1)
    return above0 | above1, label


def model_disagrees(probs: np.ndarray, tags: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """``(N, K)``: the binary argmax disagrees with the tag, with a 1e-6 edge for the tag.

    cleanlab's ``_reduce_issues``: adds 1e-6 to the given side's probability
    (in the probabilities' dtype) and keeps an issue only where the argmax then
    still picks the other side (ties go to "not tagged").
    """
    eps = probs.dtype.type(TOLERANCE)
    p1 = probs
    p0 = 1 - probs
    untagged_flip = p1 > p0 + eps
    tagged_flip = p0 >= p1 + eps
    return np.asarray(np.where(tags, tagged_flip, untagged_flip))


def confident_learning(
    probs: np.ndarray,
    tags: NDArray[np.bool_],
    t0: NDArray[np.float64],
    t1: NDArray[np.float64],
) -> NDArray[np.bool_]:
    """``(N, K)`` off-diagonal of the per-class confident joint, reduced as cleanlab does."""
    counted, label = confident_labels(probs, t0, t1)
    return np.asarray(counted & (label != tags) & model_disagrees(probs, tags))
