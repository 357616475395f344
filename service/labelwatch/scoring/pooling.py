"""Per-class label-quality scores and their pooling into one score per example.

Per-class scores are ``(N, K)`` float64 in [0, 1] (lower: tag more likely wrong),
computed with cleanlab's operations in cleanlab's order, so they are bit-identical
to ``MultilabelScorer.get_class_label_quality_scores``. Pooling follows
``cleanlab.internal.multilabel_scorer``; the EMA only looks at the
:func:`ema_tail_size` smallest scores of a row (see there for the error bound).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from labelwatch.scoring.thresholds import single_precision
from labelwatch.scoring.types import ClassScore, Pooling, Thresholds

EMA_TOLERANCE = 1e-17
"""Bound on ``(1 - alpha) ** m``, how far scores past the m smallest move the EMA."""
SOFTMIN_MIN_TEMPERATURE = 1e-6
"""cleanlab's ``EPSILON``: the softmin temperature is floored at this."""


SORT_MAX = 256
"""Rows up to this long are sorted whole for the EMA (faster than selecting there)."""
SELECT_BLOCK = 256
"""Longer rows are cut down to their smallest scores block by block of this many."""
ROW_BLOCK_BYTES = 2**22
""":func:`label_quality` scores about this many bytes of ``(rows, K)`` float64 at a time."""


def self_confidence(probs: NDArray[np.float64], tags: NDArray[np.bool_]) -> NDArray[np.float64]:
    """``(N, K)``: ``p`` where tagged, ``1 - p`` where not."""
    if probs.shape != tags.shape:
        return np.where(tags, probs, 1 - probs)
    out = np.subtract(1.0, probs)
    np.putmask(out, tags, probs)  # same values as np.where, fewer passes
    return out


def _adjusted(
    probs: NDArray[np.float64], thresholds: Thresholds, q: NDArray[np.float64] | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """cleanlab's ``_subtract_confident_thresholds`` of ``[q, p]``: ``(a0, a1)``, ``(N, K)``.

    ``q``: cleanlab's ``1 - p`` (computed here if not given).
    """
    top = np.maximum(thresholds.t0, thresholds.t1)
    a0 = ((1 - probs if q is None else q) - thresholds.t0) + top
    a1 = (probs - thresholds.t1) + top
    total = a0 + a1
    return a0 / total, a1 / total


def _given_other(
    p0: NDArray[np.float64], p1: NDArray[np.float64], tags: NDArray[np.bool_], method: ClassScore
) -> NDArray[np.float64]:
    """``(N, K)`` scores from the two sides' (adjusted) probabilities, in their dtype."""
    given = np.where(tags, p1, p0)
    if method is ClassScore.SELF_CONFIDENCE:
        return given
    other = np.where(tags, p0, p1)
    return (given - other + 1) / 2


def class_scores(
    probs: NDArray[np.float64],
    tags: NDArray[np.bool_],
    method: ClassScore = ClassScore.SELF_CONFIDENCE,
    *,
    adjusted_by: Thresholds | None = None,
) -> NDArray[np.float64]:
    """``(N, K)`` float64 per-class scores; ``adjusted_by``: cleanlab's ``adjust_pred_probs=True``.

    ``normalized_margin`` is ``(P[given] - P[other] + 1) / 2``. With
    ``adjusted_by``, ``P`` has each side's threshold subtracted, the larger
    threshold added back and each row renormalised (class-imbalance adjustment).
    float32 ``probs``: computed in float32, then widened, as cleanlab's scorer does.
    """
    if probs.dtype == np.float32:
        return _class_scores_float32(probs, tags, method, adjusted_by)
    if adjusted_by is None:
        if method is ClassScore.SELF_CONFIDENCE:
            return self_confidence(probs, tags)
        p0, p1 = 1 - probs, probs
    else:
        p0, p1 = _adjusted(probs, adjusted_by)
    return _given_other(p0, p1, tags, method)


def _class_scores_float32(
    probs: NDArray[np.float64],
    tags: NDArray[np.bool_],
    method: ClassScore,
    adjusted_by: Thresholds | None,
) -> NDArray[np.float64]:
    """:func:`class_scores` of float32 ``probs``, each class in cleanlab's precision.

    Adjusted, a class with an empty side has float64 thresholds in cleanlab (see
    :func:`~labelwatch.scoring.thresholds.single_precision`), so its ``[1 - p, p]``
    (float32 values) is adjusted in float64.
    """
    q = np.subtract(1.0, probs)
    out = np.empty(probs.shape, dtype=np.float64)
    if adjusted_by is None:
        out[...] = _given_other(q, probs, tags, method)
        return out
    narrow = single_precision(adjusted_by.n_pos, adjusted_by.n_neg, probs.dtype)
    for cols, dtype in ((narrow, np.float32), (~narrow, np.float64)):
        if not cols.any():
            continue
        part = Thresholds(
            t0=adjusted_by.t0[cols].astype(dtype),
            t1=adjusted_by.t1[cols].astype(dtype),
            n_pos=adjusted_by.n_pos[cols],
            n_neg=adjusted_by.n_neg[cols],
        )
        p0, p1 = _adjusted(probs[:, cols].astype(dtype), part, q[:, cols].astype(dtype))
        out[:, cols] = _given_other(p0, p1, tags[:, cols], method)
    return out


def ema_tail_size(alpha: float) -> int | None:
    """Scores per row the EMA needs: the smallest m with ``(1 - alpha)**m <= 1e-17``.

    Sorted descending (``s_1 >= ... >= s_K``), the EMA is ``E_1 = s_1``,
    ``E_t = alpha * s_t + (1 - alpha) * E_(t-1)``. Starting instead at
    ``E'_t0 = s_t0`` with ``t0 = K - m + 1`` gives ``E_t0 - E'_t0 = (1 - alpha) *
    (E_(t0-1) - s_t0)`` in ``[0, (1 - alpha) * (s_1 - s_t0)]``, and each later
    step multiplies the gap by ``1 - alpha``: the result moves by at most
    ``(1 - alpha)**m * (max - min)`` of the row, ``<= 1e-17`` for scores in
    [0, 1] (m = 25 at alpha 0.8). ``None`` (every score matters) for ``alpha <= 0``.
    """
    if alpha >= 1.0:
        return 1
    if alpha <= 0.0:
        return None
    m = max(1, math.ceil(math.log(EMA_TOLERANCE) / math.log1p(-alpha)))
    while m > 1 and (1.0 - alpha) ** (m - 1) <= EMA_TOLERANCE:
        m -= 1
    while (1.0 - alpha) ** m > EMA_TOLERANCE:
        m += 1
    return m


def smallest_sorted(
    scores: NDArray[np.float64], m: int, *, overwrite: bool = False
) -> NDArray[np.float64]:
    """``(N, min(m, K))``: the ``m`` smallest of each row of ``(N, K)`` ``scores``, ascending.

    Long rows are cut down first, block by block (the m smallest of a row are
    among the m smallest of its blocks), with ``np.partition``; the rest is a
    sort. ``overwrite``: ``scores`` may be sorted in place.
    """
    n, k = scores.shape
    if m < k and k > SORT_MAX:
        if 2 * m > SELECT_BLOCK:
            scores = np.partition(scores, m - 1, axis=1)[:, :m]
        while scores.shape[1] > SORT_MAX and 2 * m <= SELECT_BLOCK:
            k = scores.shape[1]
            full = k - k % SELECT_BLOCK
            blocks = scores[:, :full].reshape(n, full // SELECT_BLOCK, SELECT_BLOCK)
            kept = np.partition(blocks, m - 1, axis=2)[:, :, :m].reshape(n, -1)
            scores = np.concatenate([kept, scores[:, full:]], axis=1)
        overwrite = True
    out = scores if overwrite else scores.copy()
    out.sort(axis=1)
    return out[:, :m]


def exponential_moving_average(
    scores: NDArray[np.float64],
    alpha: float = 0.8,
    *,
    tail: int | None = -1,
    overwrite: bool = False,
) -> NDArray[np.float64]:
    """cleanlab's ``exponential_moving_average`` of each row of ``(N, K)`` scores -> ``(N,)``.

    Rows are sorted descending and ``ema = alpha * s + (1 - alpha) * ema`` runs
    from the largest to the smallest score. Only the ``tail`` smallest scores
    are selected (:func:`smallest_sorted`, O(K)); ``tail=-1`` means
    :func:`ema_tail_size`, ``None`` a full sort. With ``K <= tail`` this is
    cleanlab's result bit for bit. ``overwrite``: ``scores`` may be reordered.

    >>> exponential_moving_average(np.array([[0.9, 0.9, 0.3], [0.4, 0.9, 0.6]]))
    array([0.42 , 0.452])
    """
    k = scores.shape[1]
    m = ema_tail_size(alpha) if tail == -1 else tail
    smallest = smallest_sorted(scores, k if m is None else min(m, k), overwrite=overwrite)
    columns = np.ascontiguousarray(smallest[:, ::-1].T)  # (m, N), largest first
    ema: NDArray[np.float64] = columns[0].copy()
    step = np.empty_like(ema)
    for column in columns[1:]:
        # alpha * s + (1 - alpha) * ema, in place: the same IEEE operations.
        np.multiply(column, alpha, out=step)
        ema *= 1 - alpha
        ema += step
    return ema


def softmin(scores: NDArray[np.float64], temperature: float = 0.1) -> NDArray[np.float64]:
    """cleanlab's ``softmin``: ``sum_k s_k * softmax((1 - s) / T)_k`` per row -> ``(N,)``."""
    x = (1 - scores) / max(temperature, SOFTMIN_MIN_TEMPERATURE)
    x = x - np.max(x, axis=1, keepdims=True)
    e = np.exp(x)
    weights = e / np.sum(e, axis=1, keepdims=True)
    return np.asarray(np.einsum("ij,ij->i", scores, weights), dtype=np.float64)


def pool(
    scores: NDArray[np.float64],
    pooling: Pooling = Pooling.EMA,
    *,
    alpha: float = 0.8,
    temperature: float = 0.1,
    overwrite: bool = False,
) -> NDArray[np.float64]:
    """Pool ``(N, K)`` per-class scores into ``(N,)`` label-quality scores in [0, 1].

    ``overwrite``: ``scores`` may be reordered (the EMA sorts in place).
    """
    if pooling is Pooling.EMA:
        return exponential_moving_average(scores, alpha, overwrite=overwrite)
    return softmin(scores, temperature)


def label_quality(
    probs: NDArray[np.float64],
    tags: NDArray[np.bool_],
    method: ClassScore = ClassScore.SELF_CONFIDENCE,
    *,
    adjusted_by: Thresholds | None = None,
    pooling: Pooling = Pooling.EMA,
    alpha: float = 0.8,
    temperature: float = 0.1,
) -> NDArray[np.float64]:
    """``(N,)``: :func:`class_scores` of ``(N, K)`` data pooled by :func:`pool`.

    Rows are independent, so they go a block at a time: the ``(rows, K)``
    temporaries stay in cache, and each block's scores are sorted in place.
    """
    n, k = probs.shape
    rows = max(1, ROW_BLOCK_BYTES // max(1, 8 * k))
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, rows):
        block = slice(start, start + rows)
        scores = class_scores(probs[block], tags[block], method, adjusted_by=adjusted_by)
        out[block] = pool(scores, pooling, alpha=alpha, temperature=temperature, overwrite=True)
    return out
