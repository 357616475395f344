"""examples/bring-your-own-model/run.py works from start to finish (on a small subset)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from labelwatch.calibration import load_artifact
from support_server import _env

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "bring-your-own-model" / "run.py"


@pytest.mark.slow
def test_byom_trains_exports_calibrates_serves_and_scores(tmp_path: Path) -> None:
    out = tmp_path / "byom"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--train", "800",
         "--calibration", "400", "--test", "150", "--classes", "12", "--dim", "256"],
        capture_output=True, text=True, timeout=300, env=_env(), check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6. scored 150 test packages through the server" in done.stdout
    assert "Traceback" not in done.stderr
    calib = np.load(out / "calib.npz")
    assert calib["pred_probs"].shape == (400, 12) and calib["labels"].shape == (400, 12)
    assert calib["pred_probs"].min() >= 0.0 and calib["pred_probs"].max() <= 1.0
    artifact = load_artifact(out / "thresholds.json")
    assert list(artifact.class_names) == calib["class_names"].tolist()
    assert artifact.model_sha256 is not None  # tied to model.onnx
    log = (out / "serve.log").read_text()
    assert "input=features" in log and "classes=12" in log
    # the files work with the offline commands as the README shows
    audit = subprocess.run(
        [sys.executable, "-m", "labelwatch.cli", "audit", "--data", str(out / "test.npz"),
         "--thresholds", str(out / "thresholds.json"), "--out", str(out / "audit.jsonl")],
        capture_output=True, text=True, timeout=120, env=_env(), check=False,
    )  # fmt: skip
    assert audit.returncode == 0, audit.stderr
    rows = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert len(rows) == 150
