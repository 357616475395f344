"""The audit reports state, beside every flag, the bound that really decided it.

Rank rules (prune_by_*, both) flag the m most suspicious pairs of each class and side; a
report that printed the confident threshold beside such a flag could read
``p=0.7959 >= 0.8765``, a false inequality. Each rule's JSONL ``threshold`` and HTML
comparison must hold for every flag, in batch mode and with ``--thresholds``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from labelwatch.cli import main
from labelwatch.scoring import FilterBy, fit_calibration
from labelwatch.scoring.cutoffs import batch_cutoffs, online_cutoffs, p_at_margin
from labelwatch.scoring.rules import margins

N, K = 400, 6


def _data(seed: int = 0) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    rng = np.random.default_rng(seed)
    truth = rng.random((N, K)) < np.linspace(0.1, 0.5, K)
    logits = np.where(truth, rng.normal(1.5, 1.3, (N, K)), rng.normal(-1.5, 1.3, (N, K)))
    probs = 1.0 / (1.0 + np.exp(-logits))
    return probs, truth ^ (rng.random((N, K)) < 0.08)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bounds")
    probs, labels = _data()
    np.savez(root / "d.npz", pred_probs=probs, labels=labels.astype(np.int8))
    np.savez(root / "d32.npz", pred_probs=probs.astype(np.float32), labels=labels)
    held_out, held_labels = _data(1)
    np.savez(root / "calib.npz", pred_probs=held_out, labels=held_labels.astype(np.int8))
    assert (
        main(["calibrate", "--data", str(root / "calib.npz"), "--out", str(root / "t.json")]) == 0
    )
    return {"d": root / "d.npz", "d32": root / "d32.npz", "t": root / "t.json", "root": root}


def _audit(files: dict[str, Path], data: str, rule: str, online: bool) -> tuple[list[Any], str]:
    out, html = files["root"] / "r.jsonl", files["root"] / "r.html"
    args = ["audit", "--data", str(files[data]), "--filter-by", rule, "--out", str(out)]
    args += ["--html", str(html)] + (["--thresholds", str(files["t"])] if online else [])
    assert main(args) == 0
    issues = [i for line in out.read_text().splitlines() for i in json.loads(line)["issues"]]
    return issues, html.read_text()


RULES = [rule.value for rule in FilterBy]


@pytest.mark.parametrize("online", [False, True], ids=["batch", "online"])
@pytest.mark.parametrize("data", ["d", "d32"])
@pytest.mark.parametrize("rule", RULES)
def test_every_reported_bound_holds_for_its_flag(
    files: dict[str, Path], rule: str, data: str, online: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    issues, html = _audit(files, data, rule, online)
    capsys.readouterr()
    assert issues, "the data must produce flags for this check to mean anything"
    for issue in issues:
        p, bound = issue["probability"], issue["threshold"]
        if issue["decided_by"] == "example_score":
            assert bound is None
            assert issue["score"] <= issue["score_cutoff"]
            continue
        if issue["decided_by"] == "none":  # the rule claims no bound on p (budget)
            assert bound is None
            continue
        # confident_learning compares within cleanlab's 1e-6; every other bound is exact
        slack = 1e-6 if issue["decided_by"] == "confident_threshold" else 0.0
        if issue["kind"] == "MISSING":
            assert p >= bound - slack, issue
        else:
            assert p <= bound + slack, issue
    shown = re.findall(r"p=([-0-9.e]+) (\u2265|\u2264)(?: rank cut-off)? ([-0-9.e]+)", html)
    if issues[0]["decided_by"] == "example_score":
        assert not shown and "example score" in html
    elif issues[0]["decided_by"] == "none":
        assert not shown
    else:
        assert shown
    for p_text, relation, bound_text in shown:
        p, bound = float(p_text), float(bound_text)
        assert (p >= bound) if relation == "\u2265" else (p <= bound), (p_text, bound_text)


@pytest.mark.parametrize("rule", ["prune_by_noise_rate", "prune_by_class", "both"])
def test_rank_rules_report_their_rank_cut_off_not_the_confident_threshold(
    files: dict[str, Path], rule: str, capsys: pytest.CaptureFixture[str]
) -> None:
    issues, html = _audit(files, "d", rule, online=False)
    capsys.readouterr()
    assert {i["decided_by"] for i in issues} == {"rank_cutoff"}
    assert "rank cut-off" in html and "last pair taken" in html
    probs, labels = _data()
    t1 = probs.mean(axis=0, where=labels)
    # the old report would have claimed p >= t1 for these MISSING flags: false for some
    below_t1 = [
        i for i in issues if i["kind"] == "MISSING" and i["probability"] < t1[i["class_index"]]
    ]
    assert below_t1, "this data has rank-flagged pairs below t1 (the case that was misreported)"
    # one cut-off per class and side, and it is the p of a pair on that side of the data
    for k in range(K):
        for kind, side in (("MISSING", ~labels[:, k]), ("SPURIOUS", labels[:, k])):
            cuts = {i["threshold"] for i in issues if i["class_index"] == k and i["kind"] == kind}
            assert len(cuts) <= 1
            assert all(cut in probs[side, k] for cut in cuts)


def test_online_rank_cut_off_is_exactly_the_calibration_margin_on_the_p_scale() -> None:
    probs, labels = _data(1)
    fit = fit_calibration(probs, labels)
    test_probs, test_labels = _data(2)
    cut = online_cutoffs(fit, test_probs, test_labels, FilterBy.PRUNE_BY_NOISE_RATE)
    margin_cut = fit.margin_cutoffs[FilterBy.PRUNE_BY_NOISE_RATE.value]
    margin = margins(test_probs, test_labels)
    for g in (0, 1):
        side = test_labels if g else ~test_labels
        by_margin = (
            margin >= np.where(np.isnan(margin_cut[:, g]), np.inf, margin_cut[:, g])
        ) & side
        by_p = (test_probs <= cut.p[:, g]) if g else (test_probs >= cut.p[:, g])
        assert np.array_equal(by_margin, by_p & side)


def test_p_at_margin_is_the_exact_edge_of_the_margin_test() -> None:
    rng = np.random.default_rng(5)
    cuts = np.concatenate([rng.uniform(-1, 1, 2000), [0.0, 1.0, -1.0, np.nan, 0.3]])
    for tagged in (False, True):
        p = p_at_margin(cuts, tagged)
        side = np.full(cuts.shape, tagged)
        finite = np.isfinite(p)
        assert (margins(p[finite], side[finite]) >= cuts[finite]).all()
        step = np.nextafter(p[finite], -np.inf if not tagged else np.inf)
        inside = (step >= 0) & (step <= 1)
        assert not (margins(step, side[finite]) >= cuts[finite])[inside].any()
    assert np.isinf(p_at_margin(np.array([np.nan]), False)).all()


def test_batch_cut_offs_of_the_threshold_rules_are_the_thresholds() -> None:
    probs, labels = _data()
    confident = batch_cutoffs(probs, labels, "confident_learning")
    assert np.allclose(confident.p[:, 0], probs.mean(axis=0, where=labels))
    assert np.allclose(confident.p[:, 1], 1 - (1 - probs).mean(axis=0, where=~labels))
    assert (batch_cutoffs(probs, labels, "predicted_neq_given").p == 0.5).all()


def test_a_rule_without_a_bound_on_p_is_shown_with_p_alone() -> None:
    from labelwatch.datasets import LabeledData
    from labelwatch.report_html import worst_table
    from labelwatch.scoring.cutoffs import Basis, Cutoffs

    probs, labels = _data()
    data = LabeledData(probs, labels, tuple(f"c{k}" for k in range(K)), tuple(map(str, range(N))))
    flags = np.zeros((N, K), dtype=bool)
    flags[0, 0] = True
    none = Cutoffs(Basis.NONE, np.full((K, 2), np.nan))
    zeros = np.zeros(K)
    table = worst_table(data, flags, np.linspace(0, 1, N), zeros, zeros, cutoffs=none)
    assert f"(p={probs[0, 0]:.4g})" in table
    assert "\u2265" not in table and "\u2264" not in table
