"""The shipped default model, its thresholds artifact and the debtags dataset it came from."""

from __future__ import annotations

import collections
import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from labelwatch import default_model
from labelwatch.calibration import CalibrationArtifact, load_artifact
from labelwatch.model import OnnxModel, file_sha256

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "data" / "debtags" / "debtags.jsonl.gz"
DATASET_META = REPO / "data" / "debtags" / "debtags.meta.json"
# scikit-learn's predict_proba on a test-split sample, written by scripts/train_default_model.py
SKLEARN_REFERENCE = REPO / "data" / "debtags" / "default_model_reference.json.gz"
SPLITS = {"train", "calibration", "test"}


@pytest.fixture(scope="module")
def model() -> OnnxModel:
    return OnnxModel(default_model.DEFAULT_MODEL)


@pytest.fixture(scope="module")
def artifact() -> CalibrationArtifact:
    return load_artifact(default_model.DEFAULT_THRESHOLDS)


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    with gzip.open(DATASET, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_default_model_and_thresholds_are_installed() -> None:
    assert default_model.available()
    total = default_model.DEFAULT_MODEL.stat().st_size
    total += default_model.DEFAULT_THRESHOLDS.stat().st_size
    assert total < 10 * 1024 * 1024


def test_thresholds_artifact_is_tied_to_the_shipped_model_bytes(
    artifact: CalibrationArtifact,
) -> None:
    assert artifact.model_sha256 == file_sha256(default_model.DEFAULT_MODEL)


def test_model_class_names_metadata_equals_the_artifact_and_dataset_classes(
    model: OnnxModel, artifact: CalibrationArtifact, rows: list[dict[str, Any]]
) -> None:
    assert model.class_names is not None
    assert model.class_names == tuple(artifact.class_names)
    assert model.class_names == tuple(sorted({c for r in rows for c in r["labels"]}))
    assert model.n_classes == len(model.class_names)


def test_model_takes_raw_text_and_is_named(model: OnnxModel) -> None:
    assert model.input_name == "text"
    assert model.output_name == "probabilities"
    assert model.name == "debtags-tfidf-lr"


def test_model_outputs_probabilities_on_a_sample_of_the_test_split(
    model: OnnxModel, rows: list[dict[str, Any]]
) -> None:
    test_texts = [r["text"] for r in rows if r["split"] == "test"]
    sample = [test_texts[i] for i in np.random.default_rng(0).choice(len(test_texts), 200)]
    probs = model.predict(sample)
    assert probs.shape == (200, model.n_classes)
    assert np.isfinite(probs).all()
    assert probs.min() >= 0.0 and probs.max() <= 1.0


def test_model_equals_sklearn_predict_proba_within_1e_5_on_the_reference_sample(
    model: OnnxModel,
) -> None:
    with gzip.open(SKLEARN_REFERENCE, "rt", encoding="utf-8") as handle:
        reference = json.load(handle)
    assert reference["model_sha256"] == file_sha256(default_model.DEFAULT_MODEL)
    assert tuple(reference["class_names"]) == model.class_names
    expected = np.asarray(reference["probabilities"], dtype=np.float64)
    assert expected.shape == (len(reference["texts"]), model.n_classes)
    assert len(reference["texts"]) >= 64
    probs = model.predict(reference["texts"])
    np.testing.assert_allclose(probs, expected, rtol=0.0, atol=1e-5)


OBVIOUS = {
    "implemented-in::python": "Python 3 library for reading and writing YAML files\n"
    "This module lets Python programs parse and emit YAML documents.\n\n"
    "This package installs the library for Python 3.",
    "implemented-in::perl": "Perl module to talk to HTTP servers\n"
    "This Perl module provides an object-oriented interface for sending HTTP requests.",
    "made-of::font": "monospaced TrueType font for programmers\n"
    "This package contains a monospaced font family in TrueType format.",
    "role::documentation": "documentation for the libexample library\n"
    "This package contains the API reference manual of libexample in HTML format.",
    "uitoolkit::gtk": "simple text editor for GNOME\n"
    "A graphical text editor using the GTK toolkit, with syntax highlighting and tabs.",
    "role::devel-lib": "development files for libexample\n"
    "This package contains the header files and static library needed to compile "
    "programs that use libexample.",
    "role::debug-symbols": "debugging symbols for libexample\n"
    "This package contains the debugging symbols for libexample.",
    "interface::commandline": "command-line tool to rename many files at once\n"
    "A small command-line utility that renames files in bulk using regular expressions.",
}


@pytest.mark.parametrize("tag", sorted(OBVIOUS))
def test_obvious_description_gets_the_obvious_tag(model: OnnxModel, tag: str) -> None:
    assert model.class_names is not None
    probs = model.predict([OBVIOUS[tag]])[0]
    k = model.class_names.index(tag)
    assert probs[k] > 0.5, f"p({tag}) = {probs[k]:.3f}"
    assert k in np.argsort(-probs)[:4]


def test_dataset_splits_are_disjoint_cover_every_row_and_keep_sources_together(
    rows: list[dict[str, Any]],
) -> None:
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) > 25_000
    assert {r["split"] for r in rows} == SPLITS
    by_split = collections.Counter(r["split"] for r in rows)
    assert sum(by_split.values()) == len(rows)
    assert by_split["train"] > by_split["calibration"] > 0 and by_split["test"] > 0
    split_of_source: dict[str, str] = {}
    for r in rows:
        assert split_of_source.setdefault(r["source"], r["split"]) == r["split"], r["source"]


def test_dataset_rows_have_text_and_known_frequent_tags(rows: list[dict[str, Any]]) -> None:
    meta = json.loads(DATASET_META.read_text())
    counts = collections.Counter(c for r in rows for c in r["labels"])
    assert sorted(counts) == meta["classes"]
    assert min(counts.values()) >= meta["min_count"]
    assert all(r["text"].strip() and r["labels"] for r in rows)
    assert not any(c.startswith(("suite::", "special::")) or c.endswith("::TODO") for c in counts)
    assert meta["stats"]["packages"] == len(rows)


@pytest.mark.parametrize(
    "script",
    ["scripts/build_debtags_dataset.py", "scripts/train_default_model.py", "bench/detection.py"],
)
def test_script_help_runs(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
