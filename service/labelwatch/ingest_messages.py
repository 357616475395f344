"""Input and output messages of ``labelwatch consume``: bytes <-> protobuf/JSON.

Input: one example a message, either the JSON object of the CLI's JSONL files
(``id``, ``text`` | ``features`` | ``probabilities``, ``labels`` |
``label_indices``, ``annotator_id``, ``metadata``; :mod:`labelwatch.codec.mapping`)
or a serialized ``labelwatch.v1.Example`` when the ``Content-Type`` header is
:data:`PROTOBUF_CONTENT_TYPE` (:mod:`labelwatch.codec.proto`). Both become
:class:`~labelwatch.codec.ExampleFields`, which the consumer validates with the
same :class:`~labelwatch.codec.ExampleDecoder` as every other transport.

Output: one JSON result a message (the ``ScoreResult`` fields plus the input's
stream and sequence), and a dead-letter JSON for a malformed input.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from labelwatch.codec import ExampleFields
from labelwatch.codec.mapping import fields_from_json
from labelwatch.codec.proto import fields_from_proto
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
