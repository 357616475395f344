"""Load the model and calibration artifact that ``Settings`` name, and check they fit."""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
from numpy.typing import NDArray

from labelwatch import default_model
from labelwatch.adaptation import Adapter
from labelwatch.calibration import CalibrationArtifact, load_artifact
from labelwatch.config import Settings
from labelwatch.domain import InputKind
from labelwatch.errors import StartupError
from labelwatch.metrics import Metrics
from labelwatch.model import OnnxModel, SessionSettings, file_sha256
from labelwatch.outbox import Outbox
from labelwatch.pipeline import Pipeline
from labelwatch.scoring import FilterBy
from labelwatch.scoring.adapt import AdaptPolicy
from labelwatch.scoring.budget import check_budget

log = logging.getLogger(__name__)


def with_default_model(settings: Settings) -> Settings:
    """Fill in the embedded default model and artifact when neither flag was given."""
    if settings.model is not None or settings.thresholds is not None:
        return settings
    if settings.model_repository is not None:
        return settings
    if not default_model.available():
        return settings
    return dataclasses.replace(
        settings,
        model=default_model.DEFAULT_MODEL,
        thresholds=default_model.DEFAULT_THRESHOLDS,
    )


def cores() -> int:
    """CPU cores this process may run on (its affinity mask), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def model_concurrency(requested: str, *, workers: int, kind: InputKind) -> int:
    """Model calls in flight per worker: ``requested`` (a number), or ``auto``'s choice.

    ``auto``: cores / ``workers`` (at least 1) for a text model, else 1. Measured on 2
    cores (docs/performance.md, "Concurrent model calls"): a text model's call is most of
    an example's cost and releases the GIL, so one call per core beats one call spread
    over the cores; with a cheap feature model or client probabilities the work is
    Python and short numpy steps under the GIL, where a second call only contends.
    """
    if requested != "auto":
        return int(requested)
    if kind is not InputKind.TEXT:
        return 1
    return max(1, cores() // max(1, workers))


def session_settings(settings: Settings, kind: InputKind) -> SessionSettings:
    """onnxruntime settings of one model call for a model taking ``kind`` input."""
    calls = model_concurrency(settings.model_concurrency, workers=settings.workers, kind=kind)
    return SessionSettings(
        intra_op_threads_per_worker(settings.intra_op_threads, settings.workers, calls),
        settings.inter_op_threads,
        allow_spinning=settings.ort_spinning,
    )


def intra_op_threads_per_worker(requested: int, workers: int, concurrency: int = 1) -> int:
    """onnxruntime intra-op threads for one model call: ``requested``, or if 0, the cores
    divided among ``workers`` processes x ``concurrency`` calls in flight (at least 1)."""
    if requested > 0:
        return requested
    return max(1, cores() // (max(1, workers) * max(1, concurrency)))


def load_pipeline(
    settings: Settings, metrics: Metrics, *, outbox: Outbox | None = None
) -> Pipeline:
    """Load the model and artifact named by ``settings`` and check they belong together.

    With ``outbox``, the pipeline records every flag there before returning.
    """
    settings = with_default_model(settings)
    if settings.thresholds is None:
        raise StartupError(
            "no calibration artifact given: pass --thresholds thresholds.json (made by "
            "`labelwatch calibrate`) and --model model.onnx; with --thresholds alone the "
            "server scores client-computed probabilities only"
        )
    model = None
    if settings.model is not None:
        guess = session_settings(settings, InputKind.TEXT)  # the default model's kind
        model = OnnxModel(
            settings.model,
            output_name=settings.model_output,
            outputs_logits=settings.model_outputs_logits,
            settings=guess,
        )
        wanted = session_settings(settings, model.input_kind)
        if wanted != guess:  # the thread split depends on the input, known once loaded
            model = OnnxModel(
                settings.model,
                output_name=settings.model_output,
                outputs_logits=settings.model_outputs_logits,
                settings=wanted,
            )
    try:
        artifact = load_artifact(settings.thresholds)
    except ValueError as exc:
        raise StartupError(str(exc)) from exc
    if model is not None and artifact.model_sha256 is None:
        log.warning(
            "event=artifact_without_model_hash artifact=%s: cannot verify it was calibrated "
            "for this model",
            settings.thresholds,
        )
    if settings.model_version:
        version = settings.model_version
    elif model is not None:
        version = f"{model.name}-{model.sha256[:12]}"
    else:
        version = f"probabilities-{file_sha256(settings.thresholds)[:12]}"
    # an explicit --filter-by wins over the rule the artifact records
    rule = settings.filter_by or artifact.filter_by
    budget = served_budget(settings, artifact, rule)
    pipeline = Pipeline(
        model=model,
        artifact=artifact,
        filter_by=rule,
        model_version=version,
        metrics=metrics,
        outbox=outbox,
        flag_budget=budget,
    )
    if budget is not None:
        metrics.flag_budget.set(budget)
    return pipeline


def served_budget(
    settings: Settings, artifact: CalibrationArtifact, rule: FilterBy
) -> float | None:
    """The flag budget to serve (``None``: not the budget rule); one-line StartupErrors."""
    fit = artifact.fit
    if rule is not FilterBy.BUDGET:
        if settings.flag_budget is not None:
            raise StartupError(
                f"--flag-budget applies to the budget rule only; the served rule is {rule.value}"
            )
        return None
    if fit.budget is None:
        raise StartupError(
            f"--filter-by budget needs a calibration artifact with a tag-context model, and "
            f"{settings.thresholds} has none; re-run `labelwatch calibrate` without --no-context"
        )
    if settings.flag_budget is None:
        return fit.budget.default
    try:
        return check_budget(settings.flag_budget, artifact.n_classes)
    except ValueError as exc:
        raise StartupError(f"--flag-budget: {exc}") from None


def adapter_from(settings: Settings, pipeline: Pipeline, outbox: Outbox) -> Adapter | None:
    """The cut-off adapter ``--adapt-to-verdicts`` asks for, started and wired into
    ``pipeline`` (None when off). Raises :class:`StartupError` for a bad target."""
    if not settings.adapt_to_verdicts:
        return None
    try:
        policy = AdaptPolicy(target=settings.target_precision)
    except ValueError as exc:
        raise StartupError(f"--target-precision: {exc}") from exc
    if settings.adapt_interval_seconds <= 0:
        raise StartupError("--adapt-interval-seconds must be > 0")
    adapter = Adapter(
        outbox,
        pipeline.spec.class_names,
        pipeline.model_version,
        policy,
        interval_seconds=settings.adapt_interval_seconds,
    )
    pipeline.cutoffs = lambda: adapter.cutoffs
    adapter.start()
    return adapter


def calibration_rates(pipeline: Pipeline) -> NDArray[np.float64] | None:
    """The drift baseline: calibration flag rates of the served rule, ``(K, 2)`` or None.

    Under the budget rule served at another budget than the artifact's default, the
    rates are scaled by the ratio of the two (the volume moves with the budget).
    """
    fit = pipeline.artifact.fit
    rates = fit.flag_rates.get(pipeline.filter_by.value)
    if rates is None or pipeline.flag_budget is None or fit.budget is None:
        return rates
    return rates * (pipeline.flag_budget / fit.budget.default)
