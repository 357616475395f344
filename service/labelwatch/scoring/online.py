"""Offline calibration and the online per-example decision."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from labelwatch.scoring import flags as rules
from labelwatch.scoring.pooling import pool, self_confidence
from labelwatch.scoring.thresholds import as_arrays, fit_thresholds
from labelwatch.scoring.types import CalibrationFit, Decision, FilterBy, Pooling

ONLINE_RULES = (FilterBy.CONFIDENT_LEARNING,)


def fit_calibration(
    pred_probs: ArrayLike,
    labels: ArrayLike,
    *,
    pooling: Pooling = Pooling.EMA,
    alpha: float = 0.8,
    temperature: float = 0.1,
) -> CalibrationFit:
    """Fit everything :func:`decide` needs from held-out ``(N, K)`` probabilities and tags."""
    probs, tags = as_arrays(pred_probs, labels)
    thresholds = fit_thresholds(probs, tags)
    n = probs.shape[0]
    cl = rules.confident_learning(probs, tags, thresholds.t0, thresholds.t1)
    rates = np.stack([(cl & ~tags).sum(axis=0), (cl & tags).sum(axis=0)], axis=1) / max(n, 1)
    return CalibrationFit(
        thresholds=thresholds,
        margin_cutoffs={},
        score_cutoff=0.0,
        pooling=pooling,
        alpha=alpha,
        temperature=temperature,
        n_examples=n,
        flag_rates={FilterBy.CONFIDENT_LEARNING.value: rates.astype(np.float64)},
    )


def decide(
    fit: CalibrationFit,
    pred_probs: ArrayLike,
    labels: ArrayLike,
    filter_by: FilterBy = FilterBy.CONFIDENT_LEARNING,
) -> Decision:
    """Flag and score ``n`` new examples ``(n, K)`` with the calibrated thresholds."""
    probs, tags = as_arrays(pred_probs, labels)
    if filter_by not in ONLINE_RULES:
        raise ValueError(f"filter_by {filter_by.value!r} has no online rule")
    th = fit.thresholds
    flags = rules.confident_learning(probs, tags, th.t0, th.t1)
    quality = pool(
        self_confidence(probs, tags), fit.pooling, alpha=fit.alpha, temperature=fit.temperature
    )
    return Decision(flags=flags, label_quality=quality, labels=tags)
