"""Metrics updated once per batch hold the values one update per example gives."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram

from labelwatch.metrics.scoring import observe_many

BOUNDS = tuple(round(0.05 * i, 2) for i in range(1, 21))


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


@pytest.mark.parametrize("seed", range(4))
def test_observe_many_gives_the_buckets_and_sum_of_one_observe_per_value(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = np.concatenate(
        [rng.random(200), np.asarray(BOUNDS), [0.0, -0.5, 1.5, math.inf, 0.05 + 1e-12]]
    )
    rng.shuffle(values)
    one, bulk = CollectorRegistry(), CollectorRegistry()
    h_one = Histogram("q", "q", buckets=BOUNDS, registry=one)
    h_bulk = Histogram("q", "q", buckets=BOUNDS, registry=bulk)
    for half in np.array_split(values, 3):
        for v in half:
            h_one.observe(float(v))
        observe_many(h_bulk, half)
    observe_many(h_bulk, np.zeros(0))
    got, want = _samples(bulk), _samples(one)
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key.startswith("q_sum"):
            assert got[key] == pytest.approx(value, rel=1e-12)
        else:
            assert got[key] == value, key


def test_a_nan_lands_in_no_bucket_and_makes_the_sum_nan_as_observe_does() -> None:
    one, bulk = CollectorRegistry(), CollectorRegistry()
    h_one = Histogram("q", "q", buckets=BOUNDS, registry=one)
    h_bulk = Histogram("q", "q", buckets=BOUNDS, registry=bulk)
    for v in (0.3, math.nan):
        h_one.observe(v)
    observe_many(h_bulk, np.array([0.3, math.nan]))
    got, want = _samples(bulk), _samples(one)
    assert math.isnan(got["q_sum[]"]) and math.isnan(want["q_sum[]"])
    del got["q_sum[]"], want["q_sum[]"]
    assert got == want
