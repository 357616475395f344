"""Batch label issues and label-quality scores over a whole dataset, as cleanlab 2.9.0.

:func:`find_label_issues` is ``cleanlab.multilabel_classification.filter.find_label_issues``
(``return_indices_ranked_by=None``) split per class; :func:`label_quality_scores` is
``cleanlab.multilabel_classification.rank.get_label_quality_scores``.

float32 ``pred_probs`` are computed as cleanlab computes them: ``1 - p``,
thresholds, margins and per-class scores in float32 (a class with an empty side
compares with, and adjusts by, float64 thresholds, as cleanlab's ``[mean, 2.0]``
list becomes float64), per-class scores pooled in float64. Other dtypes are widened
to float64.

Where we knowingly differ from cleanlab (all tested in ``tests/test_scoring_parity.py``):

* Inputs cleanlab rejects get the natural extension of its own formulas: a class
  tagged on every example (cleanlab: "Labels must contain at least 2 classes"),
  ``predicted_neq_given`` with a class never tagged (same error), and one class
  (K = 1: cleanlab's scorer and the two score rules raise "Labels must be in
  multi-label format"; we pool the single score, which is that score).
* The EMA reads only the :func:`~labelwatch.scoring.pooling.ema_tail_size`
  smallest class scores (25 at alpha 0.8): bit-identical to cleanlab up to that
  many classes, within 1e-17 beyond.
* ``low_self_confidence``/``low_normalized_margin`` flag whole examples in
  cleanlab; the per-class split is ours (:func:`labelwatch.scoring.rules.attribute`).
* ``low_memory=True`` (cleanlab's approximate batched algorithm) is not offered.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from labelwatch.scoring import rules
from labelwatch.scoring.pooling import label_quality
from labelwatch.scoring.sides import split_sides
from labelwatch.scoring.thresholds import as_arrays, thresholds_of
from labelwatch.scoring.types import ClassScore, FilterBy, Pooling

RANK_RULES = (FilterBy.PRUNE_BY_NOISE_RATE, FilterBy.PRUNE_BY_CLASS, FilterBy.BOTH)
"""Rules that flag a number of top-ranked pairs per class and side (prune counts)."""
SCORE_RULES = (FilterBy.LOW_SELF_CONFIDENCE, FilterBy.LOW_NORMALIZED_MARGIN)
"""Rules that flag the examples with the lowest label-quality scores."""


def find_label_issues(
    pred_probs: ArrayLike,
    labels: ArrayLike,
    *,
    filter_by: FilterBy | str = FilterBy.PRUNE_BY_NOISE_RATE,
    frac_noise: float = 1.0,
    num_to_remove_per_class: Sequence[int] | None = None,
    min_examples_per_class: int = 1,
) -> NDArray[np.bool_]:
    """``(N, K)`` bool per-class flags; ``flags.any(axis=1)`` is cleanlab's mask.

    ``pred_probs`` ``(N, K)`` in [0, 1] (float32 kept, else float64), ``labels`` ``(N, K)``
    bool/int (nonzero = tagged). Keyword arguments are cleanlab's, same defaults;
    ``frac_noise``, ``num_to_remove_per_class`` and ``min_examples_per_class``
    only act on the rank rules (``prune_by_*``, ``both``), as in cleanlab.

    >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.7], [0.95, 0.05],
    ...                   [0.1, 0.8]])
    >>> tags = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0], [1, 1]])
    >>> find_label_issues(probs, tags, filter_by="confident_learning").nonzero()
    (array([4, 5]), array([0, 0]))

    (Example 4 misses tag 0, example 5 has a spurious tag 0.)
    """
    rule = FilterBy(filter_by)
    if num_to_remove_per_class is not None and rule not in RANK_RULES:
        raise ValueError(
            f"num_to_remove_per_class is only supported by filter_by "
            f"{', '.join(r.value for r in RANK_RULES)}, not {rule.value!r}"
        )
    probs, tags = as_arrays(pred_probs, labels, keep_float32=True)
    sides = split_sides(probs, tags)  # shared by the thresholds and the rank rules
    thresholds = thresholds_of(sides)
    if rule is FilterBy.CONFIDENT_LEARNING:
        return rules.confident_learning(probs, tags, thresholds)
    if rule is FilterBy.PREDICTED_NEQ_GIVEN:
        return rules.predicted_neq_given(probs, tags)
    if rule in SCORE_RULES:
        return rules.low_score(probs, tags, thresholds)[0]
    plan = rules.prune_plan(
        probs,
        tags,
        thresholds,
        frac_noise=frac_noise,
        min_examples_per_class=min_examples_per_class,
        num_to_remove_per_class=num_to_remove_per_class,
    )
    if rule is FilterBy.PRUNE_BY_NOISE_RATE:
        return rules.prune_by_noise_rate(probs, tags, plan, sides)
    if rule is FilterBy.PRUNE_BY_CLASS:
        return rules.prune_by_class(probs, tags, plan, sides)
    return rules.both(probs, tags, plan, sides)


def label_quality_scores(
    pred_probs: ArrayLike,
    labels: ArrayLike,
    *,
    method: ClassScore | str = ClassScore.SELF_CONFIDENCE,
    adjust_pred_probs: bool = False,
    pooling: Pooling | str = Pooling.EMA,
    alpha: float = 0.8,
    temperature: float = 0.1,
) -> NDArray[np.float64]:
    """``(N,)`` float64 label-quality scores in [0, 1], lower = more likely mislabeled.

    Equals ``get_label_quality_scores(labels, pred_probs, method=method,
    adjust_pred_probs=adjust_pred_probs, aggregator_kwargs={"method": pooling,
    "alpha": alpha}`` (or ``"temperature": temperature`` for softmin) ``)``;
    the defaults are cleanlab's.

    >>> probs = np.array([[0.1, 0.9, 0.1], [0.4, 0.1, 0.9]])
    >>> label_quality_scores(probs, np.array([[0, 1, 0], [1, 0, 1]]))
    array([0.9, 0.5])
    """
    probs, tags = as_arrays(pred_probs, labels, keep_float32=True)
    adjusted_by = None
    if adjust_pred_probs:
        adjusted_by = thresholds_of(split_sides(probs, tags, keep_values=False))
    return label_quality(
        probs,
        tags,
        ClassScore(method),
        adjusted_by=adjusted_by,
        pooling=Pooling(pooling),
        alpha=alpha,
        temperature=temperature,
    )
