"""Batch of validated examples -> model -> online scoring -> :class:`ScoredBatch`."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from labelwatch.calibration import CalibrationArtifact
from labelwatch.domain import InputKind, LabeledExample, ModelSpec, ScoredBatch
from labelwatch.errors import ModelFailure, StartupError
from labelwatch.metrics import Metrics
from labelwatch.model import OnnxModel
from labelwatch.scoring import FilterBy, decide


def check_model_matches_artifact(model: OnnxModel, artifact: CalibrationArtifact) -> None:
    """Refuse a model/artifact pair that was not calibrated together.

    Raises :class:`StartupError` naming both sides for a class-count, class-name
    or sha256 mismatch.
    """
    if model.n_classes != artifact.n_classes:
        raise StartupError(
            f"model {model.path} outputs {model.n_classes} classes but the calibration "
            f"artifact has {artifact.n_classes}"
        )
    names = model.class_names
    if names is not None and names != artifact.class_names:
        diff = next(
            (i for i, (a, b) in enumerate(zip(names, artifact.class_names, strict=True)) if a != b),
            0,
        )
        raise StartupError(
            f"class names differ at index {diff}: model {model.path} says {names[diff]!r}, "
            f"calibration artifact says {artifact.class_names[diff]!r}"
        )
    if artifact.model_sha256 is not None and artifact.model_sha256 != model.sha256:
        raise StartupError(
            f"calibration artifact was made for model sha256 {artifact.model_sha256}, "
            f"but {model.path} has sha256 {model.sha256}; re-run `labelwatch calibrate --model`"
        )


class Pipeline:
    """Scores batches of :class:`LabeledExample` against one model and artifact."""

    def __init__(
        self,
        *,
        model: OnnxModel | None,
        artifact: CalibrationArtifact,
        filter_by: FilterBy,
        model_version: str,
        metrics: Metrics,
    ) -> None:
        if model is not None:
            check_model_matches_artifact(model, artifact)
        self.model = model
        self.artifact = artifact
        self.filter_by = filter_by
        self.model_version = model_version
        self.metrics = metrics
        self.spec = ModelSpec(
            input_kind=model.input_kind if model else InputKind.PROBABILITIES_ONLY,
            feature_dim=model.feature_dim if model else None,
            class_names=artifact.class_names,
        )

    def _probabilities(self, examples: Sequence[LabeledExample]) -> NDArray[np.float64]:
        """``(n, K)`` probabilities: given ones as is, the rest from one model call."""
        n, k = len(examples), self.spec.n_classes
        probs = np.empty((n, k), dtype=np.float64)
        need_model: list[int] = []
        for i, ex in enumerate(examples):
            if ex.probabilities is not None:
                probs[i] = ex.probabilities
            else:
                need_model.append(i)
        if need_model:
            if self.model is None:  # converters reject this earlier; defensive
                raise ModelFailure("no model is loaded")
            batch: list[str] | NDArray[np.float32]
            if self.spec.input_kind is InputKind.TEXT:
                batch = [examples[i].text or "" for i in need_model]
            else:
                batch = np.stack([examples[i].features for i in need_model])  # type: ignore[misc]
            started = time.perf_counter()
            probs[need_model] = self.model.predict(batch)
            self.metrics.inference_seconds.observe(time.perf_counter() - started)
        return probs

    def score(self, examples: Sequence[LabeledExample]) -> ScoredBatch:
        """Score ``examples`` (already validated against :attr:`spec`)."""
        k = self.spec.n_classes
        probs = self._probabilities(examples)
        labels = (
            np.stack([ex.labels for ex in examples])
            if examples
            else np.zeros((0, k), dtype=np.bool_)
        )
        started = time.perf_counter()
        decision = decide(self.artifact.fit, probs, labels, self.filter_by)
        self.metrics.scoring_seconds.observe(time.perf_counter() - started)
        batch = ScoredBatch(
            examples=tuple(examples),
            probabilities=probs,
            labels=labels,
            flags=decision.flags,
            label_quality=decision.label_quality,
            t0=self.artifact.fit.thresholds.t0,
            t1=self.artifact.fit.thresholds.t1,
            model_version=self.model_version,
        )
        self.metrics.record_batch(batch, self.artifact.class_names)
        return batch
