"""The fast batch path at sizes the parity corpus (N <= 150) does not reach.

Thresholds must equal ``np.mean`` over each masked column bit for bit (numpy's
pairwise summation changes shape at 8, 128 and every halving above), and the
rank cuts must take exactly the pairs cleanlab's per-class ``argsort`` takes,
with and without ties at the cut.
"""

from __future__ import annotations

import numpy as np
import pytest

from labelwatch.scoring import fit_thresholds, rules
from labelwatch.scoring.pooling import self_confidence
from labelwatch.scoring.sides import split_sides


@pytest.mark.parametrize("n", [1, 7, 9, 127, 129, 300, 4099, 20000])
def test_thresholds_equal_masked_np_mean(n: int) -> None:
    rng = np.random.default_rng(n)
    probs = rng.random((n, 5)) ** 3
    tags = rng.random((n, 5)) < [0.0, 0.03, 0.5, 0.97, 1.0]
    th = fit_thresholds(probs, tags)
    for k in range(5):
        column, tagged = probs[:, k], tags[:, k]
        want1 = np.mean(column[tagged]) if tagged.any() else 2.0
        want0 = np.mean((1 - column)[~tagged]) if (~tagged).any() else 2.0
        assert th.t1[k] == max(want1, 2e-6)
        assert th.t0[k] == max(want0, 2e-6)


def test_split_sides_keeps_example_order_per_class_and_side() -> None:
    rng = np.random.default_rng(0)
    probs, tags = rng.random((50, 70)), rng.random((50, 70)) < 0.3
    sides = split_sides(probs, tags)
    for k in range(70):
        np.testing.assert_array_equal(sides.segment(k, 1), probs[tags[:, k], k])
        np.testing.assert_array_equal(sides.segment(k, 0), probs[~tags[:, k], k])


@pytest.mark.parametrize("grid", [None, 8, 64])
@pytest.mark.parametrize("key", [rules.noise_rate_key, self_confidence])
def test_rank_cuts_take_what_per_class_argsort_takes(grid: int | None, key: rules.RankKey) -> None:
    rng = np.random.default_rng(grid or 1)
    n, k = 3000, 12
    probs = rng.beta(0.6, 0.6, size=(n, k))
    if grid:
        probs = np.round(probs * grid) / grid  # many ties, also at the cuts
    tags = rng.random((n, k)) < probs * 0.8 + 0.1
    n_take = rng.integers(0, 900, size=(k, 2))
    eligible = rng.random((k, 2)) < 0.9
    cuts = rules.rank_cuts(probs, tags, key, n_take, eligible)
    want = np.zeros((n, k), dtype=np.bool_)
    last = np.full((k, 2), -1)
    keys = key(probs, tags)
    for c in range(k):
        for g in (0, 1):
            idx = np.flatnonzero(tags[:, c] == bool(g))
            taken = idx[np.argsort(keys[idx, c])[: n_take[c, g]]]
            if eligible[c, g] and taken.size:
                want[taken, c] = True
                last[c, g] = taken[-1]
    np.testing.assert_array_equal(cuts.flags(probs, tags), want)
    np.testing.assert_array_equal(cuts.last(probs, tags), last)
