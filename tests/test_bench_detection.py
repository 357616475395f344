"""bench/detectbench, the rule comparison of bench/detection.py, end to end on a tiny synthetic
track, so the benchmark does not rot. Only shapes and invariants are asserted, no quality."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from detectbench import compare, report
from detectbench.metrics import Reliability, precision_at, review_order
from detectbench.tracks import synthetic_calibration, synthetic_track

from labelwatch.scoring import Decision


@pytest.fixture(scope="module")
def rows() -> dict[str, list[compare.Row]]:
    out = {}
    for correlated in (False, True):
        per_trial = []
        for seed in (0, 1):
            cal = synthetic_calibration(400, seed, correlated=correlated)
            artifacts = compare.fit_artifacts(
                cal.probs, cal.given, cal.class_names, context_tags=(0, 4)
            )
            # the bench's default row is m=16; rename so the tiny m=4 model stands in for it
            artifacts[f"budget m={compare.DEFAULT_M}"] = artifacts.pop("budget m=4")
            track = synthetic_track(300, seed, correlated=correlated)
            per_trial.append(
                [compare.evaluate(v, track) for v in compare.variants(artifacts, (0.1, 0.5))]
            )
        out["correlated" if correlated else "independent"] = compare.merge(per_trial)
    return out


def test_every_cleanlab_rule_and_each_budget_gets_a_row_with_every_trial(
    rows: dict[str, list[compare.Row]],
) -> None:
    names = [(r.variant.name, r.variant.budget) for r in rows["independent"]]
    assert ("confident_learning", None) in names and ("low_normalized_margin", None) in names
    assert ("budget m=0", 0.5) in names and (f"budget m={compare.DEFAULT_M}", 0.1) in names
    for row in rows["independent"]:
        assert len(row.trials) == 2
        assert 0.0 <= row.mean("recall") <= 1.0 and 0.0 <= row.mean("auroc") <= 1.0
        # error probabilities (and so ECE) exist exactly for the artifacts with tag context
        assert (row.reliability is not None) == (row.variant.budget is not None)


def test_budget_rows_flag_more_as_the_budget_grows(rows: dict[str, list[compare.Row]]) -> None:
    for name, sweep in report.sweeps(rows["correlated"]).items():
        volumes = [r.volume for r in sorted(sweep, key=lambda r: r.variant.budget or 0.0)]
        assert volumes == sorted(volumes), name


def test_the_report_names_the_default_and_every_target(
    rows: dict[str, list[compare.Row]],
) -> None:
    text = report.comparison_markdown(rows["independent"], rows, None, seeds=2)
    assert "(default)" in text and "ECE of error_probability by budget" in text
    assert text.count("| error_probability ECE <= 0.05") == 2


def test_review_order_puts_the_likeliest_error_first_and_reliability_pools() -> None:
    flags = np.array([[True, False, True], [False, True, False]])
    prob = np.where(flags, [[0.2, 0.0, 0.9], [0.0, 0.9, 0.0]], np.nan)
    decision = Decision(
        flags=flags,
        label_quality=np.array([0.5, 0.1]),
        labels=np.zeros((2, 3), dtype=bool),
        error_probability=prob,
    )
    order = review_order(decision, np.full((2, 3), 0.5))
    assert order.tolist() == [4, 2, 0]  # tie at 0.9 goes to the lower label quality (row 1)
    wrong = np.array([[False, False, True], [False, False, False]])
    assert precision_at(order, wrong, 2) == 0.5
    one = Reliability.of(np.array([0.95, 0.15]), np.array([True, False]))
    both = one + one
    assert both.count.sum() == 4 and both.ece() == pytest.approx(one.ece())
    assert one.ece() == pytest.approx(0.5 * 0.05 + 0.5 * 0.15)


def test_reliability_png_is_written(tmp_path: Path, rows: dict[str, list[compare.Row]]) -> None:
    pytest.importorskip("matplotlib", reason="the bench extra (pip install '.[bench]')")
    from detectbench.plot import reliability_png

    panels = {
        kind: {r.variant.budget: r.reliability for r in sweep if r.reliability is not None}
        for kind, rs in rows.items()
        for sweep in [report.sweeps(rs)[f"budget m={compare.DEFAULT_M}"]]
    }
    path = tmp_path / "reliability.png"
    reliability_png(panels, path, default_budget=0.1)  # type: ignore[arg-type]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
