"""Load the shipped debtags dataset (``data/debtags/debtags.jsonl.gz``) as arrays.

Used by ``scripts/train_default_model.py`` and ``bench/detection.py``; the file format is
described in ``service/labelwatch/data/DATASET.md`` and made by
``scripts/build_debtags_dataset.py``.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "data" / "debtags" / "debtags.jsonl.gz"
SPLITS = ("train", "calibration", "test")


@dataclass(frozen=True)
class Split:
    """``n`` packages: ``ids`` and ``texts`` (length ``n``), ``labels`` ``(n, K)`` bool."""

    ids: tuple[str, ...]
    texts: tuple[str, ...]
    labels: NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Debtags:
    """The dataset: sorted ``class_names`` (``K``) and one :class:`Split` per split name."""

    class_names: tuple[str, ...]
    splits: dict[str, Split]

    def __getitem__(self, split: str) -> Split:
        return self.splits[split]


def load(path: Path = DATASET) -> Debtags:
    """Read the gzip JSON Lines file; classes are the sorted union of all labels."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    class_names = tuple(sorted({c for r in rows for c in r["labels"]}))
    index = {c: i for i, c in enumerate(class_names)}
    splits: dict[str, Split] = {}
    for name in SPLITS:
        part = [r for r in rows if r["split"] == name]
        labels = np.zeros((len(part), len(class_names)), dtype=bool)
        for i, row in enumerate(part):
            labels[i, [index[c] for c in row["labels"]]] = True
        splits[name] = Split(
            ids=tuple(r["id"] for r in part),
            texts=tuple(r["text"] for r in part),
            labels=labels,
        )
    unknown = {r["split"] for r in rows} - set(SPLITS)
    if unknown:
        raise ValueError(f"{path}: unknown split names {sorted(unknown)}")
    return Debtags(class_names=class_names, splits=splits)
