"""Per-class flag rules: ``(N, K)`` bool matrices, as cleanlab applies them one-vs-rest.

For class k the binary problem is ``P = [1 - p, p]`` with given side ``g`` (0
untagged, 1 tagged). The **margin** of an ``(example, class)`` pair is
``P[other side] - P[given side]`` (cleanlab's ``prune_by_noise_rate`` ranking key):
large when the model disagrees with the tag. Every rule ends as cleanlab's does,
by keeping only pairs where :func:`model_disagrees` (its ``_reduce_issues``),
except the two score rules, which cleanlab does not reduce either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from labelwatch.scoring.counts import (
    TOLERANCE,
    calibrate_joint,
    confident_assignment,
    confident_joint,
    label_counts,
    prune_count_matrix,
)
from labelwatch.scoring.pooling import exponential_moving_average, self_confidence
from labelwatch.scoring.types import Thresholds

Flags = NDArray[np.bool_]


def margins(probs: NDArray[np.float64], tags: NDArray[np.bool_]) -> NDArray[np.float64]:
    """``(N, K)`` margin ``P[other] - P[given]``, in [-1, 1], computed as cleanlab does."""
    return np.where(tags, (1 - probs) - probs, probs - (1 - probs))


def model_disagrees(probs: NDArray[np.float64], tags: NDArray[np.bool_]) -> Flags:
    """``(N, K)``: the binary argmax still picks the other side after adding 1e-6 to the tag's.

    The complement of cleanlab's ``_reduce_issues`` (ties go to "not tagged",
    as ``argmax`` picks index 0).
    """
    p0 = 1 - probs
    out: Flags = np.where(tags, p0 >= probs + TOLERANCE, probs > p0 + TOLERANCE)
    return out


def confident_learning(
    probs: NDArray[np.float64], tags: NDArray[np.bool_], thresholds: Thresholds
) -> Flags:
    """Off-diagonal pairs of the confident joint (confidently the other side), reduced."""
    counted, guess = confident_assignment(probs, thresholds)
    out: Flags = counted & (guess != tags) & model_disagrees(probs, tags)
    return out


def predicted_neq_given(probs: NDArray[np.float64], tags: NDArray[np.bool_]) -> Flags:
    """Binary argmax (``p > 1 - p``) differs from the tag, reduced."""
    out: Flags = ((probs > 1 - probs) != tags) & model_disagrees(probs, tags)
    return out


@dataclass(frozen=True)
class PrunePlan:
    """How many pairs each rank rule flags per class and side, ``(K, 2)`` int64 each.

    ``by_noise_rate``/``by_class``: cleanlab's ``num2prune``/``num_issues``;
    ``eligible``: the side has more than ``min_examples_per_class`` examples (and
    more than one, below which cleanlab drops the side's mask).
    """

    by_noise_rate: NDArray[np.int64]
    by_class: NDArray[np.int64]
    eligible: NDArray[np.bool_]


def prune_plan(
    probs: NDArray[np.float64],
    tags: NDArray[np.bool_],
    thresholds: Thresholds,
    *,
    frac_noise: float = 1.0,
    min_examples_per_class: int = 1,
    num_to_remove_per_class: Sequence[int] | None = None,
) -> PrunePlan:
    """Prune counts from the calibrated confident joint of ``(N, K)`` data."""
    counts = label_counts(thresholds)
    cal = calibrate_joint(confident_joint(probs, tags, thresholds), counts)
    pcm = prune_count_matrix(
        cal,
        counts,
        frac_noise=frac_noise,
        min_examples_per_class=min_examples_per_class,
        num_to_remove_per_class=num_to_remove_per_class,
    )
    return PrunePlan(
        by_noise_rate=np.stack([pcm[:, 1, 0], pcm[:, 0, 1]], axis=1),
        by_class=counts - np.stack([pcm[:, 0, 0], pcm[:, 1, 1]], axis=1),
        eligible=(counts > min_examples_per_class) & (counts > 1),
    )


@dataclass(frozen=True)
class Ranked:
    """Result of :func:`take_ranked`: ``flags`` ``(N, K)``; ``last`` ``(K, 2)`` int64,
    the example index of the last pair taken per class and side (-1: none taken)."""

    flags: Flags
    last: NDArray[np.int64]


def take_ranked(
    key: NDArray[np.float64],
    tags: NDArray[np.bool_],
    n_take: NDArray[np.int64],
    eligible: NDArray[np.bool_],
) -> Ranked:
    """Per class and side, flag the ``n_take`` pairs with the smallest ``key``.

    ``key`` is ``(N, K)``; ranking is ``np.argsort`` (numpy's default kind) of
    each class-side subset in example order, exactly cleanlab's call, so ties
    at the cut are broken identically.
    """
    n, k = key.shape
    flags = np.zeros((n, k), dtype=np.bool_)
    last = np.full((k, 2), -1, dtype=np.int64)
    key_t = np.ascontiguousarray(key.T)
    tags_t = np.ascontiguousarray(tags.T)
    for c, g in zip(*np.nonzero(eligible & (n_take > 0)), strict=True):
        idx = np.flatnonzero(tags_t[c] == bool(g))
        taken = idx[np.argsort(key_t[c][idx])[: n_take[c, g]]]
        flags[taken, c] = True
        last[c, g] = taken[-1]
    return Ranked(flags=flags, last=last)


def prune_by_noise_rate_ranked(
    probs: NDArray[np.float64], tags: NDArray[np.bool_], plan: PrunePlan
) -> Ranked:
    """Largest margins first, ``plan.by_noise_rate`` per class and side (not reduced)."""
    return take_ranked(-margins(probs, tags), tags, plan.by_noise_rate, plan.eligible)


def prune_by_class_ranked(
    probs: NDArray[np.float64], tags: NDArray[np.bool_], plan: PrunePlan
) -> Ranked:
    """Smallest given-side probability first, ``plan.by_class`` per class and side."""
    return take_ranked(self_confidence(probs, tags), tags, plan.by_class, plan.eligible)


def prune_by_noise_rate(
    probs: NDArray[np.float64], tags: NDArray[np.bool_], plan: PrunePlan
) -> Flags:
    """cleanlab's default rule: the ``num2prune`` largest margins per class and side."""
    ranked = prune_by_noise_rate_ranked(probs, tags, plan)
    return ranked.flags & model_disagrees(probs, tags)


def prune_by_class(probs: NDArray[np.float64], tags: NDArray[np.bool_], plan: PrunePlan) -> Flags:
    """The ``num_issues`` least self-confident pairs per class and side."""
    ranked = prune_by_class_ranked(probs, tags, plan)
    return ranked.flags & model_disagrees(probs, tags)


def both(probs: NDArray[np.float64], tags: NDArray[np.bool_], plan: PrunePlan) -> Flags:
    """Flagged by both :func:`prune_by_noise_rate` and :func:`prune_by_class`."""
    by_rate = prune_by_noise_rate_ranked(probs, tags, plan).flags
    by_class = prune_by_class_ranked(probs, tags, plan).flags
    return by_rate & by_class & model_disagrees(probs, tags)


RULE_ALPHA = 0.8
"""The score rules rank by cleanlab's default score: self-confidence, EMA alpha 0.8."""


def rule_scores(probs: NDArray[np.float64], tags: NDArray[np.bool_]) -> NDArray[np.float64]:
    """``(N,)`` the label-quality score the two score rules rank by."""
    return exponential_moving_average(self_confidence(probs, tags), RULE_ALPHA)


def attribute(
    rows: NDArray[np.bool_], probs: NDArray[np.float64], tags: NDArray[np.bool_]
) -> Flags:
    """Per-class flags for example-level flags ``rows`` ``(N,)``.

    In a flagged row: every class the model disagrees with, plus the least
    self-confident class (the first one on ties), so each flagged row has a flag.
    """
    sc = self_confidence(probs, tags)
    lowest = np.zeros(sc.shape, dtype=np.bool_)
    if sc.shape[1]:
        lowest[np.arange(sc.shape[0]), np.argmin(sc, axis=1)] = True
    return rows[:, None] & (model_disagrees(probs, tags) | lowest)


def low_score(
    probs: NDArray[np.float64], tags: NDArray[np.bool_], thresholds: Thresholds
) -> tuple[Flags, NDArray[np.bool_], NDArray[np.float64]]:
    """cleanlab's multi-label ``low_self_confidence``/``low_normalized_margin`` (identical there).

    The examples with the lowest :func:`rule_scores`, as many as rows flagged by
    :func:`confident_learning`. Returns ``(flags (N, K), rows (N,), scores (N,))``;
    ``rows`` is cleanlab's mask, ``flags`` its :func:`attribute` split.
    """
    n_errors = int(confident_learning(probs, tags, thresholds).any(axis=1).sum())
    scores = rule_scores(probs, tags)
    rows = np.zeros(scores.shape[0], dtype=np.bool_)
    rows[np.argsort(scores)[:n_errors]] = True
    return attribute(rows, probs, tags), rows, scores


def low_self_confidence(
    probs: NDArray[np.float64], tags: NDArray[np.bool_], thresholds: Thresholds
) -> Flags:
    """``(N, K)`` split of cleanlab's ``low_self_confidence`` mask (see :func:`low_score`)."""
    return low_score(probs, tags, thresholds)[0]


def low_normalized_margin(
    probs: NDArray[np.float64], tags: NDArray[np.bool_], thresholds: Thresholds
) -> Flags:
    """cleanlab's multi-label ``low_normalized_margin``: the same mask as ``low_self_confidence``.

    (Its multi-label path ranks both by the default self-confidence score.)
    """
    return low_score(probs, tags, thresholds)[0]
