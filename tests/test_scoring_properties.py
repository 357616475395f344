"""Properties of labelwatch.scoring that hold for any input (hypothesis)."""

from __future__ import annotations

import doctest
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
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
from labelwatch.scoring import batch as batch_module
from labelwatch.scoring import pooling as pooling_module
from labelwatch.scoring.pooling import ema_tail_size, exponential_moving_average, softmin

PROPS = settings(max_examples=40, deadline=None)

# Probabilities on a mix of a coarse grid (ties, exact 0 and 1) and arbitrary floats.
prob = st.one_of(
    st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),
    st.floats(0.0, 1.0, allow_nan=False, allow_subnormal=False),
)


@st.composite
def datasets(
    draw: st.DrawFn, max_n: int = 30, max_k: int = 6
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    n = draw(st.integers(1, max_n))
    k = draw(st.integers(1, max_k))
    probs = draw(arrays(np.float64, (n, k), elements=prob))
    tags = draw(arrays(np.bool_, (n, k)))
    return probs, tags


@PROPS
@given(
    datasets(),
    st.sampled_from(list(ClassScore)),
    st.sampled_from(list(Pooling)),
    st.booleans(),
)
def test_scores_lie_in_unit_interval(
    data: tuple[NDArray[np.float64], NDArray[np.bool_]],
    method: ClassScore,
    pooling: Pooling,
    adjust: bool,
) -> None:
    probs, tags = data
    scores = label_quality_scores(
        probs, tags, method=method, pooling=pooling, adjust_pred_probs=adjust
    )
    assert scores.shape == (probs.shape[0],)
    assert np.all((scores >= 0) & (scores <= 1 + 1e-12))


@PROPS
@given(datasets(), st.sampled_from(list(ClassScore)), st.data())
def test_ema_score_rises_with_the_probability_of_a_given_tag(
    data: tuple[NDArray[np.float64], NDArray[np.bool_]], method: ClassScore, draw: st.DataObject
) -> None:
    """Raising p of a tagged class (or lowering it for an untagged one) never lowers the score."""
    probs, tags = data
    i = draw.draw(st.integers(0, probs.shape[0] - 1))
    k = draw.draw(st.integers(0, probs.shape[1] - 1))
    moved = probs.copy()
    target = draw.draw(prob)
    moved[i, k] = max(target, probs[i, k]) if tags[i, k] else min(target, probs[i, k])
    before = label_quality_scores(probs, tags, method=method)
    after = label_quality_scores(moved, tags, method=method)
    assert after[i] >= before[i] - 1e-15


def test_softmin_is_not_monotone() -> None:
    """Why monotonicity is only claimed for the EMA: softmin weighs a class by
    ``exp(-s / T)``, so raising an already high score can lower the pooled score."""
    low = softmin(np.array([[0.0, 0.5]]), 0.1)
    high = softmin(np.array([[0.0, 0.6]]), 0.1)
    assert high[0] < low[0]


@PROPS
@given(datasets(), st.sampled_from(list(ClassScore)), st.sampled_from(list(Pooling)), st.data())
def test_permuting_classes_leaves_scores_unchanged(
    data: tuple[NDArray[np.float64], NDArray[np.bool_]],
    method: ClassScore,
    pooling: Pooling,
    draw: st.DataObject,
) -> None:
    probs, tags = data
    perm = np.array(draw.draw(st.permutations(range(probs.shape[1]))))
    before = label_quality_scores(probs, tags, method=method, pooling=pooling)
    after = label_quality_scores(probs[:, perm], tags[:, perm], method=method, pooling=pooling)
    if pooling is Pooling.EMA:
        np.testing.assert_array_equal(after, before)  # sorts first: exactly invariant
    else:
        np.testing.assert_allclose(after, before, rtol=0, atol=1e-12)


@PROPS
@given(datasets(), st.sampled_from([r for r in CLEANLAB_RULES if not r.value.startswith("low_")]))
def test_flags_only_where_the_model_disagrees(
    data: tuple[NDArray[np.float64], NDArray[np.bool_]], rule: FilterBy
) -> None:
    """Every non-score rule keeps only pairs whose binary argmax (1e-6 edge) is the other side."""
    probs, tags = data
    flags = find_label_issues(probs, tags, filter_by=rule)
    p_other = np.where(tags, 1 - probs, probs)
    p_given = np.where(tags, probs, 1 - probs)
    assert not (flags & (p_other < p_given)).any()
    assert not (flags & ~rules.model_disagrees(probs, tags)).any()


@PROPS
@given(datasets())
def test_confident_learning_flags_are_confidently_the_other_side(
    data: tuple[NDArray[np.float64], NDArray[np.bool_]],
) -> None:
    probs, tags = data
    th = fit_thresholds(probs, tags)
    flags = find_label_issues(probs, tags, filter_by=FilterBy.CONFIDENT_LEARNING)
    missing_ok = probs >= th.t1 - 1e-6  # a MISSING flag needs p above the tagged threshold
    spurious_ok = 1 - probs >= th.t0 - 1e-6
    assert not (flags & ~tags & ~missing_ok).any()
    assert not (flags & tags & ~spurious_ok).any()


@PROPS
@given(datasets())
def test_thresholds_stay_in_range(data: tuple[NDArray[np.float64], NDArray[np.bool_]]) -> None:
    probs, tags = data
    th = fit_thresholds(probs, tags)
    for t, empty in ((th.t0, th.n_neg == 0), (th.t1, th.n_pos == 0)):
        assert np.all((t >= 2e-6) & (t <= 2.0))
        assert np.all(t[empty] == 2.0)
    assert np.all(th.n_pos + th.n_neg == probs.shape[0])


@PROPS
@given(datasets(), datasets(max_n=8), st.sampled_from(list(CLEANLAB_RULES)))
def test_decide_judges_each_example_on_its_own(
    cal: tuple[NDArray[np.float64], NDArray[np.bool_]],
    new: tuple[NDArray[np.float64], NDArray[np.bool_]],
    rule: FilterBy,
) -> None:
    k = min(cal[0].shape[1], new[0].shape[1])
    fit = fit_calibration(cal[0][:, :k], cal[1][:, :k])
    probs, tags = new[0][:, :k], new[1][:, :k]
    whole = decide(fit, probs, tags, rule)
    for i in range(probs.shape[0]):
        one = decide(fit, probs[i : i + 1], tags[i : i + 1], rule)
        np.testing.assert_array_equal(one.flags[0], whole.flags[i])
        assert one.label_quality[0] == whole.label_quality[i]


# --- EMA over a partial selection -------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.05, 0.3, 0.5, 0.8, 0.95, 1.0])
def test_ema_tail_size_is_the_smallest_sufficient(alpha: float) -> None:
    m = ema_tail_size(alpha)
    assert m is not None
    assert (1 - alpha) ** m <= 1e-17
    assert m == 1 or (1 - alpha) ** (m - 1) > 1e-17
    assert ema_tail_size(0.8) == 25
    assert ema_tail_size(0.0) is None


@pytest.mark.parametrize("precision", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("alpha", [0.8, 0.5, 0.2, 0.95])
@pytest.mark.parametrize("k", [1, 24, 25, 26, 100, 1000, 10000])
def test_ema_on_partial_selection_equals_full_sort(
    alpha: float, k: int, precision: type[np.floating[Any]]
) -> None:
    """``f32``: float32 per-class scores widened, what the float32 batch path pools."""
    rng = np.random.default_rng(k)
    n = max(2, 20000 // k)
    scores = rng.random((n, k))
    scores[: n // 2] **= 8  # many near-zero scores, the ones that matter
    scores[0] = 0.5  # a row of ties
    scores = scores.astype(precision).astype(np.float64)
    scores[1, : k // 2] = scores[1, k // 2 :][: k // 2]  # float32-like duplicates in a row
    full = exponential_moving_average(scores, alpha, tail=None)
    partial = exponential_moving_average(scores, alpha)
    np.testing.assert_allclose(partial, full, rtol=0, atol=1e-15)
    tail = ema_tail_size(alpha)
    if tail is not None and k <= tail:
        np.testing.assert_array_equal(partial, full)


@settings(max_examples=25, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 300)), elements=prob),
    st.floats(0.05, 1.0),
)
def test_ema_partial_selection_any_scores(scores: NDArray[np.float64], alpha: float) -> None:
    full = exponential_moving_average(scores, alpha, tail=None)
    np.testing.assert_allclose(exponential_moving_average(scores, alpha), full, rtol=0, atol=1e-15)


@pytest.mark.parametrize("module", [batch_module, pooling_module], ids=lambda m: m.__name__)
def test_docstring_examples_run(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0
