"""bench/hotpath.py end to end on a tiny run, so the profile does not rot (no speed asserted)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import hotpath  # noqa: E402


def test_the_profile_reports_every_stage_for_both_sides_side_by_side() -> None:
    args = argparse.Namespace(batch=16, batches=2, workloads=["probs-10"])
    # the same code on both sides (the other side runs from a service/ dir via PYTHONPATH)
    this = hotpath._run_side(args, None)
    other = hotpath._run_side(args, hotpath.REPO / "service")
    for side in (this, other):
        (result,) = side
        assert result["workload"] == "probs-10" and result["batch"] == 16
        assert set(result["seconds"]) == set(hotpath.STAGES)
        assert all(v >= 0 for v in result["seconds"].values())
        assert result["flagged_per_batch"] > 0
    table = hotpath.render({"before": other, "this": hotpath._median_rounds([this, this])})
    lines = table.splitlines()
    assert "probs-10, batch 16" in lines[1]
    for stage in (*hotpath.STAGES, "flag_rows /flagged", "write mean /flagged", "total"):
        row = next(line for line in lines if line.startswith(stage))
        assert row.rstrip().endswith("x") or row.rstrip().endswith("-"), row
