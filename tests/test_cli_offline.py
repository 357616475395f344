"""`labelwatch calibrate` and `labelwatch audit` end to end on small files.

cleanlab 2.9.0 is the oracle for the batch mode (audit without --thresholds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from cleanlab.count import get_confident_thresholds
from cleanlab.multilabel_classification.filter import (
    find_label_issues as cl_find_label_issues,
)
from cleanlab.multilabel_classification.filter import (
    find_multilabel_issues_per_class as cl_per_class,
)
from cleanlab.multilabel_classification.rank import get_label_quality_scores as cl_scores
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry

import labelwatch
from labelwatch import config_cli
from labelwatch.calibration import load_artifact
from labelwatch.cli import main
from labelwatch.scoring import FilterBy, decide
from labelwatch.server import start
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc

N, K = 300, 8
NAMES = tuple(f"class_{k}" for k in range(K))


def _random(seed: int = 0, n: int = N) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """``(pred_probs (n, K), labels (n, K))``: an informative model and ~8% flipped tags."""
    rng = np.random.default_rng(seed)
    truth = rng.random((n, K)) < np.linspace(0.1, 0.5, K)
    logits = np.where(truth, rng.normal(1.5, 1.3, (n, K)), rng.normal(-1.5, 1.3, (n, K)))
    probs = 1.0 / (1.0 + np.exp(-logits))
    labels = truth ^ (rng.random((n, K)) < 0.08)
    return probs, labels


def _write_npz(path: Path, seed: int = 0) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    probs, labels = _random(seed)
    np.savez(
        path,
        pred_probs=probs,
        labels=labels.astype(np.int8),
        class_names=np.array(NAMES),
        ids=np.array([f"ex{i}" for i in range(len(probs))]),
    )
    return probs, labels


def _write_jsonl(path: Path, probs: NDArray[np.float64], labels: NDArray[np.bool_]) -> None:
    lines = [json.dumps({"class_names": list(NAMES)})]
    for i in range(len(probs)):
        tags = [NAMES[k] for k in np.flatnonzero(labels[i])]
        lines.append(
            json.dumps({"id": f"ex{i}", "labels": tags, "probabilities": probs[i].tolist()})
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _flags_of(report: list[dict[str, Any]]) -> NDArray[np.bool_]:
    flags = np.zeros((len(report), K), dtype=np.bool_)
    for row in report:
        for issue in row["issues"]:
            flags[row["index"], issue["class_index"]] = True
    return flags


def _as_lists(labels: NDArray[np.bool_]) -> list[list[int]]:
    return [np.flatnonzero(row).tolist() for row in labels]


@pytest.mark.parametrize("rule", ["prune_by_noise_rate", "confident_learning"])
def test_audit_without_thresholds_equals_cleanlab(
    tmp_path: Path, rule: str, capsys: pytest.CaptureFixture[str]
) -> None:
    probs, labels = _write_npz(tmp_path / "d.npz")
    args = ["audit", "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "r.jsonl")]
    if rule != "prune_by_noise_rate":  # the default is cleanlab's default
        args += ["--filter-by", rule]
    assert main(args) == 0
    assert capsys.readouterr().err == ""  # small and not a TTY: no progress lines
    report = _read(tmp_path / "r.jsonl")

    given = _as_lists(labels)
    mask = cl_find_label_issues(given, probs, filter_by=rule, n_jobs=1)
    per_class = cl_per_class(given, probs, filter_by=rule, n_jobs=1)
    scores = cl_scores(given, probs)
    assert [row["index"] for row in report] == list(range(N))
    assert [row["id"] for row in report] == [f"ex{i}" for i in range(N)]
    assert mask.any() and not mask.all()
    assert [row["is_issue"] for row in report] == mask.tolist()
    np.testing.assert_array_equal(_flags_of(report), per_class)
    np.testing.assert_allclose([row["label_quality"] for row in report], scores, rtol=0, atol=1e-9)


@pytest.mark.parametrize("rule", ["prune_by_noise_rate", "confident_learning"])
def test_audit_of_float32_probabilities_equals_cleanlabs_float32_run(
    tmp_path: Path, rule: str
) -> None:
    probs64, labels = _random(seed=5)
    probs = probs64.astype(np.float32)
    np.savez(
        tmp_path / "d.npz",
        pred_probs=probs,
        labels=labels.astype(np.int8),
        class_names=np.array(NAMES),
    )
    out = tmp_path / "r.jsonl"
    args = ["audit", "--data", str(tmp_path / "d.npz"), "--out", str(out), "--filter-by", rule]
    assert main(args) == 0
    report = _read(out)
    given = _as_lists(labels)
    per_class = cl_per_class(given, probs, filter_by=rule, n_jobs=1)
    scores = cl_scores(given, probs)
    np.testing.assert_array_equal(_flags_of(report), per_class)
    np.testing.assert_allclose([row["label_quality"] for row in report], scores, rtol=0, atol=1e-9)
    # and it is cleanlab's float32 answer, not its float64 one
    assert np.abs(cl_scores(given, probs.astype(np.float64)) - scores).max() > 1e-9


def test_audit_issues_report_kind_probability_and_threshold_on_the_p_scale(tmp_path: Path) -> None:
    probs, labels = _write_npz(tmp_path / "d.npz")
    # confident_learning decides by these thresholds; the rank rules report their own
    # cut-offs (tests/test_audit_report_bounds.py)
    args = ["audit", "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "r.jsonl")]
    assert main([*args, "--filter-by", "confident_learning"]) == 0
    thresholds = get_confident_thresholds(_as_lists(labels), probs, multi_label=True)  # (K, 2)
    kinds = set()
    for row in _read(tmp_path / "r.jsonl"):
        for issue in row["issues"]:
            i, k = row["index"], issue["class_index"]
            assert issue["label"] == NAMES[k]
            assert issue["probability"] == probs[i, k]
            if labels[i, k]:
                assert issue["kind"] == "SPURIOUS"
                assert issue["threshold"] == pytest.approx(1.0 - thresholds[k, 0], abs=1e-12)
            else:
                assert issue["kind"] == "MISSING"
                assert issue["threshold"] == pytest.approx(thresholds[k, 1], abs=1e-12)
            kinds.add(issue["kind"])
    assert kinds == {"MISSING", "SPURIOUS"}


def test_audit_on_jsonl_gives_the_same_report_as_on_npz(tmp_path: Path) -> None:
    probs, labels = _write_npz(tmp_path / "d.npz")
    _write_jsonl(tmp_path / "d.jsonl", probs, labels)
    for name in ("d.npz", "d.jsonl"):
        assert (
            main(["audit", "--data", str(tmp_path / name), "--out", str(tmp_path / f"{name}.out")])
            == 0
        )
    assert _read(tmp_path / "d.npz.out") == _read(tmp_path / "d.jsonl.out")


def test_audit_prints_a_per_class_table_matching_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, labels = _write_npz(tmp_path / "d.npz")
    assert (
        main(["audit", "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "r.jsonl")]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["class", "tagged", "t0", "t1", "missing", "spurious"]
    flags, report = _flags_of(_read(tmp_path / "r.jsonl")), _read(tmp_path / "r.jsonl")
    for k, line in enumerate(lines[1 : K + 1]):
        name, tagged, _t0, _t1, missing, spurious = line.split()
        assert (name, int(tagged)) == (NAMES[k], int(labels[:, k].sum()))
        assert int(missing) == int((flags[:, k] & ~labels[:, k]).sum())
        assert int(spurious) == int((flags[:, k] & labels[:, k]).sum())
    assert lines[K + 1].startswith(
        f"{N} examples, {sum(r['is_issue'] for r in report)} with an issue"
    )


def test_calibrate_writes_an_artifact_that_load_artifact_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_npz(tmp_path / "calib.npz")
    model = tmp_path / "model.onnx"
    model.write_bytes(os.urandom(3 << 20))  # bigger than one hashing chunk
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    code = main(
        ["calibrate", "--data", str(tmp_path / "calib.npz"), "--out", str(tmp_path / "t.json"),
         "--model", str(model), "--pooling", "softmin", "--temperature", "0.2"]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert f"{N} examples x {K} classes" in out and sha in out
    artifact = load_artifact(tmp_path / "t.json", expected_model_sha256=sha)
    assert tuple(artifact.class_names) == NAMES
    assert artifact.model_sha256 == sha
    assert artifact.fit.n_examples == N
    assert artifact.fit.temperature == 0.2
    assert artifact.fit.pooling.value == "softmin"


def _serve_flags(
    state: Path, artifact: str, probs: NDArray[np.float64], labels: NDArray[np.bool_], *extra: str
) -> tuple[str, NDArray[np.bool_]]:
    """Start `labelwatch serve --thresholds artifact *extra` in-process (flags parsed as the
    CLI parses them); return GetModelInfo's flag rule and Score's ``(n, K)`` flags."""
    parser = argparse.ArgumentParser()
    config_cli.add_arguments(parser)
    argv = ["--thresholds", artifact, "--port", "0", "--metrics-port", "0", *extra]
    settings = config_cli.settings_from(parser.parse_args([*argv, "--data-dir", str(state)]), {})
    server = start(settings, registry=CollectorRegistry())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            rule = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).calibration.filter_by
            examples = [
                pb.Example(
                    id=f"ex{i}",
                    probabilities=pb.Probabilities(values=probs[i].tolist()),
                    labels=[NAMES[k] for k in np.flatnonzero(labels[i])],
                )
                for i in range(len(probs))
            ]
            results = stub.Score(pb.ScoreRequest(examples=examples), timeout=20).results
    finally:
        server.stop(0.5)
    flags = np.zeros(probs.shape, dtype=bool)
    for i, result in enumerate(results):
        flags[i, [issue.class_index for issue in result.issues]] = True
    return rule, flags


def test_calibrate_records_filter_by_and_serve_flags_with_it_unless_told_otherwise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_npz(tmp_path / "calib.npz", seed=1)
    probs, labels = _random(seed=2, n=60)
    calib = ["calibrate", "--data", str(tmp_path / "calib.npz")]
    cl, lsc = str(tmp_path / "cl.json"), str(tmp_path / "lsc.json")
    assert main([*calib, "--out", cl, "--filter-by", "confident_learning"]) == 0
    assert main([*calib, "--out", lsc, "--filter-by", "low_self_confidence"]) == 0
    assert "flag rule low_self_confidence" in capsys.readouterr().out
    assert load_artifact(cl).filter_by is FilterBy.CONFIDENT_LEARNING
    assert load_artifact(lsc).filter_by is FilterBy.LOW_SELF_CONFIDENCE
    fit = load_artifact(lsc).fit  # the same thresholds: only the recorded rule differs
    want = {r: decide(fit, probs, labels, r).flags for r in FilterBy}
    assert not np.array_equal(want[FilterBy.CONFIDENT_LEARNING], want[FilterBy.LOW_SELF_CONFIDENCE])

    # `audit --thresholds` follows the artifact's rule too, like serve
    np.savez(
        tmp_path / "d.npz",
        pred_probs=probs,
        labels=labels.astype(np.int8),
        class_names=np.array(NAMES),
    )
    report = tmp_path / "r.jsonl"
    audit = ["audit", "--data", str(tmp_path / "d.npz"), "--out", str(report)]
    assert main([*audit, "--thresholds", lsc]) == 0
    np.testing.assert_array_equal(_flags_of(_read(report)), want[FilterBy.LOW_SELF_CONFIDENCE])

    rule, flags = _serve_flags(tmp_path / "s1", lsc, probs, labels)
    assert rule == "low_self_confidence"
    np.testing.assert_array_equal(flags, want[FilterBy.LOW_SELF_CONFIDENCE])
    rule, flags = _serve_flags(tmp_path / "s2", cl, probs, labels)
    assert rule == "confident_learning"
    np.testing.assert_array_equal(flags, want[FilterBy.CONFIDENT_LEARNING])
    # an explicit --filter-by wins over the artifact's rule
    rule, flags = _serve_flags(
        tmp_path / "s3", lsc, probs, labels, "--filter-by", "confident_learning"
    )
    assert rule == "confident_learning"
    np.testing.assert_array_equal(flags, want[FilterBy.CONFIDENT_LEARNING])


def test_calibrate_refuses_an_unknown_filter_by(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_npz(tmp_path / "calib.npz")
    argv = ["calibrate", "--data", str(tmp_path / "calib.npz"), "--out", str(tmp_path / "t.json")]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--filter-by", "majority"])
    assert exited.value.code == 2
    assert "--filter-by" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()


@pytest.mark.parametrize("rule", [None, *(rule.value for rule in FilterBy)])
def test_audit_with_thresholds_applies_the_online_rule_of_the_artifact(
    tmp_path: Path, rule: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_npz(tmp_path / "calib.npz", seed=1)
    probs, labels = _write_npz(tmp_path / "d.npz", seed=2)
    t = str(tmp_path / "t.json")
    assert main(["calibrate", "--data", str(tmp_path / "calib.npz"), "--out", t]) == 0
    capsys.readouterr()
    out = tmp_path / "r.jsonl"
    args = ["audit", "--data", str(tmp_path / "d.npz"), "--thresholds", t, "--out", str(out)]
    code = main([*args, *(["--filter-by", rule] if rule else [])])
    fit = load_artifact(t).fit
    try:  # None: the artifact's rule as in `labelwatch serve` (calibrate's default: budget)
        decision = decide(fit, probs, labels, FilterBy(rule or "budget"))
    except ValueError as exc:  # a rule without an online form: a one-line usage error
        assert code == 2
        assert capsys.readouterr().err == f"labelwatch audit: error: {exc}\n"
        return
    assert code == 0
    report = _read(out)
    np.testing.assert_array_equal(_flags_of(report), decision.flags)
    assert [r["label_quality"] for r in report] == decision.label_quality.tolist()


def test_audit_with_thresholds_refuses_data_with_other_class_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_npz(tmp_path / "calib.npz")
    probs, labels = _random()
    np.savez(tmp_path / "d.npz", pred_probs=probs, labels=labels,
             class_names=np.array([*NAMES[:3], "other", *NAMES[4:]]))  # fmt: skip
    t = str(tmp_path / "t.json")
    assert main(["calibrate", "--data", str(tmp_path / "calib.npz"), "--out", t]) == 0
    capsys.readouterr()
    code = main(
        [
            "audit",
            "--data",
            str(tmp_path / "d.npz"),
            "--thresholds",
            t,
            "--out",
            str(tmp_path / "r"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "class #3 is 'other' but 'class_3' was expected" in err


def test_audit_with_thresholds_refuses_pooling_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_npz(tmp_path / "d.npz")
    t = str(tmp_path / "t.json")
    assert main(["calibrate", "--data", str(tmp_path / "d.npz"), "--out", t]) == 0
    capsys.readouterr()
    args = [
        "audit",
        "--data",
        str(tmp_path / "d.npz"),
        "--thresholds",
        t,
        "--out",
        str(tmp_path / "r"),
    ]
    assert main([*args, "--alpha", "0.5"]) == 2
    assert "--alpha is fixed at calibration time" in capsys.readouterr().err


def test_audit_refuses_a_corrupt_artifact_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_npz(tmp_path / "d.npz")
    (tmp_path / "t.json").write_text('{"format": "nope"', encoding="utf-8")
    args = ["audit", "--data", str(tmp_path / "d.npz"), "--thresholds", str(tmp_path / "t.json")]
    assert main([*args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("labelwatch audit: error: ") and err.count("\n") == 1


def test_audit_writes_a_self_contained_html_report(tmp_path: Path) -> None:
    _write_npz(tmp_path / "d.npz")
    html = tmp_path / "r.html"
    args = ["audit", "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "r.jsonl")]
    assert main([*args, "--html", str(html)]) == 0
    page = html.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 2
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    worst = min(_read(tmp_path / "r.jsonl"), key=lambda r: r["label_quality"])
    assert f"<td>{worst['id']}</td>" in page


def test_calibrate_refuses_bad_data_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(_HEADER + "\n" + _row(probabilities=[0.2, 7]) + "\n")
    assert main(["calibrate", "--data", str(path), "--out", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    where = f"{path} line 2: field 'probabilities[1]'"
    assert err == f"labelwatch calibrate: error: {where}: 7 is outside [0, 1]\n"
    assert not (tmp_path / "t.json").exists()


def _subprocess_env() -> dict[str, str]:
    """PYTHONPATH pointing at wherever the imported ``labelwatch`` package lives."""
    root = str(Path(labelwatch.__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}


def test_cli_runs_as_a_subprocess_with_exit_codes_and_one_line_errors(tmp_path: Path) -> None:
    _write_npz(tmp_path / "d.npz")
    command = [sys.executable, "-m", "labelwatch.cli", "audit", "--data"]
    ok = subprocess.run(
        [*command, str(tmp_path / "d.npz"), "--out", str(tmp_path / "r.jsonl")],
        capture_output=True, text=True, env=_subprocess_env(), timeout=120, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert len(_read(tmp_path / "r.jsonl")) == N
    (tmp_path / "bad.jsonl").write_text('{"class_names": ["a"]}\n{"id": "x", "labels": [\n')
    bad = subprocess.run(
        [*command, str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "r2.jsonl")],
        capture_output=True, text=True, env=_subprocess_env(), timeout=120, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.startswith("labelwatch audit: error: ") and bad.stderr.count("\n") == 1
    assert "line 2: invalid JSON" in bad.stderr and "Traceback" not in bad.stderr


# --- bad data: exit 2 and one line naming the file, the row and the field --------------------

_GOOD_ROW = {"id": "ok", "labels": ["a"], "probabilities": [0.9, 0.1]}
_HEADER = json.dumps({"class_names": ["a", "b"]})


def _jsonl_with(bad_line: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / "bad.jsonl"
        path.write_text("\n".join([_HEADER, json.dumps(_GOOD_ROW), bad_line]) + "\n")
        return path

    return make


def _row(**changes: object) -> str:
    return json.dumps({"id": "x", "labels": ["b"], "probabilities": [0.2, 0.7], **changes})


def _npz_with(
    field: str, edit: Callable[[NDArray[Any]], NDArray[Any] | None]
) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        arrays: dict[str, NDArray[Any]] = {
            "pred_probs": np.full((5, 3), 0.5),
            "labels": np.zeros((5, 3), dtype=np.int64),
            "ids": np.array(["a", "b", "c", "d", "e"]),
        }
        changed = edit(arrays[field])
        if changed is None:
            del arrays[field]
        else:
            arrays[field] = changed
        path = tmp / "bad.npz"
        np.savez(path, **arrays)  # type: ignore[arg-type]
        return path

    return make


def _set(index: tuple[int, ...], value: object) -> Callable[[NDArray[Any]], NDArray[Any]]:
    def edit(arr: NDArray[Any]) -> NDArray[Any]:
        arr = arr.copy()
        arr[index] = value
        return arr

    return edit


BAD_DATA: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "jsonl invalid JSON": (_jsonl_with('{"id": "x", '), ("line 3", "invalid JSON")),
    "jsonl not an object": (_jsonl_with("[1, 2]"), ("line 3", "expected a JSON object")),
    "jsonl unknown label name": (
        _jsonl_with(_row(labels=["b", "cow"])),
        ("line 3", "field 'labels'", "unknown class name 'cow'"),
    ),
    "jsonl wrong number of probabilities": (
        _jsonl_with(_row(probabilities=[0.2, 0.7, 0.1])),
        ("line 3", "field 'probabilities'", "has 3 values, expected 2"),
    ),
    "jsonl NaN probability": (
        _jsonl_with(_row(probabilities=[0.2, float("nan")])),
        ("line 3", "field 'probabilities[1]'", "not finite"),
    ),
    "jsonl probability outside [0, 1]": (
        _jsonl_with(_row(probabilities=[1.5, 0.7])),
        ("line 3", "field 'probabilities[0]'", "1.5 is outside [0, 1]"),
    ),
    "jsonl probability not a number": (
        _jsonl_with(_row(probabilities=["0.2", 0.7])),
        ("line 3", "field 'probabilities[0]'", "not a number"),
    ),
    "jsonl duplicate id": (
        _jsonl_with(_row(id="ok")),
        ("line 3", "field 'id'", "'ok' duplicates line 2"),
    ),
    "jsonl missing field": (
        _jsonl_with(json.dumps({"id": "x", "labels": []})),
        ("line 3", "field 'probabilities' is missing"),
    ),
    "jsonl labels not a list": (
        _jsonl_with(_row(labels="a")),
        ("line 3", "field 'labels'", "must be a list"),
    ),
    "jsonl empty file": (lambda tmp: _touch(tmp / "bad.jsonl"), ("no examples",)),
    "npz NaN probability": (
        _npz_with("pred_probs", _set((2, 1), np.nan)),
        ("row 2", "field 'pred_probs[2, 1]'", "not finite"),
    ),
    "npz infinite probability": (
        _npz_with("pred_probs", _set((4, 0), np.inf)),
        ("row 4", "field 'pred_probs[4, 0]'", "not finite"),
    ),
    "npz probability outside [0, 1]": (
        _npz_with("pred_probs", _set((1, 2), -0.25)),
        ("row 1", "field 'pred_probs[1, 2]'", "-0.25 is outside [0, 1]"),
    ),
    "npz labels not 0/1": (
        _npz_with("labels", _set((3, 0), 2)),
        ("row 3", "field 'labels[3, 0]'", "2 is not 0 or 1"),
    ),
    "npz labels of the wrong shape": (
        _npz_with("labels", lambda a: a[:, :2]),
        ("field 'labels'", "shape (5, 2) differs from pred_probs shape (5, 3)"),
    ),
    "npz pred_probs not 2-D": (
        _npz_with("pred_probs", lambda a: a.ravel()),
        ("field 'pred_probs'", "expected a 2-D (N, K) array"),
    ),
    "npz duplicate ids": (
        _npz_with("ids", _set((3,), "a")),
        ("row 3", "field 'ids'", "'a' duplicates row 0"),
    ),
    "npz missing field": (
        _npz_with("labels", lambda a: None),
        ("field 'labels' is missing",),
    ),
    "npz no examples": (
        _npz_with("pred_probs", lambda a: np.zeros((0, 3))),
        ("field 'pred_probs'", "empty array"),
    ),
    "npz pickled object array": (
        _npz_with("ids", lambda a: a.astype(object)),
        ("field 'ids'", "object arrays are not allowed"),
    ),
}


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize("kind", list(BAD_DATA))
def test_bad_data_exits_2_with_one_line_naming_file_row_and_field(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make, expected = BAD_DATA[kind]
    path = make(tmp_path)
    out = tmp_path / "report.jsonl"
    assert main(["audit", "--data", str(path), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"labelwatch audit: error: {path}")
    assert captured.err.count("\n") == 1
    for text in expected:
        assert text in captured.err
    assert not out.exists()
