"""The columnar ``ScoreBatch`` call's values: numpy arrays in, numpy arrays out. No I/O.

This is the one client module that needs ``numpy`` (imported only when
``score_batch`` is first called): the rest of the client needs only ``grpcio``
and ``protobuf``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from labelwatch_client.errors import ProtocolMismatch
from labelwatch_client.types import ClassIssue, IssueKind, ScoreResult
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb

Tags = Sequence[Sequence[int | str]] | NDArray[np.bool_]
"""Each example's tags: a list of class indices or names per example, or an ``(N, K)``
bool array (True = tagged)."""


@dataclass(frozen=True)
class BatchResult:
    """The verdicts on N examples, as arrays in request order.

    ``label_quality`` ``(N,)`` in [0, 1], lower = more likely mislabeled. The M
    issues of the batch are in CSR form: example i's are entries
    ``issue_indptr[i]:issue_indptr[i + 1]`` (``(N + 1,)``) of the ``(M,)``
    arrays ``issue_class_index``, ``issue_is_missing`` (True: MISSING, False:
    SPURIOUS), ``issue_probability`` (the model's p), ``issue_threshold`` and
    ``issue_error_probability`` (None when the server's artifact has no
    tag-context model), in ascending class order. ``tags`` ``(N, K)`` bool are
    the tags sent; ``probabilities`` ``(N, K)`` float64 only when asked for.
    """

    ids: tuple[str, ...]
    label_quality: NDArray[np.float64]
    issue_indptr: NDArray[np.int64]
    issue_class_index: NDArray[np.int64]
    issue_is_missing: NDArray[np.bool_]
    issue_probability: NDArray[np.float64]
    issue_threshold: NDArray[np.float64]
    issue_error_probability: NDArray[np.float64] | None
    model_version: str
    class_names: tuple[str, ...]
    tags: NDArray[np.bool_]
    probabilities: NDArray[np.float64] | None = None

    @property
    def is_issue(self) -> NDArray[np.bool_]:
        """``(N,)``: True where the example has at least one issue."""
        return np.diff(self.issue_indptr) > 0

    def issues(self, i: int) -> tuple[ClassIssue, ...]:
        """Example ``i``'s issues, as :meth:`LabelwatchClient.score` gives them."""
        lo, hi = int(self.issue_indptr[i]), int(self.issue_indptr[i + 1])
        chances = self.issue_error_probability
        return tuple(
            ClassIssue(
                label=self.class_names[int(self.issue_class_index[j])],
                class_index=int(self.issue_class_index[j]),
                kind=IssueKind.MISSING if self.issue_is_missing[j] else IssueKind.SPURIOUS,
                probability=float(self.issue_probability[j]),
                threshold=float(self.issue_threshold[j]),
                error_probability=None if chances is None else float(chances[j]),
            )
            for j in range(lo, hi)
        )

    def results(self) -> list[ScoreResult]:
        """One :class:`ScoreResult` per example, equal to what ``score`` returns for it."""
        suggested = self.tags.copy()
        rows = np.repeat(np.arange(len(self.ids)), np.diff(self.issue_indptr))
        suggested[rows, self.issue_class_index] ^= True
        names = self.class_names
        out = []
        for i, id_ in enumerate(self.ids):
            issues = self.issues(i)
            probs = self.probabilities
            out.append(
                ScoreResult(
                    id=id_,
                    label_quality=float(self.label_quality[i]),
                    is_issue=bool(issues),
                    issues=issues,
                    suggested_labels=tuple(names[k] for k in np.flatnonzero(suggested[i])),
                    model_version=self.model_version,
                    probabilities=None if probs is None else tuple(probs[i].tolist()),
                )
            )
        return out


@dataclass(frozen=True)
class BatchRequest:
    """A request ready to send, and the tags it carries (to rebuild suggested tags)."""

    message: pb.ScoreBatchRequest
    ids: tuple[str, ...]
    tag_indptr: NDArray[np.int64]
    tag_indices: NDArray[np.int64]


def batch_request(
    ids: Sequence[str],
    *,
    probabilities: ArrayLike | None,
    features: ArrayLike | None,
    tags: Tags | None,
    tags_csr: tuple[ArrayLike, ArrayLike] | None,
    annotator_ids: Sequence[str] | None,
    include_probabilities: bool,
    class_index: Mapping[str, int],
) -> BatchRequest:
    """Pack N examples into one ``ScoreBatchRequest``.

    Give one of ``probabilities`` ``(N, K)`` (sent as float32 when the array is
    float32, else as float64, so the server scores the very numbers given) or
    ``features`` ``(N, D)`` (sent as float32, as ``Score`` sends them); tags as
    ``tags`` (lists are deduplicated; names looked up in ``class_index``) or as
    ``tags_csr`` = ``(indptr (N + 1,), indices)``, sent as given. Raises
    ``ValueError`` for arguments that cannot be packed; the server checks the rest.
    """
    ids = tuple(ids)
    n = len(ids)
    if (probabilities is None) == (features is None):
        raise ValueError("give one of probabilities (N, K) or features (N, D)")
    if tags is not None and tags_csr is not None:
        raise ValueError("give tags or tags_csr, not both")
    if probabilities is not None:
        kind = pb.TENSOR_KIND_PROBABILITIES
        given = np.asarray(probabilities)
        tensor = given.astype("<f4" if given.dtype == np.float32 else "<f8", copy=False)
    else:
        kind = pb.TENSOR_KIND_FEATURES
        with np.errstate(over="ignore"):  # beyond float32: inf, which the server refuses
            tensor = np.asarray(features).astype("<f4", copy=False)
    if tensor.ndim != 2 or tensor.shape[0] != n:
        raise ValueError(
            f"the tensor must have shape (N, cols) with N = {n} ids, not {tensor.shape}"
        )
    indptr, indices = _csr(tags, tags_csr, n, class_index)
    message = pb.ScoreBatchRequest(
        ids=ids,
        kind=kind,
        dtype=pb.TENSOR_DTYPE_FLOAT32 if tensor.dtype == np.float32 else pb.TENSOR_DTYPE_FLOAT64,
        rows=n,
        cols=tensor.shape[1],
        values=np.ascontiguousarray(tensor).tobytes(),
        # no tags at all travel as two empty arrays; a CSR given goes as given
        tag_indptr=indptr.tolist() if indices.size or tags_csr is not None else (),
        tag_indices=indices.tolist(),
        annotator_ids=() if annotator_ids is None else annotator_ids,
        include_probabilities=include_probabilities,
    )
    return BatchRequest(message, ids, indptr, indices)


def _csr(
    tags: Tags | None,
    tags_csr: tuple[ArrayLike, ArrayLike] | None,
    n: int,
    class_index: Mapping[str, int],
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    if tags_csr is not None:
        indptr, indices = (np.asarray(a, dtype=np.int64) for a in tags_csr)
        return indptr, indices
    if tags is None:
        return np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if isinstance(tags, np.ndarray):
        if tags.ndim != 2 or tags.shape[0] != n:
            raise ValueError(f"tags as an array must have shape (N, K) with N = {n}")
        rows, cols = np.nonzero(tags)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        return indptr, cols.astype(np.int64)
    if len(tags) != n:
        raise ValueError(f"tags has {len(tags)} lists for {n} ids; give one per example")
    rows_of: list[list[int]] = []
    for i, row in enumerate(tags):
        found = set()
        for tag in row:
            if isinstance(tag, str):
                k = class_index.get(tag)
                if k is None:
                    raise ValueError(f"example {i} ({tag!r}): unknown class name")
                found.add(k)
            else:
                found.add(int(tag))
        rows_of.append(sorted(found))
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows_of], out=indptr[1:])
    indices = np.fromiter((k for r in rows_of for k in r), dtype=np.int64, count=int(indptr[-1]))
    return indptr, indices


def result_from_response(
    response: pb.ScoreBatchResponse, request: BatchRequest, class_names: tuple[str, ...]
) -> BatchResult:
    """The :class:`BatchResult` of ``response``; :class:`ProtocolMismatch` if it is malformed."""
    n, k = len(request.ids), len(class_names)
    indptr = np.array(response.issue_indptr, dtype=np.int64)
    m = len(response.issue_class_index)
    kinds = np.array(response.issue_kind, dtype=np.int64)
    classes = np.array(response.issue_class_index, dtype=np.int64)
    well_formed = (
        len(response.label_quality) == n
        and indptr.shape == (n + 1,)
        and indptr[0] == 0
        and indptr[-1] == m
        and bool((np.diff(indptr) >= 0).all())
        and bool(((classes >= 0) & (classes < k)).all())
        and len(kinds) == m == len(response.issue_probability) == len(response.issue_threshold)
        and len(response.issue_error_probability) in (0, m)
        and np.isin(kinds, (pb.ISSUE_KIND_MISSING, pb.ISSUE_KIND_SPURIOUS)).all()
        and len(response.probabilities) in (0, n * k * 8)
    )
    if not well_formed:
        raise ProtocolMismatch(
            "the ScoreBatch response does not fit its request (array lengths or issue kinds); "
            "upgrade labelwatch-client"
        )
    tags = np.zeros((n, k), dtype=np.bool_)
    given = request.tag_indices
    if given.size:
        tags[np.repeat(np.arange(n), np.diff(request.tag_indptr)), given] = True
    chances: Any = response.issue_error_probability
    return BatchResult(
        ids=request.ids,
        label_quality=np.array(response.label_quality, dtype=np.float64),
        issue_indptr=indptr,
        issue_class_index=classes,
        issue_is_missing=kinds == pb.ISSUE_KIND_MISSING,
        issue_probability=np.array(response.issue_probability, dtype=np.float64),
        issue_threshold=np.array(response.issue_threshold, dtype=np.float64),
        issue_error_probability=np.array(chances, dtype=np.float64) if len(chances) else None,
        model_version=response.model_version,
        class_names=class_names,
        tags=tags,
        probabilities=(
            np.frombuffer(response.probabilities, dtype="<f8").reshape(n, k)
            if response.probabilities
            else None
        ),
    )
