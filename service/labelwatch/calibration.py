"""The calibration artifact: a versioned JSON file of fitted thresholds, tied to a model.

``labelwatch calibrate`` writes it (:func:`calibrate` + :func:`save_artifact`);
``labelwatch serve``/``audit`` read it (:func:`load_artifact`), which validates every
field and raises :class:`ArtifactError` naming the file and the field. Layout
(schema version 2; K = ``n_classes``; "pairs" are K ``[missing, spurious]`` lists)::

    {"schema_version": 2, "n_classes": K, "class_names": [K names],
     "epsilon": 1e-06,
     "pooling": {"method": "exponential_moving_average" | "softmin",
                 "alpha": (0, 1], "temperature": > 0, "class_score": "self_confidence",
                 "probabilities": "model" | "context"},  # v2; absent = "model"
     "filter_by": a FilterBy value (optional; absent = "confident_learning"),
     "thresholds": {"t0": [K], "t1": [K], "n_pos": [K ints], "n_neg": [K ints]},
     "margin_cutoffs": {"prune_by_noise_rate": pairs, "prune_by_class": pairs,
                        "both": pairs},
     "score_cutoff": float | null,
     "calibration": {"n_examples": N, "flag_rates": {rule: pairs, ... every rule}},
     "model_sha256": "64 hex digits" | null, "created_at": "ISO-8601 UTC",
     "context": ..., "flag_budget": ..., "error_probability": ...,  # optional, together
     "sha256": "64 hex digits"}

Version 2 adds the tag-context sections (:mod:`labelwatch.context_artifact`; the
``budget`` rule, ``class_score`` ``context_self_confidence`` and per-flag error
probabilities need them) and ``sha256``: the hash of the document's canonical JSON
(keys sorted, no spaces) without that key, so an edited file is refused. Version 1
files (no sections, no hash) still load and behave exactly as before.

``filter_by`` is the flag rule the artifact was chosen to be served with; ``labelwatch
serve`` uses it unless ``--filter-by`` is given. It was added within schema version 1:
older artifacts without it load as ``confident_learning`` (the server's rule before), and
older readers ignore it.

``null`` stands for NaN ("this cut-off flags nothing"; JSON has no NaN). Floats are
written with ``repr`` precision, so save + load gives back the same bits.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

from labelwatch import context_artifact
from labelwatch.artifact_reader import (
    DEFAULT_FILTER_BY,
    ArtifactError,
    ArtifactReader,
    content_sha256,
)
from labelwatch.scoring import (
    CalibrationFit,
    ClassScore,
    FilterBy,
    Pooling,
)
from labelwatch.scoring.budget import DEFAULT_BUDGET
from labelwatch.scoring.online import fit_calibration
from labelwatch.scoring.thresholds import TOLERANCE

__all__ = [
    "DEFAULT_FILTER_BY",
    "SCHEMA_VERSION",
    "ArtifactError",
    "CalibrationArtifact",
    "calibrate",
    "content_sha256",
    "load_artifact",
    "save_artifact",
]

SCHEMA_VERSION = 2
"""Version of the JSON layout this module writes."""


@dataclass(frozen=True)
class CalibrationArtifact:
    """A :class:`CalibrationFit` plus what it was fitted for.

    ``created_at``: ISO-8601 UTC time of fitting; ``epsilon``: the fuzzy
    comparison margin the rules apply (cleanlab's 1e-6, fixed); ``filter_by``: the flag
    rule to serve the thresholds with (``labelwatch serve`` uses it without ``--filter-by``).
    """

    fit: CalibrationFit
    class_names: tuple[str, ...]
    model_sha256: str | None
    created_at: str
    filter_by: FilterBy = DEFAULT_FILTER_BY
    epsilon: float = TOLERANCE
    schema_version: int = SCHEMA_VERSION

    @property
    def n_classes(self) -> int:
        """K, the number of classes."""
        return len(self.class_names)

    def to_json_dict(self) -> dict[str, object]:
        """The JSON document (plain dicts, lists, floats, ints, strings; NaN as ``None``)."""
        fit = self.fit
        th = fit.thresholds
        doc: dict[str, object] = {
            "schema_version": self.schema_version,
            "n_classes": self.n_classes,
            "class_names": list(self.class_names),
            "epsilon": self.epsilon,
            "pooling": {
                "method": fit.pooling.value,
                "alpha": fit.alpha,
                "temperature": fit.temperature,
                "class_score": fit.method.value,
                "probabilities": "context" if fit.context_quality else "model",
            },
            "filter_by": self.filter_by.value,
            "thresholds": {
                "t0": [float(v) for v in th.t0.tolist()],
                "t1": [float(v) for v in th.t1.tolist()],
                "n_pos": [int(v) for v in th.n_pos.tolist()],
                "n_neg": [int(v) for v in th.n_neg.tolist()],
            },
            "margin_cutoffs": {rule: _pairs(v) for rule, v in fit.margin_cutoffs.items()},
            "score_cutoff": None if math.isnan(fit.score_cutoff) else fit.score_cutoff,
            "calibration": {
                "n_examples": fit.n_examples,
                "flag_rates": {rule: _pairs(v) for rule, v in fit.flag_rates.items()},
            },
            "model_sha256": self.model_sha256,
            "created_at": self.created_at,
        }
        if fit.context is not None and fit.budget is not None and fit.error_calibrator is not None:
            doc |= context_artifact.to_json(fit.context, fit.budget, fit.error_calibrator)
        if self.schema_version >= 2:
            doc["sha256"] = content_sha256(doc)
        return doc

    @classmethod
    def from_json_dict(cls, d: object, *, source: str = "artifact") -> CalibrationArtifact:
        """Validate a JSON document and build the artifact.

        Raises :class:`ArtifactError` ``"{source}: field '{path}' {problem}"``.
        """
        return ArtifactReader(source).artifact(d)


def _pairs(a: NDArray[np.float64]) -> list[list[float | None]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in a.tolist()]


def calibrate(
    pred_probs: ArrayLike,
    labels: ArrayLike,
    class_names: Sequence[str],
    *,
    model_sha256: str | None = None,
    pooling: Pooling = Pooling.EMA,
    alpha: float = 0.8,
    temperature: float = 0.1,
    filter_by: FilterBy = DEFAULT_FILTER_BY,
    method: ClassScore = ClassScore.SELF_CONFIDENCE,
    context_tags: int | None = None,
    flag_budget: float = DEFAULT_BUDGET,
    context_quality: bool = False,
    now: datetime | None = None,
) -> CalibrationArtifact:
    """Fit the artifact on held-out ``(N, K)`` probabilities and bool tags.

    ``class_names``: K names; ``model_sha256``: the model file's hash (ties the
    artifact to it); ``filter_by``: the flag rule recorded for serving; ``method``: the
    per-class score pooled into label quality; ``context_tags``: m context tags per
    class for the tag-context model (``None``: none, so no ``budget`` rule and no error
    probabilities); ``flag_budget``: the budget served by default; ``context_quality``:
    label quality pooled from the tag-context probabilities; ``now``: the
    creation time (default: the current UTC time).
    Raises :class:`ArtifactError` when the result would not load back (bad class
    names, alpha outside (0, 1], ...), ``ValueError`` for empty data or a budget
    outside (0, K].
    """
    fit = fit_calibration(
        pred_probs,
        labels,
        pooling=pooling,
        alpha=alpha,
        temperature=temperature,
        method=method,
        context_tags=context_tags,
        flag_budget=flag_budget,
        context_quality=context_quality,
    )
    k = fit.thresholds.t0.shape[0]
    if len(class_names) != k:
        raise ArtifactError(
            f"calibrate(): field 'class_names' has {len(class_names)} names "
            f"but the data has {k} classes"
        )
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    artifact = CalibrationArtifact(
        fit=fit,
        class_names=tuple(class_names),
        model_sha256=model_sha256,
        created_at=stamp.isoformat(timespec="seconds"),
        filter_by=FilterBy(filter_by),
    )
    # What we hand out must pass the checks it will meet when loaded.
    return CalibrationArtifact.from_json_dict(artifact.to_json_dict(), source="calibrate()")


def save_artifact(artifact: CalibrationArtifact, path: Path | str) -> None:
    """Write ``artifact`` to ``path`` as JSON, atomically (temp file + ``os.replace``).

    Readers see the old file or the new one, never a partial write. Raises
    ``OSError`` when the directory is not writable.
    """
    path = Path(path)
    text = json.dumps(artifact.to_json_dict(), indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o644)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_artifact(
    path: Path | str, *, expected_model_sha256: str | None = None
) -> CalibrationArtifact:
    """Read and validate the artifact at ``path``.

    ``expected_model_sha256``: refuse an artifact made for another model (an
    artifact without a hash is accepted). Raises :class:`ArtifactError` naming
    ``path`` and the field for a missing/unreadable file, invalid JSON, any
    invalid field, or a hash mismatch (both hashes named).
    """
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(
            f"{path}: calibration artifact not found (make one with `labelwatch calibrate`)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: cannot read the calibration artifact: {exc}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ArtifactError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    artifact = CalibrationArtifact.from_json_dict(data, source=str(path))
    if (
        expected_model_sha256 is not None
        and artifact.model_sha256 is not None
        and artifact.model_sha256 != expected_model_sha256
    ):
        raise ArtifactError(
            f"{path}: field 'model_sha256' is {artifact.model_sha256}, made for another model: "
            f"the model's sha256 is {expected_model_sha256}; re-run `labelwatch calibrate`"
        )
    return artifact
