"""The model and thresholds that ship inside the package, served when no model is given.

``DEFAULT_MODEL`` is a TF-IDF + one-vs-rest logistic regression over Debian's debtags
(124 classes such as ``role::program`` or ``implemented-in::python``), taking raw text:
input ``text`` string ``(N, 1)``, output ``probabilities`` float32 ``(N, K)``, class names
in the model's ``class_names`` metadata. ``DEFAULT_THRESHOLDS`` is its calibration artifact,
fitted on held-out packages and tied to the model's sha256. Both are made by
``scripts/train_default_model.py``; the data and the measured quality are described in
``labelwatch/data/DATASET.md``.

>>> DEFAULT_MODEL.name, DEFAULT_THRESHOLDS.name
('default_model.onnx', 'default_thresholds.json')
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR: Path = Path(__file__).resolve().parent / "data"
DEFAULT_MODEL: Path = DATA_DIR / "default_model.onnx"
DEFAULT_THRESHOLDS: Path = DATA_DIR / "default_thresholds.json"


def available() -> bool:
    """True when both the default model and its thresholds artifact are installed.

    A source checkout or wheel built without the data files (e.g. a trimmed container
    image) has neither; callers then need an explicit ``--model``/``--thresholds``.
    """
    return DEFAULT_MODEL.is_file() and DEFAULT_THRESHOLDS.is_file()
