"""Domain values passed between the codecs (:mod:`labelwatch.codec`) and the pipeline."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray


class InputKind(enum.Enum):
    """What a loaded model takes as input."""

    TEXT = "text"
    FEATURES = "features"
    PROBABILITIES_ONLY = "probabilities_only"  # no model: callers send probabilities


@dataclass(frozen=True)
class ModelSpec:
    """What a request must match: input kind, feature length and the classes."""

    input_kind: InputKind
    feature_dim: int | None  # D for FEATURES models, else None
    class_names: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        """K, the number of classes."""
        return len(self.class_names)


@dataclass(frozen=True)
class LabeledExample:
    """One validated example.

    Exactly one of ``text``, ``features`` (``(D,)`` float32) or
    ``probabilities`` (``(K,)`` float64) is set. ``labels`` is the ``(K,)`` bool
    tag vector.
    """

    id: str
    labels: NDArray[np.bool_]
    text: str | None = None
    features: NDArray[np.float32] | None = None
    probabilities: NDArray[np.float64] | None = None
    annotator_id: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoredBatch:
    """Pipeline output for a batch of ``n`` examples over ``K`` classes.

    ``probabilities`` ``(n, K)`` float64; ``flags``/``labels`` ``(n, K)`` bool;
    ``label_quality`` ``(n,)`` float64; ``t0``/``t1`` ``(K,)`` thresholds;
    ``error_probability`` ``(n, K)`` float64 (NaN where not flagged) or ``None`` when the
    artifact has no tag-context model.
    """

    examples: tuple[LabeledExample, ...]
    probabilities: NDArray[np.float64]
    labels: NDArray[np.bool_]
    flags: NDArray[np.bool_]
    label_quality: NDArray[np.float64]
    t0: NDArray[np.float64]
    t1: NDArray[np.float64]
    model_version: str
    error_probability: NDArray[np.float64] | None = None

    def slice(self, start: int, stop: int) -> ScoredBatch:
        """Examples ``[start, stop)`` of this batch (arrays are views, not copies)."""
        return ScoredBatch(
            examples=self.examples[start:stop],
            probabilities=self.probabilities[start:stop],
            labels=self.labels[start:stop],
            flags=self.flags[start:stop],
            label_quality=self.label_quality[start:stop],
            t0=self.t0,
            t1=self.t1,
            model_version=self.model_version,
            error_probability=(
                None if self.error_probability is None else self.error_probability[start:stop]
            ),
        )
