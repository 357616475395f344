"""What decided each flag, as a bound on the model's probability p (for the audit reports).

A report that prints ``p=0.7959 >= 0.8765`` beside a flag states a falsehood when the rule
that flagged it was not comparing p with 0.8765. For each rule, :func:`batch_cutoffs` and
:func:`online_cutoffs` give, per class and side, the bound the rule really used, such that
every flagged pair satisfies it:

* ``confident_learning``: the confident thresholds, t1[k] for MISSING and 1 - t0[k] for
  SPURIOUS (cleanlab compares within 1e-6 of them);
* ``predicted_neq_given``: 0.5, the binary argmax;
* ``prune_by_noise_rate``, ``prune_by_class``, ``both`` (rank rules): the **rank cut-off**,
  the p of the least suspicious pair the rule took in that class and side. In batch mode it
  comes from the ranking of the data itself; online, from the calibration's cut-off margin,
  converted exactly to p (``both``: the stricter of its two rules' cut-offs);
* ``low_self_confidence``, ``low_normalized_margin`` (score rules): no per-class bound (NaN).
  The example's score (cleanlab's EMA self-confidence, ``scores``) fell to or below
  ``score_cutoff``, and the flagged classes are the ones the example is least sure of;
* any other rule: :attr:`Basis.NONE`, no bound on p is claimed (NaN), so a report states none.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from labelwatch.scoring import rules
from labelwatch.scoring.batch import RANK_RULES, SCORE_RULES
from labelwatch.scoring.sides import split_sides
from labelwatch.scoring.thresholds import as_arrays, thresholds_of
from labelwatch.scoring.types import CalibrationFit, FilterBy, Thresholds


class Basis(str, enum.Enum):
    """What a rule compares to decide a flag."""

    CONFIDENT_THRESHOLD = "confident_threshold"
    ARGMAX = "argmax"
    RANK_CUTOFF = "rank_cutoff"
    EXAMPLE_SCORE = "example_score"
    NONE = "none"  # the rule decides by something other than a bound on p


@dataclass(frozen=True)
class Cutoffs:
    """The bounds that decided a rule's flags on ``N`` examples over ``K`` classes.

    ``p`` ``(K, 2)`` float64: a flagged untagged pair of class k (MISSING) has
    ``p >= p[k, 0]``, a flagged tagged pair (SPURIOUS) ``p <= p[k, 1]`` (``+inf``/``-inf``:
    the side flags nothing; NaN for the score rules). ``scores`` ``(N,)`` and
    ``score_cutoff`` only for :attr:`Basis.EXAMPLE_SCORE`: a flagged example has
    ``scores[i] <= score_cutoff`` (``None``/NaN otherwise).
    """

    basis: Basis
    p: NDArray[np.float64]
    scores: NDArray[np.float64] | None = None
    score_cutoff: float = float("nan")


def basis_of(rule: FilterBy) -> Basis:
    """The kind of bound ``rule`` decides by."""
    if rule is FilterBy.CONFIDENT_LEARNING:
        return Basis.CONFIDENT_THRESHOLD
    if rule is FilterBy.PREDICTED_NEQ_GIVEN:
        return Basis.ARGMAX
    if rule in SCORE_RULES:
        return Basis.EXAMPLE_SCORE
    if rule in RANK_RULES:
        return Basis.RANK_CUTOFF
    return Basis.NONE


def _no_bound(k: int) -> Cutoffs:
    return Cutoffs(Basis.NONE, np.full((k, 2), np.nan))


def _confident(thresholds: Thresholds) -> NDArray[np.float64]:
    return np.stack([thresholds.t1, 1.0 - thresholds.t0], axis=1).astype(np.float64)


def _half(k: int) -> NDArray[np.float64]:
    return np.full((k, 2), 0.5, dtype=np.float64)


def _taken_bounds(
    taken: NDArray[np.bool_], probs: NDArray[np.float64], tags: NDArray[np.bool_]
) -> NDArray[np.float64]:
    """``(K, 2)``: min p of the taken untagged pairs, max p of the taken tagged ones."""
    p = np.asarray(probs, dtype=np.float64)
    low = np.where(taken & ~tags, p, np.inf).min(axis=0, initial=np.inf)
    high = np.where(taken & tags, p, -np.inf).max(axis=0, initial=-np.inf)
    return np.stack([low, high], axis=1)


def batch_cutoffs(pred_probs: ArrayLike, labels: ArrayLike, rule: FilterBy | str) -> Cutoffs:
    """The bounds behind ``find_label_issues(pred_probs, labels, filter_by=rule)``.

    ``pred_probs`` ``(N, K)``, ``labels`` ``(N, K)``; the rank rules with cleanlab's
    default prune settings (what ``labelwatch audit`` runs).
    """
    rule = FilterBy(rule)
    probs, tags = as_arrays(pred_probs, labels, keep_float32=True)
    sides = split_sides(probs, tags)
    thresholds = thresholds_of(sides)
    k = probs.shape[1]
    if rule is FilterBy.CONFIDENT_LEARNING:
        return Cutoffs(Basis.CONFIDENT_THRESHOLD, _confident(thresholds))
    if rule is FilterBy.PREDICTED_NEQ_GIVEN:
        return Cutoffs(Basis.ARGMAX, _half(k))
    if rule in SCORE_RULES:
        _, rows, scores = rules.low_score(probs, tags, thresholds)
        cut = float(scores[rows].max()) if rows.any() else float("nan")
        return Cutoffs(Basis.EXAMPLE_SCORE, np.full((k, 2), np.nan), scores, cut)
    if rule not in RANK_RULES:
        return _no_bound(k)
    plan = rules.prune_plan(probs, tags, thresholds)
    by_rate = rules.prune_by_noise_rate_ranked(probs, tags, plan, sides).flags
    by_class = rules.prune_by_class_ranked(probs, tags, plan, sides).flags
    taken = {
        FilterBy.PRUNE_BY_NOISE_RATE: by_rate,
        FilterBy.PRUNE_BY_CLASS: by_class,
        FilterBy.BOTH: by_rate & by_class,
    }[rule]
    return Cutoffs(Basis.RANK_CUTOFF, _taken_bounds(taken, probs, tags))


def p_at_margin(cut: NDArray[np.float64], tagged: bool) -> NDArray[np.float64]:
    """``(K,)`` p bound equivalent to ``margin >= cut`` for margins computed as
    :func:`labelwatch.scoring.rules.margins` computes them.

    Untagged (``tagged=False``): the smallest float64 p in [0, 1] whose margin
    ``p - (1 - p)`` reaches ``cut``; tagged: the largest p whose margin ``(1 - p) - p``
    does. The computed margin is monotone in p, so ``margin(p) >= cut`` exactly when p
    is past this bound; a bisection over the float64 values of [0, 1] finds it (the closed
    form ``(1 + cut) / 2`` can be many ulps off near 0, where ``1 - p`` rounds). NaN (the
    side flags nothing) and unreachable cuts give ``+inf`` (untagged) / ``-inf`` (tagged).

    >>> p_at_margin(np.array([0.5, np.nan]), tagged=False).tolist()
    [0.75, inf]
    """
    cut = np.asarray(cut, dtype=np.float64)
    side = np.full(cut.shape, tagged)

    def reaches(bits: NDArray[np.int64]) -> NDArray[np.bool_]:
        return np.asarray(rules.margins(bits.view(np.float64), side) >= cut)

    # non-negative float64 values sort as their bit patterns do
    lo = np.zeros(cut.shape, dtype=np.int64)
    hi = np.full(cut.shape, np.float64(1.0).view(np.int64), dtype=np.int64)
    # untagged: the lowest bits that reach (search in (lo - 1, hi]); tagged: the highest
    ok = reaches(hi) if not tagged else reaches(lo)
    for _ in range(64):
        if not (hi > lo).any():
            break
        mid = lo + (hi - lo) // 2
        if tagged:
            mid = lo + (hi - lo + 1) // 2
            up = reaches(mid)
            lo, hi = np.where(up, mid, lo), np.where(up, hi, mid - 1)
        else:
            up = reaches(mid)
            lo, hi = np.where(up, lo, mid + 1), np.where(up, mid, hi)
    found = lo.view(np.float64)
    never = np.isnan(cut) | ~ok
    return np.where(never, -np.inf if tagged else np.inf, found)


def online_cutoffs(
    fit: CalibrationFit, pred_probs: ArrayLike, labels: ArrayLike, rule: FilterBy | str
) -> Cutoffs:
    """The bounds behind ``decide(fit, pred_probs, labels, rule)`` (``(N, K)`` data)."""
    rule = FilterBy(rule)
    k = fit.thresholds.t0.shape[0]
    if rule is FilterBy.CONFIDENT_LEARNING:
        return Cutoffs(Basis.CONFIDENT_THRESHOLD, _confident(fit.thresholds))
    if rule is FilterBy.PREDICTED_NEQ_GIVEN:
        return Cutoffs(Basis.ARGMAX, _half(k))
    if rule in SCORE_RULES:
        probs, tags = as_arrays(pred_probs, labels)
        scores = rules.rule_scores(probs, tags)
        return Cutoffs(Basis.EXAMPLE_SCORE, np.full((k, 2), np.nan), scores, fit.score_cutoff)
    if rule not in RANK_RULES:
        return _no_bound(k)
    margin = np.asarray(fit.margin_cutoffs[rule.value], dtype=np.float64)
    bounds = np.stack([p_at_margin(margin[:, 0], False), p_at_margin(margin[:, 1], True)], 1)
    return Cutoffs(Basis.RANK_CUTOFF, bounds)
