"""A synthetic multi-label track with exact truth, for the detection benchmark and tests.

Clean tags come from a structure a tag-context model can learn (facets of related tags,
a base tag that its facet's other tags usually come with, and implications across
facets); model probabilities come from the clean tags through a per-class quality and
noise; the given tags are the clean ones corrupted by

* ``independent`` noise: per class, a tagged class dropped with probability ``m[k]``
  and an untagged class added at 1-5 % of the class's tagged count;
* ``correlated`` noise: the independent flips plus, per example, a whole facet dropped
  (probability 4 %) or one facet's tags copied from another example (probability 3 %).

Every given tag that differs from the clean one is a known error.

>>> data = make(200, seed=0)
>>> data.probs.shape, data.given.shape, bool((data.given != data.clean).any())
((200, 60), (200, 60), True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FACETS = 12
TAGS_PER_FACET = 5
N_CLASSES = FACETS * TAGS_PER_FACET


@dataclass(frozen=True)
class Synthetic:
    """``probs`` ``(n, K)`` model probabilities; ``clean``/``given`` ``(n, K)`` bool tags."""

    probs: NDArray[np.float64]
    clean: NDArray[np.bool_]
    given: NDArray[np.bool_]
    class_names: tuple[str, ...]

    @property
    def errors(self) -> NDArray[np.bool_]:
        """``(n, K)``: the given tag is wrong."""
        out: NDArray[np.bool_] = self.given != self.clean
        return out


def class_names() -> tuple[str, ...]:
    """``facet<f>::tag<t>`` names, K = 60."""
    return tuple(f"facet{f:02d}::tag{t}" for f in range(FACETS) for t in range(TAGS_PER_FACET))


def _clean_tags(rng: np.random.Generator, n: int) -> NDArray[np.bool_]:
    k = N_CLASSES
    tags = np.zeros((n, k), dtype=np.bool_)
    facet_weight = np.random.default_rng(12345).dirichlet(np.full(FACETS, 2.0))
    for i in range(n):
        chosen = rng.choice(FACETS, size=int(rng.integers(1, 4)), replace=False, p=facet_weight)
        for f in chosen:
            base = f * TAGS_PER_FACET
            tags[i, base] = rng.random() < 0.9
            tags[i, base + 1 : base + TAGS_PER_FACET] = rng.random(TAGS_PER_FACET - 1) < 0.35
            if not tags[i, base : base + TAGS_PER_FACET].any():
                tags[i, base] = True
    # implications across facets: tag 1 of facet f implies tag 2 of facet f+1 (90 %)
    for f in range(FACETS - 1):
        a, b = f * TAGS_PER_FACET + 1, (f + 1) * TAGS_PER_FACET + 2
        tags[:, b] |= tags[:, a] & (rng.random(n) < 0.9)
    return tags


def _probabilities(
    rng: np.random.Generator, clean: NDArray[np.bool_], quality: NDArray[np.float64]
) -> NDArray[np.float64]:
    n, k = clean.shape
    signal = np.where(clean, 1.0, -1.0) * quality
    z = signal - 1.0 + rng.normal(0.0, 1.3, size=(n, k))
    out: NDArray[np.float64] = 1.0 / (1.0 + np.exp(-z))
    return out


def _independent(
    rng: np.random.Generator, clean: NDArray[np.bool_], rates: NDArray[np.float64]
) -> NDArray[np.bool_]:
    prevalence = clean.mean(axis=0).clip(1e-9, 1 - 1e-9)
    p_add = np.clip(rates[:, 1] * prevalence / (1 - prevalence), 0.0, 1.0)
    draws = rng.random(clean.shape)
    flips = np.where(clean, draws < rates[:, 0], draws < p_add)
    out: NDArray[np.bool_] = clean ^ flips
    return out


def _correlated(
    rng: np.random.Generator, clean: NDArray[np.bool_], given: NDArray[np.bool_]
) -> NDArray[np.bool_]:
    out: NDArray[np.bool_] = given.copy()
    n = clean.shape[0]
    for i in range(n):
        u = rng.random()
        if u < 0.04:  # a whole facet the example has is dropped
            facets = clean[i].reshape(FACETS, TAGS_PER_FACET).any(axis=1)
            present = np.flatnonzero(facets).tolist()
            f = int(rng.choice(present))
            out[i, f * TAGS_PER_FACET : (f + 1) * TAGS_PER_FACET] = False
        elif u < 0.07:  # one facet's tags copied from another example
            j = int(rng.integers(n))
            f = int(rng.integers(FACETS))
            cols = slice(f * TAGS_PER_FACET, (f + 1) * TAGS_PER_FACET)
            out[i, cols] |= clean[j, cols]
    return out


def make(n: int, *, seed: int, correlated: bool = False, world_seed: int = 7) -> Synthetic:
    """``n`` examples of the synthetic world ``world_seed`` (class qualities and noise rates
    are the world's; examples, model noise and flips are drawn with ``seed``)."""
    world = np.random.default_rng(world_seed)
    quality = world.uniform(1.0, 3.0, size=N_CLASSES)
    rates = np.stack(
        [world.uniform(0.02, 0.08, size=N_CLASSES), world.uniform(0.01, 0.05, size=N_CLASSES)],
        axis=1,
    )
    rng = np.random.default_rng(seed)
    clean = _clean_tags(rng, n)
    probs = _probabilities(rng, clean, quality)
    given = _independent(rng, clean, rates)
    if correlated:
        given = _correlated(rng, clean, given)
    return Synthetic(probs=probs, clean=clean, given=given, class_names=class_names())
