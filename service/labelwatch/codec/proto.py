"""Protobuf (``labelwatch.v1``) <-> domain: the gRPC API's examples, requests and responses.

Examples are checked by :class:`~labelwatch.codec.fields.ExampleDecoder`, the same
rules and messages as every other transport.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from labelwatch.codec.fields import ExampleDecoder, ExampleFields
from labelwatch.domain import LabeledExample, ScoredBatch
from labelwatch.errors import InvalidExample, TooManyExamples
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb


def fields_from_proto(ex: pb.Example) -> ExampleFields:
    """The fields of ``ex`` (its repeated fields are shared, not copied)."""
    which = ex.WhichOneof("input")
    values: Sequence[float] = ()
    if which == "features":
        values = ex.features.values
    elif which == "probabilities":
        values = ex.probabilities.values
    return ExampleFields(
        id=ex.id,
        input=which,
        text=ex.text,
        values=values,
        labels=ex.labels,
        label_indices=ex.label_indices,
        annotator_id=ex.annotator_id,
        metadata=ex.metadata,
    )


def example_from_proto(ex: pb.Example, position: int, decoder: ExampleDecoder) -> LabeledExample:
    """Validate one proto example; raise a :class:`PublicError` naming id and field if bad."""
    return decoder.decode(fields_from_proto(ex), position)


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
    request: pb.ScoreRequest, decoder: ExampleDecoder, max_batch: int
) -> list[LabeledExample]:
    """Validate every example of a request; ids must be unique within it."""
    check_request_size(request, max_batch)
    seen: set[str] = set()
    out: list[LabeledExample] = []
    for position, ex in enumerate(request.examples):
        converted = example_from_proto(ex, position, decoder)
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
    error_probability = batch.error_probability
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
                error_probability=(
                    None if error_probability is None else float(error_probability[i, k])
                ),
            )
        result.suggested_labels.extend(class_names[int(k)] for k in np.flatnonzero(suggested[i]))
        if include_probabilities:
            result.probabilities.extend(batch.probabilities[i].tolist())
    return response
