"""The gRPC codec in bulk: a request decodes to what example-by-example decoding gives.

``examples_from_request`` checks the numbers of a whole request at once; whenever
that finds anything off it falls back to decoding example by example, so the
first bad example (in request order) is named with the same message as always.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from labelwatch.codec import ExampleDecoder
from labelwatch.codec.proto import examples_from_request, fields_from_proto
from labelwatch.domain import InputKind, LabeledExample, ModelSpec
from labelwatch.errors import PublicError
from labelwatch.security.limits import ExampleLimits
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb

CLASSES = ("cat", "dog", "bird", "fish")
SPECS = {
    "probabilities": ModelSpec(InputKind.PROBABILITIES_ONLY, None, CLASSES),
    "features": ModelSpec(InputKind.FEATURES, 3, CLASSES),
    "text": ModelSpec(InputKind.TEXT, None, CLASSES),
}
LIMITS = ExampleLimits(max_labels=3, max_text_bytes=64)


def _example(rng: np.random.Generator, i: int, input_kind: str) -> pb.Example:
    tags = np.flatnonzero(rng.random(len(CLASSES)) < 0.4).tolist()[:3]
    ex = pb.Example(id=f"ex-{i}", annotator_id=f"a{i % 3}" if i % 2 else "")
    if i % 3 == 0:
        ex.labels.extend(CLASSES[t] for t in tags)
    else:
        ex.label_indices.extend(tags)
    if i % 4 == 1:
        ex.metadata["source"] = f"s{i}"
    if input_kind == "probabilities" or (input_kind != "text" and i % 5 == 4):
        ex.probabilities.values.extend(rng.random(len(CLASSES)).tolist())
    elif input_kind == "features":
        ex.features.values.extend(rng.normal(size=3).tolist())
    else:
        ex.text = f"text {i}"
    return ex


def _request(input_kind: str, n: int, seed: int = 0) -> pb.ScoreRequest:
    rng = np.random.default_rng(seed)
    return pb.ScoreRequest(examples=[_example(rng, i, input_kind) for i in range(n)])


def _one_by_one(request: pb.ScoreRequest, decoder: ExampleDecoder) -> list[LabeledExample]:
    """The reference: each example decoded on its own, ids checked in order."""
    out: list[LabeledExample] = []
    seen: set[str] = set()
    for position, ex in enumerate(request.examples):
        converted = decoder.decode(fields_from_proto(ex), position)
        if converted.id in seen:
            raise PublicError(f"example {ex.id!r}: field 'id': duplicate id within the request")
        seen.add(converted.id)
        out.append(converted)
    return out


def _same(a: LabeledExample, b: LabeledExample) -> None:
    assert (a.id, a.text, a.annotator_id, dict(a.metadata)) == (
        b.id,
        b.text,
        b.annotator_id,
        dict(b.metadata),
    )
    for name in ("labels", "features", "probabilities"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape, name
            assert np.array_equal(x, y), name


@pytest.mark.parametrize("input_kind", sorted(SPECS))
def test_a_valid_request_decodes_in_bulk_to_the_examples_decoded_one_by_one(
    input_kind: str,
) -> None:
    decoder = ExampleDecoder(SPECS[input_kind], LIMITS)
    for seed in range(5):
        request = _request(input_kind, 40, seed)
        got = examples_from_request(request, decoder, 100)
        want = _one_by_one(request, decoder)
        assert len(got) == len(want) == 40
        for a, b in zip(got, want, strict=True):
            _same(a, b)


def _break(ex: pb.Example, how: str) -> None:
    if how == "duplicate":
        ex.id = "ex-0"
    elif how == "nan":
        ex.ClearField("probabilities")
        ex.probabilities.values.extend([0.1, math.nan, 0.2, 0.3])
    elif how == "above one":
        ex.ClearField("probabilities")
        ex.probabilities.values.extend([0.1, 0.2, 1.5, 0.3])
    elif how == "index out of range":
        ex.ClearField("labels")
        ex.ClearField("label_indices")
        ex.label_indices.extend([1, 4])
    elif how == "negative index":
        ex.ClearField("labels")
        ex.ClearField("label_indices")
        ex.label_indices.extend([-1])
    elif how == "unknown name":
        ex.ClearField("label_indices")
        ex.labels[:] = ["unicorn"]
    elif how == "too many tags":
        ex.ClearField("label_indices")
        ex.labels[:] = ["cat", "dog", "bird", "fish"]
    elif how == "no id":
        ex.id = ""
    elif how == "no input":
        ex.ClearField("input")
    elif how == "wrong length":
        ex.ClearField("probabilities")
        ex.probabilities.values.extend([0.1, 0.2])
    else:
        raise AssertionError(how)


BREAKS = [
    "duplicate",
    "nan",
    "above one",
    "index out of range",
    "negative index",
    "unknown name",
    "too many tags",
    "no id",
    "no input",
    "wrong length",
]


def _error(call: Any) -> str:
    with pytest.raises(PublicError) as caught:
        call()
    return caught.value.message


@pytest.mark.parametrize("first", BREAKS)
@pytest.mark.parametrize("second", ["nan", "duplicate", "unknown name"])
def test_the_first_bad_example_in_request_order_is_named_as_one_by_one(
    first: str, second: str
) -> None:
    decoder = ExampleDecoder(SPECS["probabilities"], LIMITS)
    request = _request("probabilities", 8)
    _break(request.examples[3], first)
    _break(request.examples[5], second)
    message = _error(lambda: examples_from_request(request, decoder, 100))
    assert message == _error(lambda: _one_by_one(request, decoder))
    named = {"duplicate": "example 'ex-0'", "no id": "example #3 (no id)"}
    assert message.startswith(named.get(first, "example 'ex-3'"))


def test_features_beyond_float32_are_not_finite_in_bulk_too() -> None:
    decoder = ExampleDecoder(SPECS["features"], LIMITS)
    request = _request("features", 6)
    request.examples[2].ClearField("input")
    request.examples[2].features.values.extend([1.0, 1e39, 0.0])
    message = _error(lambda: examples_from_request(request, decoder, 100))
    assert message == "example 'ex-2': field 'features[1]': must be finite"


def test_a_too_long_text_is_named_in_bulk_too() -> None:
    decoder = ExampleDecoder(SPECS["text"], LIMITS)
    request = _request("text", 4)
    request.examples[1].text = "é" * 40
    message = _error(lambda: examples_from_request(request, decoder, 100))
    assert message == _error(lambda: _one_by_one(request, decoder))
    assert "field 'text'" in message
