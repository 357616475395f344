"""``GetModelInfo``: the loaded model and its calibration, as ``labelwatch.v1.ModelInfo``."""

from __future__ import annotations

from labelwatch import __version__
from labelwatch.adaptation import Adapter
from labelwatch.calibration import CalibrationArtifact
from labelwatch.domain import InputKind
from labelwatch.engine import Engine
from labelwatch.pipeline import Pipeline
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb

_INPUT_KIND = {
    InputKind.TEXT: pb.INPUT_KIND_TEXT,
    InputKind.FEATURES: pb.INPUT_KIND_FEATURES,
    InputKind.PROBABILITIES_ONLY: pb.INPUT_KIND_PROBABILITIES_ONLY,
}


def shadow_version(engine: Engine) -> str:
    """The shadow model's version, "" without one."""
    return engine.shadow.version if engine.shadow is not None else ""


def model_info(pipeline: Pipeline, loaded_at: str = "", shadow: str = "") -> pb.ModelInfo:
    """Describe the serving model and its calibration for GetModelInfo.

    ``loaded_at``: when it started serving (ISO-8601 UTC); ``shadow``: the shadow version.
    """
    artifact: CalibrationArtifact = pipeline.artifact
    fit = artifact.fit
    model = pipeline.model
    rates = fit.flag_rates.get(pipeline.filter_by.value)
    info = pb.ModelInfo(
        name=model.name if model else "probabilities-only",
        version=pipeline.model_version,
        sha256=model.sha256 if model else "",
        input_kind=_INPUT_KIND[pipeline.spec.input_kind],
        input_shape=list(model.input_shape) if model else [-1, artifact.n_classes],
        class_names=list(artifact.class_names),
        server_version=__version__,
        loaded_at=loaded_at,
        shadow_version=shadow,
        calibration=pb.CalibrationSummary(
            schema_version=artifact.schema_version,
            calibration_size=fit.n_examples,
            pooling=fit.pooling.value,
            alpha=fit.alpha,
            temperature=fit.temperature,
            filter_by=pipeline.filter_by.value,
            created_at=artifact.created_at,
            flag_budget=pipeline.flag_budget or 0.0,
            context_tags=-1 if fit.context is None else fit.context.m,
        ),
    )
    th = fit.thresholds
    for k, name in enumerate(artifact.class_names):
        info.calibration.classes.add(
            label=name,
            t0=float(th.t0[k]),
            t1=float(th.t1[k]),
            n_pos=int(th.n_pos[k]),
            n_neg=int(th.n_neg[k]),
            missing_rate=float(rates[k, 0]) if rates is not None else 0.0,
            spurious_rate=float(rates[k, 1]) if rates is not None else 0.0,
        )
    return info


def with_cutoffs(info: pb.ModelInfo, adapter: Adapter | None) -> pb.ModelInfo:
    """``info`` with the adapted cut-offs in force now (GetModelInfo; unchanged when off)."""
    if adapter is None:
        return info
    out = pb.ModelInfo()
    out.CopyFrom(info)
    cut = out.adaptive_cutoffs
    cut.enabled = True
    cut.target_precision = adapter.policy.target
    if adapter.version is not None:
        cut.version = adapter.version.version
        cut.updated_at = adapter.version.created_at
    cut.cutoffs.update(adapter.as_dict())
    return out
