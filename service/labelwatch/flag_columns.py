"""A scored batch's flags in columns: the compact form the outbox stores them in.

:func:`columns_from_batch` builds, straight from the batch arrays, one entry per
flagged example: strings and numbers the outbox binds as SQL columns, and three
packed arrays per example (little-endian, fixed layout, no JSON):

``given``
    ``<i4`` class indices of the given tags, ascending;
``issue_classes``
    ``<i4`` class indices of the flagged classes, ascending (an issue is MISSING
    when its class is not in ``given``, SPURIOUS when it is);
``issue_values``
    ``<f8`` per issue, in the order of ``issue_classes``: probability, threshold
    and, when the artifact has a tag-context model, the error probability (so
    ``len / 8 / n_issues`` is 2 or 3).

Class names are stored once per class list (the outbox's ``flag_classes``), not
per flag. :func:`flag_from_columns` turns one stored entry back into the
:class:`~labelwatch.flag_record.Flag` that :func:`~labelwatch.flag_record.flags_from_batch`
builds from the same batch, field for field, so sinks, WatchFlags and
``labelwatch flags`` see the same flags whichever form a row was stored in.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring

import numpy as np
from numpy.typing import NDArray

from labelwatch.domain import ScoredBatch
from labelwatch.flag_record import Flag, FlagIssue
from labelwatch.scoring import IssueKind

INDEX = np.dtype("<i4")
"""dtype of the packed class indices."""
VALUE = np.dtype("<f8")
"""dtype of the packed issue values."""


class ClassTable:
    """What building flag columns needs to know once per class list (``(K,)`` names)."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.names: tuple[str, ...] = tuple(class_names)
        # the dedupe key hashes JSON of the sorted tag names: each name's JSON string once
        self.by_name = np.asarray(
            sorted(range(len(self.names)), key=self.names.__getitem__), dtype=np.int64
        )
        self.quoted_by_name: list[str] = [encode_basestring(self.names[k]) for k in self.by_name]


@dataclass(frozen=True)
class FlagColumns:
    """The flags of one batch, one list entry per flagged example (in batch order).

    ``class_names``: the K names the packed indices refer to; ``flagged_at``: unix
    seconds; ``metadata``: the example's metadata as a JSON object, None when empty;
    ``texts``: the input text, None for features or probabilities (``input_kinds``).
    See the module docstring for ``given``, ``issue_classes`` and ``issue_values``.
    """

    class_names: tuple[str, ...]
    model_version: str
    flagged_at: float
    flag_ids: list[str]
    example_ids: list[str]
    annotator_ids: list[str]
    texts: list[str | None]
    input_kinds: list[str]
    label_quality: list[float]
    metadata: list[str | None]
    given: list[bytes]
    issue_classes: list[bytes]
    issue_values: list[bytes]

    def __len__(self) -> int:
        return len(self.flag_ids)


def _cuts(rows: NDArray[np.intp], n: int, width: int) -> list[int]:
    """Byte offsets ``(n + 1,)`` of ``n`` groups of sorted ``rows``, ``width`` bytes per item."""
    ends = np.searchsorted(rows, np.arange(n + 1), side="left") * width
    out: list[int] = ends.tolist()
    return out


def columns_from_batch(
    batch: ScoredBatch, table: ClassTable, *, now: float | None = None
) -> FlagColumns:
    """The flags of ``batch`` (classes in ``table``) as :class:`FlagColumns`.

    ``now`` is the ``flagged_at`` time in unix seconds (default: the current time).
    Equal, once stored and read back, to :func:`~labelwatch.flag_record.flags_from_batch`.
    """
    flagged_at = time.time() if now is None else now
    version = batch.model_version
    rows = np.flatnonzero(batch.flags.any(axis=1)) if batch.examples else np.zeros(0, np.int64)
    n = len(rows)
    flags = batch.flags[rows]
    labels = batch.labels[rows]
    # issues: every flagged (example, class), sorted by example then class
    i_rows, i_cols = np.nonzero(flags)
    missing = ~labels[i_rows, i_cols]
    t0 = np.asarray(batch.t0, dtype=np.float64)[i_cols]
    t1 = np.asarray(batch.t1, dtype=np.float64)[i_cols]
    values = [batch.probabilities[rows[i_rows], i_cols], np.where(missing, t1, 1.0 - t0)]
    if batch.error_probability is not None:
        values.append(batch.error_probability[rows[i_rows], i_cols])
    width = len(values)
    packed_values = np.stack(values, axis=1).astype(VALUE).tobytes()
    packed_classes = i_cols.astype(INDEX).tobytes()
    issue_cuts = _cuts(i_rows, n, INDEX.itemsize)
    value_cuts = _cuts(i_rows, n, VALUE.itemsize * width)
    # given tags, by class index (stored) and by name (hashed into the flag id)
    g_rows, g_cols = np.nonzero(labels)
    packed_given = g_cols.astype(INDEX).tobytes()
    given_cuts = _cuts(g_rows, n, INDEX.itemsize)
    s_rows, s_cols = np.nonzero(labels[:, table.by_name])
    quoted = table.quoted_by_name
    sorted_names = [quoted[j] for j in s_cols.tolist()]
    name_cuts = _cuts(s_rows, n, 1)
    head = ", " + encode_basestring(version) + ", ["
    examples = batch.examples
    flag_ids: list[str] = []
    example_ids: list[str] = []
    annotator_ids: list[str] = []
    texts: list[str | None] = []
    kinds: list[str] = []
    metadata: list[str | None] = []
    given: list[bytes] = []
    issue_classes: list[bytes] = []
    issue_values: list[bytes] = []
    sha256 = hashlib.sha256
    for j, i in enumerate(rows.tolist()):
        ex = examples[i]
        # == json.dumps([id, version, sorted(given names)], ensure_ascii=False): dedupe_key
        material = (
            "["
            + encode_basestring(ex.id)
            + head
            + ", ".join(sorted_names[name_cuts[j] : name_cuts[j + 1]])
            + "]]"
        )
        flag_ids.append(sha256(material.encode("utf-8")).hexdigest())
        example_ids.append(ex.id)
        annotator_ids.append(ex.annotator_id)
        texts.append(ex.text)
        if ex.text is not None:
            kinds.append("text")
        else:
            kinds.append("features" if ex.features is not None else "probabilities")
        metadata.append(_metadata_json(ex.metadata) if ex.metadata else None)
        given.append(packed_given[given_cuts[j] : given_cuts[j + 1]])
        issue_classes.append(packed_classes[issue_cuts[j] : issue_cuts[j + 1]])
        issue_values.append(packed_values[value_cuts[j] : value_cuts[j + 1]])
    return FlagColumns(
        class_names=table.names,
        model_version=version,
        flagged_at=flagged_at,
        flag_ids=flag_ids,
        example_ids=example_ids,
        annotator_ids=annotator_ids,
        texts=texts,
        input_kinds=kinds,
        label_quality=np.asarray(batch.label_quality, dtype=np.float64)[rows].tolist(),
        metadata=metadata,
        given=given,
        issue_classes=issue_classes,
        issue_values=issue_values,
    )


def _metadata_json(metadata: Mapping[str, str]) -> str:
    return json.dumps(dict(metadata), ensure_ascii=False, separators=(",", ":"))


def _metadata_dict(text: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in json.loads(text).items()}


def flag_from_columns(
    class_names: Sequence[str],
    *,
    position: int,
    flag_id: str,
    flagged_at: float,
    example_id: str,
    model_version: str,
    annotator_id: str,
    text: str | None,
    input_kind: str,
    label_quality: float,
    metadata: str | None,
    given: bytes,
    issue_classes: bytes,
    issue_values: bytes,
) -> Flag:
    """The :class:`Flag` stored as these columns at ``position`` (see :class:`FlagColumns`)."""
    tags: list[int] = np.frombuffer(given, dtype=INDEX).tolist()
    flagged: list[int] = np.frombuffer(issue_classes, dtype=INDEX).tolist()
    numbers: list[list[float]] = []
    if flagged:
        numbers = np.frombuffer(issue_values, dtype=VALUE).reshape(len(flagged), -1).tolist()
    tagged = set(tags)
    issues = tuple(
        FlagIssue(
            label=class_names[k],
            class_index=k,
            kind=IssueKind.SPURIOUS if k in tagged else IssueKind.MISSING,
            probability=row[0],
            threshold=row[1],
            error_probability=row[2] if len(row) > 2 else None,
        )
        for k, row in zip(flagged, numbers, strict=True)
    )
    suggested = sorted(tagged.symmetric_difference(flagged))
    return Flag(
        flag_id=flag_id,
        example_id=example_id,
        labels=tuple(class_names[k] for k in tags),
        issues=issues,
        suggested_labels=tuple(class_names[k] for k in suggested),
        label_quality=label_quality,
        model_version=model_version,
        annotator_id=annotator_id,
        metadata={} if metadata is None else _metadata_dict(metadata),
        text=text,
        input_kind=input_kind,
        flagged_at=flagged_at,
        position=position,
    )
