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
* ``budget`` (labelwatch's own, only in fits with tag context): a pair is flagged when
  its tag-context error score (:mod:`labelwatch.scoring.context`) reaches the cut-off
  that makes the cross-fitted calibration set flag ``flag_budget`` pairs per example
  (:mod:`labelwatch.scoring.budget`). Every flagged pair of any rule then gets a
  calibrated error probability (:mod:`labelwatch.scoring.errorprob`).

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
from labelwatch.scoring.budget import DEFAULT_BUDGET, check_budget, fit_budget_curve
from labelwatch.scoring.context import (
    context_probabilities,
    cross_fit,
    error_scores,
)
from labelwatch.scoring.errorprob import calibrate_error_probability
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


def fit_calibration_with_scores(
    pred_probs: ArrayLike,
    labels: ArrayLike,
    *,
    pooling: Pooling = Pooling.EMA,
    alpha: float = 0.8,
    temperature: float = 0.1,
    method: ClassScore = ClassScore.SELF_CONFIDENCE,
    context_tags: int | None = None,
    flag_budget: float = DEFAULT_BUDGET,
    context_quality: bool = False,
) -> tuple[CalibrationFit, NDArray[np.float64] | None]:
    """Fit thresholds, cut-offs and per-rule flag rates on held-out data.

    Returns the fit and, with tag context, the ``(N, K)`` cross-fitted error scores of
    the data (``None`` without); :func:`fit_calibration` returns the fit alone.

    ``pred_probs`` ``(N, K)`` in [0, 1], ``labels`` ``(N, K)`` bool, N >= 1.
    ``pooling``/``alpha``/``temperature``/``method`` only shape
    ``Decision.label_quality``. ``context_tags``: ``None`` fits no tag context (the
    fit then has no ``budget`` rule and no error probabilities); ``m >= 0`` cross-fits
    the tag-context model with ``m`` context tags per class (0: the model's
    probability alone, recalibrated per class), the budget curve with default
    ``flag_budget`` pairs per example, and the error-probability calibrator.
    ``context_quality``: label quality from the context probabilities (needs context).
    """
    probs, tags = as_arrays(pred_probs, labels)
    if probs.shape[0] == 0:
        raise ValueError("calibration needs at least one example, got 0")
    if context_quality and context_tags is None:
        raise ValueError("label quality from tag context needs a tag-context model")
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
        context_quality=context_quality,
    )
    oof: NDArray[np.float64] | None = None
    if context_tags is not None:
        fit, oof = _fit_context(fit, probs, tags, context_tags, flag_budget)
    rates = {}
    for rule in FilterBy:
        if rule is FilterBy.BUDGET:
            if oof is None:
                continue
            assert fit.budget is not None
            flagged = oof >= fit.budget.cutoff()  # the cross-fitted scores the cut was set on
        else:
            flagged = _flags(fit, probs, tags, rule)
        per_side = np.stack([(flagged & ~tags).sum(axis=0), (flagged & tags).sum(axis=0)], axis=1)
        rates[rule.value] = per_side / probs.shape[0]
    return dataclasses.replace(fit, flag_rates=rates), oof


def fit_calibration(
    pred_probs: ArrayLike,
    labels: ArrayLike,
    *,
    pooling: Pooling = Pooling.EMA,
    alpha: float = 0.8,
    temperature: float = 0.1,
    method: ClassScore = ClassScore.SELF_CONFIDENCE,
    context_tags: int | None = None,
    flag_budget: float = DEFAULT_BUDGET,
    context_quality: bool = False,
) -> CalibrationFit:
    """:func:`fit_calibration_with_scores` without the scores."""
    return fit_calibration_with_scores(
        pred_probs,
        labels,
        pooling=pooling,
        alpha=alpha,
        temperature=temperature,
        method=method,
        context_tags=context_tags,
        flag_budget=flag_budget,
        context_quality=context_quality,
    )[0]


def decide_cross_fitted(
    fit: CalibrationFit,
    errors: NDArray[np.float64],
    labels: ArrayLike,
    *,
    flag_budget: float | None = None,
) -> Decision:
    """The ``budget`` rule on the data ``fit`` was calibrated on, without a separate split.

    ``errors``: the ``(N, K)`` cross-fitted error scores from
    :func:`fit_calibration_with_scores` of the same data (each row scored by a model
    that did not see it), so nothing is judged in-sample. Label quality pools the
    cross-fitted context self-confidence ``1 - errors`` with the fit's pooling.
    """
    tags = np.asarray(labels, dtype=np.bool_)
    if fit.budget is None or fit.error_calibrator is None:
        raise ValueError(_NO_CONTEXT)
    flagged = errors >= fit.budget.cutoff(flag_budget)
    quality = pool(1.0 - errors, fit.pooling, alpha=fit.alpha, temperature=fit.temperature)
    probability = np.full(errors.shape, np.nan)
    hit = np.nonzero(flagged)
    probability[hit] = fit.error_calibrator(errors[hit], tags[hit])
    return Decision(
        flags=flagged, label_quality=quality, labels=tags, error_probability=probability
    )


def _fit_context(
    fit: CalibrationFit,
    probs: NDArray[np.float64],
    tags: NDArray[np.bool_],
    m: int,
    flag_budget: float,
) -> tuple[CalibrationFit, NDArray[np.float64]]:
    """The fit with its context model, budget curve and error calibrator; and the
    ``(N, K)`` cross-fitted error scores of the calibration set."""
    check_budget(flag_budget, probs.shape[1])
    crossed = cross_fit(probs, tags, m=m)
    oof = error_scores(crossed.q, tags)
    calibrator = calibrate_error_probability(
        crossed.q,
        tags,
        fit_thresholds(crossed.q, tags),
        oof,
        lambda altered: error_scores(crossed.out_of_fold(probs, altered), altered),
    )
    fitted = dataclasses.replace(
        fit,
        context=crossed.final,
        budget=fit_budget_curve(oof, flag_budget),
        error_calibrator=calibrator,
    )
    return fitted, oof


def _flags(
    fit: CalibrationFit,
    probs: NDArray[np.float64],
    tags: NDArray[np.bool_],
    rule: FilterBy,
    errors: NDArray[np.float64] | None = None,
    flag_budget: float | None = None,
) -> NDArray[np.bool_]:
    """``(n, K)`` online flags of ``rule``; ``errors``: the context error scores (budget)."""
    if rule is FilterBy.CONFIDENT_LEARNING:
        return rules.confident_learning(probs, tags, fit.thresholds)
    if rule is FilterBy.PREDICTED_NEQ_GIVEN:
        return rules.predicted_neq_given(probs, tags)
    if rule is FilterBy.BUDGET:
        if fit.budget is None or errors is None:
            raise ValueError(_NO_CONTEXT)
        out: NDArray[np.bool_] = errors >= fit.budget.cutoff(flag_budget)
        return out
    if rule in SCORE_RULES:
        rows = rules.rule_scores(probs, tags) <= fit.score_cutoff
        return rules.attribute(rows, probs, tags)
    cutoffs = fit.margin_cutoffs[rule.value]
    cut = np.where(tags, cutoffs[:, 1], cutoffs[:, 0])
    return (rules.margins(probs, tags) >= cut) & rules.model_disagrees(probs, tags)


_NO_CONTEXT = (
    "the budget rule needs a calibration artifact with a tag-context model "
    "(made by `labelwatch calibrate` without --no-context)"
)


def decide(
    fit: CalibrationFit,
    pred_probs: ArrayLike,
    labels: ArrayLike,
    filter_by: FilterBy | str = FilterBy.CONFIDENT_LEARNING,
    *,
    flag_budget: float | None = None,
) -> Decision:
    """Flag and score ``n`` new examples with a frozen :class:`CalibrationFit`.

    ``pred_probs`` ``(n, K)`` in [0, 1], ``labels`` ``(n, K)`` bool, n >= 0;
    each example is judged on its own (the result for a row does not depend on
    the rest of the batch). ``label_quality`` pools ``fit.method`` scores with
    the fit's pooling. ``flag_budget``: flagged pairs per example for the ``budget``
    rule (``None``: the fit's default). With a tag-context model every flagged pair
    gets an error probability; ``fit.context_quality`` pools scores of its ``q``.
    """
    probs, tags = as_arrays(pred_probs, labels)
    rule = FilterBy(filter_by)
    q = None if fit.context is None else context_probabilities(fit.context, probs, tags)
    errors = None if q is None else error_scores(q, tags)
    flagged = _flags(fit, probs, tags, rule, errors, flag_budget)
    if fit.context_quality:
        if q is None:
            raise ValueError(_NO_CONTEXT)
        scores = class_scores(q, tags, fit.method)
    else:
        scores = class_scores(probs, tags, fit.method)
    quality = pool(scores, fit.pooling, alpha=fit.alpha, temperature=fit.temperature)
    error_probability = None
    if errors is not None and fit.error_calibrator is not None:
        error_probability = np.full(errors.shape, np.nan)
        hit = np.nonzero(flagged)
        error_probability[hit] = fit.error_calibrator(errors[hit], tags[hit])
    return Decision(
        flags=flagged, label_quality=quality, labels=tags, error_probability=error_probability
    )
