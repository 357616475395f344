"""Per-class label-quality scores and their pooling into one score per example."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from labelwatch.scoring.types import Pooling

EMA_EXACT_TAIL = 32
"""At alpha >= 0.5 only the smallest ~25 sorted scores move the EMA by more than
1e-17; past this many classes the EMA runs over a partial selection of the
``EMA_EXACT_TAIL`` smallest scores (O(K) instead of O(K log K))."""


def self_confidence(probs: np.ndarray, tags: NDArray[np.bool_]) -> NDArray[np.float64]:
    """``(N, K)``: ``p`` where tagged, ``1 - p`` where not (cleanlab's order of operations)."""
    # 1 - p in the input dtype, then float64, exactly as cleanlab stores it
    return np.where(tags, probs, 1 - probs).astype(np.float64)


def ema_pool(scores: np.ndarray, alpha: float = 0.8) -> NDArray[np.float64]:
    """cleanlab's ``exponential_moving_average`` over each row of ``(N, K)`` scores.

    Rows are sorted in descending order and EMA_t = alpha*s_t + (1-alpha)*EMA_(t-1)
    is run from the largest to the smallest score, so the smallest dominate.
    """
    k = scores.shape[1]
    if k > EMA_EXACT_TAIL and alpha >= 0.5:
        m = EMA_EXACT_TAIL
        scores = np.partition(scores, m - 1, axis=1)[:, :m]
    ordered = np.fliplr(np.sort(scores, axis=1))
    columns = ordered.T
    ema = columns[0]
    for column in columns[1:]:
        ema = alpha * column + (1 - alpha) * ema
    return np.asarray(ema, dtype=np.float64)


def softmin_pool(scores: np.ndarray, temperature: float = 0.1) -> NDArray[np.float64]:
    """cleanlab's ``softmin``: ``sum_k s_k * softmax((1 - s) / T)_k`` per row of ``(N, K)``."""
    x = (1 - scores) / temperature
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    weights = e / e.sum(axis=1, keepdims=True)
    return np.asarray(np.einsum("ij,ij->i", scores, weights), dtype=np.float64)


def pool(
    scores: np.ndarray, pooling: Pooling, *, alpha: float = 0.8, temperature: float = 0.1
) -> NDArray[np.float64]:
    """Pool ``(N, K)`` per-class scores into ``(N,)`` label-quality scores in [0, 1]."""
    if pooling is Pooling.EMA:
        return ema_pool(scores, alpha)
    return softmin_pool(scores, temperature)
