"""Input and output messages of ``labelwatch consume``: bytes <-> protobuf/JSON.

Input: one example a message, either the JSON object of the CLI's JSONL files
(``id``, ``text`` | ``features`` | ``probabilities``, ``labels`` |
``label_indices``, ``annotator_id``, ``metadata``; :mod:`labelwatch.codec.mapping`)
or a serialized ``labelwatch.v1.Example`` when the ``Content-Type`` header is
:data:`PROTOBUF_CONTENT_TYPE` (:mod:`labelwatch.codec.proto`). Both become
:class:`~labelwatch.codec.ExampleFields`, which the consumer validates with the
same :class:`~labelwatch.codec.ExampleDecoder` as every other transport.

Output: one JSON result a message (the ``ScoreResult`` fields plus the input's
stream and sequence), and a dead-letter JSON for a malformed input. The results
of a scored batch are encoded straight from its arrays (:func:`results_json`),
byte for byte what ``json_format.MessageToDict`` makes of the batch's
``ScoreResponse``, without building the protobuf messages.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from labelwatch.codec import ExampleFields
from labelwatch.codec.mapping import fields_from_json
from labelwatch.codec.proto import fields_from_proto
from labelwatch.domain import ScoredBatch
from labelwatch.errors import InvalidExample
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb

PROTOBUF_CONTENT_TYPE = "application/x-protobuf"
"""``Content-Type`` header value marking a serialized ``labelwatch.v1.Example``."""
_PROTOBUF_TYPES = {
    PROTOBUF_CONTENT_TYPE,
    "application/protobuf",
    "application/x-protobuf; messageType=labelwatch.v1.Example",
}


def fields_from_message(data: bytes, headers: Mapping[str, str] | None) -> ExampleFields:
    """Decode one input message (JSON, or protobuf by ``Content-Type``) into example fields."""
    content_type = (headers or {}).get("Content-Type", "").strip().lower()
    if content_type in _PROTOBUF_TYPES:
        try:
            return fields_from_proto(pb.Example.FromString(data))
        except DecodeError as exc:
            raise InvalidExample(f"message is not a valid labelwatch.v1.Example: {exc}") from exc
    return fields_from_json(data)


_MISSING = pb.IssueKind.Name(pb.ISSUE_KIND_MISSING)
_SPURIOUS = pb.IssueKind.Name(pb.ISSUE_KIND_SPURIOUS)
_JSON = json.JSONEncoder(separators=(",", ":"))


def _double(value: float) -> float | str:
    """A ``double`` as ProtoJSON writes it: a number, or ``"NaN"`` / ``"Infinity"``."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _present(value: float) -> bool:
    """Whether proto3 stores a ``double`` without presence: any bit set (``-0.0`` too)."""
    return value != 0.0 or math.copysign(1.0, value) < 0


def results_json(
    batch: ScoredBatch, class_names: Sequence[str], *, stream: str, sequences: Sequence[int]
) -> list[bytes]:
    """One result message per example of ``batch``: its ``ScoreResult`` as JSON plus its input.

    ``sequences``: the input messages' stream sequences, one per example (``(n,)``).
    The JSON is what ``MessageToDict(result, preserving_proto_field_name=True)`` gives
    for the result :func:`labelwatch.codec.proto.response_from_batch` builds (fields in
    field-number order, proto3 defaults left out, enums by name), then ``"input"``.
    """
    n = len(batch.examples)
    if len(sequences) != n:
        raise ValueError(f"{len(sequences)} sequences for {n} examples")
    flags = batch.flags
    rows, cols = np.nonzero(flags)
    missing = ~batch.labels[rows, cols]
    probability = batch.probabilities[rows, cols].tolist()
    t0 = np.asarray(batch.t0, dtype=np.float64)  # 1 - t0 in double, as the response does
    t1 = np.asarray(batch.t1, dtype=np.float64)
    threshold = np.where(missing, t1[cols], 1.0 - t0[cols]).tolist()
    error = (
        None if batch.error_probability is None else batch.error_probability[rows, cols].tolist()
    )
    issues: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    for j, (i, k) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        issue: dict[str, Any] = {}
        if class_names[k]:
            issue["label"] = class_names[k]
        if k:
            issue["class_index"] = k
        issue["kind"] = _MISSING if missing[j] else _SPURIOUS
        if _present(probability[j]):
            issue["probability"] = _double(probability[j])
        if _present(threshold[j]):
            issue["threshold"] = _double(threshold[j])
        if error is not None:
            issue["error_probability"] = _double(error[j])
        issues[i].append(issue)
    suggested: list[list[str]] = [[] for _ in range(n)]
    s_rows, s_cols = np.nonzero(batch.labels ^ flags)
    for i, k in zip(s_rows.tolist(), s_cols.tolist(), strict=True):
        suggested[i].append(class_names[k])
    quality = batch.label_quality.tolist()
    version = batch.model_version
    out: list[bytes] = []
    for i, ex in enumerate(batch.examples):
        body: dict[str, Any] = {}
        if ex.id:
            body["id"] = ex.id
        if _present(quality[i]):
            body["label_quality"] = _double(quality[i])
        if issues[i]:
            body["is_issue"] = True
            body["issues"] = issues[i]
        if suggested[i]:
            body["suggested_labels"] = suggested[i]
        if version:
            body["model_version"] = version
        body["input"] = {"stream": stream, "sequence": sequences[i]}
        out.append(_JSON.encode(body).encode("utf-8"))
    return out


def dead_letter_json(
    *, reason: str, stream: str, sequence: int, subject: str, data: bytes
) -> bytes:
    """One dead-letter message: why, where from, and the original bytes (base64)."""
    body = {
        "reason": reason,
        "input": {"stream": stream, "sequence": sequence, "subject": subject},
        "data_base64": base64.b64encode(data).decode("ascii"),
    }
    return json.dumps(body, separators=(",", ":")).encode("utf-8")
