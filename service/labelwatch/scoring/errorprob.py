"""A calibrated probability that a flagged tag is wrong, fitted without knowing the truth.

Truth is unknown on real data, so the calibrator is fitted on errors we make ourselves:

1. Confident Learning's confident joint estimates how many tags of each class
   are missing (untagged, truly present) and spurious (tagged, truly absent) in the
   calibration set: ``E`` errors in all.
2. Flips are injected into the calibration tags at exactly those per-class rates (a
   tagged class dropped with probability ``missing[k] / n_pos[k]``, an untagged one added
   with ``spurious[k] / n_neg[k]``), a few times with fixed seeds, and every flipped pair
   is scored out of fold (the cross-fitted context models, which never saw that example).
3. On the *un-injected* calibration set, ``N * K`` pairs carry the error-score
   distribution ``f``; the injected flips show where errors land, ``g``. Within a score
   bin, ``P(error | score) = E * g(bin) / (N * K * f(bin))``: the errors Confident Learning
   estimates, spread like injected ones, over the pairs that really score there.
4. The bin estimates are made non-decreasing in the score (pool adjacent violators,
   weighted by the bin's pairs) and capped at 0.999; online values are interpolated
   between bin centres.

The bench's synthetic track, where the truth is known, measures how well this holds
(``docs/detection.md``: reliability diagram and expected calibration error).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from labelwatch.scoring.counts import confident_joint
from labelwatch.scoring.types import Thresholds

INJECTION_ROUNDS = 4
"""Injections of flips (seeds 1..4) pooled to estimate where errors score."""

BINS = 30
"""Score bins, at quantiles of the injected flips' scores."""

MAX_PROBABILITY = 0.999
"""The highest error probability the calibrator gives (never a certainty)."""


@dataclass(frozen=True)
class ErrorCalibrator:
    """Monotone map from error score to P(the tag is wrong).

    ``scores``: ``(B,)`` increasing error scores in [0, 1]; ``probabilities``: ``(B,)``
    non-decreasing in [0, 1]. Below the first knot the first value applies, above the
    last the last (``np.interp``).
    """

    scores: NDArray[np.float64]
    probabilities: NDArray[np.float64]

    def __call__(self, error_scores: NDArray[np.float64]) -> NDArray[np.float64]:
        """Error probabilities, same shape as ``error_scores``."""
        out: NDArray[np.float64] = np.interp(error_scores, self.scores, self.probabilities)
        return out


def estimated_errors(
    probs: NDArray[np.float64], tags: NDArray[np.bool_], thresholds: Thresholds
) -> NDArray[np.int64]:
    """``(K, 2)`` errors per class Confident Learning counts: ``[missing, spurious]``.

    The off-diagonal cells of the confident joint ``[k, given, confident side]``:
    missing = given 0 / confidently 1, spurious = given 1 / confidently 0. (Not the
    calibrated joint: its row rescaling inflated the counts 1.5-1.7x on the synthetic
    track, where the truth is known; the raw counts were within 0.85-1.2x.)
    """
    cj = confident_joint(probs, tags, thresholds)
    return np.stack([cj[:, 0, 1], cj[:, 1, 0]], axis=1).astype(np.int64)


def flip_rates(errors: NDArray[np.int64], tags: NDArray[np.bool_]) -> NDArray[np.float64]:
    """``(K, 2)`` injection probabilities ``[add to an untagged pair, drop a tagged one]``.

    Adding spurious tags at ``spurious[k] / n_neg[k]`` and dropping at
    ``missing[k] / n_pos[k]`` injects as many errors of each kind as were estimated.
    Capped at 0.5.
    """
    pos = tags.sum(axis=0).astype(np.float64)
    neg = tags.shape[0] - pos
    with np.errstate(divide="ignore", invalid="ignore"):
        add = np.where(neg > 0, errors[:, 1] / neg, 0.0)
        drop = np.where(pos > 0, errors[:, 0] / pos, 0.0)
    out: NDArray[np.float64] = np.clip(np.stack([add, drop], axis=1), 0.0, 0.5)
    return out


def isotonic(values: NDArray[np.float64], weights: NDArray[np.float64]) -> NDArray[np.float64]:
    """Weighted least-squares non-decreasing fit of ``(B,)`` values (pool adjacent violators).

    >>> isotonic(np.array([0.1, 0.3, 0.2, 0.5]), np.ones(4)).round(2).tolist()
    [0.1, 0.25, 0.25, 0.5]
    """
    level: list[float] = []
    weight: list[float] = []
    size: list[int] = []
    for v, w in zip(values.tolist(), weights.tolist(), strict=True):
        level.append(v)
        weight.append(w)
        size.append(1)
        while len(level) > 1 and level[-2] > level[-1]:
            total = weight[-2] + weight[-1]
            merged = (level[-2] * weight[-2] + level[-1] * weight[-1]) / total if total else 0.0
            level[-2:] = [merged]
            weight[-2:] = [total]
            size[-2:] = [size[-2] + size[-1]]
    return np.repeat(np.asarray(level, dtype=np.float64), size)


def fit_error_calibrator(
    real_scores: NDArray[np.float64],
    injected_scores: NDArray[np.float64],
    n_errors: float,
    *,
    bins: int = BINS,
) -> ErrorCalibrator:
    """Fit the calibrator (steps 3-4 of the module docstring).

    ``real_scores``: error scores of every calibration pair (any shape); ``injected_scores``:
    ``(I,)`` scores of the injected flips of all rounds; ``n_errors``: ``E``, spread over
    the bins as the injected flips are.
    """
    real = np.sort(np.asarray(real_scores, dtype=np.float64), axis=None)
    inj = np.sort(np.asarray(injected_scores, dtype=np.float64))
    if inj.shape[0] == 0 or n_errors <= 0 or real.shape[0] == 0:
        return ErrorCalibrator(scores=np.array([0.0, 1.0]), probabilities=np.zeros(2))
    edges = np.unique(np.quantile(inj, np.linspace(0.0, 1.0, bins + 1)))
    edges[0], edges[-1] = 0.0, 1.0 + 1e-12
    if edges.shape[0] < 2:
        edges = np.array([0.0, 1.0 + 1e-12])
    inj_counts = np.diff(np.searchsorted(inj, edges, side="left"))
    real_counts = np.diff(np.searchsorted(real, edges, side="left")).astype(np.float64)
    errors = n_errors * inj_counts / inj.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(real_counts > 0, errors / real_counts, 0.0)
    # finite evidence never says "certainly wrong": the top is capped at MAX_PROBABILITY
    fitted = np.clip(isotonic(np.clip(ratio, 0.0, 1.0), np.maximum(real_counts, 1.0)), 0.0,
                     MAX_PROBABILITY)  # fmt: skip
    centres = np.array(
        [
            float(np.median(inj[(inj >= lo) & (inj < hi)]))
            if ((inj >= lo) & (inj < hi)).any()
            else (lo + hi) / 2
            for lo, hi in itertools.pairwise(edges.tolist())
        ]
    )
    centres = np.maximum.accumulate(centres)
    keep = np.concatenate([[True], np.diff(centres) > 0])
    return ErrorCalibrator(scores=centres[keep], probabilities=fitted[keep])


ScoreFn = Callable[[NDArray[np.bool_]], NDArray[np.float64]]
"""``score(tags) -> (N, K)`` out-of-fold error scores of the calibration examples with ``tags``."""


@dataclass(frozen=True)
class SidedCalibrator:
    """One :class:`ErrorCalibrator` per kind of issue: ``missing`` for untagged pairs,
    ``spurious`` for tagged ones (their errors score differently and are estimated apart)."""

    missing: ErrorCalibrator
    spurious: ErrorCalibrator

    def __call__(
        self, error_scores: NDArray[np.float64], tags: NDArray[np.bool_]
    ) -> NDArray[np.float64]:
        """Error probabilities of pairs with ``error_scores`` and given ``tags`` (same shape)."""
        out: NDArray[np.float64] = np.where(
            tags, self.spurious(error_scores), self.missing(error_scores)
        )
        return out


def calibrate_error_probability(
    probs: NDArray[np.float64],
    tags: NDArray[np.bool_],
    thresholds: Thresholds,
    real_scores: NDArray[np.float64],
    score: ScoreFn,
    *,
    rounds: int = INJECTION_ROUNDS,
) -> SidedCalibrator:
    """Steps 1-4 for each kind of issue: estimate errors, inject flips ``rounds`` times, fit.

    ``probs``/``thresholds``: what Confident Learning counts errors with (the service
    passes the cross-fitted context probabilities and their thresholds);
    ``real_scores``: ``(N, K)`` out-of-fold error scores of the un-injected ``tags``.
    Deterministic (seeds 1..rounds).
    """
    errors = estimated_errors(probs, tags, thresholds)
    rates = flip_rates(errors, tags)
    per_pair = np.where(tags, rates[:, 1], rates[:, 0])
    injected: tuple[list[NDArray[np.float64]], list[NDArray[np.float64]]] = ([], [])
    for r in range(1, rounds + 1):
        flips = np.random.default_rng(r).random(tags.shape) < per_pair
        scores = score(tags ^ flips)
        injected[0].append(scores[flips & tags])  # a dropped tag: now missing
        injected[1].append(scores[flips & ~tags])  # an added tag: now spurious
    sides = []
    for side, (given, found) in enumerate(((~tags, injected[0]), (tags, injected[1]))):
        flips_scores = np.concatenate(found) if found else np.empty(0)
        sides.append(
            fit_error_calibrator(real_scores[given], flips_scores, float(errors[:, side].sum()))
        )
    return SidedCalibrator(missing=sides[0], spurious=sides[1])
