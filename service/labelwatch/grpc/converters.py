"""Protobuf <-> domain conversion, with validation that names example id and field."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from labelwatch.domain import InputKind, LabeledExample, ModelSpec, ScoredBatch
from labelwatch.errors import InvalidExample, TooManyExamples, WrongInputKind
from labelwatch.security.limits import ExampleLimits
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb

_INPUT_FIELD = {InputKind.TEXT: "text", InputKind.FEATURES: "features"}
DEFAULT_LIMITS = ExampleLimits()


def _where(ex: pb.Example, position: int) -> str:
    return f"example {ex.id!r}" if ex.id else f"example #{position} (no id)"


def _labels(
    ex: pb.Example, where: str, spec: ModelSpec, class_index: Mapping[str, int]
) -> np.ndarray:
    k = spec.n_classes
    vec = np.zeros(k, dtype=np.bool_)
    for name in ex.labels:
        idx = class_index.get(name)
        if idx is None:
            raise InvalidExample(f"{where}: field 'labels': unknown class name {name!r}")
        vec[idx] = True
    if ex.label_indices:
        by_index = np.zeros(k, dtype=np.bool_)
        for idx in ex.label_indices:
            if not 0 <= idx < k:
                raise InvalidExample(
                    f"{where}: field 'label_indices': index {idx} is out of range [0, {k})"
                )
            by_index[idx] = True
        if ex.labels and not np.array_equal(vec, by_index):
            raise InvalidExample(
                f"{where}: fields 'labels' and 'label_indices' name different tag sets"
            )
        vec = by_index
    return vec


def _check_limits(ex: pb.Example, where: str, which: str | None, limits: ExampleLimits) -> None:
    problem = limits.label_problem(len(ex.labels), len(ex.label_indices))
    if problem is not None:
        if ex.labels and ex.label_indices:
            fields = "fields 'labels' and 'label_indices'"
        else:
            fields = "field 'labels'" if ex.labels else "field 'label_indices'"
        raise InvalidExample(f"{where}: {fields}: {problem}")
    if which == "text":
        problem = limits.text_problem(ex.text)
        if problem is not None:
            raise InvalidExample(f"{where}: field 'text': {problem}")


def example_from_proto(
    ex: pb.Example,
    position: int,
    spec: ModelSpec,
    class_index: Mapping[str, int],
    limits: ExampleLimits = DEFAULT_LIMITS,
) -> LabeledExample:
    """Validate one proto example against ``spec``; raise a :class:`PublicError` if bad."""
    where = _where(ex, position)
    if not ex.id:
        raise InvalidExample(f"{where}: field 'id': must be a non-empty string")
    which = ex.WhichOneof("input")
    _check_limits(ex, where, which, limits)
    labels = _labels(ex, where, spec, class_index)
    common = {
        "id": ex.id,
        "labels": labels,
        "annotator_id": ex.annotator_id,
        "metadata": dict(ex.metadata),
    }
    if which is None:
        raise InvalidExample(
            f"{where}: field 'input': no input given; set one of text, features, probabilities"
        )
    if which == "probabilities":
        probs = np.asarray(ex.probabilities.values, dtype=np.float64)
        if probs.shape != (spec.n_classes,):
            raise InvalidExample(
                f"{where}: field 'probabilities': expected {spec.n_classes} values "
                f"(one per class), got {probs.size}"
            )
        if not np.isfinite(probs).all():
            bad = int(np.flatnonzero(~np.isfinite(probs))[0])
            raise InvalidExample(f"{where}: field 'probabilities[{bad}]': must be finite")
        outside = np.flatnonzero((probs < 0.0) | (probs > 1.0))
        if outside.size:
            bad = int(outside[0])
            raise InvalidExample(
                f"{where}: field 'probabilities[{bad}]': {probs[bad]!r} is outside [0, 1]"
            )
        return LabeledExample(probabilities=probs, **common)  # type: ignore[arg-type]
    expected = _INPUT_FIELD.get(spec.input_kind)
    if which != expected:
        accepted = "probabilities" if expected is None else f"{expected} or probabilities"
        raise WrongInputKind(
            f"{where}: field '{which}': the loaded model takes {accepted} input, not {which}"
        )
    if which == "text":
        return LabeledExample(text=ex.text, **common)  # type: ignore[arg-type]
    feats = np.asarray(ex.features.values, dtype=np.float32)
    if feats.shape != (spec.feature_dim,):
        raise InvalidExample(
            f"{where}: field 'features': expected {spec.feature_dim} values, got {feats.size}"
        )
    if not np.isfinite(feats).all():
        bad = int(np.flatnonzero(~np.isfinite(feats))[0])
        raise InvalidExample(f"{where}: field 'features[{bad}]': must be finite")
    return LabeledExample(features=feats, **common)  # type: ignore[arg-type]


def check_request_size(request: pb.ScoreRequest, max_batch: int) -> int:
    """The number of examples in ``request``; :class:`TooManyExamples` past ``max_batch``."""
    n = len(request.examples)
    if n > max_batch:
        raise TooManyExamples(
            f"request has {n} examples; at most {max_batch} are allowed per request "
            "(--max-batch); split it or use ScoreStream"
        )
    return n


def examples_from_request(
    request: pb.ScoreRequest,
    spec: ModelSpec,
    class_index: Mapping[str, int],
    max_batch: int,
    limits: ExampleLimits = DEFAULT_LIMITS,
) -> list[LabeledExample]:
    """Validate every example of a request; ids must be unique within it."""
    check_request_size(request, max_batch)
    seen: set[str] = set()
    out: list[LabeledExample] = []
    for position, ex in enumerate(request.examples):
        converted = example_from_proto(ex, position, spec, class_index, limits)
        if converted.id in seen:
            raise InvalidExample(f"example {ex.id!r}: field 'id': duplicate id within the request")
        seen.add(converted.id)
        out.append(converted)
    return out


def response_from_batch(
    batch: ScoredBatch, class_names: tuple[str, ...], include_probabilities: bool
) -> pb.ScoreResponse:
    """Build the response: one :class:`ScoreResult` per example, in order."""
    response = pb.ScoreResponse()
    missing = batch.flags & ~batch.labels
    suggested = batch.labels ^ batch.flags
    for i, ex in enumerate(batch.examples):
        result = response.results.add(
            id=ex.id,
            label_quality=float(batch.label_quality[i]),
            is_issue=bool(batch.flags[i].any()),
            model_version=batch.model_version,
        )
        for k in map(int, np.flatnonzero(batch.flags[i])):
            is_missing = bool(missing[i, k])
            result.issues.add(
                label=class_names[k],
                class_index=k,
                kind=pb.ISSUE_KIND_MISSING if is_missing else pb.ISSUE_KIND_SPURIOUS,
                probability=float(batch.probabilities[i, k]),
                threshold=float(batch.t1[k]) if is_missing else 1.0 - float(batch.t0[k]),
            )
        result.suggested_labels.extend(class_names[int(k)] for k in np.flatnonzero(suggested[i]))
        if include_probabilities:
            result.probabilities.extend(batch.probabilities[i].tolist())
    return response
