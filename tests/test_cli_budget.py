"""`labelwatch calibrate` and `audit` with the budget rule, tag context and error probabilities."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from labelwatch.calibration import load_artifact
from labelwatch.cli import main
from labelwatch.scoring import FilterBy, decide

K = 6
NAMES = tuple(f"c{k}" for k in range(K))


def _write(path: Path, seed: int, n: int = 400) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    rng = np.random.default_rng(seed)
    truth = rng.random((n, K)) < np.linspace(0.15, 0.5, K)
    truth[:, 1] |= truth[:, 0] & (rng.random(n) < 0.8)  # tag 0 brings tag 1
    logits = np.where(truth, rng.normal(1.5, 1.3, (n, K)), rng.normal(-1.5, 1.3, (n, K)))
    probs = 1.0 / (1.0 + np.exp(-logits))
    labels = truth ^ (rng.random((n, K)) < 0.05)
    np.savez(path, pred_probs=probs, labels=labels.astype(np.int8), class_names=np.array(NAMES))
    return probs, labels


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_calibrate_defaults_to_the_budget_rule_with_tag_context(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "cal.npz", seed=1)
    out = tmp_path / "t.json"
    assert main(["calibrate", "--data", str(tmp_path / "cal.npz"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "flag rule budget" in printed and "tag context: 5 tags per class" in printed
    artifact = load_artifact(out)
    assert artifact.filter_by is FilterBy.BUDGET
    assert artifact.fit.context is not None and artifact.fit.budget is not None
    assert artifact.fit.budget.default == 0.1 and artifact.fit.context_quality


def test_calibrate_no_context_writes_a_cleanlab_only_artifact(tmp_path: Path) -> None:
    _write(tmp_path / "cal.npz", seed=1)
    out = tmp_path / "t.json"
    args = ["calibrate", "--data", str(tmp_path / "cal.npz"), "--out", str(out), "--no-context"]
    assert main(args) == 0
    artifact = load_artifact(out)
    assert artifact.filter_by is FilterBy.CONFIDENT_LEARNING
    assert artifact.fit.context is None and not artifact.fit.context_quality


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--flag-budget", "0"], r"--flag-budget: flag budget must be in (0, 6]"),
        (["--flag-budget", "7"], r"--flag-budget: flag budget must be in (0, 6]"),
        (["--context-tags", "-1"], "--context-tags must be >= 0"),
        (["--no-context", "--filter-by", "budget"], "--no-context leaves out"),
    ],
)
def test_calibrate_refuses_bad_budget_options_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    _write(tmp_path / "cal.npz", seed=1)
    out = tmp_path / "t.json"
    args = ["calibrate", "--data", str(tmp_path / "cal.npz"), "--out", str(out), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_audit_with_thresholds_reports_error_probabilities_and_the_review_queue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "cal.npz", seed=1)
    probs, labels = _write(tmp_path / "d.npz", seed=2, n=300)
    t = tmp_path / "t.json"
    assert main(["calibrate", "--data", str(tmp_path / "cal.npz"), "--out", str(t)]) == 0
    report = tmp_path / "r.jsonl"
    base = ["audit", "--data", str(tmp_path / "d.npz"), "--thresholds", str(t), "--out"]
    assert (
        main([*base, str(report), "--flag-budget", "0.5", "--html", str(tmp_path / "r.html")]) == 0
    )
    printed = capsys.readouterr().out
    want = decide(load_artifact(t).fit, probs, labels, FilterBy.BUDGET, flag_budget=0.5)
    assert want.error_probability is not None
    rows = _read(report)
    for row in rows:
        for issue in row["issues"]:
            assert (
                issue["error_probability"]
                == want.error_probability[row["index"], issue["class_index"]]
            )
    assert sum(len(r["issues"]) for r in rows) == int(want.flags.sum())
    assert "expected precision of the review queue" in printed
    assert "review queue" in (tmp_path / "r.html").read_text(encoding="utf-8")
    # --flag-budget belongs to the budget rule
    assert (
        main([*base, str(report), "--flag-budget", "0.5", "--filter-by", "confident_learning"]) == 2
    )
    assert "--flag-budget applies to the budget rule only" in capsys.readouterr().err


def test_audit_without_thresholds_cross_fits_the_budget_rule_on_the_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, labels = _write(tmp_path / "d.npz", seed=3, n=600)
    report = tmp_path / "r.jsonl"
    args = ["audit", "--data", str(tmp_path / "d.npz"), "--out", str(report)]
    assert main([*args, "--filter-by", "budget", "--flag-budget", "0.25"]) == 0
    assert "tag context cross-fitted on DATA, budget 0.25" in capsys.readouterr().out
    rows = _read(report)
    flagged = sum(len(r["issues"]) for r in rows)
    assert flagged == pytest.approx(0.25 * labels.shape[0], abs=2)
    assert all(0 <= i["error_probability"] <= 1 for r in rows for i in r["issues"])
