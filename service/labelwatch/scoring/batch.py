"""Batch (cleanlab-equivalent) label issues and label-quality scores over a whole dataset."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from labelwatch.scoring import flags as rules
from labelwatch.scoring.pooling import pool, self_confidence
from labelwatch.scoring.thresholds import as_arrays, fit_thresholds
from labelwatch.scoring.types import ClassScore, FilterBy, Pooling


def find_label_issues(
    pred_probs: ArrayLike,
    labels: ArrayLike,
    *,
    filter_by: FilterBy = FilterBy.PRUNE_BY_NOISE_RATE,
) -> NDArray[np.bool_]:
    """``(N, K)`` per-class flags; their row-OR is cleanlab's ``find_label_issues`` mask."""
    probs, tags = as_arrays(pred_probs, labels)
    if filter_by is not FilterBy.CONFIDENT_LEARNING:
        raise NotImplementedError(filter_by.value)
    th = fit_thresholds(probs, tags)
    return rules.confident_learning(probs, tags, th.t0, th.t1)


def label_quality_scores(
    pred_probs: ArrayLike,
    labels: ArrayLike,
    *,
    method: ClassScore = ClassScore.SELF_CONFIDENCE,
    pooling: Pooling = Pooling.EMA,
    alpha: float = 0.8,
    temperature: float = 0.1,
) -> NDArray[np.float64]:
    """``(N,)`` scores equal to cleanlab's multi-label ``get_label_quality_scores``."""
    probs, tags = as_arrays(pred_probs, labels)
    if method is not ClassScore.SELF_CONFIDENCE:
        raise NotImplementedError(method.value)
    return pool(self_confidence(probs, tags), pooling, alpha=alpha, temperature=temperature)
