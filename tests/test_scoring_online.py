"""Online decisions (fit_calibration + decide) against the batch (cleanlab) result."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from numpy.typing import NDArray

from labelwatch.scoring import (
    CLEANLAB_RULES,
    ClassScore,
    FilterBy,
    Pooling,
    decide,
    find_label_issues,
    fit_calibration,
    fit_thresholds,
    label_quality_scores,
    rules,
)
from labelwatch.scoring.online import MARGIN_RULES

EXACT_RULES = (FilterBy.CONFIDENT_LEARNING, FilterBy.PREDICTED_NEQ_GIVEN)
SCORE_RULES = (FilterBy.LOW_SELF_CONFIDENCE, FilterBy.LOW_NORMALIZED_MARGIN)


def dataset(
    seed: int, *, grid: int | None = None, n: int = 150, k: int = 6
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Random data; ``grid`` rounds probabilities to multiples of 1/grid (many ties)."""
    rng = np.random.default_rng(seed)
    probs = rng.beta(0.6, 0.6, size=(n, k))
    tags = rng.random((n, k)) < (probs * 0.8 + 0.1)
    if grid:
        probs = np.round(probs * grid) / grid
    return probs, tags


def tied_at_cut(
    probs: NDArray[np.float64], tags: NDArray[np.bool_], rule: FilterBy
) -> NDArray[np.bool_]:
    """``(N, K)`` pairs whose ranking key equals the key at the batch cut (the tie case)."""
    th = fit_thresholds(probs, tags)
    plan = rules.prune_plan(probs, tags, th)
    margin = rules.margins(probs, tags)
    given = np.where(tags, probs, 1 - probs)
    tied = np.zeros(probs.shape, dtype=np.bool_)
    if rule in SCORE_RULES:
        _, rows, scores = rules.low_score(probs, tags, th)
        if rows.any():
            tied |= (scores == scores[rows].max())[:, None]
        return tied
    ranked = []
    if rule in (FilterBy.PRUNE_BY_NOISE_RATE, FilterBy.BOTH):
        ranked.append(rules.prune_by_noise_rate_ranked(probs, tags, plan))
    if rule in (FilterBy.PRUNE_BY_CLASS, FilterBy.BOTH):
        ranked.append(rules.prune_by_class_ranked(probs, tags, plan))
    side = tags.astype(np.int64)
    cols = np.arange(probs.shape[1])
    for r in ranked:
        last = r.last[cols, side]  # (N, K) example index of the cut on each pair's side
        ok = last >= 0
        at = np.where(ok, last, 0)
        tied |= ok & (margin == margin[at, cols])
        tied |= ok & (given == given[at, cols])
    return tied


@pytest.mark.parametrize("rule", list(CLEANLAB_RULES), ids=lambda r: r.value)
def test_decide_on_tie_free_calibration_data_equals_batch(rule: FilterBy) -> None:
    for seed in range(12):
        probs, tags = dataset(seed, n=40 + 20 * seed, k=1 + seed % 7)
        fit = fit_calibration(probs, tags)
        online = decide(fit, probs, tags, rule).flags
        np.testing.assert_array_equal(online, find_label_issues(probs, tags, filter_by=rule))


@pytest.mark.parametrize("rule", list(CLEANLAB_RULES), ids=lambda r: r.value)
def test_decide_differs_from_batch_only_on_ties_at_the_cut(rule: FilterBy) -> None:
    """Probabilities on a 1/16 grid and duplicated rows: many ties. Online and batch
    may then differ, but only on pairs tied with the cut (and never for the per-pair rules)."""
    differing = 0
    for seed in range(16):
        probs, tags = dataset(seed, grid=16, n=30 + 15 * seed, k=1 + seed % 6)
        if seed % 2:
            probs, tags = np.concatenate([probs, probs]), np.concatenate([tags, tags])
        online = decide(fit_calibration(probs, tags), probs, tags, rule).flags
        batch = find_label_issues(probs, tags, filter_by=rule)
        diff = online != batch
        differing += int(diff.sum())
        if rule in EXACT_RULES:
            assert not diff.any()
        else:
            assert not (diff & ~tied_at_cut(probs, tags, rule)).any(), seed
    if rule not in EXACT_RULES:
        assert differing > 0  # the corpus does exercise the tie case


def test_ties_at_the_cut_are_all_flagged_online() -> None:
    """Tagged p = 0.05, then three tagged examples tied at p = 0.45; cleanlab's prune
    count for the tagged side is 2, so the cut falls inside the tie: batch flags 0.05
    and one of the three (argsort's pick), online all four."""
    probs = np.array([0.05, 0.45, 0.45, 0.45, 0.9, 0.9, 0.1, 0.2, 0.15, 0.1])[:, None]
    tags = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)[:, None]
    rule = FilterBy.PRUNE_BY_NOISE_RATE
    plan = rules.prune_plan(probs, tags, fit_thresholds(probs, tags))
    assert plan.by_noise_rate[0, 1] == 2
    batch = find_label_issues(probs, tags, filter_by=rule)
    online = decide(fit_calibration(probs, tags), probs, tags, rule).flags
    assert batch[0, 0] and batch[1:4, 0].sum() == 1
    assert online[:4, 0].all()
    np.testing.assert_array_equal(online[4:], batch[4:])


def test_margin_cutoffs_are_the_margin_of_the_last_batch_flag() -> None:
    probs, tags = dataset(3, n=300, k=5)
    fit = fit_calibration(probs, tags)
    margin = rules.margins(probs, tags)
    plan = rules.prune_plan(probs, tags, fit.thresholds)
    for rule in MARGIN_RULES:
        cut = fit.margin_cutoffs[rule.value]
        assert cut.shape == (5, 2) and cut.dtype == np.float64
    by_rate = fit.margin_cutoffs[FilterBy.PRUNE_BY_NOISE_RATE.value]
    for k in range(5):
        for g in (0, 1):
            on_side = tags[:, k] == bool(g)
            m = plan.by_noise_rate[k, g]
            if m == 0 or not plan.eligible[k, g]:
                assert math.isnan(by_rate[k, g])
            else:
                ranked = np.sort(margin[on_side, k])[::-1]
                assert by_rate[k, g] == ranked[min(m, on_side.sum()) - 1]
    both = fit.margin_cutoffs[FilterBy.BOTH.value]
    np.testing.assert_array_equal(
        both,
        np.maximum(by_rate, fit.margin_cutoffs[FilterBy.PRUNE_BY_CLASS.value]),
    )


def test_nan_cutoffs_flag_nothing() -> None:
    probs, tags = dataset(5, n=100, k=3)
    fit = fit_calibration(probs, tags)
    nothing = dataclasses.replace(
        fit,
        margin_cutoffs={r: np.full((3, 2), np.nan) for r in fit.margin_cutoffs},
        score_cutoff=float("nan"),
    )
    for rule in (*MARGIN_RULES, *SCORE_RULES):
        assert not decide(nothing, probs, tags, rule).flags.any()
        assert decide(fit, probs, tags, rule).flags.any()


def test_flag_rates_are_the_online_rates_on_the_calibration_set() -> None:
    probs, tags = dataset(8, n=250, k=4)
    fit = fit_calibration(probs, tags)
    assert set(fit.flag_rates) == {r.value for r in CLEANLAB_RULES}
    for rule in CLEANLAB_RULES:
        flags = decide(fit, probs, tags, rule).flags
        expected = np.stack([(flags & ~tags).mean(axis=0), (flags & tags).mean(axis=0)], axis=1)
        np.testing.assert_array_equal(fit.flag_rates[rule.value], expected)
        assert np.all((fit.flag_rates[rule.value] >= 0) & (fit.flag_rates[rule.value] <= 1))


@pytest.mark.parametrize("pooling", list(Pooling))
@pytest.mark.parametrize("method", list(ClassScore))
def test_label_quality_follows_the_fit_pooling(pooling: Pooling, method: ClassScore) -> None:
    probs, tags = dataset(11, n=120, k=7)
    fit = fit_calibration(probs, tags, pooling=pooling, alpha=0.6, temperature=0.2, method=method)
    new_probs, new_tags = dataset(12, n=20, k=7)
    got = decide(fit, new_probs, new_tags).label_quality
    want = label_quality_scores(
        new_probs, new_tags, method=method, pooling=pooling, alpha=0.6, temperature=0.2
    )
    np.testing.assert_array_equal(got, want)


def test_score_rules_use_cleanlabs_default_score_whatever_the_pooling() -> None:
    probs, tags = dataset(13, n=200, k=5)
    batch = find_label_issues(probs, tags, filter_by=FilterBy.LOW_SELF_CONFIDENCE)
    fit = fit_calibration(probs, tags, pooling=Pooling.SOFTMIN, temperature=0.5)
    np.testing.assert_array_equal(
        decide(fit, probs, tags, FilterBy.LOW_SELF_CONFIDENCE).flags, batch
    )
    default = label_quality_scores(probs, tags)
    assert fit.score_cutoff == default[batch.any(axis=1)].max()


def test_decision_views() -> None:
    probs, tags = dataset(21, n=200, k=4)
    fit = fit_calibration(probs, tags)
    d = decide(fit, probs[:50], tags[:50], "prune_by_noise_rate")
    np.testing.assert_array_equal(d.missing | d.spurious, d.flags)
    assert not (d.missing & d.spurious).any()
    np.testing.assert_array_equal(d.is_issue, d.flags.any(axis=1))
    np.testing.assert_array_equal(d.suggested ^ d.labels, d.flags)


def test_decide_accepts_empty_and_single_example_batches() -> None:
    probs, tags = dataset(2, n=80, k=30)  # K above the EMA tail size
    fit = fit_calibration(probs, tags)
    for rule in CLEANLAB_RULES:
        empty = decide(fit, np.zeros((0, 30)), np.zeros((0, 30), dtype=bool), rule)
        assert empty.flags.shape == (0, 30) and empty.label_quality.shape == (0,)
        one = decide(fit, probs[:1].astype(np.float32), tags[:1].astype(np.int8), rule)
        assert one.flags.shape == (1, 30) and one.flags.dtype == np.bool_
        assert one.label_quality.dtype == np.float64


def test_fit_calibration_needs_examples() -> None:
    with pytest.raises(ValueError, match="at least one example"):
        fit_calibration(np.zeros((0, 3)), np.zeros((0, 3), dtype=bool))
