"""Batch of validated examples -> model -> online scoring -> :class:`ScoredBatch`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from labelwatch.annotators import AnnotatorTally
from labelwatch.calibration import CalibrationArtifact
from labelwatch.domain import InputKind, LabeledExample, ModelSpec, ScoredBatch
from labelwatch.errors import ModelFailure, OutboxUnavailable, StartupError
from labelwatch.flag_columns import ClassTable, columns_from_batch
from labelwatch.metrics import Metrics
from labelwatch.model import OnnxModel
from labelwatch.outbox import Outbox, OutboxError
from labelwatch.scoring import FilterBy, decide
from labelwatch.scoring.adapt import flag_scores, gate

MODEL_CALL_ROWS = 256
"""Most rows in one onnxruntime call: a merged batch of up to ``--max-batch`` examples runs
in slices of this size, which bounds the model's intermediate tensors (a TF-IDF graph holds
several dense ``(rows, n_features)`` float32 tensors) at no cost in throughput."""


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
    """Scores batches of :class:`LabeledExample` against one model and artifact.

    With an ``outbox``, :meth:`score` stores the batch's flags there (one
    transaction, with the per-annotator counts) before it returns, and raises
    :class:`OutboxUnavailable` instead of returning results whose flags were not recorded.
    """

    def __init__(
        self,
        *,
        model: OnnxModel | None,
        artifact: CalibrationArtifact,
        filter_by: FilterBy,
        model_version: str,
        metrics: Metrics,
        outbox: Outbox | None = None,
        flag_budget: float | None = None,
    ) -> None:
        if model is not None:
            check_model_matches_artifact(model, artifact)
        self.model = model
        self.artifact = artifact
        self.filter_by = filter_by
        self.flag_budget = flag_budget
        self.model_version = model_version
        self.metrics = metrics
        self.outbox = outbox
        self.cutoffs: Callable[[], NDArray[np.float64]] | None = None
        """``(K,)`` per-class cut-offs on flag scores (``--adapt-to-verdicts``), or None."""
        self.annotators = AnnotatorTally()
        """Per-annotator counts, stored with the flags (see :mod:`labelwatch.annotators`)."""
        self.spec = ModelSpec(
            input_kind=model.input_kind if model else InputKind.PROBABILITIES_ONLY,
            feature_dim=model.feature_dim if model else None,
            class_names=artifact.class_names,
        )
        self._class_table = ClassTable(self.spec.class_names)

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
            if self.model is None:  # the codec rejects this earlier; defensive
                raise ModelFailure("no model is loaded")
            started = time.perf_counter()
            for lo in range(0, len(need_model), MODEL_CALL_ROWS):
                rows = need_model[lo : lo + MODEL_CALL_ROWS]
                batch: list[str] | NDArray[np.float32]
                if self.spec.input_kind is InputKind.TEXT:
                    batch = [examples[i].text or "" for i in rows]
                else:
                    batch = np.stack([examples[i].features for i in rows])  # type: ignore[misc]
                probs[rows] = self.model.predict(batch)
            self.metrics.inference_seconds.observe(time.perf_counter() - started)
        return probs

    def score(self, examples: Sequence[LabeledExample]) -> ScoredBatch:
        """Score ``examples`` (already validated against :attr:`spec`) and record the batch."""
        batch = self.compute(examples)
        self.record([batch])
        return batch

    def compute(self, examples: Sequence[LabeledExample]) -> ScoredBatch:
        """Model call and scoring only: nothing is stored or counted yet (see :meth:`record`)."""
        k = self.spec.n_classes
        probs = self._probabilities(examples)
        labels = (
            np.stack([ex.labels for ex in examples])
            if examples
            else np.zeros((0, k), dtype=np.bool_)
        )
        started = time.perf_counter()
        decision = decide(
            self.artifact.fit, probs, labels, self.filter_by, flag_budget=self.flag_budget
        )
        flags, chances = decision.flags, decision.error_probability
        if self.cutoffs is not None:  # --adapt-to-verdicts: per-class cut-offs on the flags
            flags = gate(flags, flag_scores(probs, labels, chances), self.cutoffs())
            if chances is not None:
                chances = np.where(flags, chances, np.nan)
        self.metrics.scoring_seconds.observe(time.perf_counter() - started)
        return ScoredBatch(
            examples=tuple(examples),
            probabilities=probs,
            labels=labels,
            flags=flags,
            label_quality=decision.label_quality,
            t0=self.artifact.fit.thresholds.t0,
            t1=self.artifact.fit.thresholds.t1,
            model_version=self.model_version,
            error_probability=chances,
        )

    def record(self, batches: Sequence[ScoredBatch]) -> None:
        """Store the flags of ``batches`` in the outbox (one transaction), then count them.

        Raises :class:`OutboxUnavailable` (nothing stored, nothing counted) when the
        outbox cannot be written; the batches' results must then not be returned.
        """
        if self.outbox is not None:
            columns = [columns_from_batch(b, self._class_table) for b in batches]
            annotators = self.annotators.add(batches, force=any(len(c) for c in columns))
            try:
                self.outbox.write((), columns=columns, annotators=annotators)
            except OutboxError as exc:
                self.annotators.give_back(annotators)
                raise OutboxUnavailable(
                    "the server cannot record flags right now (its flag outbox is not "
                    "writable), so it returns no scores; retry later or on another replica"
                ) from exc
        for batch in batches:
            self.metrics.record_batch(batch, self.artifact.class_names)
