"""labelwatch.scoring against cleanlab 2.9.0, the reference implementation.

Flags must be identical (per class and as cleanlab's example mask) and scores equal
(bit for bit up to the EMA tail size, else within 1e-15), over many random shapes:
K = 1, classes never tagged, ties (probabilities on a 1/16 grid, duplicated rows),
probabilities exactly 0 and 1, and float32 input, compared with cleanlab's own float32
run (ties that exist only after float32 rounding included). Inputs cleanlab rejects are checked
against the documented extension (see ``labelwatch.scoring.batch``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from cleanlab.count import (
    _get_confident_thresholds_multilabel,
    calibrate_confident_joint,
    compute_confident_joint,
)
from cleanlab.filter import _keep_at_least_n_per_class
from cleanlab.internal.util import round_preserving_row_totals
from cleanlab.multilabel_classification import filter as ml_filter
from cleanlab.multilabel_classification import rank as ml_rank
from numpy.typing import NDArray

from labelwatch.scoring import (
    CLEANLAB_RULES,
    ClassScore,
    FilterBy,
    Pooling,
    find_label_issues,
    fit_thresholds,
    label_quality_scores,
    rules,
)
from labelwatch.scoring.counts import calibrate_joint, round_preserving_rows
from labelwatch.scoring.pooling import ema_tail_size

SCORE_RULES = {FilterBy.LOW_SELF_CONFIDENCE, FilterBy.LOW_NORMALIZED_MARGIN}
RANK_RULES = [FilterBy.PRUNE_BY_NOISE_RATE, FilterBy.PRUNE_BY_CLASS, FilterBy.BOTH]


@dataclass(frozen=True)
class Case:
    name: str
    probs: NDArray[np.float64]
    tags: NDArray[np.bool_]

    @property
    def lists(self) -> list[list[int]]:
        return [[int(k) for k in np.flatnonzero(row)] for row in self.tags]


def make_case(seed: int) -> Case:
    """One random dataset; the seed picks shape and kind (continuous, ties, extremes)."""
    rng = np.random.default_rng(seed)
    kind = ("continuous", "grid16", "extremes", "duplicates", "contrary")[seed % 5]
    n = int(rng.integers(2, 150))
    k = int(
        rng.choice([1, 2, 3, 5, 8, 13, 30, 40], p=[0.12, 0.14, 0.16, 0.16, 0.14, 0.14, 0.09, 0.05])
    )
    probs = rng.beta(0.6, 0.6, size=(n, k))
    tags = rng.random((n, k)) < (probs * 0.8 + 0.1)  # tags mostly follow the model
    if kind == "grid16":
        probs = np.round(probs * 16) / 16
    elif kind == "extremes":
        probs[rng.random((n, k)) < 0.2] = 0.0
        probs[rng.random((n, k)) < 0.2] = 1.0
    elif kind == "contrary":  # a model at odds with the tags: low thresholds, p = 0.5 ties
        probs = np.round(probs * 4) / 4
        tags = rng.random((n, k)) < (1 - probs)
    elif kind == "duplicates":
        rows = rng.integers(0, max(1, n // 3), size=n)
        probs, tags = probs[rows], tags[rows]
    # cleanlab needs both sides of a class to be non-empty except "never tagged".
    tags[0] = False
    if n > 1:
        tags[1] = True
    if k > 2 and seed % 3 == 0:
        tags[:, 2] = False  # a class never tagged
    return Case(f"{kind}-n{n}-k{k}-seed{seed}", probs, tags)


CASES = [make_case(seed) for seed in range(48)]


def cases(*, min_k: int = 1) -> Iterator[Case]:
    return (c for c in CASES if c.probs.shape[1] >= min_k)


def cleanlab_mask(case: Case, rule: FilterBy, **kw: object) -> NDArray[np.bool_]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mask = ml_filter.find_label_issues(
            case.lists, case.probs, filter_by=rule.value, n_jobs=1, **kw
        )
    return np.asarray(mask)


def cleanlab_per_class(case: Case, rule: FilterBy, **kw: object) -> NDArray[np.bool_]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per_class = ml_filter.find_multilabel_issues_per_class(
            case.lists, case.probs, filter_by=rule.value, n_jobs=1, **kw
        )
    assert isinstance(per_class, np.ndarray)
    return per_class


def test_cases_cover_the_hard_inputs() -> None:
    """The corpus holds ties, exact 0/1, K=1, never-tagged classes and K above the EMA tail."""
    assert any(c.probs.shape[1] == 1 for c in CASES)
    assert any(c.probs.shape[1] > (ema_tail_size(0.8) or 0) for c in CASES)
    assert any((~c.tags).all(axis=0).any() for c in CASES)
    assert any(((c.probs == 0) | (c.probs == 1)).any() for c in CASES)
    assert any(np.unique(c.probs, axis=0).shape[0] < c.probs.shape[0] for c in CASES)


def test_thresholds_equal_cleanlab_bit_for_bit() -> None:
    for case in cases():
        ours = fit_thresholds(case.probs, case.tags)
        ref = _get_confident_thresholds_multilabel(case.lists, case.probs)
        np.testing.assert_array_equal(np.stack([ours.t0, ours.t1], axis=1), ref, case.name)
        np.testing.assert_array_equal(ours.n_pos, case.tags.sum(axis=0))


@pytest.mark.parametrize(("frac_noise", "min_examples"), [(1.0, 1), (0.5, 4), (0.37, 1)])
def test_prune_counts_equal_cleanlab(frac_noise: float, min_examples: int) -> None:
    for case in cases():
        th = fit_thresholds(case.probs, case.tags)
        plan = rules.prune_plan(
            case.probs,
            case.tags,
            th,
            frac_noise=frac_noise,
            min_examples_per_class=min_examples,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cj = compute_confident_joint(case.lists, case.probs, multi_label=True)
        for k in range(case.probs.shape[1]):
            pcm = _keep_at_least_n_per_class(cj[k].T, min_examples, frac_noise=frac_noise)
            assert plan.by_noise_rate[k].tolist() == [pcm[1, 0], pcm[0, 1]], case.name
            counts = [th.n_neg[k], th.n_pos[k]]
            assert plan.by_class[k].tolist() == [counts[0] - pcm[0, 0], counts[1] - pcm[1, 1]]


def test_calibrated_joint_equals_cleanlab_to_the_last_bit() -> None:
    """cleanlab's result here depends on the order it sums the 2x2 joint (its memory
    layout); a handful of these 20000 joints round differently in the other order."""
    rng = np.random.default_rng(0)
    cj = rng.integers(0, 30, (20000, 2, 2))
    cj[:, [0, 1], [0, 1]] = np.maximum(cj[:, [0, 1], [0, 1]], 1)
    counts = cj.sum(axis=2) + rng.integers(0, 40, (20000, 2))
    ours = calibrate_joint(cj, counts)
    for i in range(len(cj)):
        labels = np.repeat([0, 1], counts[i])
        # compute_confident_joint hands over a transposed (Fortran-ordered) joint
        ref = calibrate_confident_joint(np.asfortranarray(cj[i]), labels)
        np.testing.assert_array_equal(ours[i], ref)


def test_round_preserving_rows_equals_cleanlab_on_halves() -> None:
    rng = np.random.default_rng(7)
    halves = rng.integers(0, 12, size=(4000, 2)) / 2  # many exact .5s, sums odd and even
    noisy = halves + rng.normal(0, 1e-12, size=halves.shape) * (rng.random(halves.shape) < 0.5)
    for floats in (halves, noisy, rng.random((2000, 2)) * 9):
        np.testing.assert_array_equal(
            round_preserving_rows(floats), round_preserving_row_totals(floats)
        )


@pytest.mark.parametrize("rule", list(CLEANLAB_RULES), ids=lambda r: r.value)
def test_flags_equal_cleanlab(rule: FilterBy) -> None:
    """Row-OR equals cleanlab's mask; per-class equals find_multilabel_issues_per_class."""
    for i, case in enumerate(cases()):
        if rule is FilterBy.PREDICTED_NEQ_GIVEN and (~case.tags).all(axis=0).any():
            continue  # cleanlab raises, see test_predicted_neq_given_with_untagged_class
        if rule in SCORE_RULES and case.probs.shape[1] == 1:
            continue  # cleanlab raises, see test_one_class
        ours = find_label_issues(case.probs, case.tags, filter_by=rule)
        assert ours.shape == case.probs.shape and ours.dtype == np.bool_
        if rule in SCORE_RULES or i % 4 == 0:  # elsewhere the mask is the per-class row-OR
            np.testing.assert_array_equal(ours.any(axis=1), cleanlab_mask(case, rule), case.name)
        if rule not in SCORE_RULES:
            np.testing.assert_array_equal(ours, cleanlab_per_class(case, rule), case.name)


@pytest.mark.parametrize(
    "kw",
    [
        {"frac_noise": 0.5},
        {"min_examples_per_class": 5},
        {"min_examples_per_class": 0},
        {"num_to_remove_per_class": "random"},
    ],
    ids=["frac_noise", "min_examples", "min_examples_0", "num_to_remove"],
)
@pytest.mark.parametrize("rule", RANK_RULES, ids=lambda r: r.value)
def test_rank_rule_knobs_equal_cleanlab(rule: FilterBy, kw: dict[str, object]) -> None:
    for i, case in enumerate(cases()):
        if i % 3:
            continue
        args = dict(kw)
        if args.get("num_to_remove_per_class") == "random":
            rng = np.random.default_rng(i)
            args["num_to_remove_per_class"] = rng.integers(0, 4, case.probs.shape[1]).tolist()
        ours = find_label_issues(case.probs, case.tags, filter_by=rule, **args)  # type: ignore[arg-type]
        np.testing.assert_array_equal(ours, cleanlab_per_class(case, rule, **args), case.name)


def test_num_to_remove_is_refused_for_non_rank_rules_like_cleanlab() -> None:
    case = CASES[1]
    with pytest.raises(ValueError, match="num_to_remove_per_class"):
        cleanlab_mask(case, FilterBy.CONFIDENT_LEARNING, num_to_remove_per_class=[1])
    with pytest.raises(ValueError, match="num_to_remove_per_class"):
        find_label_issues(
            case.probs,
            case.tags,
            filter_by=FilterBy.CONFIDENT_LEARNING,
            num_to_remove_per_class=[1] * case.probs.shape[1],
        )


AGGREGATORS = [
    (Pooling.EMA, 0.8, 0.1),
    (Pooling.EMA, 0.5, 0.1),
    (Pooling.EMA, 1.0, 0.1),
    (Pooling.EMA, 0.05, 0.1),
    (Pooling.SOFTMIN, 0.8, 0.1),
    (Pooling.SOFTMIN, 0.8, 0.02),
    (Pooling.SOFTMIN, 0.8, 1.0),
]


def _assert_scores_match_cleanlab(
    case: Case,
    tags: np.ndarray,
    method: ClassScore,
    adjust: bool,
    agg: tuple[Pooling, float, float],
) -> None:
    """Our scores equal cleanlab's: within 1e-15, and bit for bit for softmin and for the EMA
    up to its tail size."""
    pooling, alpha, temperature = agg
    kwargs: dict[str, object] = {"method": pooling.value}
    kwargs.update({"alpha": alpha} if pooling is Pooling.EMA else {"temperature": temperature})
    tail = ema_tail_size(alpha)
    ours = label_quality_scores(
        case.probs,
        tags,
        method=method,
        adjust_pred_probs=adjust,
        pooling=pooling,
        alpha=alpha,
        temperature=temperature,
    )
    ref = ml_rank.get_label_quality_scores(
        case.lists,
        case.probs,
        method=method.value,
        adjust_pred_probs=adjust,
        aggregator_kwargs=kwargs,
    )
    assert ours.dtype == np.float64 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-15, err_msg=case.name)
    if pooling is Pooling.SOFTMIN or tail is None or case.probs.shape[1] <= tail:
        np.testing.assert_array_equal(ours, ref, case.name)  # bit for bit


@pytest.mark.parametrize("adjust", [False, True], ids=["raw", "adjusted"])
@pytest.mark.parametrize("method", list(ClassScore), ids=lambda m: m.value)
@pytest.mark.parametrize("agg", AGGREGATORS, ids=lambda a: f"{a[0].value}-{a[1]}-{a[2]}")
def test_scores_equal_cleanlab(
    agg: tuple[Pooling, float, float], method: ClassScore, adjust: bool
) -> None:
    for case in cases(min_k=2):
        _assert_scores_match_cleanlab(case, case.tags, method, adjust, agg)


def assert_scores_equal(ours: NDArray[np.float64], ref: NDArray[np.float64], k: int) -> None:
    """Bit for bit up to the EMA tail size (alpha 0.8), within 1e-15 beyond."""
    if k <= (ema_tail_size(0.8) or k):
        np.testing.assert_array_equal(ours, ref)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-15)


def test_default_arguments_match_cleanlab_defaults() -> None:
    for case in cases(min_k=2):
        assert_scores_equal(
            label_quality_scores(case.probs, case.tags),
            ml_rank.get_label_quality_scores(case.lists, case.probs),
            case.probs.shape[1],
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = ml_filter.find_label_issues(case.lists, case.probs, n_jobs=1)
        np.testing.assert_array_equal(find_label_issues(case.probs, case.tags).any(axis=1), ref)


def make_case32(seed: int) -> Case:
    """float32 data where float32 arithmetic decides: ``1 - p`` that rounds (ties only in
    float32), tiny p (thresholds at the floor), p within a few ulps of 0.5 (the 1e-6
    agreement tolerance), p exactly at a class's float32 ``threshold - 1e-6``."""
    base = make_case(seed)
    rng = np.random.default_rng(1000 + seed)
    probs, tags = base.probs.astype(np.float32), base.tags
    n, k = probs.shape
    kind = ("tiny", "ulp-ties", "near-half", "at-threshold")[seed % 4]
    if kind == "tiny":  # 1 - p rounds to 1: untagged ties
        probs = (probs.astype(np.float64) ** 12).astype(np.float32)
    elif kind == "ulp-ties":  # neighbours 1 ulp apart below 0.5, tied after 1 - p
        step = np.float32(2.0**-26)
        probs = (np.float32(0.3) + step * rng.integers(0, 4, size=(n, k))).astype(np.float32)
    elif kind == "near-half":  # p - (1 - p) around 1e-6 (16 ulps of 0.5)
        near = np.float32(0.5) + np.float32(2.0**-25) * rng.integers(-24, 25, size=(n, k))
        probs = np.where(rng.random((n, k)) < 0.6, near, probs).astype(np.float32)
    probs[rng.random((n, k)) < 0.05] = np.float32(0.0)
    probs[rng.random((n, k)) < 0.05] = np.float32(1.0)
    if kind == "at-threshold":  # pairs exactly at cleanlab's float32 cut of the other side
        one, floor, tol = np.float32(1.0), np.float32(2e-6), np.float32(1e-6)
        for c in range(k):
            pos, neg = tags[:, c], ~tags[:, c]
            if pos.sum() < 2 or neg.sum() < 3:
                continue
            if c % 2:  # untagged pairs at t1's cut (t1 only reads tagged pairs)
                probs[np.flatnonzero(neg)[:2], c] = max(np.mean(probs[pos, c]), floor) - tol
            else:  # tagged pairs at t0's cut (t0 only reads untagged pairs)
                t0 = max(np.mean(one - probs[neg, c]), floor)
                probs[np.flatnonzero(pos)[:2], c] = one - (t0 - tol)
    return Case(f"f32-{kind}-{base.name}", probs, tags)  # type: ignore[arg-type]


CASES32 = [
    Case(c.name + "-f32", c.probs.astype(np.float32), c.tags)  # type: ignore[arg-type]
    for c in CASES
] + [make_case32(seed) for seed in range(24)]


def test_float32_cases_hold_float32_only_ties() -> None:
    """Some corpus columns tie under cleanlab's float32 ``1 - p`` but not in float64."""
    tied = 0
    for c in CASES32:
        p = c.probs
        tied += np.unique(p).size > np.unique(np.float32(1) - p).size
    assert tied >= 5


@pytest.mark.parametrize("rule", list(CLEANLAB_RULES), ids=lambda r: r.value)
def test_float32_flags_equal_cleanlab_float32(rule: FilterBy) -> None:
    """float32 input gives exactly cleanlab's flags on the same float32 input."""
    for case in CASES32:
        assert case.probs.dtype == np.float32
        if rule is FilterBy.PREDICTED_NEQ_GIVEN and (~case.tags).all(axis=0).any():
            continue
        if rule in SCORE_RULES and case.probs.shape[1] == 1:
            continue
        ours = find_label_issues(case.probs, case.tags, filter_by=rule)
        np.testing.assert_array_equal(ours.any(axis=1), cleanlab_mask(case, rule), case.name)
        if rule not in SCORE_RULES:
            np.testing.assert_array_equal(ours, cleanlab_per_class(case, rule), case.name)


@pytest.mark.parametrize("rule", RANK_RULES, ids=lambda r: r.value)
def test_float32_rank_rule_knobs_equal_cleanlab_float32(rule: FilterBy) -> None:
    for i, case in enumerate(CASES32):
        rng = np.random.default_rng(i)
        args: dict[str, object] = [
            {"frac_noise": 0.5},
            {"min_examples_per_class": 5},
            {"num_to_remove_per_class": rng.integers(0, 4, case.probs.shape[1]).tolist()},
        ][i % 3]
        ours = find_label_issues(case.probs, case.tags, filter_by=rule, **args)  # type: ignore[arg-type]
        np.testing.assert_array_equal(ours, cleanlab_per_class(case, rule, **args), case.name)


@pytest.mark.parametrize("adjust", [False, True], ids=["raw", "adjusted"])
@pytest.mark.parametrize("method", list(ClassScore), ids=lambda m: m.value)
@pytest.mark.parametrize("agg", AGGREGATORS, ids=lambda a: f"{a[0].value}-{a[1]}-{a[2]}")
def test_float32_scores_equal_cleanlab_float32(
    agg: tuple[Pooling, float, float], method: ClassScore, adjust: bool
) -> None:
    """float32 input scores as cleanlab's own float32 run: bit for bit where the float64
    path is (EMA up to its tail size, softmin), within 1e-15 beyond."""
    for case in CASES32:
        if case.probs.shape[1] >= 2:
            _assert_scores_match_cleanlab(case, case.tags.astype(np.int64), method, adjust, agg)


def test_float32_default_arguments_match_cleanlab_float32() -> None:
    for case in CASES32:
        if case.probs.shape[1] < 2:
            continue
        assert_scores_equal(
            label_quality_scores(case.probs, case.tags),
            ml_rank.get_label_quality_scores(case.lists, case.probs),
            case.probs.shape[1],
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = ml_filter.find_label_issues(case.lists, case.probs, n_jobs=1)
        np.testing.assert_array_equal(find_label_issues(case.probs, case.tags).any(axis=1), ref)


def test_one_class() -> None:
    """K = 1: cleanlab's scorer refuses it; we pool the single per-class score (itself)."""
    case = next(c for c in CASES if c.probs.shape[1] == 1)
    with pytest.raises(ValueError, match="multi-label format"):
        ml_rank.get_label_quality_scores(case.lists, case.probs)
    per_class = ml_rank.get_label_quality_scores_per_class(case.lists, case.probs)
    for pooling in Pooling:
        scores = label_quality_scores(case.probs, case.tags, pooling=pooling)
        np.testing.assert_allclose(scores, per_class[:, 0], rtol=0, atol=1e-15)
    flags = find_label_issues(case.probs, case.tags, filter_by=FilterBy.LOW_SELF_CONFIDENCE)
    n_cl = find_label_issues(case.probs, case.tags, filter_by=FilterBy.CONFIDENT_LEARNING).sum()
    assert flags.sum() == n_cl  # the n lowest scores, n = confident_learning's count


def mirrored(case: Case, k: int) -> Case:
    """Class k tagged everywhere with ``1 - p``: the mirror image of class k never tagged."""
    probs, tags = case.probs.copy(), case.tags.copy()
    probs[:, k], tags[:, k] = 1 - probs[:, k], True
    return Case(case.name + "-mirror", probs, tags)


@pytest.mark.parametrize("seed", range(12))
def test_class_tagged_everywhere_mirrors_class_tagged_nowhere(seed: int) -> None:
    """cleanlab refuses a class tagged on every example; we extend its formulas, which
    for probabilities exact under ``1 - p`` (1/64 grid, no 0.5) is the mirror image of
    a class tagged nowhere, which cleanlab does accept."""
    rng = np.random.default_rng(100 + seed)
    n, k = int(rng.integers(5, 120)), 3
    probs = rng.integers(0, 65, size=(n, k)) / 64
    probs[probs == 0.5] = 33 / 64
    tags = rng.random((n, k)) < probs
    tags[0], tags[1], tags[:, 1] = False, True, False
    nowhere = Case(f"seed{seed}", probs, tags)
    everywhere = mirrored(nowhere, 1)
    with pytest.raises(ValueError, match="at least 2 classes"):
        cleanlab_mask(everywhere, FilterBy.CONFIDENT_LEARNING)
    for rule in CLEANLAB_RULES:
        if rule in SCORE_RULES or rule is FilterBy.PREDICTED_NEQ_GIVEN:
            continue
        ours = find_label_issues(everywhere.probs, everywhere.tags, filter_by=rule)
        np.testing.assert_array_equal(ours, cleanlab_per_class(nowhere, rule), rule.value)
    assert_scores_equal(
        label_quality_scores(everywhere.probs, everywhere.tags),
        ml_rank.get_label_quality_scores(nowhere.lists, nowhere.probs),
        k,
    )


def test_predicted_neq_given_with_untagged_class() -> None:
    """cleanlab refuses predicted_neq_given when a class is never tagged; we flag, as for
    any class, the untagged pairs whose ``p`` beats ``1 - p`` by more than 1e-6."""
    case = next(c for c in CASES if (~c.tags).all(axis=0).any() and c.probs.shape[1] > 2)
    with pytest.raises(ValueError, match="at least 2 classes"):
        cleanlab_mask(case, FilterBy.PREDICTED_NEQ_GIVEN)
    ours = find_label_issues(case.probs, case.tags, filter_by=FilterBy.PREDICTED_NEQ_GIVEN)
    empty = (~case.tags).all(axis=0)
    p = case.probs[:, empty]
    np.testing.assert_array_equal(ours[:, empty], p > (1 - p) + 1e-6)
    full = Case(case.name, case.probs[:, ~empty], case.tags[:, ~empty])
    np.testing.assert_array_equal(
        ours[:, ~empty], cleanlab_per_class(full, FilterBy.PREDICTED_NEQ_GIVEN)
    )


def test_score_rules_flag_cleanlab_rows_with_at_least_one_class() -> None:
    """The per-class split of the score rules: every flagged row has a flag, and only
    classes the model disagrees with or the row's least self-confident class."""
    for case in cases(min_k=2):
        flags = find_label_issues(case.probs, case.tags, filter_by=FilterBy.LOW_SELF_CONFIDENCE)
        lowest = np.argmin(np.where(case.tags, case.probs, 1 - case.probs), axis=1)
        allowed = rules.model_disagrees(case.probs, case.tags)
        allowed[np.arange(len(lowest)), lowest] = True
        assert not (flags & ~allowed).any()
        np.testing.assert_array_equal(
            flags,
            find_label_issues(case.probs, case.tags, filter_by=FilterBy.LOW_NORMALIZED_MARGIN),
        )
