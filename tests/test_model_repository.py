"""The model repository: which version folder serves, and one clear error per bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support_lifecycle import write_version

from labelwatch.repository import ModelRepository, RepositoryError


def test_highest_version_serves_in_natural_order(tmp_path: Path) -> None:
    for name in ("2", "10", "9"):
        write_version(tmp_path, name)
    (tmp_path / "README.md").write_text("plain files are ignored")
    (tmp_path / ".staging-11").mkdir()  # hidden: a version being copied in
    version = ModelRepository(tmp_path).resolve()
    assert version.name == "10"
    assert version.model == tmp_path / "10" / "model.onnx"
    assert version.thresholds == tmp_path / "10" / "thresholds.json"


def test_current_symlink_or_file_picks_the_version(tmp_path: Path) -> None:
    write_version(tmp_path, "1")
    write_version(tmp_path, "2")
    (tmp_path / "current").symlink_to("1")
    assert ModelRepository(tmp_path).resolve().name == "1"
    (tmp_path / "current").unlink()
    (tmp_path / "current").write_text("1\n")
    assert ModelRepository(tmp_path).resolve().name == "1"


def test_thresholds_only_version_has_no_model(tmp_path: Path) -> None:
    write_version(tmp_path, "1", model_seed=None)
    assert ModelRepository(tmp_path).resolve().model is None


@pytest.mark.parametrize(
    ("arrange", "expected"),
    [
        (lambda root: None, "has no version folders"),
        (lambda root: (root / "current").write_text("7"), "names version '7'"),
        (lambda root: (root / "current").write_text("../1"), "not a path-safe version name"),
        (lambda root: (root / "current").symlink_to("/tmp"), "not a version folder of this"),
        (
            lambda root: (
                (root / "current").write_text("1"),
                (root / "CURRENT.txt").write_text("1"),
            ),
            "2 'current' markers",
        ),
        (lambda root: (root / "v 2").mkdir(), "'v 2' is not a path-safe name"),
        (lambda root: (root / "5").mkdir(), "thresholds.json is missing"),
        (lambda root: (root / "5" / "thresholds.json").mkdir(parents=True), "cannot be read"),
    ],
    ids=[
        "empty",
        "current-names-missing-version",
        "current-not-path-safe",
        "symlink-outside",
        "two-current-markers",
        "folder-name-not-path-safe",
        "no-thresholds",
        "unreadable-thresholds",
    ],
)
def test_bad_repository_is_one_clear_error(tmp_path: Path, arrange: object, expected: str) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    if "empty" not in expected and "has no version" not in expected:
        write_version(root, "1")
    arrange(root)  # type: ignore[operator]
    with pytest.raises(RepositoryError, match=expected) as info:
        ModelRepository(root).resolve()
    assert "\n" not in str(info.value)


def test_missing_repository_is_reported(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="does not exist"):
        ModelRepository(tmp_path / "nope").resolve()


def test_dangling_model_symlink_is_unreadable(tmp_path: Path) -> None:
    folder = write_version(tmp_path, "1", model_seed=None)
    os.symlink(tmp_path / "gone.onnx", folder / "model.onnx")
    with pytest.raises(RepositoryError, match=r"model\.onnx cannot be read"):
        ModelRepository(tmp_path).resolve()
