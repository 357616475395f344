"""``labelwatch demo`` end to end on the embedded default model, from any folder."""

from __future__ import annotations

import gzip
import io
import json
import re
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import labelwatch
from labelwatch.cli import main
from labelwatch.commands.demo import (
    DEMO_DATA,
    LiveView,
    NoisyExample,
    Tally,
    inject_noise,
    load_test_split,
    review_key,
    summary,
)
from labelwatch_client import IssueKind, ScoreResult

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "debtags" / "debtags.jsonl.gz"
sys.path.insert(0, str(REPO / "scripts"))

import build_demo_data  # noqa: E402


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


def test_the_installed_package_carries_the_test_split_the_script_makes() -> None:
    assert DEMO_DATA.is_file()
    assert Path(labelwatch.__file__).resolve().parent in DEMO_DATA.resolve().parents
    assert DEMO_DATA.read_bytes() == build_demo_data.test_split_bytes(DATA)
    assert DEMO_DATA.stat().st_size < 1_000_000  # the wheel stays small


def test_demo_streams_the_whole_test_split_unless_limited(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with gzip.open(DATA, "rt", encoding="utf-8") as handle:
        test_ids = [r["id"] for r in map(json.loads, handle) if r["split"] == "test"]
    assert [row[0] for row in load_test_split(DATA)] == test_ids
    assert [row[0] for row in load_test_split(DEMO_DATA)] == test_ids
    assert [row[0] for row in load_test_split(DEMO_DATA, 25)] == test_ids[:25]
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "whole test split" in " ".join(capsys.readouterr().out.split())


def test_demo_refuses_a_limit_below_one_and_an_out_that_is_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--limit", "0"]) == 2
    assert "--limit must be >= 1" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["demo", "--limit", "5", "--out", str(tmp_path / "file")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def _review_order(row: dict[str, Any]) -> tuple[float, float]:
    """Highest error probability of the row's issues first, then lowest label quality."""
    chances = [i["error_probability"] for i in row["issues"] if i.get("error_probability")]
    return (-max(chances) if chances else 0.0, float(row["label_quality"]))


def _recomputed_precision_at(out: Path, k: int) -> float:
    """precision@k of the review queue, recomputed from the files the demo wrote."""
    saved = np.load(out / "demo.npz")
    hit = dict(zip(saved["ids"].tolist(), saved["injected"].any(axis=1).tolist(), strict=True))
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    queue = sorted((r for r in rows if r["is_issue"]), key=_review_order)[:k]
    return sum(hit[r["id"]] for r in queue) / len(queue)


def test_demo_writes_only_under_out_and_explains_its_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a folder with no data/ in it: the packaged split is used
    out = tmp_path / "out"
    assert main(["demo", "--limit", "600", "--out", str(out)]) == 0
    assert list(cwd.iterdir()) == []
    assert {p.name for p in out.iterdir()} == {"results.jsonl", "demo.npz", "server"}
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 600
    assert {"id", "label_quality", "is_issue", "issues"} <= set(json.loads(lines[0]))
    printed = capsys.readouterr().out
    assert f"writing to {out}" in printed
    words = " ".join(printed.split())  # the summary is wrapped at 96 columns
    assert "600 packages" in words and "flags per package" in words
    for phrase in ("Recall", "Precision", "real errors", "docs/detection.md", "review queue"):
        assert phrase in words, phrase
    for k in (100, 500):
        match = re.search(rf"precision@{k} ([0-9.]+): (\d+) of", printed)
        assert match is not None, printed
        assert float(match.group(1)) == pytest.approx(_recomputed_precision_at(out, k), abs=0.005)
    # the printed audit command works on the saved probabilities and noisy tags
    command = re.search(r"cd (\S+) && .*labelwatch(?:\.cli)? audit (--data .*)", printed)
    assert command is not None and Path(command.group(1)) == out
    monkeypatch.chdir(out)
    assert main(["audit", *command.group(2).split()]) == 0
    assert len((out / "audit.jsonl").read_text().splitlines()) == 600
    assert "<svg" in (out / "report.html").read_text()


def test_demo_without_out_writes_to_a_new_temporary_folder_it_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # keep /tmp clean
    (tmp_path / "tmp").mkdir()
    assert main(["demo", "--limit", "40"]) == 0
    printed = capsys.readouterr().out
    match = re.search(r"writing to (\S+)", printed)
    assert match is not None
    folder = Path(match.group(1))
    assert folder.parent == tmp_path / "tmp" and folder.name.startswith("labelwatch-demo-")
    assert len((folder / "results.jsonl").read_text().splitlines()) == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_live_view_redraws_at_most_ten_times_a_second() -> None:
    clock = FakeClock()
    screen = io.StringIO()
    view = LiveView(screen, tty=True, clock=clock)
    tally = Tally(injected=1)
    for _ in range(3000):  # 3 s of updates, one a millisecond
        clock.now += 0.001
        tally.seen += 1
        view.update(tally, ["  pkg: suspects MISSING x (injected: none)"])
    assert 25 <= view.draws <= 31
    view.update(tally, [], final=True)  # the last frame is always drawn
    assert view.draws <= 32 and screen.getvalue().count("\x1b[2J") == view.draws


def test_live_view_without_a_terminal_prints_a_line_every_two_seconds() -> None:
    clock = FakeClock()
    lines = io.StringIO()
    view = LiveView(lines, tty=False, clock=clock)
    for _ in range(1280):  # 10 s in steps of 1/128 s (exact in binary: no drift)
        clock.now += 1 / 128
        view.update(Tally(seen=1), [])
    assert view.draws == 5 and "\x1b" not in lines.getvalue()


def _result(quality: float, *issues: Any) -> ScoreResult:
    return ScoreResult(id="x", label_quality=quality, is_issue=bool(issues), issues=issues)


def test_review_queue_orders_by_error_probability_when_the_server_sends_it() -> None:
    plain = SimpleNamespace(label="a", kind=IssueKind.MISSING)
    assert review_key(_result(0.3, plain)) == (0.0, 0.3)
    likely = SimpleNamespace(label="a", kind=IssueKind.MISSING, error_probability=0.9)
    unlikely = SimpleNamespace(label="b", kind=IssueKind.MISSING, error_probability=0.2)
    assert review_key(_result(0.3, unlikely, likely)) == (-0.9, 0.3)
    # ties at the calibrator's cap are broken by label quality
    capped = SimpleNamespace(label="c", kind=IssueKind.MISSING, error_probability=0.999)
    assert review_key(_result(0.1, capped)) < review_key(_result(0.2, capped))
    tally = Tally(injected=2)
    clean = NoisyExample("c", "", (), frozenset())
    dirty = NoisyExample("d", "", (), frozenset({("a", "MISSING")}))
    tally.add(clean, _result(0.01, unlikely))  # lowest quality, but unlikely wrong
    tally.add(dirty, _result(0.5, likely))
    assert tally.precision_at(1) == (1, 1) and tally.ranked_by_error_probability
    assert tally.precision == 0.5 and tally.recall == 0.5


def test_summary_states_each_number_in_words() -> None:
    tally = Tally(seen=1000, flagged_examples=300, flags=400, true_flags=80, injected=100)
    tally.queue = [((0.0, i / 300), i, i % 3 == 0) for i in range(300)]
    lines = "\n".join(summary(tally, 2.0, 0.1)).splitlines()
    assert max(len(line) for line in lines) <= 96
    text = " ".join(" ".join(lines).split())
    assert "We corrupted 100 of the 1,000 packages on purpose (about 10%)" in text
    assert "400 flags" in text and "0.40 flags per package" in text and "300 packages (30%)" in text
    assert "Recall 0.80: 80 of the 100 injected errors were flagged" in text
    assert "Precision 0.20: 80 of the 400 flags point at an injected error" in text
    assert "precision@100 0.34: 34 of the first 100" in text
    assert "precision@500 0.33: 100 of all 300 flagged packages" in text
    assert "label quality, lowest first" in text and "docs/detection.md" in text
    assert "one in 10, precision 0.10" in text


def test_the_printed_command_runs_this_labelwatch_from_any_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from labelwatch.commands import demo

    script = tmp_path / "venv" / "bin" / "labelwatch"
    script.parent.mkdir(parents=True)
    script.write_text("")
    monkeypatch.setattr(sys, "argv", [str(script), "demo"])
    monkeypatch.setenv("PATH", "/nonexistent")
    assert demo.self_command() == str(script.resolve())  # not on PATH: the absolute path
    monkeypatch.setenv("PATH", str(script.parent))
    script.chmod(0o755)
    assert demo.self_command() == "labelwatch"
    monkeypatch.setattr(sys, "argv", ["/x/labelwatch/cli.py"])
    assert demo.self_command() == f"{sys.executable} -m labelwatch.cli"
