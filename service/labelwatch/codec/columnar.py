"""Columnar protobuf (``ScoreBatchRequest``/``ScoreBatchResponse``) <-> domain, as arrays.

A ``ScoreBatchRequest`` carries N examples as one packed tensor (``(N, K)``
probabilities or ``(N, D)`` features, float32 or float64, little-endian) and
their tags as CSR (``tag_indptr`` ``(N + 1,)``, ``tag_indices``). Decoding
checks, in this order:

1. the request's own structure, naming its fields: N against ``--max-batch``,
   ``kind``/``dtype``, ``rows``/``cols`` against the ids and the model, the byte
   length of ``values``, ``annotator_ids``, the CSR offsets. Every size is
   checked before anything sized by it is allocated: ``rows`` is at most
   ``--max-batch`` and ``cols`` the model's, and ``values`` is viewed
   (``np.frombuffer``, zero-copy) only once its length is exactly ``rows *
   cols`` values. (Reading ``values`` out of the parsed message copies it once,
   as protobuf does for any bytes field; gRPC bounds it by
   ``--max-message-bytes`` before the message is parsed.);
2. each example, vectorized over the batch. The first example with a problem
   is then handed, as :class:`ExampleFields`, to the same
   :class:`ExampleDecoder` every transport uses, so it fails with the same
   message as the same example sent to ``Score`` ("example 'a7': field
   'probabilities[3]': must be finite"): row i of ``values`` stands for the
   example's ``probabilities`` (or ``features``), its CSR slice for its
   ``label_indices``. Two checks are the columnar form's own: a class given
   twice in one row, and (as in ``Score``) an id given twice.

The response is built from the :class:`ScoredBatch` arrays with numpy: one
``np.nonzero`` over the flags gives every issue in (example, class) order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from labelwatch.codec.fields import ExampleDecoder, ExampleFields, InputField
from labelwatch.codec.proto import check_count
from labelwatch.domain import InputKind, LabeledExample, ScoredBatch
from labelwatch.errors import InvalidExample, WrongInputKind
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb

_DTYPES: dict[int, np.dtype[np.floating[Any]]] = {
    pb.TENSOR_DTYPE_FLOAT32: np.dtype("<f4"),
    pb.TENSOR_DTYPE_FLOAT64: np.dtype("<f8"),
}
_KINDS: dict[int, InputField] = {
    pb.TENSOR_KIND_PROBABILITIES: "probabilities",
    pb.TENSOR_KIND_FEATURES: "features",
}


def check_batch_size(request: pb.ScoreBatchRequest, max_batch: int) -> int:
    """N, the number of ids; :class:`TooManyExamples` past ``max_batch`` (as ``Score`` says)."""
    return check_count(len(request.ids), max_batch)


def examples_from_batch_request(
    request: pb.ScoreBatchRequest, decoder: ExampleDecoder, max_batch: int
) -> list[LabeledExample]:
    """The request's N validated examples, in order; a :class:`PublicError` if anything is bad.

    Each example's ``probabilities`` (``(K,)`` float64) or ``features`` (``(D,)``
    float32) and ``labels`` (``(K,)`` bool) are rows of one ``(N, K)`` or
    ``(N, D)`` array.
    """
    n = check_batch_size(request, max_batch)
    which = _input_field(request, decoder)
    values = _tensor(request, decoder, which, n)
    annotators = _annotators(request, n)
    indptr, indices = _csr(request, n)
    k = decoder.spec.n_classes
    ids = list(request.ids)
    bad = _first_bad_row(ids, which, values, indptr, indices, decoder)
    if bad is not None:
        _raise_for_row(bad, ids, which, values, indptr, indices, annotators, decoder)
    labels = np.zeros((n, k), dtype=np.bool_)
    if indices.size:
        labels[np.repeat(np.arange(n), np.diff(indptr)), indices] = True
    if which == "probabilities":
        probs = np.array(values, dtype=np.float64)
        return [
            LabeledExample(id=i, labels=t, probabilities=p, annotator_id=a)
            for i, t, p, a in zip(ids, labels, probs, annotators, strict=True)
        ]
    with np.errstate(over="ignore"):  # checked finite above
        feats = np.array(values, dtype=np.float32)
    return [
        LabeledExample(id=i, labels=t, features=f, annotator_id=a)
        for i, t, f, a in zip(ids, labels, feats, annotators, strict=True)
    ]


def _input_field(request: pb.ScoreBatchRequest, decoder: ExampleDecoder) -> InputField:
    which = _KINDS.get(request.kind)
    if which is None:
        raise InvalidExample(
            f"field 'kind': {_kind_name(request.kind)} does not say what 'values' holds; "
            "set TENSOR_KIND_PROBABILITIES or TENSOR_KIND_FEATURES"
        )
    input_kind = decoder.spec.input_kind
    if which == "features" and input_kind is not InputKind.FEATURES:
        accepted = "text or probabilities" if input_kind is InputKind.TEXT else "probabilities"
        raise WrongInputKind(
            f"field 'kind': the loaded model takes {accepted} input, not features"
            + ("; send text through Score" if input_kind is InputKind.TEXT else "")
        )
    return which


def _tensor(
    request: pb.ScoreBatchRequest, decoder: ExampleDecoder, which: InputField, n: int
) -> NDArray[np.floating[Any]]:
    """The ``(n, cols)`` view of ``values``; every size checked before it is made."""
    dtype = _DTYPES.get(request.dtype)
    if dtype is None:
        raise InvalidExample(
            f"field 'dtype': unknown value {request.dtype}; "
            "use TENSOR_DTYPE_FLOAT32 or TENSOR_DTYPE_FLOAT64"
        )
    if request.rows != n:
        raise InvalidExample(
            f"field 'rows': {request.rows} rows, but {n} ids; 'values' has one row per example"
        )
    spec = decoder.spec
    if which == "probabilities":
        expected, unit = spec.n_classes, "one per class"
    else:
        assert spec.feature_dim is not None  # FEATURES models have one (checked above)
        expected, unit = spec.feature_dim, "the model's feature length"
    if request.cols != expected:
        raise InvalidExample(
            f"field 'cols': expected {expected} values a row ({unit}), got {request.cols}"
        )
    size = n * expected * dtype.itemsize  # n <= --max-batch, expected is the model's
    # reading a bytes field copies it out of the message (bounded by --max-message-bytes):
    # read it once; the array is a view of that copy
    data = request.values
    if len(data) != size:
        raise InvalidExample(
            f"field 'values': expected rows * cols * {dtype.itemsize} = {size} bytes "
            f"({dtype.name}, little-endian), got {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(n, expected)


def _annotators(request: pb.ScoreBatchRequest, n: int) -> Sequence[str]:
    given = len(request.annotator_ids)
    if given == 0:
        return [""] * n
    if given != n:
        raise InvalidExample(
            f"field 'annotator_ids': {given} entries for {n} ids; give one per example or none"
        )
    return list(request.annotator_ids)


def _csr(request: pb.ScoreBatchRequest, n: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``(n + 1,)`` offsets and the class indices; the offsets' structure checked."""
    n_indices = len(request.tag_indices)
    if not request.tag_indptr and not n_indices:
        return np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if len(request.tag_indptr) != n + 1:
        raise InvalidExample(
            f"field 'tag_indptr': expected {n + 1} offsets (one more than ids), "
            f"got {len(request.tag_indptr)}"
        )
    indptr = np.array(request.tag_indptr, dtype=np.int64)
    if indptr[0] != 0:
        raise InvalidExample(f"field 'tag_indptr[0]': must be 0, got {indptr[0]}")
    falls = np.flatnonzero(indptr[1:] < indptr[:-1])
    if falls.size:
        i = int(falls[0]) + 1
        raise InvalidExample(
            f"field 'tag_indptr[{i}]': {indptr[i]} is less than tag_indptr[{i - 1}] = "
            f"{indptr[i - 1]}; offsets must not decrease"
        )
    if indptr[-1] != n_indices:
        raise InvalidExample(
            f"field 'tag_indptr[{n}]': must equal len(tag_indices) = {n_indices}, got {indptr[-1]}"
        )
    return indptr, np.array(request.tag_indices, dtype=np.int64)


def _first_bad_row(
    ids: list[str],
    which: InputField,
    values: NDArray[np.floating[Any]],
    indptr: NDArray[np.int64],
    indices: NDArray[np.int64],
    decoder: ExampleDecoder,
) -> int | None:
    """The first row with any problem :func:`_raise_for_row` reports, or None."""
    n, k = len(ids), decoder.spec.n_classes
    bad = np.zeros(n, dtype=np.bool_)
    if not all(ids):
        bad |= np.array([not i for i in ids], dtype=np.bool_)
    counts = np.diff(indptr)
    bad |= counts > decoder.limits.max_labels
    if indices.size:
        rows = np.repeat(np.arange(n), counts)
        outside = (indices < 0) | (indices >= k)
        if outside.any():
            bad[rows[outside]] = True
            keys = np.sort(rows[~outside] * k + indices[~outside])
        else:
            keys = np.sort(rows * k + indices)
        repeated = keys[1:][keys[1:] == keys[:-1]]
        bad[repeated // k] = True
    if which == "features" and values.dtype != np.float32:
        with np.errstate(over="ignore"):  # beyond float32's range: inf, as Score rounds it
            values = values.astype(np.float32)
    bad |= ~np.isfinite(values).all(axis=1)
    if which == "probabilities":
        bad |= ((values < 0.0) | (values > 1.0)).any(axis=1)
    if len(set(ids)) != n:
        seen: set[str] = set()
        for row, id_ in enumerate(ids):
            if id_ in seen:
                bad[row] = True
            seen.add(id_)
    hits = np.flatnonzero(bad)
    return int(hits[0]) if hits.size else None


def _raise_for_row(
    row: int,
    ids: list[str],
    which: InputField,
    values: NDArray[np.floating[Any]],
    indptr: NDArray[np.int64],
    indices: NDArray[np.int64],
    annotators: Sequence[str],
    decoder: ExampleDecoder,
) -> None:
    """Raise what ``Score`` raises for example ``row`` (or the columnar form's own checks)."""
    tags = indices[indptr[row] : indptr[row + 1]]
    fields = ExampleFields(
        id=ids[row],
        input=which,
        values=values[row].tolist(),
        label_indices=tags.tolist(),
        annotator_id=annotators[row],
    )
    decoder.decode(fields, row)  # raises the per-example message when the row is bad there
    where = f"example {ids[row]!r}"
    unique, counts = np.unique(tags, return_counts=True)
    if (counts > 1).any():
        twice = int(unique[counts > 1][0])
        raise InvalidExample(
            f"{where}: field 'label_indices': index {twice} is given twice "
            "(a row of tag_indices names each class at most once)"
        )
    raise InvalidExample(f"{where}: field 'id': duplicate id within the request")


def _kind_name(value: int) -> str:
    try:
        return pb.TensorKind.Name(pb.TensorKind.ValueType(value))
    except ValueError:
        return f"unknown value {value}"


def response_from_scored(batch: ScoredBatch, include_probabilities: bool) -> pb.ScoreBatchResponse:
    """The columnar response: ``label_quality`` ``(N,)``, issues as CSR, probabilities if asked.

    Issues are listed per example in ascending class order, as ``Score`` lists them.
    """
    flags = batch.flags
    n = flags.shape[0]
    rows, cols = np.nonzero(flags)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(flags.sum(axis=1), out=indptr[1:])
    spurious = batch.labels[rows, cols]
    kind = np.where(spurious, pb.ISSUE_KIND_SPURIOUS, pb.ISSUE_KIND_MISSING)
    threshold = np.where(spurious, 1.0 - batch.t0[cols], batch.t1[cols])
    response = pb.ScoreBatchResponse(
        label_quality=batch.label_quality.tolist(),
        issue_indptr=indptr.tolist(),
        issue_class_index=cols.tolist(),
        issue_kind=kind.tolist(),
        issue_probability=batch.probabilities[rows, cols].tolist(),
        issue_threshold=threshold.tolist(),
        model_version=batch.model_version,
    )
    if batch.error_probability is not None:
        response.issue_error_probability.extend(batch.error_probability[rows, cols].tolist())
    if include_probabilities:
        response.probabilities = np.ascontiguousarray(batch.probabilities, dtype="<f8").tobytes()
    return response
