"""Test support for the model lifecycle: version folders of a model repository."""

from __future__ import annotations

import shutil
from pathlib import Path

from labelwatch.repository import MODEL_FILE, THRESHOLDS_FILE
from support_server import CLASS_NAMES, float_model, write_artifact


def write_version(
    root: Path,
    name: str,
    *,
    model_seed: int | None = 1,
    artifact_seed: int = 0,
    class_names: tuple[str, ...] = CLASS_NAMES,
) -> Path:
    """Make ``root/name/`` with a float model (``model_seed``; None: thresholds only) and
    its artifact, tied to the model's sha256. Returns the folder."""
    folder = root / name
    folder.mkdir(parents=True)
    model = None
    if model_seed is not None:
        model = float_model(folder / MODEL_FILE, k=len(class_names), seed=model_seed)
    write_artifact(
        folder / THRESHOLDS_FILE, class_names=class_names, model_path=model, seed=artifact_seed
    )
    return folder


def copy_version(root: Path, source: str, name: str) -> Path:
    """Publish a copy of version ``source`` as ``name`` (via a hidden folder, then rename)."""
    staging = root / f".staging-{name}"
    shutil.copytree(root / source, staging)
    staging.rename(root / name)
    return root / name
