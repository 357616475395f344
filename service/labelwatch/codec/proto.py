"""Protobuf (``labelwatch.v1``) <-> domain: the gRPC API's examples, requests and responses.

Examples are checked by :class:`~labelwatch.codec.fields.ExampleDecoder`, the same
rules and messages as every other transport.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from labelwatch.codec.fields import ExampleDecoder, ExampleFields
from labelwatch.domain import InputKind, LabeledExample, ScoredBatch
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


def check_count(n: int, max_batch: int) -> int:
    """``n`` examples in one request; :class:`TooManyExamples` past ``max_batch``."""
    if n > max_batch:
        raise TooManyExamples(
            f"request has {n} examples; at most {max_batch} are allowed per request "
            "(--max-batch); split it or use ScoreStream"
        )
    return n


def check_request_size(request: pb.ScoreRequest, max_batch: int) -> int:
    """The number of examples in ``request``; :class:`TooManyExamples` past ``max_batch``."""
    return check_count(len(request.examples), max_batch)


def examples_from_request(
    request: pb.ScoreRequest, decoder: ExampleDecoder, max_batch: int
) -> list[LabeledExample]:
    """Validate every example of a request; ids must be unique within it.

    The first bad example (in request order) raises its :class:`PublicError`, with
    the message :meth:`ExampleDecoder.decode` gives on every transport.
    """
    check_request_size(request, max_batch)
    fast = _examples_in_bulk(request.examples, decoder)
    if fast is not None:
        return fast
    # something is off (or unusual): the example-by-example path finds and names it
    return _examples_one_by_one(request, decoder)


def _examples_one_by_one(request: pb.ScoreRequest, decoder: ExampleDecoder) -> list[LabeledExample]:
    seen: set[str] = set()
    out: list[LabeledExample] = []
    for position, ex in enumerate(request.examples):
        converted = example_from_proto(ex, position, decoder)
        if converted.id in seen:
            raise InvalidExample(f"example {ex.id!r}: field 'id': duplicate id within the request")
        seen.add(converted.id)
        out.append(converted)
    return out


def _examples_in_bulk(
    examples: Sequence[pb.Example], decoder: ExampleDecoder
) -> list[LabeledExample] | None:
    """The examples, validated with the numbers checked once per request, or None.

    None means "not certainly valid" (any example the common case does not cover,
    e.g. both ``labels`` and ``label_indices``, or any failed check): the caller then
    runs :func:`_examples_one_by_one`, which raises the precise error of the first bad
    example. Whatever this accepts, :meth:`ExampleDecoder.decode` accepts too, with an
    equal result (``labels``, ``probabilities`` and ``features`` are rows of one
    ``(n, K)`` / ``(n, D)`` array per request).
    """
    spec = decoder.spec
    k = spec.n_classes
    n = len(examples)
    max_labels = decoder.limits.max_labels
    max_text = decoder.limits.max_text_bytes
    class_index = decoder.class_index
    takes_text = spec.input_kind is InputKind.TEXT
    takes_features = spec.input_kind is InputKind.FEATURES
    labels = np.zeros((n, k), dtype=np.bool_)
    index_rows: list[int] = []
    indices: list[int] = []
    probs: list[Sequence[float]] = []
    prob_rows: list[int] = []
    feats: list[Sequence[float]] = []
    feat_rows: list[int] = []
    texts: list[str | None] = [None] * n
    seen: set[str] = set()
    ids: list[str] = []
    annotators: list[str] = []
    metadata: list[dict[str, str]] = []
    for i, ex in enumerate(examples):
        example_id = ex.id
        if not example_id or example_id in seen:
            return None
        seen.add(example_id)
        names, given = ex.labels, ex.label_indices
        if names:
            if given or len(names) > max_labels:
                return None
            for name in names:
                j = class_index.get(name)
                if j is None:
                    return None
                labels[i, j] = True
        elif given:
            if len(given) > max_labels:
                return None
            indices.extend(given)
            index_rows.extend([i] * len(given))
        which = ex.WhichOneof("input")
        if which == "probabilities":
            values = ex.probabilities.values
            if len(values) != k:
                return None
            probs.append(values)
            prob_rows.append(i)
        elif which == "text" and takes_text:
            text = ex.text
            if len(text) * 4 > max_text and decoder.limits.text_problem(text) is not None:
                return None
            texts[i] = text
        elif which == "features" and takes_features:
            values = ex.features.values
            if len(values) != spec.feature_dim:
                return None
            feats.append(values)
            feat_rows.append(i)
        else:
            return None
        ids.append(example_id)
        annotators.append(ex.annotator_id)
        metadata.append(dict(ex.metadata) if ex.metadata else {})
    if indices:
        flat = np.asarray(indices, dtype=np.int64)
        if int(flat.min()) < 0 or int(flat.max()) >= k:
            return None
        labels[index_rows, flat] = True
    by_row: list[NDArray[np.float64] | None] = [None] * n
    if probs:
        matrix = np.asarray(probs, dtype=np.float64)
        if not ((matrix >= 0.0) & (matrix <= 1.0)).all():  # False for NaN and inf too
            return None
        for i, row in zip(prob_rows, matrix, strict=True):
            by_row[i] = row
    features: list[NDArray[np.float32] | None] = [None] * n
    if feats:
        with np.errstate(over="ignore"):  # beyond float32's range becomes inf: refused below
            matrix32 = np.asarray(feats, dtype=np.float32)
        if not np.isfinite(matrix32).all():
            return None
        for i, row32 in zip(feat_rows, matrix32, strict=True):
            features[i] = row32
    return [
        LabeledExample(
            id=ids[i],
            labels=labels[i],
            text=texts[i],
            features=features[i],
            probabilities=by_row[i],
            annotator_id=annotators[i],
            metadata=metadata[i],
        )
        for i in range(n)
    ]


def response_from_batch(
    batch: ScoredBatch, class_names: tuple[str, ...], include_probabilities: bool
) -> pb.ScoreResponse:
    """Build the response: one :class:`ScoreResult` per example, in order.

    Python runs once per example and once per flagged (example, class) pair; every
    number comes out of the batch arrays with one ``tolist()`` per array.
    """
    response = pb.ScoreResponse()
    results = response.results
    flags = batch.flags
    n = len(batch.examples)
    if n == 0:
        return response
    rows, cols = np.nonzero(flags)
    is_missing = ~batch.labels[rows, cols]
    t0 = np.asarray(batch.t0, dtype=np.float64)
    t1 = np.asarray(batch.t1, dtype=np.float64)
    thresholds = np.where(is_missing, t1[cols], 1.0 - t0[cols]).tolist()
    probabilities = np.asarray(batch.probabilities[rows, cols], dtype=np.float64).tolist()
    chances: list[float] | None = None
    if batch.error_probability is not None:
        chances = np.asarray(batch.error_probability[rows, cols], dtype=np.float64).tolist()
    kinds = np.where(is_missing, pb.ISSUE_KIND_MISSING, pb.ISSUE_KIND_SPURIOUS).tolist()
    ks = cols.tolist()
    counts = np.bincount(rows, minlength=n).tolist()
    s_rows, s_cols = np.nonzero(batch.labels ^ flags)
    suggested = [class_names[k] for k in s_cols.tolist()]
    s_counts = np.bincount(s_rows, minlength=n).tolist()
    quality = np.asarray(batch.label_quality, dtype=np.float64).tolist()
    all_probs = None
    if include_probabilities:
        all_probs = np.asarray(batch.probabilities, dtype=np.float64).tolist()
    version = batch.model_version
    at = s_at = 0
    for i, ex in enumerate(batch.examples):
        count = counts[i]
        result = results.add(
            id=ex.id, label_quality=quality[i], is_issue=count > 0, model_version=version
        )
        if count:
            stop = at + count
            add = result.issues.add
            for j in range(at, stop):
                add(
                    label=class_names[ks[j]],
                    class_index=ks[j],
                    kind=kinds[j],
                    probability=probabilities[j],
                    threshold=thresholds[j],
                    error_probability=None if chances is None else chances[j],
                )
            at = stop
        s_count = s_counts[i]
        if s_count:
            result.suggested_labels.extend(suggested[s_at : s_at + s_count])
            s_at += s_count
        if all_probs is not None:
            result.probabilities.extend(all_probs[i])
    return response
