"""Offline calibration (:func:`fit_calibration`) and the online decision (:func:`decide`).

Batch Confident Learning ranks a whole dataset; a service sees examples one (or a
few) at a time. Calibration therefore freezes, on held-out data, everything that
depends on the dataset, and :func:`decide` compares each new example with it:

* ``confident_learning``, ``predicted_neq_given``: per-pair rules given the
  thresholds ``t0``/``t1``; nothing else is needed.
* ``prune_by_noise_rate``, ``prune_by_class``, ``both`` (rank rules): batch flags
  the m top-ranked pairs per class and side (m: cleanlab's prune count). Online,
  pair (i, k) with given side g is flagged when its margin ``P[other] - P[given]``
  reaches ``margin_cutoffs[rule][k, g]``, the margin of the m-th ranked
  calibration pair (prune_by_class ranks by ``P[given]``, ascending, which orders
  margins the same way; ``both`` uses the larger of the two cut-offs). NaN: the
  side flagged nothing (m = 0, or too few examples) and flags nothing online.
* ``low_self_confidence``, ``low_normalized_margin`` (identical in cleanlab's
  multi-label code): batch flags the n lowest-scoring examples (n: the number of
  examples ``confident_learning`` flags), scored by cleanlab's default
  self-confidence + EMA(alpha 0.8), whatever the fit's pooling. Online flags
  every example scoring ``<= score_cutoff``, the n-th lowest calibration score
  (NaN: none). Per-class flags come from :func:`labelwatch.scoring.rules.attribute`.
* Every rule but the two score rules finally keeps only pairs where the model
  disagrees with the tag (cleanlab's ``_reduce_issues``).

Applied to its own calibration set, :func:`decide` reproduces the batch result
exactly for the per-pair rules. For the others it can only differ on **ties at the
cut**: batch takes exactly m of several pairs sharing the m-th ranking key (the
margin, ``P[given]`` for prune_by_class, the score for the score rules), chosen by
``np.argsort``'s unstable order; online cannot tell them apart and flags them
all. For prune_by_class a pair whose margin equals the cut-off margin also counts
as tied (``P[given]`` and the margin are rounded separately). So online flags are a
superset of batch flags, equal unless such ties exist (``tests/test_scoring_online.py``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.typing import ArrayLike, NDArray

from labelwatch.scoring import rules
from labelwatch.scoring.batch import SCORE_RULES
from labelwatch.scoring.pooling import class_scores, pool
from labelwatch.scoring.thresholds import as_arrays, fit_thresholds
from labelwatch.scoring.types import CalibrationFit, ClassScore, Decision, FilterBy, Pooling

MARGIN_RULES = (FilterBy.PRUNE_BY_NOISE_RATE, FilterBy.PRUNE_BY_CLASS, FilterBy.BOTH)
"""Rules with an entry in ``CalibrationFit.margin_cutoffs``."""


def _margin_at(margin: NDArray[np.float64], last: NDArray[np.int64]) -> NDArray[np.float64]:
    """``(K, 2)`` margin of the pair at example ``last[k, g]`` of class k; NaN for -1."""
    k = np.arange(last.shape[0])[:, None]
    picked = margin[np.maximum(last, 0), np.broadcast_to(k, last.shape)]
    return np.where(last >= 0, picked, np.nan)


def fit_calibration(
    pred_probs: ArrayLike,
    labels: ArrayLike,
    *,
    pooling: Pooling = Pooling.EMA,
    alpha: float = 0.8,
    temperature: float = 0.1,
    method: ClassScore = ClassScore.SELF_CONFIDENCE,
) -> CalibrationFit:
    """Fit thresholds, cut-offs and per-rule flag rates on held-out data.

    ``pred_probs`` ``(N, K)`` in [0, 1], ``labels`` ``(N, K)`` bool, N >= 1.
    ``pooling``/``alpha``/``temperature``/``method`` only shape
    ``Decision.label_quality``.
    """
    probs, tags = as_arrays(pred_probs, labels)
    if probs.shape[0] == 0:
        raise ValueError("calibration needs at least one example, got 0")
    thresholds = fit_thresholds(probs, tags)
    plan = rules.prune_plan(probs, tags, thresholds)
    margin = rules.margins(probs, tags)
    by_rate = _margin_at(margin, rules.prune_by_noise_rate_ranked(probs, tags, plan).last)
    by_class = _margin_at(margin, rules.prune_by_class_ranked(probs, tags, plan).last)
    _, rows, scores = rules.low_score(probs, tags, thresholds)
    fit = CalibrationFit(
        thresholds=thresholds,
        margin_cutoffs={
            FilterBy.PRUNE_BY_NOISE_RATE.value: by_rate,
            FilterBy.PRUNE_BY_CLASS.value: by_class,
            FilterBy.BOTH.value: np.maximum(by_rate, by_class),
        },
        score_cutoff=float(scores[rows].max()) if rows.any() else float("nan"),
        pooling=Pooling(pooling),
        alpha=float(alpha),
        temperature=float(temperature),
        n_examples=int(probs.shape[0]),
        flag_rates={},
        method=ClassScore(method),
    )
    rates = {}
    for rule in FilterBy:
        flagged = _flags(fit, probs, tags, rule)
        per_side = np.stack([(flagged & ~tags).sum(axis=0), (flagged & tags).sum(axis=0)], axis=1)
        rates[rule.value] = per_side / probs.shape[0]
    return dataclasses.replace(fit, flag_rates=rates)


def _flags(
    fit: CalibrationFit, probs: NDArray[np.float64], tags: NDArray[np.bool_], rule: FilterBy
) -> NDArray[np.bool_]:
    """``(n, K)`` online flags of ``rule``."""
    if rule is FilterBy.CONFIDENT_LEARNING:
        return rules.confident_learning(probs, tags, fit.thresholds)
    if rule is FilterBy.PREDICTED_NEQ_GIVEN:
        return rules.predicted_neq_given(probs, tags)
    if rule in SCORE_RULES:
        rows = rules.rule_scores(probs, tags) <= fit.score_cutoff
        return rules.attribute(rows, probs, tags)
    cutoffs = fit.margin_cutoffs[rule.value]
    cut = np.where(tags, cutoffs[:, 1], cutoffs[:, 0])
    return (rules.margins(probs, tags) >= cut) & rules.model_disagrees(probs, tags)


def decide(
    fit: CalibrationFit,
    pred_probs: ArrayLike,
    labels: ArrayLike,
    filter_by: FilterBy | str = FilterBy.CONFIDENT_LEARNING,
) -> Decision:
    """Flag and score ``n`` new examples with a frozen :class:`CalibrationFit`.

    ``pred_probs`` ``(n, K)`` in [0, 1], ``labels`` ``(n, K)`` bool, n >= 0;
    each example is judged on its own (the result for a row does not depend on
    the rest of the batch). ``label_quality`` pools ``fit.method`` scores with
    the fit's pooling.
    """
    probs, tags = as_arrays(pred_probs, labels)
    flagged = _flags(fit, probs, tags, FilterBy(filter_by))
    scores = class_scores(probs, tags, fit.method)
    quality = pool(scores, fit.pooling, alpha=fit.alpha, temperature=fit.temperature)
    return Decision(flags=flagged, label_quality=quality, labels=tags)
