"""Tag-context scoring, the flag budget and the error probability (labelwatch's own rule)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from labelwatch.calibration import (
    ArtifactError,
    CalibrationArtifact,
    calibrate,
    content_sha256,
    load_artifact,
    save_artifact,
)
from labelwatch.scoring import FilterBy, Pooling, decide
from labelwatch.scoring.budget import BudgetCurve, budget_grid, check_budget
from labelwatch.scoring.context import (
    ContextModel,
    context_probabilities,
    cross_fit,
    error_scores,
    select_context,
)
from labelwatch.scoring.errorprob import ErrorCalibrator, SidedCalibrator, isotonic
from labelwatch.scoring.online import decide_cross_fitted, fit_calibration_with_scores

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import synthetic


def implied_tags(n: int, seed: int) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Class 1 comes with class 0 (90 %), never without; the model's p for class 1 is weak."""
    rng = np.random.default_rng(seed)
    tags = np.zeros((n, 4), dtype=np.bool_)
    tags[:, 0] = rng.random(n) < 0.4
    tags[:, 1] = tags[:, 0] & (rng.random(n) < 0.9)
    tags[:, 2:] = rng.random((n, 2)) < 0.3
    z = np.where(tags, 1.5, -1.5) + rng.normal(0, 1.5, size=(n, 4))
    return 1 / (1 + np.exp(-z)), tags


def test_context_model_learns_that_one_tag_implies_another() -> None:
    probs, tags = implied_tags(3000, seed=0)
    fit = cross_fit(probs, tags, m=2)
    assert 0 in fit.final.tags[1]  # class 0 is the most informative tag for class 1
    row_p = np.full((2, 4), 0.5)
    row_tags = np.array([[True, False, False, False], [False, False, False, False]])
    q = context_probabilities(fit.final, row_p, row_tags)
    # same model probability; the annotator's tag 0 makes tag 1 far more likely
    assert q[0, 1] > 0.6 > 0.1 > q[1, 1]


def test_select_context_never_picks_the_class_itself_and_prefers_cooccurring_tags() -> None:
    _, tags = implied_tags(2000, seed=1)
    chosen = select_context(tags, m=3)
    assert chosen.shape == (4, 3)
    assert not (chosen == np.arange(4)[:, None]).any()
    assert chosen[0, 0] == 1 and chosen[1, 0] == 0


def test_fold_models_never_see_their_own_fold() -> None:
    probs, tags = implied_tags(500, seed=2)
    first = cross_fit(probs, tags, m=2)
    altered = tags.copy()
    in_fold0 = first.fold == 0
    altered[in_fold0] = ~altered[in_fold0]  # rewrite every tag of fold 0
    second = cross_fit(probs, altered, m=2)
    np.testing.assert_array_equal(first.fold, second.fold)
    np.testing.assert_array_equal(first.models[0].weights, second.models[0].weights)
    assert not np.array_equal(first.models[1].weights, second.models[1].weights)
    # and fold 0's out-of-fold q comes from that untouched model
    np.testing.assert_array_equal(
        first.q[in_fold0], context_probabilities(first.models[0], probs[in_fold0], tags[in_fold0])
    )


def test_budget_cut_off_makes_the_calibration_set_flag_the_budget() -> None:
    probs, tags = implied_tags(2000, seed=3)
    fit, errors = fit_calibration_with_scores(probs, tags, context_tags=2, flag_budget=0.2)
    assert errors is not None and fit.budget is not None
    n = tags.shape[0]
    for budget in fit.budget.budgets[::7]:
        flagged = int((errors >= fit.budget.cutoff(float(budget))).sum())
        assert flagged >= round(budget * n) - 1e-9
        assert flagged <= np.ceil(budget * n) + np.sum(errors == fit.budget.cutoff(float(budget)))
    flagged = (errors >= fit.budget.cutoff()).sum() / n
    assert flagged == pytest.approx(0.2, abs=1 / n)
    np.testing.assert_allclose(fit.flag_rates["budget"].sum(), flagged)


def test_budget_grid_spans_one_pair_to_every_pair() -> None:
    grid = budget_grid(1000, 50)
    assert grid[0] == pytest.approx(1e-3) and grid[-1] == pytest.approx(50.0)
    assert np.all(np.diff(grid) > 0)


@pytest.mark.parametrize("bad", [0.0, -1.0, 5.0001, float("nan"), float("inf")])
def test_a_budget_outside_zero_to_k_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match=r"flag budget must be in \(0, 5\]"):
        check_budget(bad, 5)


def test_isotonic_pools_adjacent_violators() -> None:
    got = isotonic(np.array([0.5, 0.1, 0.2, 0.9, 0.7]), np.array([1.0, 1.0, 2.0, 1.0, 1.0]))
    assert np.all(np.diff(got) >= 0)
    np.testing.assert_allclose(got, [0.25, 0.25, 0.25, 0.8, 0.8])


def test_error_probability_is_calibrated_on_the_synthetic_track() -> None:
    """Truth is known there: among flagged tags, the mean error probability matches the
    share that is wrong, and the expected calibration error stays small."""
    cal = synthetic.make(4000, seed=11)
    test = synthetic.make(6000, seed=12)
    fit, _ = fit_calibration_with_scores(cal.probs, cal.given, context_tags=16, flag_budget=0.2)
    d = decide(fit, test.probs, test.given, FilterBy.BUDGET)
    assert d.error_probability is not None
    prob = d.error_probability[d.flags]
    wrong = test.errors[d.flags]
    assert np.isnan(d.error_probability[~d.flags]).all()
    assert abs(prob.mean() - wrong.mean()) < 0.06
    bins = np.minimum((prob * 10).astype(int), 9)
    ece = sum(
        (bins == b).mean() * abs(prob[bins == b].mean() - wrong[bins == b].mean())
        for b in range(10)
        if (bins == b).any()
    )
    assert ece < 0.08
    # flags are ordered by how likely they are wrong: the top half is more often wrong
    order = np.argsort(-prob, kind="stable")
    half = order.shape[0] // 2
    assert wrong[order[:half]].mean() > wrong[order[half:]].mean()


def test_budget_decisions_judge_each_example_on_its_own() -> None:
    probs, tags = implied_tags(800, seed=4)
    fit, _ = fit_calibration_with_scores(probs, tags, context_tags=2, context_quality=True)
    whole = decide(fit, probs[:40], tags[:40], FilterBy.BUDGET)
    for i in range(40):
        one = decide(fit, probs[i : i + 1], tags[i : i + 1], FilterBy.BUDGET)
        np.testing.assert_array_equal(one.flags[0], whole.flags[i])
        assert one.label_quality[0] == whole.label_quality[i]


def test_cross_fitted_decision_uses_the_out_of_fold_scores() -> None:
    probs, tags = implied_tags(600, seed=5)
    fit, errors = fit_calibration_with_scores(probs, tags, context_tags=2, flag_budget=0.3)
    assert errors is not None
    d = decide_cross_fitted(fit, errors, tags)
    assert d.flags.sum() / 600 == pytest.approx(0.3, abs=2 / 600)
    assert d.error_probability is not None
    assert np.isfinite(d.error_probability[d.flags]).all()


def test_without_context_the_budget_rule_is_refused() -> None:
    probs, tags = implied_tags(200, seed=6)
    fit, _ = fit_calibration_with_scores(probs, tags)
    with pytest.raises(ValueError, match="needs a calibration artifact with a tag-context"):
        decide(fit, probs, tags, FilterBy.BUDGET)
    assert decide(fit, probs, tags, FilterBy.CONFIDENT_LEARNING).error_probability is None


NAMES = ("a", "b", "c", "d")


@pytest.fixture(scope="module")
def context_artifact() -> CalibrationArtifact:
    probs, tags = implied_tags(1500, seed=7)
    return calibrate(
        probs,
        tags,
        NAMES,
        filter_by=FilterBy.BUDGET,
        context_tags=2,
        flag_budget=0.15,
        context_quality=True,
        pooling=Pooling.SOFTMIN,
    )


def test_v2_artifact_round_trips_bit_for_bit(
    context_artifact: CalibrationArtifact, tmp_path: Path
) -> None:
    path = tmp_path / "t.json"
    save_artifact(context_artifact, path)
    loaded = load_artifact(path)
    assert loaded.schema_version == 2 and loaded.filter_by is FilterBy.BUDGET
    probs, tags = implied_tags(300, seed=8)
    for rule in FilterBy:
        a = decide(context_artifact.fit, probs, tags, rule)
        b = decide(loaded.fit, probs, tags, rule)
        np.testing.assert_array_equal(a.flags, b.flags)
        np.testing.assert_array_equal(a.label_quality, b.label_quality)
        np.testing.assert_array_equal(a.error_probability, b.error_probability)
    assert loaded.to_json_dict() == context_artifact.to_json_dict()


def _doc(artifact: CalibrationArtifact) -> dict[str, object]:
    return json.loads(json.dumps(artifact.to_json_dict()))  # type: ignore[no-any-return]


def test_an_edited_artifact_is_refused_by_its_hash(context_artifact: CalibrationArtifact) -> None:
    doc = _doc(context_artifact)
    doc["context"]["weights"][1][1] += 0.5  # type: ignore[index]
    with pytest.raises(ArtifactError, match="'sha256' does not match the content"):
        CalibrationArtifact.from_json_dict(doc, source="t.json")
    doc["sha256"] = content_sha256(doc)  # re-hashed: a valid (different) artifact
    assert CalibrationArtifact.from_json_dict(doc).fit.context is not None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["context"]["tags"][0].__setitem__(0, 0), "'context.tags[0][0]' names its own"),
        (lambda d: d["context"]["tags"][0].__setitem__(0, 9), "'context.tags[0][0]' must be in"),
        (lambda d: d["context"]["weights"].pop(), "'context.weights' must have 4 entries"),
        (lambda d: d["flag_budget"].__setitem__("default", 0), "'flag_budget.default[0]' must be"),
        (lambda d: d.pop("error_probability"), "'error_probability' is missing"),
        (
            lambda d: d["error_probability"]["missing"]["probabilities"].reverse(),
            "breaks the non-decreasing order",
        ),
        (lambda d: d.__setitem__("schema_version", 1), "'context' needs schema_version 2"),
    ],
)
def test_a_broken_context_section_is_named(
    context_artifact: CalibrationArtifact, edit: object, message: str
) -> None:
    doc = _doc(context_artifact)
    edit(doc)  # type: ignore[operator]
    doc["sha256"] = content_sha256(doc)
    with pytest.raises(ArtifactError, match=message.replace("[", r"\[").replace("(", r"\(")):
        CalibrationArtifact.from_json_dict(doc, source="t.json")


def test_budget_rule_recorded_without_context_is_refused(
    context_artifact: CalibrationArtifact,
) -> None:
    doc = _doc(context_artifact)
    for key in ("context", "flag_budget", "error_probability"):
        del doc[key]
    doc["pooling"]["probabilities"] = "model"  # type: ignore[index]
    del doc["calibration"]["flag_rates"]["budget"]  # type: ignore[attr-defined]
    doc["sha256"] = content_sha256(doc)
    with pytest.raises(ArtifactError, match="'filter_by' is 'budget', which needs"):
        CalibrationArtifact.from_json_dict(doc)


def test_ten_thousand_classes_load_and_score(tmp_path: Path) -> None:
    k, m = 10_000, 16
    rng = np.random.default_rng(9)
    probs = rng.random((40, k)) * 0.2
    tags = rng.random((40, k)) < 0.01
    base = calibrate(probs, tags, [f"c{i}" for i in range(k)])  # thresholds only: fast
    others = (np.arange(k)[:, None] + rng.integers(1, k, size=(k, m))) % k
    context = ContextModel(tags=others.astype(np.int64), weights=rng.normal(size=(k, m + 2)))
    curve = BudgetCurve(budgets=budget_grid(40, k), cutoffs=np.zeros(budget_grid(40, k).shape[0]),
                        default=0.5)  # fmt: skip
    flat = ErrorCalibrator(scores=np.array([0.0, 1.0]), probabilities=np.array([0.0, 1.0]))
    fit = dataclasses.replace(
        base.fit,
        context=context,
        budget=dataclasses.replace(curve, cutoffs=np.linspace(1.0, 0.0, curve.budgets.shape[0])),
        error_calibrator=SidedCalibrator(missing=flat, spurious=flat),
        flag_rates={**base.fit.flag_rates, "budget": np.zeros((k, 2))},
    )
    big = dataclasses.replace(base, fit=fit, filter_by=FilterBy.BUDGET)
    path = tmp_path / "big.json"
    save_artifact(big, path)
    loaded = load_artifact(path)
    got = decide(loaded.fit, probs[:8], tags[:8], FilterBy.BUDGET)
    want = decide(fit, probs[:8], tags[:8], FilterBy.BUDGET)
    np.testing.assert_array_equal(got.flags, want.flags)
    q = context_probabilities(context, probs[:8], tags[:8])
    np.testing.assert_array_equal(got.flags, error_scores(q, tags[:8]) >= fit.budget.cutoff())


def test_too_few_examples_to_cross_fit_score_with_the_model_alone() -> None:
    probs, tags = implied_tags(6, seed=10)
    fit, errors = fit_calibration_with_scores(probs, tags, context_tags=2, flag_budget=0.5)
    assert errors is not None and fit.context is not None
    np.testing.assert_allclose(errors, error_scores(np.clip(probs, 1e-6, 1 - 1e-6), tags))
    assert decide(fit, probs, tags, FilterBy.BUDGET).flags.shape == (6, 4)
