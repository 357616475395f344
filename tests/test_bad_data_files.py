"""Every broken data file gets one line from `audit` and `calibrate`: the file and what is wrong.

Exit status 2, nothing on stdout, no traceback, and never numpy's advice to load a file with
``allow_pickle`` (a pickle can run code; labelwatch never loads one).
"""

from __future__ import annotations

import gzip
import json
import pickle
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from labelwatch.cli import main
from support_server import _env


def _good_npz(path: Path, *, compressed: bool = False) -> Path:
    rng = np.random.default_rng(0)
    save = np.savez_compressed if compressed else np.savez
    with path.open("wb") as fh:  # a file object: numpy adds no .npz to the name
        save(fh, pred_probs=rng.random((50, 3)), labels=(rng.random((50, 3)) < 0.3).astype(np.int8))
    return path


def _empty(tmp: Path, name: str) -> Path:
    path = tmp / name
    path.write_bytes(b"")
    return path


def _truncated_npz(tmp: Path) -> Path:
    data = _good_npz(tmp / "full.npz").read_bytes()
    path = tmp / "bad.npz"
    path.write_bytes(data[: len(data) // 2])
    return path


def _corrupt_member(compressed: bool) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        data = bytearray(_good_npz(tmp / "full.npz", compressed=compressed).read_bytes())
        data[len(data) // 3] ^= 0xFF  # inside the first member's data, the directory intact
        path = tmp / "bad.npz"
        path.write_bytes(bytes(data))
        return path

    return make


def _text_as_npz(tmp: Path) -> Path:
    path = tmp / "bad.npz"
    path.write_text("id,label\na,cat\n")
    return path


def _pickle_as(name: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / name
        # a harmless pickle: the point is that it is never unpickled
        path.write_bytes(pickle.dumps({"pred_probs": [[0.5]], "labels": [[1]]}))
        return path

    return make


def _npy_as_npz(tmp: Path) -> Path:
    path = tmp / "bad.npz"
    with path.open("wb") as fh:
        np.save(fh, np.zeros((3, 2)))
    return path


def _empty_zip(tmp: Path) -> Path:
    path = tmp / "bad.npz"
    zipfile.ZipFile(path, "w").close()
    return path


def _npz(**arrays: object) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / "bad.npz"
        np.savez(path, **arrays)  # type: ignore[arg-type]
        return path

    return make


def _gzipped_jsonl(tmp: Path) -> Path:
    path = tmp / "bad.jsonl"
    line = {"id": "a", "labels": ["x"], "probabilities": [0.9, 0.1]}
    text = json.dumps({"class_names": ["x", "y"]}) + "\n" + json.dumps(line) + "\n"
    path.write_bytes(gzip.compress(text.encode()))
    return path


def _jsonl(text: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / "bad.jsonl"
        path.write_text(text)
        return path

    return make


_HEADER = json.dumps({"class_names": ["x", "y"]}) + "\n"
_ROW = json.dumps({"id": "a", "labels": ["x"], "probabilities": [0.9, 0.1]}) + "\n"
OBJECT_PROBS = np.array([[0.5, 0.5]], dtype=object)

# name -> (make the file in a temp dir, fragments the one-line message must contain)
BAD_FILES: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "empty npz": (lambda tmp: _empty(tmp, "bad.npz"), ("the file is empty (0 bytes)", "savez")),
    "truncated npz": (_truncated_npz, ("truncated or corrupt",)),
    "corrupt npz member": (_corrupt_member(False), ("field", "corrupt or truncated")),
    "corrupt compressed npz member": (_corrupt_member(True), ("corrupt or truncated",)),
    "text file named npz": (_text_as_npz, ("not an .npz archive (not a zip file)",)),
    "pickle named npz": (_pickle_as("bad.npz"), ("a Python pickle", "never loaded")),
    "npy named npz": (_npy_as_npz, ("a single array saved with numpy.save", "savez")),
    "zip without arrays": (_empty_zip, ("holds no arrays",)),
    "pickled object array": (
        _npz(pred_probs=OBJECT_PROBS, labels=np.array([[1, 0]])),
        ("field 'pred_probs'", "object arrays are not allowed"),
    ),
    "wrong keys": (_npz(probs=np.zeros((2, 2))), ("field 'pred_probs' is missing", "probs")),
    "labels of another shape": (
        _npz(pred_probs=np.full((4, 3), 0.5), labels=np.zeros((4, 2))),
        ("field 'labels'", "shape (4, 2) differs from pred_probs shape (4, 3)"),
    ),
    "pred_probs not a matrix": (
        _npz(pred_probs=np.full((4,), 0.5), labels=np.zeros((4,))),
        ("field 'pred_probs'", "2-D (N, K)"),
    ),
    "class_names of another length": (
        _npz(pred_probs=np.full((4, 3), 0.5), labels=np.zeros((4, 3)), class_names=np.array(["a"])),
        ("field 'class_names'", "expected shape (3,)"),
    ),
    "a directory": (
        lambda tmp: (tmp / "dir.npz").mkdir() or tmp / "dir.npz",
        ("is a directory",),
    ),
    "missing file": (lambda tmp: tmp / "nowhere.npz", ("no such file",)),
    "empty jsonl": (lambda tmp: _empty(tmp, "bad.jsonl"), ("no examples (the file is empty)",)),
    "truncated jsonl": (
        _jsonl(_HEADER + _ROW + _ROW.replace('"a"', '"b"')[:30]),
        ("line 3", "invalid JSON", "the file ends inside this line (truncated?)"),
    ),
    "gzipped jsonl": (_gzipped_jsonl, ("gzip-compressed", "gunzip")),
    "pickle named jsonl": (_pickle_as("bad.jsonl"), ("a Python pickle", "not JSON Lines")),
    "npz renamed jsonl": (
        lambda tmp: _good_npz(tmp / "bad.jsonl"),
        ("a zip archive", "not JSON Lines"),
    ),
    "jsonl wrong keys": (
        _jsonl(_HEADER + json.dumps({"id": "a", "tags": ["x"], "probabilities": [0.1, 0.2]})),
        ("line 2", "field 'labels' is missing"),
    ),
    "jsonl wrong shape": (
        _jsonl(_HEADER + json.dumps({"id": "a", "labels": [], "probabilities": [0.1]})),
        ("line 2", "has 1 values, expected 2"),
    ),
    "jsonl without class order": (_jsonl(_ROW), ("the class order is unknown",)),
}


@pytest.mark.parametrize("command", ["audit", "calibrate"])
@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_data_file_gets_one_line_naming_the_file_and_exit_2(
    tmp_path: Path, kind: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make, fragments = BAD_FILES[kind]
    path = make(tmp_path)
    out = tmp_path / ("report.jsonl" if command == "audit" else "thresholds.json")
    assert main([command, "--data", str(path), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"labelwatch {command}: error: {path}"), captured.err
    assert captured.err.count("\n") == 1, captured.err
    for fragment in fragments:
        assert fragment in captured.err, captured.err
    assert "allow_pickle" not in captured.err and "pickle.load" not in captured.err
    assert not out.exists()


@pytest.mark.parametrize("command", ["audit", "calibrate"])
def test_an_empty_npz_in_a_real_process_prints_no_traceback(tmp_path: Path, command: str) -> None:
    path = _empty(tmp_path, "calib.npz")
    done = subprocess.run(
        [sys.executable, "-m", "labelwatch.cli", command, "--data", str(path), "--out",
         str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, env=_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        f"labelwatch {command}: error: {path}: the file is empty (0 bytes); "
        "write it with numpy.savez(path, pred_probs=..., labels=...)\n"
    )
