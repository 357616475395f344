"""Client values <-> ``labelwatch.v1`` protobuf messages. No I/O."""

from __future__ import annotations

from collections.abc import Iterable

from labelwatch_client.errors import ProtocolMismatch
from labelwatch_client.types import (
    CalibrationSummary,
    ClassCalibration,
    ClassIssue,
    Example,
    InputKind,
    IssueKind,
    ModelInfo,
    ScoreResult,
)
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb

_ISSUE_KIND_TO_PROTO = {
    IssueKind.MISSING: pb.ISSUE_KIND_MISSING,
    IssueKind.SPURIOUS: pb.ISSUE_KIND_SPURIOUS,
}
_ISSUE_KIND_FROM_PROTO = {v: k for k, v in _ISSUE_KIND_TO_PROTO.items()}
_INPUT_KIND_TO_PROTO = {
    InputKind.UNSPECIFIED: pb.INPUT_KIND_UNSPECIFIED,
    InputKind.TEXT: pb.INPUT_KIND_TEXT,
    InputKind.FEATURES: pb.INPUT_KIND_FEATURES,
    InputKind.PROBABILITIES_ONLY: pb.INPUT_KIND_PROBABILITIES_ONLY,
}
_INPUT_KIND_FROM_PROTO = {v: k for k, v in _INPUT_KIND_TO_PROTO.items()}


def example_to_proto(example: Example) -> pb.Example:
    """Build the wire :class:`pb.Example`; ``features`` become float32 on the wire."""
    msg = pb.Example(
        id=example.id,
        labels=example.labels,
        label_indices=example.label_indices,
        annotator_id=example.annotator_id,
        metadata=example.metadata,
    )
    if example.text is not None:
        msg.text = example.text
    elif example.features is not None:
        msg.features.values.extend(example.features)
    elif example.probabilities is not None:
        msg.probabilities.values.extend(example.probabilities)
    return msg


def example_from_proto(msg: pb.Example) -> Example:
    """Inverse of :func:`example_to_proto`."""
    which = msg.WhichOneof("input")
    return Example(
        id=msg.id,
        text=msg.text if which == "text" else None,
        features=tuple(msg.features.values) if which == "features" else None,
        probabilities=tuple(msg.probabilities.values) if which == "probabilities" else None,
        labels=tuple(msg.labels),
        label_indices=tuple(msg.label_indices),
        annotator_id=msg.annotator_id,
        metadata=dict(msg.metadata),
    )


def score_request(examples: Iterable[Example], include_probabilities: bool) -> pb.ScoreRequest:
    """One :class:`pb.ScoreRequest` holding ``examples`` in order."""
    return pb.ScoreRequest(
        examples=[example_to_proto(ex) for ex in examples],
        include_probabilities=include_probabilities,
    )


def issue_to_proto(issue: ClassIssue) -> pb.ClassIssue:
    """Build the wire :class:`pb.ClassIssue`."""
    return pb.ClassIssue(
        label=issue.label,
        class_index=issue.class_index,
        kind=_ISSUE_KIND_TO_PROTO[issue.kind],
        probability=issue.probability,
        threshold=issue.threshold,
        error_probability=issue.error_probability,
    )


def issue_from_proto(msg: pb.ClassIssue) -> ClassIssue:
    """Raises :class:`ProtocolMismatch` for a kind other than MISSING or SPURIOUS."""
    kind = _ISSUE_KIND_FROM_PROTO.get(msg.kind)
    if kind is None:
        raise ProtocolMismatch(
            f"the server sent issue kind {msg.kind} for class {msg.label!r}, which this "
            "client does not know; upgrade labelwatch-client"
        )
    return ClassIssue(
        label=msg.label,
        class_index=msg.class_index,
        kind=kind,
        probability=msg.probability,
        threshold=msg.threshold,
        error_probability=(msg.error_probability if msg.HasField("error_probability") else None),
    )


def result_to_proto(result: ScoreResult) -> pb.ScoreResult:
    """Build the wire :class:`pb.ScoreResult`."""
    return pb.ScoreResult(
        id=result.id,
        label_quality=result.label_quality,
        is_issue=result.is_issue,
        issues=[issue_to_proto(i) for i in result.issues],
        suggested_labels=result.suggested_labels,
        model_version=result.model_version,
        probabilities=result.probabilities or (),
    )


def result_from_proto(msg: pb.ScoreResult) -> ScoreResult:
    """``probabilities`` is None when the server sent none (it was not asked to)."""
    return ScoreResult(
        id=msg.id,
        label_quality=msg.label_quality,
        is_issue=msg.is_issue,
        issues=tuple(issue_from_proto(i) for i in msg.issues),
        suggested_labels=tuple(msg.suggested_labels),
        model_version=msg.model_version,
        probabilities=tuple(msg.probabilities) if msg.probabilities else None,
    )


def results_from_response(msg: pb.ScoreResponse) -> list[ScoreResult]:
    """The results of one response, in request order."""
    return [result_from_proto(r) for r in msg.results]


def model_info_to_proto(info: ModelInfo) -> pb.ModelInfo:
    """Build the wire :class:`pb.ModelInfo`."""
    cal = info.calibration
    return pb.ModelInfo(
        name=info.name,
        version=info.version,
        sha256=info.sha256,
        input_kind=_INPUT_KIND_TO_PROTO[info.input_kind],
        input_shape=info.input_shape,
        class_names=info.class_names,
        server_version=info.server_version,
        loaded_at=info.loaded_at,
        shadow_version=info.shadow_version,
        calibration=pb.CalibrationSummary(
            schema_version=cal.schema_version,
            calibration_size=cal.calibration_size,
            pooling=cal.pooling,
            alpha=cal.alpha,
            temperature=cal.temperature,
            filter_by=cal.filter_by,
            created_at=cal.created_at,
            flag_budget=cal.flag_budget,
            context_tags=cal.context_tags,
            classes=[
                pb.ClassCalibration(
                    label=c.label,
                    t0=c.t0,
                    t1=c.t1,
                    n_pos=c.n_pos,
                    n_neg=c.n_neg,
                    missing_rate=c.missing_rate,
                    spurious_rate=c.spurious_rate,
                )
                for c in cal.classes
            ],
        ),
    )


def model_info_from_proto(msg: pb.ModelInfo) -> ModelInfo:
    """An input kind this client does not know reads as :attr:`InputKind.UNSPECIFIED`."""
    cal = msg.calibration
    return ModelInfo(
        name=msg.name,
        version=msg.version,
        sha256=msg.sha256,
        input_kind=_INPUT_KIND_FROM_PROTO.get(msg.input_kind, InputKind.UNSPECIFIED),
        input_shape=tuple(msg.input_shape),
        class_names=tuple(msg.class_names),
        server_version=msg.server_version,
        loaded_at=msg.loaded_at,
        shadow_version=msg.shadow_version,
        calibration=CalibrationSummary(
            schema_version=cal.schema_version,
            calibration_size=cal.calibration_size,
            pooling=cal.pooling,
            alpha=cal.alpha,
            temperature=cal.temperature,
            filter_by=cal.filter_by,
            created_at=cal.created_at,
            flag_budget=cal.flag_budget,
            context_tags=cal.context_tags,
            classes=tuple(
                ClassCalibration(
                    label=c.label,
                    t0=c.t0,
                    t1=c.t1,
                    n_pos=c.n_pos,
                    n_neg=c.n_neg,
                    missing_rate=c.missing_rate,
                    spurious_rate=c.spurious_rate,
                )
                for c in cal.classes
            ),
        ),
    )
