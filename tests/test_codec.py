"""The codec: every transport's example decodes through one set of rules and messages."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from labelwatch.codec import ExampleDecoder
from labelwatch.codec.labelstudio import example_from_annotation
from labelwatch.codec.mapping import fields_from_json, fields_from_mapping
from labelwatch.codec.proto import fields_from_proto
from labelwatch.domain import InputKind, ModelSpec
from labelwatch.errors import InvalidExample, PublicError, WrongInputKind
from labelwatch.ingest_messages import PROTOBUF_CONTENT_TYPE, fields_from_message
from labelwatch.security.limits import ExampleLimits
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb

CLASSES = ("cat", "dog", "bird")
PROBS = ModelSpec(InputKind.PROBABILITIES_ONLY, None, CLASSES)
FEATURES = ModelSpec(InputKind.FEATURES, 2, CLASSES)

# (example as a JSON object, model it is sent to, the message every transport must give)
BAD: list[tuple[dict[str, Any], ModelSpec, str]] = [
    (
        {"id": "a", "probabilities": [0.1, 0.2, 0.3], "labels": ["unicorn"]},
        PROBS,
        "example 'a': field 'labels': unknown class name 'unicorn'",
    ),
    (
        {"id": "a", "probabilities": [0.1, 0.2]},
        PROBS,
        "example 'a': field 'probabilities': expected 3 values (one per class), got 2",
    ),
    (
        {"id": "a", "probabilities": [0.1, 1.5, 0.3]},
        PROBS,
        "example 'a': field 'probabilities[1]': 1.5 is outside [0, 1]",
    ),
    (
        {"id": "a", "features": [1.0, 2.0]},
        PROBS,
        "example 'a': field 'features': the loaded model takes probabilities input, not features",
    ),
    (
        {"id": "a", "features": [1.0, 1e39]},
        FEATURES,
        "example 'a': field 'features[1]': must be finite",
    ),
    (
        {"id": "a", "probabilities": [0.1, 0.2, 0.3], "label_indices": [0, 3]},
        PROBS,
        "example 'a': field 'label_indices': index 3 is out of range [0, 3)",
    ),
    (
        {"id": "a", "probabilities": [0.1, 0.2, 0.3], "labels": ["cat"], "label_indices": [1]},
        PROBS,
        "example 'a': fields 'labels' and 'label_indices' name different tag sets",
    ),
    (
        {"id": "a", "probabilities": [0.1, 0.2, 0.3], "labels": ["cat", "dog", "bird"]},
        PROBS,
        "example 'a': field 'labels': 3 tags given; at most 2 per example "
        "(--max-labels-per-example)",
    ),
    (
        {"probabilities": [0.1, 0.2, 0.3]},
        PROBS,
        "example #7 (no id): field 'id': must be a non-empty string",
    ),
    (
        {"id": "a"},
        PROBS,
        "example 'a': field 'input': no input given; set one of text, features, probabilities",
    ),
]


def _proto(obj: dict[str, Any]) -> pb.Example:
    """The protobuf form of a JSON example object."""
    ex = pb.Example(
        id=obj.get("id", ""),
        labels=obj.get("labels", []),
        label_indices=obj.get("label_indices", []),
        annotator_id=obj.get("annotator_id", ""),
        metadata=obj.get("metadata", {}),
    )
    if "text" in obj:
        ex.text = obj["text"]
    if "features" in obj:
        ex.features.values.extend(obj["features"])
    if "probabilities" in obj:
        ex.probabilities.values.extend(obj["probabilities"])
    return ex


def _decode_everywhere(obj: dict[str, Any], spec: ModelSpec) -> list[str]:
    """The message of each transport's decoding of ``obj``: gRPC, NATS JSON, NATS protobuf."""
    decoder = ExampleDecoder(spec, ExampleLimits(max_labels=2, max_text_bytes=64))
    proto = _proto(obj)
    messages = []
    for fields in (
        fields_from_proto(proto),
        fields_from_json(json.dumps(obj).encode()),
        fields_from_message(proto.SerializeToString(), {"Content-Type": PROTOBUF_CONTENT_TYPE}),
    ):
        with pytest.raises(PublicError) as caught:
            decoder.decode(fields, 7)
        messages.append(caught.value.message)
    return messages


@pytest.mark.parametrize(("obj", "spec", "message"), BAD)
def test_a_bad_example_gets_the_same_message_naming_id_and_field_on_every_transport(
    obj: dict[str, Any], spec: ModelSpec, message: str
) -> None:
    assert _decode_everywhere(obj, spec) == [message] * 3


def test_a_wrong_input_kind_is_failed_precondition_not_invalid_argument() -> None:
    decoder = ExampleDecoder(PROBS)
    with pytest.raises(WrongInputKind):
        decoder.decode(fields_from_mapping({"id": "a", "text": "hello"}), 0)


def test_json_and_proto_of_one_example_decode_to_equal_examples() -> None:
    obj = {
        "id": "a",
        "probabilities": [0.1, 0.9, 0.5],
        "labels": ["dog"],
        "annotator_id": "ann",
        "metadata": {"k": "v"},
    }
    decoder = ExampleDecoder(PROBS)
    from_json = decoder.decode(fields_from_mapping(obj), 0)
    from_proto = decoder.decode(fields_from_proto(_proto(obj)), 0)
    for ex in (from_json, from_proto):
        assert ex.id == "a" and ex.annotator_id == "ann" and dict(ex.metadata) == {"k": "v"}
        assert ex.labels.tolist() == [False, True, False]
    assert from_json.probabilities is not None and from_proto.probabilities is not None
    np.testing.assert_array_equal(from_json.probabilities, from_proto.probabilities)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"id": "a", "text": "\\ud800"}', "example 'a': field 'text': not valid Unicode text"),
        (
            b'{"id": "a", "probabilities": [1' + b"0" * 400 + b"]}",
            "example 'a': field 'probabilities': must be a list of numbers",
        ),
        (b'{"id": 3}', "example (no id): field 'id': must be a string"),
    ],
)
def test_json_that_no_transport_could_store_is_invalid_not_a_crash(
    raw: bytes, message: str
) -> None:
    with pytest.raises(InvalidExample, match=message.replace("(", r"\(").replace(")", r"\)")):
        fields_from_json(raw)


def test_label_studio_tags_outside_the_classes_are_set_aside_not_refused() -> None:
    example, unknown = example_from_annotation(
        project_id=3,
        task_id=7,
        annotation_id=11,
        text="zip tool",
        tags=["dog", "unicorn"],
        annotator=None,
        version="v1",
        class_names=CLASSES,
    )
    assert example.id == "ls-3-7-11" and example.annotator_id == ""
    assert example.labels.tolist() == [False, True, False]
    assert unknown == ("unicorn",)
    assert example.metadata["ls_annotation_version"] == "v1"
