"""The two evaluation tracks: injected noise on real data, and the synthetic world.

* **real**: the debtags test split with tags flipped by a known seed (per-class 2x2 noise
  matrices, :func:`inject_noise`); truth = the injected flips, so a flag on one of the
  split's own (unknown) errors counts as a false positive.
* **synthetic**: ``bench/synthetic.py``'s world, where the clean tags are known, so every
  error is known (independent flips, or those plus correlated ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import synthetic
from numpy.typing import NDArray

from detectbench.compare import Track, Trial

Bools = NDArray[np.bool_]
Floats = NDArray[np.float64]

SYNTHETIC_CALIBRATION_SEED = 1000
"""Trial ``s`` calibrates on the synthetic set drawn with seed ``1000 + s`` and is evaluated
on the one drawn with seed ``s``: the spread over trials includes the calibration set's."""


@dataclass(frozen=True)
class NoiseSpec:
    """Ranges the per-class rates are drawn from (uniformly), and the per-package cap.

    ``missing``: P(tag dropped | class tagged). ``spurious``: expected added tags of a class
    as a fraction of its tagged packages, i.e. P(tag added | untagged) = q * prev / (1 - prev).
    """

    missing: tuple[float, float] = (0.01, 0.06)
    spurious: tuple[float, float] = (0.01, 0.05)
    max_flips: int = 3


@dataclass(frozen=True)
class Noise:
    """Corrupted labels ``(n, K)``, the flip mask ``(n, K)`` and the drawn rates ``(K,)``."""

    labels: Bools
    flipped: Bools
    p_missing: Floats
    p_spurious: Floats


def inject_noise(labels: Bools, spec: NoiseSpec, seed: int) -> Noise:
    """Flip tags per class with a 2x2 noise matrix; cap flips per package (random keep)."""
    rng = np.random.default_rng(seed)
    n, k = labels.shape
    prevalence = labels.mean(axis=0).clip(1e-9, 1 - 1e-9)
    p_missing = rng.uniform(*spec.missing, size=k)
    q = rng.uniform(*spec.spurious, size=k)
    p_spurious = np.clip(q * prevalence / (1 - prevalence), 0.0, 1.0)
    draws = rng.random((n, k))
    flipped = np.where(labels, draws < p_missing, draws < p_spurious)
    for i in np.flatnonzero(flipped.sum(axis=1) > spec.max_flips):
        keep = rng.choice(np.flatnonzero(flipped[i]), size=spec.max_flips, replace=False)
        flipped[i] = False
        flipped[i, keep] = True
    return Noise(labels ^ flipped, flipped, np.asarray(p_missing), np.asarray(p_spurious))


def real_track(probs: Floats, labels: Bools, spec: NoiseSpec, seeds: Sequence[int]) -> Track:
    """The test split with noise injected at each seed; volume measured on its own tags."""
    trials = []
    for seed in seeds:
        noise = inject_noise(labels, spec, seed)
        trials.append(Trial(probs, noise.labels, noise.flipped))
    return Track("real", tuple(trials), own=(probs, labels))


def synthetic_calibration(n: int, seed: int, *, correlated: bool) -> synthetic.Synthetic:
    """The calibration set of trial ``seed`` (its given tags are noisy, like real ones)."""
    return synthetic.make(n, seed=SYNTHETIC_CALIBRATION_SEED + seed, correlated=correlated)


def synthetic_track(n: int, seed: int, *, correlated: bool) -> Track:
    """One trial of fresh synthetic examples; truth = given tags that differ from the clean."""
    data = synthetic.make(n, seed=seed, correlated=correlated)
    trial = Trial(data.probs, data.given, data.errors)
    return Track("correlated" if correlated else "independent", (trial,))
