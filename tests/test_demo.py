"""``labelwatch demo`` end to end on the embedded default model."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from labelwatch.cli import main
from labelwatch.commands.demo import inject_noise, load_test_split

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "debtags" / "debtags.jsonl.gz"


def test_noise_injection_is_seeded_and_flips_one_tag() -> None:
    rows = [("a", "text", ("x", "y")), ("b", "text", ("y",)), ("c", "text", ())] * 20
    one = inject_noise(rows, ["x", "y", "z"], rate=0.5, seed=3)
    two = inject_noise(rows, ["x", "y", "z"], rate=0.5, seed=3)
    assert one == two
    flipped = [e for e in one if e.flipped]
    assert 0 < len(flipped) < len(rows)
    for noisy, (_, _, tags) in zip(one, rows, strict=True):
        assert len(noisy.flipped) <= 1
        for label, kind in noisy.flipped:
            assert (label in tags) == (kind == "MISSING")
            assert (label in noisy.labels) == (kind == "SPURIOUS")


def test_demo_streams_the_whole_test_split_unless_limited(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with gzip.open(DATA, "rt", encoding="utf-8") as handle:
        test_ids = [r["id"] for r in map(json.loads, handle) if r["split"] == "test"]
    assert [row[0] for row in load_test_split(DATA)] == test_ids
    assert [row[0] for row in load_test_split(DATA, 25)] == test_ids[:25]
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "whole test split" in " ".join(capsys.readouterr().out.split())


def test_demo_refuses_a_limit_below_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--data", str(DATA), "--limit", "0"]) == 2
    assert "--limit must be >= 1" in capsys.readouterr().err


def test_demo_streams_the_test_split_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.jsonl"
    code = main(["demo", "--data", str(DATA), "--limit", "150", "--out", str(out)])
    assert code == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 150
    first = json.loads(lines[0])
    assert {"id", "label_quality", "is_issue", "issues"} <= set(first)
    printed = capsys.readouterr().out
    assert "150 packages" in printed and "precision" in printed and "recall" in printed
    # the printed audit command works on the saved probabilities and noisy tags
    npz = out.with_suffix(".npz")
    audit_out = tmp_path / "audit.jsonl"
    html = tmp_path / "report.html"
    assert main(["audit", "--data", str(npz), "--out", str(audit_out), "--html", str(html)]) == 0
    assert len(audit_out.read_text().splitlines()) == 150
    assert "<svg" in html.read_text()
