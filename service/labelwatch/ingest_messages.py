"""Input and output messages of ``labelwatch consume``: bytes <-> protobuf/JSON.

Input: one example a message, either the JSON object of the CLI's JSONL files
(``id``, ``text`` | ``features`` | ``probabilities``, ``labels`` |
``label_indices``, ``annotator_id``, ``metadata``) or a serialized
``labelwatch.v1.Example`` when the ``Content-Type`` header is
:data:`PROTOBUF_CONTENT_TYPE`. Both become a ``pb.Example`` and go through the
same validation as the gRPC path (:func:`labelwatch.grpc.converters.example_from_proto`).

Output: one JSON result a message (the ``ScoreResult`` fields plus the input's
stream and sequence), and a dead-letter JSON for a malformed input.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from labelwatch.errors import InvalidExample
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb

PROTOBUF_CONTENT_TYPE = "application/x-protobuf"
"""``Content-Type`` header value marking a serialized ``labelwatch.v1.Example``."""
_PROTOBUF_TYPES = {
    PROTOBUF_CONTENT_TYPE,
    "application/protobuf",
    "application/x-protobuf; messageType=labelwatch.v1.Example",
}
_KNOWN_FIELDS = frozenset(
    {
        "id",
        "text",
        "features",
        "probabilities",
        "labels",
        "label_indices",
        "annotator_id",
        "metadata",
    }
)


def _where(obj: Mapping[str, Any]) -> str:
    ident = obj.get("id")
    return f"example {ident!r}" if isinstance(ident, str) and ident else "example (no id)"


def _numbers(obj: Mapping[str, Any], name: str, where: str) -> list[float]:
    values = obj[name]
    if not isinstance(values, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        raise InvalidExample(f"{where}: field '{name}': must be a list of numbers")
    return [float(v) for v in values]


def _strings(obj: Mapping[str, Any], name: str, where: str) -> list[str]:
    values = obj.get(name, [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidExample(f"{where}: field '{name}': must be a list of strings")
    return list(values)


def example_from_json(data: bytes) -> pb.Example:
    """Parse one JSON example; raise :class:`InvalidExample` naming the field if malformed."""
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidExample(f"message is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidExample(f"message must be a JSON object, got {type(obj).__name__}")
    where = _where(obj)
    unknown = sorted(set(obj) - _KNOWN_FIELDS)
    if unknown:
        raise InvalidExample(
            f"{where}: unknown field {unknown[0]!r}; "
            f"expected some of {', '.join(sorted(_KNOWN_FIELDS))}"
        )
    ex = pb.Example()
    for name in ("id", "annotator_id", "text"):
        if name in obj:
            if not isinstance(obj[name], str):
                raise InvalidExample(f"{where}: field '{name}': must be a string")
            setattr(ex, name, obj[name])
    inputs = [name for name in ("text", "features", "probabilities") if name in obj]
    if len(inputs) > 1:
        raise InvalidExample(f"{where}: fields {inputs}: give exactly one input")
    if "features" in obj:
        ex.features.values.extend(_numbers(obj, "features", where))
    if "probabilities" in obj:
        ex.probabilities.values.extend(_numbers(obj, "probabilities", where))
    ex.labels.extend(_strings(obj, "labels", where))
    indices = obj.get("label_indices", [])
    if not isinstance(indices, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**31 for i in indices
    ):
        raise InvalidExample(f"{where}: field 'label_indices': must be a list of integers >= 0")
    ex.label_indices.extend(indices)
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidExample(f"{where}: field 'metadata': must be an object of strings")
    ex.metadata.update(metadata)
    return ex


def example_from_message(data: bytes, headers: Mapping[str, str] | None) -> pb.Example:
    """Decode one input message (JSON, or protobuf by ``Content-Type``)."""
    content_type = (headers or {}).get("Content-Type", "").strip().lower()
    if content_type in _PROTOBUF_TYPES:
        try:
            return pb.Example.FromString(data)
        except DecodeError as exc:
            raise InvalidExample(f"message is not a valid labelwatch.v1.Example: {exc}") from exc
    return example_from_json(data)


def result_json(result: pb.ScoreResult, *, stream: str, sequence: int) -> bytes:
    """One result message: the ``ScoreResult`` as JSON plus where its input came from."""
    body = json_format.MessageToDict(result, preserving_proto_field_name=True)
    body["input"] = {"stream": stream, "sequence": sequence}
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


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
