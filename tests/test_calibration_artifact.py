"""The calibration artifact: exact JSON round trip, atomic save, and every validation error."""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from labelwatch.calibration import (
    SCHEMA_VERSION,
    ArtifactError,
    CalibrationArtifact,
    calibrate,
    content_sha256,
    load_artifact,
    save_artifact,
)
from labelwatch.scoring import CLEANLAB_RULES, FilterBy, Pooling, decide

NAMES = ("rock", "jazz", "folk", "drone")
SHA = "ab" * 32
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def scoring_artifact() -> CalibrationArtifact:
    """K = 4 on 200 examples; class "drone" is never tagged, so some cut-offs are NaN."""
    rng = np.random.default_rng(0)
    probs = rng.random((200, 4))
    tags = rng.random((200, 4)) < probs
    tags[:, 3] = False
    return calibrate(probs, tags, NAMES, model_sha256=SHA, now=NOW)


@pytest.fixture()
def artifact_doc(scoring_artifact: CalibrationArtifact) -> dict[str, Any]:
    """A fresh, valid JSON document to break, in schema version 1 (no content hash, so a
    field can be edited; version 2 documents are checked the same way, then hashed)."""
    doc: dict[str, Any] = json.loads(json.dumps(scoring_artifact.to_json_dict()))
    doc["schema_version"] = 1
    del doc["sha256"], doc["pooling"]["probabilities"]
    return doc


def assert_same_artifact(a: CalibrationArtifact, b: CalibrationArtifact) -> None:
    """Every field equal, arrays bit for bit (NaN where NaN)."""
    fa, fb = a.fit, b.fit
    for x, y in (
        (fa.thresholds.t0, fb.thresholds.t0),
        (fa.thresholds.t1, fb.thresholds.t1),
        (fa.thresholds.n_pos, fb.thresholds.n_pos),
        (fa.thresholds.n_neg, fb.thresholds.n_neg),
    ):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)
    for mine, theirs in ((fa.margin_cutoffs, fb.margin_cutoffs), (fa.flag_rates, fb.flag_rates)):
        assert set(mine) == set(theirs)
        for rule in mine:
            assert mine[rule].tobytes() == theirs[rule].tobytes()  # bits, NaN included
    assert (fa.score_cutoff == fb.score_cutoff) or (
        math.isnan(fa.score_cutoff) and math.isnan(fb.score_cutoff)
    )
    assert (fa.pooling, fa.alpha, fa.temperature, fa.n_examples, fa.method) == (
        fb.pooling,
        fb.alpha,
        fb.temperature,
        fb.n_examples,
        fb.method,
    )
    assert (
        a.class_names,
        a.model_sha256,
        a.created_at,
        a.epsilon,
        a.schema_version,
        a.filter_by,
    ) == (b.class_names, b.model_sha256, b.created_at, b.epsilon, b.schema_version, b.filter_by)


def test_save_then_load_gives_back_the_same_bits(
    scoring_artifact: CalibrationArtifact, tmp_path: Path
) -> None:
    path = tmp_path / "thresholds.json"
    save_artifact(scoring_artifact, path)
    loaded = load_artifact(path, expected_model_sha256=SHA)
    assert_same_artifact(loaded, scoring_artifact)
    assert np.isnan(loaded.fit.margin_cutoffs[FilterBy.PRUNE_BY_NOISE_RATE.value][3, 1])
    probs = np.random.default_rng(1).random((30, 4))
    tags = probs > 0.5
    for rule in CLEANLAB_RULES:
        a = decide(scoring_artifact.fit, probs, tags, rule)
        b = decide(loaded.fit, probs, tags, rule)
        np.testing.assert_array_equal(a.flags, b.flags)
        np.testing.assert_array_equal(a.label_quality, b.label_quality)


def test_json_layout(scoring_artifact: CalibrationArtifact, tmp_path: Path) -> None:
    path = tmp_path / "thresholds.json"
    save_artifact(scoring_artifact, path)
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == SCHEMA_VERSION == 2
    assert doc["n_classes"] == 4 and doc["class_names"] == list(NAMES)
    assert doc["pooling"] == {
        "method": "exponential_moving_average",
        "alpha": 0.8,
        "temperature": 0.1,
        "class_score": "self_confidence",
        "probabilities": "model",
    }
    assert doc["sha256"] == content_sha256(doc)
    assert set(doc["thresholds"]) == {"t0", "t1", "n_pos", "n_neg"}
    assert doc["thresholds"]["t1"][3] == 2.0  # never tagged: unreachable threshold
    assert set(doc["margin_cutoffs"]) == {"prune_by_noise_rate", "prune_by_class", "both"}
    assert doc["margin_cutoffs"]["prune_by_noise_rate"][3][1] is None  # NaN as null
    assert set(doc["calibration"]["flag_rates"]) == {r.value for r in CLEANLAB_RULES}
    assert doc["calibration"]["n_examples"] == 200
    assert doc["created_at"] == "2026-01-02T03:04:05+00:00"
    assert doc["model_sha256"] == SHA
    assert doc["filter_by"] == "confident_learning"
    assert "NaN" not in path.read_text()


def test_round_trip_through_dict_is_exact_with_null_score_cutoff(
    scoring_artifact: CalibrationArtifact,
) -> None:
    doc = scoring_artifact.to_json_dict()
    doc["score_cutoff"] = None
    doc["sha256"] = content_sha256(doc)  # as calibrate would write it
    again = CalibrationArtifact.from_json_dict(json.loads(json.dumps(doc)))
    assert math.isnan(again.fit.score_cutoff)
    assert json.loads(json.dumps(again.to_json_dict()))["score_cutoff"] is None


def test_save_replaces_atomically_and_leaves_no_temp_file(
    scoring_artifact: CalibrationArtifact, tmp_path: Path
) -> None:
    path = tmp_path / "thresholds.json"
    path.write_text("old")
    save_artifact(scoring_artifact, str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thresholds.json"]
    assert json.loads(path.read_text())["n_classes"] == 4
    assert path.stat().st_mode & 0o777 == 0o644


def test_failed_save_keeps_the_directory_clean(
    scoring_artifact: CalibrationArtifact, tmp_path: Path
) -> None:
    target = tmp_path / "is_a_directory"
    target.mkdir()
    with pytest.raises(OSError):
        save_artifact(scoring_artifact, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["is_a_directory"]
    with pytest.raises(OSError):
        save_artifact(scoring_artifact, tmp_path / "missing_dir" / "t.json")


def test_load_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(ArtifactError, match=r"nope\.json: calibration artifact not found"):
        load_artifact(path)


def test_load_invalid_json_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "schema_version": 1,\n  oops\n}')
    with pytest.raises(ArtifactError, match=r"broken\.json: not valid JSON \(line 3"):
        load_artifact(path)


def test_load_refuses_an_artifact_for_another_model(
    scoring_artifact: CalibrationArtifact, tmp_path: Path
) -> None:
    path = tmp_path / "t.json"
    save_artifact(scoring_artifact, path)
    other = "cd" * 32
    with pytest.raises(ArtifactError) as err:
        load_artifact(path, expected_model_sha256=other)
    message = str(err.value)
    assert str(path) in message and "'model_sha256'" in message
    assert SHA in message and other in message


def test_load_accepts_an_artifact_without_model_hash(
    scoring_artifact: CalibrationArtifact, tmp_path: Path
) -> None:
    doc = scoring_artifact.to_json_dict()
    doc["model_sha256"] = None
    doc["sha256"] = content_sha256(doc)  # as calibrate writes it without --model
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    assert load_artifact(path, expected_model_sha256=SHA).model_sha256 is None


def test_load_names_the_file_in_validation_errors(
    artifact_doc: dict[str, Any], tmp_path: Path
) -> None:
    artifact_doc["thresholds"]["t1"][3] = float("nan")
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(artifact_doc))  # Python's json writes NaN, and reads it
    with pytest.raises(ArtifactError) as err:
        load_artifact(path)
    assert str(err.value) == (f"{path}: field 'thresholds.t1[3]' must be finite, got nan")


Mutation = Callable[[dict[str, Any]], object]


def _set(path: str, value: object) -> Mutation:
    """Set ``doc[a][b]...`` (dotted path, ``[i]`` for list items) to ``value``."""

    keys: list[Any] = [int(t) if t.isdigit() else t for t in re.findall(r"[^.\[\]]+", path)]

    def mutate(doc: dict[str, Any]) -> None:
        target: Any = doc
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = copy.deepcopy(value)

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for key in parents:
            target = target[key]
        del target[last]

    return mutate


INVALID: list[tuple[str, Mutation, str]] = [
    ("schema-version-newer", _set("schema_version", 3), "'schema_version' is 3"),
    ("schema-version-missing", _delete("schema_version"), "'schema_version' is missing"),
    ("n-classes-mismatch", _set("n_classes", 5), "'n_classes' is 5"),
    ("class-names-not-list", _set("class_names", "rock"), "'class_names' must be"),
    ("class-names-empty", _set("class_names", []), "'class_names' must be a non-empty"),
    ("class-name-empty", _set("class_names[1]", ""), "'class_names[1]' must be a non-empty"),
    ("class-name-not-str", _set("class_names[0]", 7), "'class_names[0]' must be a non-empty"),
    ("class-name-repeated", _set("class_names[2]", "rock"), "'class_names[2]' repeats"),
    ("epsilon-changed", _set("epsilon", 1e-3), "'epsilon' must be 1e-06"),
    ("pooling-missing", _delete("pooling"), "'pooling' is missing"),
    ("pooling-not-object", _set("pooling", [1]), "'pooling' must be a JSON object"),
    ("pooling-method", _set("pooling.method", "mean"), "'pooling.method' must be one of"),
    ("alpha-zero", _set("pooling.alpha", 0.0), "'pooling.alpha' must be in (0.0, 1.0]"),
    ("alpha-above-one", _set("pooling.alpha", 1.5), "'pooling.alpha' must be in"),
    ("alpha-bool", _set("pooling.alpha", True), "'pooling.alpha' must be a number"),
    ("temperature-zero", _set("pooling.temperature", 0), "'pooling.temperature' must be in"),
    ("class-score", _set("pooling.class_score", "entropy"), "'pooling.class_score' must be"),
    ("t1-nan", _set("thresholds.t1[3]", float("nan")), "'thresholds.t1[3]' must be finite"),
    ("t0-inf", _set("thresholds.t0[0]", float("inf")), "'thresholds.t0[0]' must be finite"),
    ("t0-below-floor", _set("thresholds.t0[0]", 0.0), "'thresholds.t0[0]' must be in"),
    ("t0-above-two", _set("thresholds.t0[1]", 2.5), "'thresholds.t0[1]' must be in"),
    ("t0-not-number", _set("thresholds.t0[2]", "0.5"), "'thresholds.t0[2]' must be a number"),
    ("t1-short", _set("thresholds.t1", [0.5, 0.5, 0.5]), "'thresholds.t1' must have n_classes"),
    ("t1-not-list", _set("thresholds.t1", 0.5), "'thresholds.t1' must be a list"),
    ("n-pos-negative", _set("thresholds.n_pos[0]", -1), "'thresholds.n_pos[0]' must be an int"),
    ("n-neg-float", _set("thresholds.n_neg[1]", 1.5), "'thresholds.n_neg[1]' must be an int"),
    ("counts-sum", _set("thresholds.n_pos[2]", 1), "'thresholds.n_pos[2]' + n_neg[2]"),
    ("thresholds-missing", _delete("thresholds"), "'thresholds' is missing"),
    ("n-examples-zero", _set("calibration.n_examples", 0), "'calibration.n_examples' must be"),
    (
        "rates-rule-missing",
        _delete("calibration.flag_rates.both"),
        "'calibration.flag_rates.both' is missing",
    ),
    (
        "rates-rule-unknown",
        _set("calibration.flag_rates.bogus", [[0, 0]] * 4),
        "'calibration.flag_rates.bogus' is not a rule",
    ),
    (
        "rate-above-one",
        _set("calibration.flag_rates.confident_learning[0][1]", 1.5),
        "'calibration.flag_rates.confident_learning[0][1]' must be in [0.0, 1.0]",
    ),
    (
        "rate-null",
        _set("calibration.flag_rates.both[1][0]", None),
        "'calibration.flag_rates.both[1][0]' must be a number",
    ),
    (
        "rate-not-pair",
        _set("calibration.flag_rates.both[2]", [0.1]),
        "'calibration.flag_rates.both[2]' must be a pair",
    ),
    ("rates-not-object", _set("calibration.flag_rates", []), "'calibration.flag_rates' must be"),
    (
        "cutoffs-rule-missing",
        _delete("margin_cutoffs.prune_by_class"),
        "'margin_cutoffs.prune_by_class' is missing",
    ),
    (
        "cutoff-out-of-range",
        _set("margin_cutoffs.both[0][0]", -1.5),
        "'margin_cutoffs.both[0][0]' must be in [-1.0, 1.0]",
    ),
    (
        "cutoffs-wrong-length",
        _set("margin_cutoffs.prune_by_noise_rate", [[0.1, 0.1]]),
        "'margin_cutoffs.prune_by_noise_rate' must have n_classes = 4 entries, got 1",
    ),
    ("score-cutoff-range", _set("score_cutoff", 1.5), "'score_cutoff' must be in [0.0, 1.0]"),
    ("score-cutoff-text", _set("score_cutoff", "low"), "'score_cutoff' must be a number"),
    ("sha-not-hex", _set("model_sha256", "xyz"), "'model_sha256' must be null or 64"),
    ("sha-upper", _set("model_sha256", "AB" * 32), "'model_sha256' must be null or 64"),
    ("created-at-garbage", _set("created_at", "yesterday"), "'created_at' is not an ISO-8601"),
    (
        "created-at-not-utc",
        _set("created_at", "2026-01-02T03:04:05+02:00"),
        "'created_at' must be in UTC",
    ),
    ("created-at-naive", _set("created_at", "2026-01-02T03:04:05"), "'created_at' must be in UTC"),
    ("created-at-missing", _delete("created_at"), "'created_at' is missing"),
    ("filter-by-unknown", _set("filter_by", "majority"), "'filter_by' must be one of"),
    ("filter-by-not-str", _set("filter_by", 1), "'filter_by' must be one of"),
]


@pytest.mark.parametrize(
    ("mutate", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_field_is_named(
    artifact_doc: dict[str, Any], mutate: Mutation, message: str
) -> None:
    mutate(artifact_doc)
    with pytest.raises(ArtifactError) as err:
        CalibrationArtifact.from_json_dict(artifact_doc, source="t.json")
    assert str(err.value).startswith("t.json: ")
    assert message in str(err.value)


@pytest.mark.parametrize("rule", list(CLEANLAB_RULES), ids=[r.value for r in CLEANLAB_RULES])
def test_recorded_filter_by_survives_save_and_load(rule: FilterBy, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    probs = rng.random((50, 4))
    made = calibrate(probs, rng.random((50, 4)) < probs, NAMES, filter_by=rule, now=NOW)
    assert made.filter_by is rule
    path = tmp_path / "thresholds.json"
    save_artifact(made, path)
    assert json.loads(path.read_text())["filter_by"] == rule.value
    assert load_artifact(path).filter_by is rule


def test_artifact_without_filter_by_loads_as_confident_learning(
    artifact_doc: dict[str, Any],
) -> None:
    artifact_doc["filter_by"] = "low_self_confidence"
    assert CalibrationArtifact.from_json_dict(artifact_doc).filter_by is (
        FilterBy.LOW_SELF_CONFIDENCE
    )
    del artifact_doc["filter_by"]  # as written before the field existed
    loaded = CalibrationArtifact.from_json_dict(artifact_doc)
    assert loaded.filter_by is FilterBy.CONFIDENT_LEARNING


def test_top_level_must_be_an_object() -> None:
    with pytest.raises(ArtifactError, match=r"t\.json: the top level must be a JSON object"):
        CalibrationArtifact.from_json_dict([1, 2], source="t.json")


def test_created_at_with_z_suffix_is_utc(artifact_doc: dict[str, Any]) -> None:
    artifact_doc["created_at"] = "2026-01-02T03:04:05Z"
    assert CalibrationArtifact.from_json_dict(artifact_doc).created_at.endswith("Z")


def test_calibrate_rejects_wrong_number_of_class_names() -> None:
    probs = np.random.default_rng(0).random((20, 3))
    with pytest.raises(ArtifactError, match="'class_names' has 2 names but the data has 3"):
        calibrate(probs, probs > 0.5, ("a", "b"))


def test_calibrate_rejects_what_would_not_load() -> None:
    probs = np.random.default_rng(0).random((20, 3))
    with pytest.raises(ArtifactError, match=r"'class_names\[2\]' repeats"):
        calibrate(probs, probs > 0.5, ("a", "b", "a"))
    with pytest.raises(ArtifactError, match=r"'pooling\.alpha'"):
        calibrate(probs, probs > 0.5, ("a", "b", "c"), alpha=0.0)


def test_calibrate_stamps_utc_time_and_pooling() -> None:
    probs = np.random.default_rng(0).random((20, 3))
    local = NOW.astimezone(timezone(timedelta(hours=-5)))
    artifact = calibrate(
        probs, probs > 0.5, ("a", "b", "c"), pooling=Pooling.SOFTMIN, temperature=0.3, now=local
    )
    assert artifact.created_at == "2026-01-02T03:04:05+00:00"
    assert (artifact.fit.pooling, artifact.fit.temperature) == (Pooling.SOFTMIN, 0.3)
    assert artifact.n_classes == 3 and artifact.model_sha256 is None
    assert (
        datetime.fromisoformat(calibrate(probs, probs > 0.5, ("a", "b", "c")).created_at).tzinfo
        is not None
    )
