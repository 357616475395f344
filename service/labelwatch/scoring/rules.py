"""Per-class flag rules: ``(N, K)`` bool matrices, as cleanlab applies them one-vs-rest.

For class k the binary problem is ``P = [1 - p, p]`` with given side ``g`` (0
untagged, 1 tagged). The **margin** of an ``(example, class)`` pair is
``P[other side] - P[given side]`` (cleanlab's ``prune_by_noise_rate`` ranking key):
large when the model disagrees with the tag. Every rule ends as cleanlab's does,
by keeping only pairs where :func:`model_disagrees` (its ``_reduce_issues``),
except the two score rules, which cleanlab does not reduce either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from labelwatch.scoring.counts import (
    calibrate_joint,
    confident_assignment,
    confident_joint,
    label_counts,
    prune_count_matrix,
)
from labelwatch.scoring.pooling import exponential_moving_average, self_confidence
from labelwatch.scoring.sides import Sides, split_sides
from labelwatch.scoring.thresholds import TOLERANCE
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


def keep_disagreeing(flags: Flags, probs: NDArray[np.float64], tags: NDArray[np.bool_]) -> Flags:
    """``flags & model_disagrees(probs, tags)``, in place on ``flags`` (all ``(N, K)``).

    :func:`model_disagrees` is evaluated on the flagged pairs only, usually a few percent.
    """
    flagged = np.flatnonzero(flags)
    agrees = ~model_disagrees(probs.take(flagged), tags.take(flagged))
    np.put(flags, flagged[agrees], False)
    return flags


def confident_learning(
    probs: NDArray[np.float64], tags: NDArray[np.bool_], thresholds: Thresholds
) -> Flags:
    """Off-diagonal pairs of the confident joint (confidently the other side), reduced."""
    counted, guess = confident_assignment(probs, thresholds)
    np.not_equal(guess, tags, out=guess)
    guess &= counted
    return keep_disagreeing(guess, probs, tags)


def predicted_neq_given(probs: NDArray[np.float64], tags: NDArray[np.bool_]) -> Flags:
    """Binary argmax (``p > 1 - p``) differs from the tag, reduced."""
    return keep_disagreeing((probs > 1 - probs) != tags, probs, tags)


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


RankKey = Callable[[NDArray[np.float64], NDArray[np.bool_]], NDArray[np.float64]]
"""``key(probs, tags)``, elementwise: a rank rule takes the lowest keys of each class and
side first. Every key here is non-decreasing in ``p`` where tagged and non-increasing
where untagged, so ordering a side by key is ordering it by ``p``."""


def noise_rate_key(probs: NDArray[np.float64], tags: NDArray[np.bool_]) -> NDArray[np.float64]:
    """``-margins``: ``prune_by_noise_rate`` takes the largest margins first."""
    return -margins(probs, tags)


@dataclass(frozen=True)
class Cuts:
    """Where a rank rule stops in each class and side.

    ``p`` ``(K, 2)`` float64: a tagged pair of class k is taken iff its ``p <= p[k, 1]``,
    an untagged one iff ``p >= p[k, 0]`` (``-inf``/``inf``: no pair by this test).
    ``exact``: ``(class, side, taken example indices)`` for the sides whose key
    is tied at the cut, taken by cleanlab's own ``argsort`` instead.
    """

    p: NDArray[np.float64]
    exact: tuple[tuple[int, int, NDArray[np.intp]], ...]

    def flags(self, probs: NDArray[np.float64], tags: NDArray[np.bool_]) -> Flags:
        """``(N, K)`` bool: the pairs taken."""
        flags = np.less_equal(probs, self.p[:, 1])
        flags &= tags
        untagged = np.greater_equal(probs, self.p[:, 0])
        flags |= np.greater(untagged, tags, out=untagged)  # untagged & ~tags
        for c, _, taken in self.exact:
            flags[taken, c] = True
        return flags

    def last(self, probs: NDArray[np.float64], tags: NDArray[np.bool_]) -> NDArray[np.int64]:
        """``(K, 2)`` int64: example index of the last pair taken per class and side, -1: none."""
        last = np.full(self.p.shape, -1, dtype=np.int64)
        for g, side in enumerate((~tags, tags)):
            hit = (probs == self.p[:, g]) & side  # one pair per column at most
            found = hit.any(axis=0)
            last[found, g] = hit.argmax(axis=0)[found]
        for c, g, taken in self.exact:
            last[c, g] = taken[-1]
        return last


def rank_cuts(
    probs: NDArray[np.float64],
    tags: NDArray[np.bool_],
    key: RankKey,
    n_take: NDArray[np.int64],
    eligible: NDArray[np.bool_],
    sides: Sides | None = None,
) -> Cuts:
    """Per class and side, the ``n_take`` pairs with the lowest ``key`` (``(N, K)`` data).

    cleanlab ranks each class-side subset with ``np.argsort`` (not stable). Here
    a partial selection finds the cut's ``p`` and its two neighbours in ``p``
    order; when their keys differ from the cut's, the taken set does not depend
    on how argsort orders ties, and when one equals it that class and side is
    ranked by cleanlab's argsort, so ties at the cut are broken identically.
    ``sides``: :func:`split_sides` of the same data (values kept), if already computed.
    """
    if sides is None:
        sides = split_sides(probs, tags)
    take = np.minimum(n_take, sides.counts)  # argsort(...)[:n] takes at most the side
    cut = np.empty(take.shape, dtype=np.float64)
    cut[:, 0], cut[:, 1] = np.inf, -np.inf
    classes, side_of = np.nonzero(eligible & (take > 0))
    # p before, at and after the cut, in the input's precision (keys tie as cleanlab's do)
    window = np.full((classes.shape[0], 3), np.nan, dtype=sides.values[0].dtype)
    starts = [s.tolist() for s in sides.starts]
    for i, (c, g) in enumerate(zip(classes.tolist(), side_of.tolist(), strict=True)):
        size = int(sides.counts[c, g])
        segment = sides.values[g][starts[g][c] + 1 : starts[g][c] + 1 + size]
        at = int(take[c, g]) - 1 if g else size - int(take[c, g])  # ascending p order
        lo, hi = max(at - 1, 0), min(at + 2, size)
        window[i, lo - at + 1 : hi - at + 1] = np.partition(segment, range(lo, hi))[lo:hi]
    keys = key(window, np.repeat(side_of.astype(np.bool_)[:, None], 3, axis=1))
    tied = (keys[:, 0] == keys[:, 1]) | (keys[:, 2] == keys[:, 1])
    cut[classes[~tied], side_of[~tied]] = window[~tied, 1]
    exact = []
    for c, g in zip(classes[tied].tolist(), side_of[tied].tolist(), strict=True):
        column = key(probs[:, c], tags[:, c])
        idx = np.flatnonzero(tags[:, c] == bool(g))
        exact.append((c, g, idx[np.argsort(column[idx])[: take[c, g]]]))
    return Cuts(p=cut, exact=tuple(exact))


@dataclass(frozen=True)
class Ranked:
    """A rank rule's pairs before reduction: ``flags`` ``(N, K)``; ``last`` ``(K, 2)`` int64,
    the example index of the last pair taken per class and side (-1: none taken)."""

    flags: Flags
    last: NDArray[np.int64]


def _ranked(probs: NDArray[np.float64], tags: NDArray[np.bool_], cuts: Cuts) -> Ranked:
    return Ranked(flags=cuts.flags(probs, tags), last=cuts.last(probs, tags))


def prune_by_noise_rate_ranked(
    probs: NDArray[np.float64],
    tags: NDArray[np.bool_],
    plan: PrunePlan,
    sides: Sides | None = None,
) -> Ranked:
    """Largest margins first, ``plan.by_noise_rate`` per class and side (not reduced)."""
    cuts = rank_cuts(probs, tags, noise_rate_key, plan.by_noise_rate, plan.eligible, sides)
    return _ranked(probs, tags, cuts)


def prune_by_class_ranked(
    probs: NDArray[np.float64],
    tags: NDArray[np.bool_],
    plan: PrunePlan,
    sides: Sides | None = None,
) -> Ranked:
    """Smallest given-side probability first, ``plan.by_class`` per class and side."""
    cuts = rank_cuts(probs, tags, self_confidence, plan.by_class, plan.eligible, sides)
    return _ranked(probs, tags, cuts)


def prune_by_noise_rate(
    probs: NDArray[np.float64],
    tags: NDArray[np.bool_],
    plan: PrunePlan,
    sides: Sides | None = None,
) -> Flags:
    """cleanlab's default rule: the ``num2prune`` largest margins per class and side."""
    cuts = rank_cuts(probs, tags, noise_rate_key, plan.by_noise_rate, plan.eligible, sides)
    return keep_disagreeing(cuts.flags(probs, tags), probs, tags)


def prune_by_class(
    probs: NDArray[np.float64],
    tags: NDArray[np.bool_],
    plan: PrunePlan,
    sides: Sides | None = None,
) -> Flags:
    """The ``num_issues`` least self-confident pairs per class and side."""
    cuts = rank_cuts(probs, tags, self_confidence, plan.by_class, plan.eligible, sides)
    return keep_disagreeing(cuts.flags(probs, tags), probs, tags)


def both(
    probs: NDArray[np.float64],
    tags: NDArray[np.bool_],
    plan: PrunePlan,
    sides: Sides | None = None,
) -> Flags:
    """Flagged by both :func:`prune_by_noise_rate` and :func:`prune_by_class`."""
    sides = split_sides(probs, tags) if sides is None else sides
    by_rate = rank_cuts(probs, tags, noise_rate_key, plan.by_noise_rate, plan.eligible, sides)
    by_class = rank_cuts(probs, tags, self_confidence, plan.by_class, plan.eligible, sides)
    flags = by_rate.flags(probs, tags)
    flags &= by_class.flags(probs, tags)
    return keep_disagreeing(flags, probs, tags)


RULE_ALPHA = 0.8
"""The score rules rank by cleanlab's default score: self-confidence, EMA alpha 0.8."""


def rule_scores(probs: NDArray[np.float64], tags: NDArray[np.bool_]) -> NDArray[np.float64]:
    """``(N,)`` the label-quality score the two score rules rank by.

    Per-class scores in the input's precision, pooled in float64 (as cleanlab's scorer).
    """
    scores = np.asarray(self_confidence(probs, tags), dtype=np.float64)
    return exponential_moving_average(scores, RULE_ALPHA, overwrite=scores.dtype != probs.dtype)


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
