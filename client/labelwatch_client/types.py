"""Plain values the client sends and receives, and their JSON (JSONL) forms.

The JSON of an :class:`Example` is one object::

    {"id": "a1", "text": "a red car", "labels": ["red", "vehicle"],
     "annotator_id": "ann-7", "metadata": {"source": "batch-3"}}

with exactly one of ``text`` (string), ``features`` (list of numbers) or
``probabilities`` (list of numbers in [0, 1], one per class); the tags as
``labels`` (class names) and/or ``label_indices`` (integers in [0, K)). Other
keys are ignored. A :class:`ScoreResult` is written in the audit format::

    {"id": "a1", "label_quality": 0.41, "is_issue": true,
     "issues": [{"label": "dog", "class_index": 1, "kind": "MISSING",
                 "probability": 0.93, "threshold": 0.71}],
     "suggested_labels": ["cat", "dog"], "model_version": "m-1"}

(+ ``"probabilities"`` when they were asked for).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from labelwatch_client.errors import ExampleFormatError

_INPUTS = ("text", "features", "probabilities")


class IssueKind(enum.Enum):
    """What is wrong with one class of one example."""

    MISSING = "MISSING"
    """The class is not tagged, and the model is confident it applies."""
    SPURIOUS = "SPURIOUS"
    """The class is tagged, and the model is confident it does not apply."""


class InputKind(enum.Enum):
    """Which :class:`Example` input the server's model takes."""

    UNSPECIFIED = "UNSPECIFIED"
    TEXT = "TEXT"
    FEATURES = "FEATURES"
    PROBABILITIES_ONLY = "PROBABILITIES_ONLY"
    """No model is loaded: only ``Example.probabilities`` are accepted."""


@dataclass(frozen=True)
class Example:
    """One labeled example to score.

    Give at most one input: ``text``, ``features`` (length D, sent as float32)
    or ``probabilities`` (length K, each in [0, 1], from your own model). Tags
    go in ``labels`` (class names) or ``label_indices`` (in [0, K)); neither
    means "no tags". Sequences are stored as tuples.

    >>> Example("a1", text="a red car", labels=["red", "vehicle"]).labels
    ('red', 'vehicle')
    """

    id: str
    text: str | None = None
    features: Sequence[float] | None = None
    probabilities: Sequence[float] | None = None
    labels: Sequence[str] = ()
    label_indices: Sequence[int] = ()
    annotator_id: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        given = [name for name in _INPUTS if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"example {self.id!r}: give one input, not {' and '.join(given)}")
        if self.features is not None:
            object.__setattr__(self, "features", tuple(map(float, self.features)))
        if self.probabilities is not None:
            object.__setattr__(self, "probabilities", tuple(map(float, self.probabilities)))
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "label_indices", tuple(map(int, self.label_indices)))
        object.__setattr__(self, "metadata", dict(self.metadata))

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Example:
        """Build an example from one parsed JSON object (see the module docstring).

        Raises :class:`ExampleFormatError` naming the first bad field.
        """
        if not isinstance(obj, Mapping):
            raise ExampleFormatError(None, f"expected a JSON object, got {type(obj).__name__}")
        id_ = _id(obj.get("id"))
        given = [name for name in _INPUTS if obj.get(name) is not None]
        if len(given) > 1:
            raise ExampleFormatError(
                given[1], f"give one of text, features, probabilities, not {' and '.join(given)}"
            )
        if not given:
            raise ExampleFormatError("text", "no input: give one of text, features, probabilities")
        inputs: dict[str, Any] = {}
        if given[0] == "text":
            inputs["text"] = _string(obj["text"], "text")
        else:
            inputs[given[0]] = _numbers(obj[given[0]], given[0], unit=given[0] == "probabilities")
        # null counts as absent for the optional fields
        labels = obj.get("labels")
        indices = obj.get("label_indices")
        annotator = obj.get("annotator_id")
        metadata = obj.get("metadata")
        return cls(
            id=id_,
            labels=() if labels is None else _strings(labels, "labels"),
            label_indices=() if indices is None else _indices(indices, "label_indices"),
            annotator_id="" if annotator is None else _string(annotator, "annotator_id"),
            metadata={} if metadata is None else _metadata(metadata),
            **inputs,
        )


@dataclass(frozen=True)
class ClassIssue:
    """A suspected problem with one class of one example.

    ``probability`` is the model's p[k]; ``threshold`` is the class's calibrated
    confident threshold on the same scale: t1[k] for MISSING (p >= t1), 1 - t0[k] for
    SPURIOUS (p <= 1 - t0) (only confident_learning flags exactly when it is crossed).
    ``error_probability``: the calibrated probability that the tag is wrong, in [0, 1]
    (``None`` when the server's artifact has no tag-context model).
    """

    label: str
    class_index: int
    kind: IssueKind
    probability: float
    threshold: float
    error_probability: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The audit-format object, e.g. ``{"label": "dog", ..., "kind": "MISSING", ...}``."""
        return {
            "label": self.label,
            "class_index": self.class_index,
            "kind": self.kind.value,
            "probability": self.probability,
            "threshold": self.threshold,
            "error_probability": self.error_probability,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ClassIssue:
        """Inverse of :meth:`to_json`."""
        return cls(
            label=str(obj["label"]),
            class_index=int(obj["class_index"]),
            kind=IssueKind(obj["kind"]),
            probability=float(obj["probability"]),
            threshold=float(obj["threshold"]),
            error_probability=(
                None if obj.get("error_probability") is None else float(obj["error_probability"])
            ),
        )


@dataclass(frozen=True)
class ScoreResult:
    """The verdict on one example.

    ``label_quality`` is in [0, 1], lower = more likely mislabeled.
    ``suggested_labels`` are the given tags with every flagged class corrected.
    ``probabilities`` (length K) is set only when the request asked for them.
    """

    id: str
    label_quality: float
    is_issue: bool
    issues: tuple[ClassIssue, ...] = ()
    suggested_labels: tuple[str, ...] = ()
    model_version: str = ""
    probabilities: tuple[float, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The audit-format object (without ``index``, which only the caller knows)."""
        out: dict[str, Any] = {
            "id": self.id,
            "label_quality": self.label_quality,
            "is_issue": self.is_issue,
            "issues": [issue.to_json() for issue in self.issues],
            "suggested_labels": list(self.suggested_labels),
            "model_version": self.model_version,
        }
        if self.probabilities is not None:
            out["probabilities"] = list(self.probabilities)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ScoreResult:
        """Inverse of :meth:`to_json` (an ``index`` key is ignored)."""
        probs = obj.get("probabilities")
        return cls(
            id=str(obj["id"]),
            label_quality=float(obj["label_quality"]),
            is_issue=bool(obj["is_issue"]),
            issues=tuple(ClassIssue.from_json(i) for i in obj.get("issues", [])),
            suggested_labels=tuple(map(str, obj.get("suggested_labels", []))),
            model_version=str(obj.get("model_version", "")),
            probabilities=None if probs is None else tuple(map(float, probs)),
        )


@dataclass(frozen=True)
class ClassCalibration:
    """Calibration values of one class.

    ``t0`` is the mean of 1 - p over calibration examples not tagged, ``t1`` the
    mean of p over those tagged; the rates are the fractions flagged at calibration.
    """

    label: str
    t0: float
    t1: float
    n_pos: int
    n_neg: int
    missing_rate: float
    spurious_rate: float


@dataclass(frozen=True)
class CalibrationSummary:
    """How the server's thresholds were fitted and how it pools and flags."""

    schema_version: int
    calibration_size: int
    pooling: str
    alpha: float
    temperature: float
    filter_by: str
    created_at: str
    classes: tuple[ClassCalibration, ...] = ()
    flag_budget: float = 0.0  # the budget rule's flagged tags per example; 0: another rule
    context_tags: int = -1  # tag-context model's tags per class; -1: no tag-context model


@dataclass(frozen=True)
class ModelInfo:
    """The server's model and calibration.

    ``input_shape`` uses -1 for a dynamic dimension; ``sha256`` is empty when no
    model is loaded; ``version`` is stamped on every :class:`ScoreResult`.
    """

    name: str
    version: str
    sha256: str
    input_kind: InputKind
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    calibration: CalibrationSummary
    server_version: str
    loaded_at: str = ""  # when this version started serving, ISO-8601 UTC
    shadow_version: str = ""  # the server's --shadow-version, "" without one

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with the proto's field names; enums as their names."""
        cal = self.calibration
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "input_kind": self.input_kind.value,
            "input_shape": list(self.input_shape),
            "class_names": list(self.class_names),
            "calibration": {
                "schema_version": cal.schema_version,
                "calibration_size": cal.calibration_size,
                "pooling": cal.pooling,
                "alpha": cal.alpha,
                "temperature": cal.temperature,
                "filter_by": cal.filter_by,
                "created_at": cal.created_at,
                "classes": [
                    {
                        "label": c.label,
                        "t0": c.t0,
                        "t1": c.t1,
                        "n_pos": c.n_pos,
                        "n_neg": c.n_neg,
                        "missing_rate": c.missing_rate,
                        "spurious_rate": c.spurious_rate,
                    }
                    for c in cal.classes
                ],
            },
            "server_version": self.server_version,
            "loaded_at": self.loaded_at,
            "shadow_version": self.shadow_version,
        }


# --- JSON field checks --------------------------------------------------------------------------


def _id(value: Any) -> str:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is None:
        raise ExampleFormatError("id", "is missing; every example needs a non-empty string id")
    raise ExampleFormatError("id", f"must be a non-empty string (got {value!r})")


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ExampleFormatError(name, f"must be a string (got {value!r})")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(value: Any, name: str, *, unit: bool) -> list[float]:
    if not isinstance(value, list):
        raise ExampleFormatError(name, f"must be a list of numbers (got {type(value).__name__})")
    if not value:
        raise ExampleFormatError(name, "must not be empty")
    for j, x in enumerate(value):
        if not _is_number(x):
            raise ExampleFormatError(f"{name}[{j}]", f"{x!r} is not a number")
        if not math.isfinite(x):
            raise ExampleFormatError(f"{name}[{j}]", f"{float(x)} is not finite")
        if unit and not 0.0 <= x <= 1.0:
            # float(): a numpy scalar would print as np.float64(1.5), not as written
            raise ExampleFormatError(f"{name}[{j}]", f"{float(x)!r} is outside [0, 1]")
    return [float(x) for x in value]


def _strings(value: Any, name: str) -> list[str]:
    if not isinstance(value, list):
        raise ExampleFormatError(name, "must be a list of class names")
    for j, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ExampleFormatError(f"{name}[{j}]", f"{item!r} is not a class name")
    return value


def _indices(value: Any, name: str) -> list[int]:
    if not isinstance(value, list):
        raise ExampleFormatError(name, "must be a list of class indices")
    for j, item in enumerate(value):
        if not isinstance(item, int) or isinstance(item, bool) or item < 0:
            raise ExampleFormatError(f"{name}[{j}]", f"{item!r} is not a class index (an int >= 0)")
        if item >= 2**31:
            raise ExampleFormatError(f"{name}[{j}]", f"{item} is too large")
    return value


def _metadata(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ExampleFormatError("metadata", "must be an object of string values")
    for key, item in value.items():
        if not isinstance(item, str):
            raise ExampleFormatError(f"metadata.{key}", f"must be a string (got {item!r})")
    return dict(value)
