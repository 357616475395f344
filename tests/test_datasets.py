"""Loading labeled data (.npz, .jsonl) for the offline commands, and refusing bad files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from labelwatch.commands._offline import Progress
from labelwatch.datasets import (
    PROGRESS_EVERY_LINES,
    DataError,
    LabeledData,
    load,
    parse_class_names,
)

NAMES = ("cat", "dog", "bird")
PROBS = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.6], [0.05, 0.1, 0.95], [0.5, 0.5, 0.5]])
LABELS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])


def _npz(path: Path, **arrays: object) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _jsonl(path: Path, rows: list[object], header: bool = True) -> Path:
    lines = [json.dumps({"class_names": list(NAMES)})] if header else []
    lines += [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _rows() -> list[object]:
    return [
        {
            "id": f"ex{i}",
            "labels": [NAMES[k] for k in np.flatnonzero(LABELS[i])],
            "probabilities": PROBS[i].tolist(),
        }
        for i in range(len(PROBS))
    ]


def _same(data: LabeledData, names: tuple[str, ...], ids: tuple[str, ...]) -> None:
    np.testing.assert_array_equal(data.pred_probs, PROBS)
    np.testing.assert_array_equal(data.labels, LABELS.astype(bool))
    assert data.pred_probs.dtype == np.float64
    assert data.labels.dtype == np.bool_
    assert data.class_names == names
    assert data.ids == ids


def test_npz_with_names_and_ids_loads_every_field(tmp_path: Path) -> None:
    path = _npz(
        tmp_path / "d.npz",
        pred_probs=PROBS,
        labels=LABELS,
        class_names=np.array(NAMES),
        ids=np.array(["a", "b", "c", "d"]),
    )
    _same(load(path), NAMES, ("a", "b", "c", "d"))


def test_npz_without_names_gets_index_names_and_index_ids(tmp_path: Path) -> None:
    path = _npz(tmp_path / "d.npz", pred_probs=PROBS.astype(np.float32), labels=LABELS.astype(bool))
    data = load(path)
    assert data.class_names == ("0", "1", "2")
    assert data.ids == ("0", "1", "2", "3")
    assert data.pred_probs.dtype == np.float32  # kept: audits equal cleanlab's float32 run
    half = _npz(tmp_path / "h.npz", pred_probs=PROBS.astype(np.float16), labels=LABELS)
    assert load(half).pred_probs.dtype == np.float64  # anything else is widened


def test_npz_without_names_takes_the_expected_names(tmp_path: Path) -> None:
    path = _npz(tmp_path / "d.npz", pred_probs=PROBS, labels=LABELS)
    assert load(path, class_names=NAMES).class_names == NAMES


def test_npz_names_that_differ_from_the_expected_ones_are_refused(tmp_path: Path) -> None:
    path = _npz(tmp_path / "d.npz", pred_probs=PROBS, labels=LABELS, class_names=np.array(NAMES))
    with pytest.raises(DataError, match=r"class #1 is 'dog' but 'cow' was expected"):
        load(path, class_names=("cat", "cow", "bird"))
    with pytest.raises(DataError, match="has 3 classes but 2 were expected"):
        load(path, class_names=("cat", "dog"))


def test_npz_object_arrays_are_refused_without_unpickling(tmp_path: Path) -> None:
    path = _npz(
        tmp_path / "d.npz",
        pred_probs=PROBS,
        labels=LABELS,
        class_names=np.array(["cat", "dog", "bird"], dtype=object),
    )
    with pytest.raises(DataError, match=r"field 'class_names': object arrays are not allowed"):
        load(path)


def test_npz_that_is_not_a_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"not an \.npz archive \(not a zip file\)"):
        load(path)


def test_jsonl_with_class_names_line_loads(tmp_path: Path) -> None:
    _same(load(_jsonl(tmp_path / "d.jsonl", _rows())), NAMES, ("ex0", "ex1", "ex2", "ex3"))


def test_jsonl_without_header_takes_the_given_class_order(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", _rows(), header=False)
    _same(load(path, class_names=NAMES), NAMES, ("ex0", "ex1", "ex2", "ex3"))


def test_jsonl_without_any_class_order_is_refused_with_the_ways_to_give_one(
    tmp_path: Path,
) -> None:
    path = _jsonl(tmp_path / "d.jsonl", _rows(), header=False)
    with pytest.raises(DataError, match=r"class order is unknown.*--class-names.*class_names"):
        load(path)


def test_jsonl_header_must_agree_with_the_expected_names(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", _rows())
    with pytest.raises(DataError, match=r"line 1: field 'class_names': class #0 is 'cat'"):
        load(path, class_names=("lion", "dog", "bird"))


def test_jsonl_blank_lines_and_extra_keys_are_ignored_and_integer_ids_become_strings(
    tmp_path: Path,
) -> None:
    rows = _rows()
    rows.insert(2, "")
    rows[0] = {**rows[0], "id": 7, "text": "ignored"}  # type: ignore[dict-item]
    data = load(_jsonl(tmp_path / "d.jsonl", rows))
    assert data.ids == ("7", "ex1", "ex2", "ex3")


def test_jsonl_with_only_a_header_has_no_examples(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no examples"):
        load(_jsonl(tmp_path / "d.jsonl", []))


def test_unknown_extension_and_missing_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown data format '\.csv'"):
        load(tmp_path / "d.csv")
    with pytest.raises(DataError, match="no such file"):
        load(tmp_path / "absent.npz")


def test_parse_class_names_strips_and_refuses_duplicates_and_empty_names() -> None:
    assert parse_class_names("cat, dog,bird") == NAMES
    with pytest.raises(DataError, match="'cat' appears twice"):
        parse_class_names("cat,dog,cat")
    with pytest.raises(DataError, match="#1 must be a non-empty string"):
        parse_class_names("cat,,dog")


def test_jsonl_load_reports_the_share_of_the_file_read(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    lines = [json.dumps({"class_names": ["a", "b"]})]
    lines += [
        json.dumps({"id": f"x{i}", "labels": ["a"], "probabilities": [0.9, 0.1]})
        for i in range(3 * PROGRESS_EVERY_LINES)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    seen: list[float] = []
    data = load(path, progress=seen.append)
    assert data.n_examples == 3 * PROGRESS_EVERY_LINES
    assert len(seen) >= 4 and seen[-1] == 1.0
    assert seen == sorted(seen) and 0.0 < seen[0] < 0.5


def test_progress_draws_a_percentage_on_a_tty_and_stays_silent_otherwise() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        progress = Progress("audit", stream=stream, interval=0.0)
        progress.stage("loading x.jsonl")
        progress.fraction(0.5)
        progress.fraction(1.0)
    assert "loading x.jsonl  50.0%" in tty.getvalue()
    assert "100.0%" in tty.getvalue()
    assert pipe.getvalue() == ""  # small runs off a TTY print nothing
