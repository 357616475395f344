"""The per-class confident joint and the prune counts derived from it.

Each class k is the binary problem cleanlab builds one-vs-rest: probabilities
``P = [1 - p, p]`` with given label ``g`` (0 untagged, 1 tagged). Arrays indexed
``[k, a, b]`` are ``(n_classes, 2, 2)``; every step below is cleanlab's
(``compute_confident_joint``, ``calibrate_confident_joint``,
``_keep_at_least_n_per_class``, ``round_preserving_row_totals``) vectorised over
classes with the same floating-point operations in the same order, so the
integer counts are identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from labelwatch.scoring.thresholds import TOLERANCE, cut_points
from labelwatch.scoring.types import Thresholds

TINY_VALUE = 1e-100
"""cleanlab's ``TINY_VALUE`` (denominator floor in calibration)."""
_DIAG = (slice(None), [0, 1], [0, 1])


def confident_assignment(
    probs: NDArray[np.float64], thresholds: Thresholds
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Where each ``(example, class)`` lands in the confident joint.

    Returns ``(counted, guess)``, both ``(N, K)`` bool: ``counted`` where at least
    one side clears its threshold (``1 - p >= t0 - 1e-6`` or ``p >= t1 - 1e-6``);
    ``guess`` the confident side (both clear: ``p > 1 - p``, argmax's tie-break).
    """
    q = np.subtract(1.0, probs)
    cut = cut_points(thresholds, probs.dtype)
    above0 = np.greater_equal(q, cut[:, 0])
    above1 = np.greater_equal(probs, cut[:, 1])
    # guess = where(above0 & above1, p > q, above1), without float temporaries.
    guess = np.less_equal(probs, q)
    guess &= above0
    np.logical_not(guess, out=guess)
    guess &= above1
    above0 |= above1
    return above0, guess


def confident_joint(
    probs: NDArray[np.float64], tags: NDArray[np.bool_], thresholds: Thresholds
) -> NDArray[np.int64]:
    """``(K, 2, 2)`` counts ``[k, given, guessed]``, diagonal raised to at least 1."""
    counted, guess = confident_assignment(probs, thresholds)
    # guess implies counted, so four column counts give the four cells.
    tagged_guess = np.count_nonzero(guess & tags, axis=0)
    tagged_counted = np.count_nonzero(counted & tags, axis=0)
    untagged_guess = np.count_nonzero(guess, axis=0) - tagged_guess
    cj = np.empty((probs.shape[1], 2, 2), dtype=np.int64)
    cj[:, 1, 1] = tagged_guess
    cj[:, 1, 0] = tagged_counted - tagged_guess
    cj[:, 0, 1] = untagged_guess
    cj[:, 0, 0] = np.count_nonzero(counted, axis=0) - tagged_counted - untagged_guess
    cj[_DIAG] = np.maximum(cj[_DIAG], 1)
    return cj


def label_counts(thresholds: Thresholds) -> NDArray[np.int64]:
    """``(K, 2)``: untagged and tagged example counts per class."""
    return np.stack([thresholds.n_neg, thresholds.n_pos], axis=1).astype(np.int64)


def calibrate_joint(cj: NDArray[np.int64], counts: NDArray[np.int64]) -> NDArray[np.int64]:
    """``(K, 2, 2)``: rows rescaled to the given-label counts, total to N, rounded."""
    rows = np.clip(cj.sum(axis=2), TINY_VALUE, None)
    cal = cj / rows[:, :, None] * counts[:, :, None]
    # cleanlab sums its transposed 2x2 in memory order: [0,0], [1,0], [0,1], [1,1].
    total = ((cal[:, 0, 0] + cal[:, 1, 0]) + cal[:, 0, 1]) + cal[:, 1, 1]
    cal = cal / np.clip(total, TINY_VALUE, None)[:, None, None] * counts.sum(axis=1)[:, None, None]
    return round_preserving_rows(cal)


def round_preserving_rows(floats: NDArray[np.float64]) -> NDArray[np.int64]:
    """Round every length-2 row of ``(..., 2)`` floats, keeping each row's rounded sum.

    cleanlab's ``round_preserving_sum``: round half to even, then move the
    remainder onto the entries with the largest (or smallest) rounding error,
    ties to the later (or earlier) entry as its two-element ``argsort`` does.
    """
    f = np.asarray(floats, dtype=np.float64)
    shape = f.shape
    f = f.reshape(-1, 2)
    ints = np.round(f)
    want = np.round(f[:, 0] + f[:, 1])
    have = np.round(ints[:, 0] + ints[:, 1])
    with np.errstate(invalid="ignore"):
        todo = np.abs(have - want) > TOLERANCE
        while todo.any():
            diff = np.round(want - have)
            up = ~(diff < 0.0)
            step = np.where(up, 1.0, -1.0)
            changes = np.minimum(np.trunc(np.abs(diff)), 2.0)
            err = f - ints
            le = err[:, 0] <= err[:, 1]
            first = np.where(up, le, ~le).astype(np.int64)  # index changed first
            for nth, column in ((1, first), (2, 1 - first)):
                rows = np.flatnonzero(todo & (changes >= nth))
                ints[rows, column[rows]] += step[rows]
            have = np.where(todo, np.round(ints[:, 0] + ints[:, 1]), have)
            todo = np.abs(have - want) > TOLERANCE
        out: NDArray[np.int64] = ints.astype(np.int64).reshape(shape)
    return out


def prune_count_matrix(
    cal: NDArray[np.int64],
    counts: NDArray[np.int64],
    *,
    frac_noise: float = 1.0,
    min_examples_per_class: int = 1,
    num_to_remove_per_class: Sequence[int] | None = None,
) -> NDArray[np.int64]:
    """``(K, 2, 2)`` prune counts ``[k, true, given]`` (transposed, as cleanlab's).

    ``[k, 1 - g, g]`` examples with given side ``g`` are flagged by
    ``prune_by_noise_rate``; ``counts[k, g] - [k, g, g]`` by ``prune_by_class``.
    """
    pcm = np.swapaxes(cal, 1, 2).astype(np.int64)
    diag = pcm[_DIAG]
    new_diag = np.maximum(diag, min_examples_per_class)
    raised = new_diag - diag
    per_col = np.maximum(np.count_nonzero(pcm, axis=1) - 1.0, 1.0)
    new = pcm - (raised / per_col)[:, None, :]
    new[new < 0] = 0
    new[_DIAG] = new_diag
    reduced = new * frac_noise
    reduced[_DIAG] = new[_DIAG]
    reduced[_DIAG] = new[_DIAG] + np.sum(new - reduced, axis=1)
    out: NDArray[np.int64] = np.trunc(reduced).astype(np.int64)
    if num_to_remove_per_class is None:
        return out
    return _calibrate_to_removals(out, counts, np.asarray(num_to_remove_per_class))


def _calibrate_to_removals(
    pcm: NDArray[np.int64], counts: NDArray[np.int64], remove: NDArray[np.int64]
) -> NDArray[np.int64]:
    """cleanlab's ``num_to_remove_per_class`` branch with ``[remove[k], 0]`` per class."""
    ntr = np.stack([remove, np.zeros_like(remove)], axis=1).astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        psy = pcm / (pcm[:, :, 0] + pcm[:, :, 1])[:, None, :]
        noise = (psy[:, :, 0] + psy[:, :, 1]) - psy[_DIAG]
        tmp = psy * ntr[:, :, None] / noise[:, :, None]
        tmp[_DIAG] = counts - ntr
    return round_preserving_rows(tmp)
