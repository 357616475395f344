"""Hypothesis against a live server: random requests end OK or with a documented status.

Structured ``ScoreRequest``s (random fields, extreme floats, huge and empty
strings, too many tags or examples, unknown fields), raw random bytes as
messages, and random streams. After every call a well-formed request must
still succeed; at the end nothing is left in flight and no call ended
INTERNAL or UNKNOWN.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from labelwatch.server import RunningServer
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_security import score_request
from support_server import (
    CLASS_NAMES,
    TEXT_CLASS_NAMES,
    running_server,
    target_of,
    text_model,
    write_artifact,
)

MAX_BATCH = 20
MAX_MESSAGE_BYTES = 1 << 20
MAX_TEXT_BYTES = 4096
MAX_LABELS = 16

DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,  # bad field, too many examples/tags, undecodable bytes
    grpc.StatusCode.FAILED_PRECONDITION,  # input kind does not fit the model
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # message over --max-message-bytes, or shed
}

FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

LIMITS = {
    "max_batch": MAX_BATCH,
    "max_inflight": 4 * MAX_BATCH,
    "max_message_bytes": MAX_MESSAGE_BYTES,
    "max_text_bytes": MAX_TEXT_BYTES,
    "max_labels_per_example": MAX_LABELS,
}

# --- strategies ------------------------------------------------------------------------------

_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0.0, 1.0),
    st.sampled_from([0.0, -0.0, 1.0, 5e-324, 1.7976931348623157e308, -1e308, float("nan")]),
)
_huge = st.builds(
    lambda ch, n: ch * n,
    st.characters(codec="utf-8"),
    st.sampled_from([0, 1, MAX_TEXT_BYTES, MAX_TEXT_BYTES + 1, 200_000, 2 * MAX_MESSAGE_BYTES]),
)
_text = st.one_of(st.text(max_size=40), _huge)
_label_names = st.lists(
    st.one_of(st.sampled_from(CLASS_NAMES + TEXT_CLASS_NAMES), st.text(max_size=8)),
    max_size=MAX_LABELS + 4,
)


@st.composite
def examples(draw: st.DrawFn) -> pb.Example:
    ex = pb.Example(
        id=draw(st.one_of(st.text(max_size=12), st.just(""), _huge)),
        labels=draw(_label_names),
        label_indices=draw(
            st.lists(st.integers(-(2**31), 2**31 - 1) | st.integers(0, 6), max_size=MAX_LABELS + 4)
        ),
        annotator_id=draw(st.text(max_size=10)),
        metadata=draw(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)),
    )
    kind = draw(st.sampled_from(["none", "text", "features", "probabilities"]))
    n = draw(st.one_of(st.integers(0, 8), st.just(len(CLASS_NAMES)), st.just(3)))
    if kind == "text":
        ex.text = draw(_text)
    elif kind == "features":
        ex.features.values.extend(draw(st.lists(_floats, min_size=n, max_size=n)))
    elif kind == "probabilities":
        ex.probabilities.values.extend(draw(st.lists(_floats, min_size=n, max_size=n)))
    return ex


@st.composite
def plausible_examples(draw: st.DrawFn, class_names: tuple[str, ...], text: bool) -> pb.Example:
    """Mostly well-formed examples (so scoring runs), with edge values in the valid range."""
    k = len(class_names)
    ex = pb.Example(
        id=draw(st.text(min_size=1, max_size=12)),
        labels=draw(st.lists(st.sampled_from(class_names), max_size=k, unique=True)),
        annotator_id=draw(st.text(max_size=10)),
        metadata=draw(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)),
    )
    if text and draw(st.booleans()):
        ex.text = draw(st.one_of(st.text(max_size=200), st.sampled_from(["", " ", "red car"])))
    else:
        unit = st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 1.0, 5e-324, 1 - 1e-16]))
        ex.probabilities.values.extend(draw(st.lists(unit, min_size=k, max_size=k)))
    return ex


@st.composite
def requests(
    draw: st.DrawFn, class_names: tuple[str, ...] = CLASS_NAMES, text: bool = False
) -> pb.ScoreRequest:
    anything = st.lists(examples(), max_size=MAX_BATCH + 3)
    plausible = st.lists(plausible_examples(class_names, text), max_size=MAX_BATCH)
    items = draw(st.one_of(anything, plausible))
    if items and draw(st.booleans()):  # make ids unique often, so deeper checks are reached
        for i, ex in enumerate(items):
            ex.id = f"id-{i}"
    return pb.ScoreRequest(examples=items, include_probabilities=draw(st.booleans()))


def _serialized(request: pb.ScoreRequest) -> bytes:
    return request.SerializeToString()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


@st.composite
def unknown_fields(draw: st.DrawFn) -> bytes:
    """Fields this server does not know: unknown numbers, enum-like varints of any value."""
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        number = draw(st.integers(3, 2**29 - 1))
        wire = draw(st.sampled_from([0, 1, 2, 5]))
        out += _varint(number << 3 | wire)
        if wire == 0:
            out += _varint(draw(st.integers(0, 2**64 - 1)))
        elif wire == 1:
            out += draw(st.binary(min_size=8, max_size=8))
        elif wire == 5:
            out += draw(st.binary(min_size=4, max_size=4))
        else:
            payload = draw(st.binary(max_size=64))
            out += _varint(len(payload)) + payload
    return out


# --- the servers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prob_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    artifact = write_artifact(tmp_path_factory.mktemp("fuzz") / "thresholds.json")
    with running_server(thresholds=artifact, **LIMITS) as server:  # type: ignore[arg-type]
        yield server
        _assert_clean(server)


@pytest.fixture(scope="module")
def text_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    import onnxruntime as ort

    folder = tmp_path_factory.mktemp("fuzz-text")
    model, texts, tags = text_model(folder / "text.onnx")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feed = np.array(texts, dtype=object).reshape(-1, 1)
    probs = session.run(["probabilities"], {"text": feed})[0].astype(np.float64)
    artifact = write_artifact(
        folder / "t.json", class_names=TEXT_CLASS_NAMES, model_path=model, probs=probs, labels=tags
    )
    with running_server(model=model, thresholds=artifact, **LIMITS) as server:  # type: ignore[arg-type]
        yield server
        _assert_clean(server)


def _assert_clean(server: RunningServer) -> None:
    """Nothing left in flight; no call ended INTERNAL, no unary call UNKNOWN."""
    registry = server.metrics.registry
    assert registry.get_sample_value("labelwatch_inflight_examples") == 0
    assert registry.get_sample_value("labelwatch_open_streams") == 0
    for metric in registry.collect():
        if metric.name == "grpc_server_handled":
            for sample in metric.samples:
                code = sample.labels["grpc_code"]
                assert code != "INTERNAL", sample
                # a stream gRPC cancels itself (an oversized message: the caller sees
                # RESOURCE_EXHAUSTED) reaches the metrics interceptor with no code
                if sample.labels["grpc_type"] == "unary":
                    assert code != "UNKNOWN", sample


@pytest.fixture(scope="module")
def prob_channel(prob_server: RunningServer) -> Iterator[grpc.Channel]:
    options = [("grpc.max_send_message_length", 8 * MAX_MESSAGE_BYTES)]
    with grpc.insecure_channel(target_of(prob_server), options=options) as channel:
        yield channel


@pytest.fixture(scope="module")
def text_channel(text_server: RunningServer) -> Iterator[grpc.Channel]:
    options = [("grpc.max_send_message_length", 8 * MAX_MESSAGE_BYTES)]
    with grpc.insecure_channel(target_of(text_server), options=options) as channel:
        yield channel


# --- the checks -----------------------------------------------------------------------------


def _raw_score(channel: grpc.Channel, body: bytes) -> tuple[grpc.StatusCode, bytes | None]:
    call = channel.unary_unary("/labelwatch.v1.LabelQuality/Score")
    try:
        return grpc.StatusCode.OK, call(body, timeout=30)
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        assert exc.details(), f"{exc.code()} without a message"
        return exc.code(), None


def _check_answer(request: pb.ScoreRequest, code: grpc.StatusCode, body: bytes | None) -> None:
    event(code.name)  # `pytest --hypothesis-show-statistics` shows the mix of outcomes
    assert code in DOCUMENTED, code
    if code == grpc.StatusCode.OK:
        assert body is not None
        response = pb.ScoreResponse.FromString(body)
        assert [r.id for r in response.results] == [e.id for e in request.examples]
        for result in response.results:
            assert 0.0 <= result.label_quality <= 1.0


def _still_serves(channel: grpc.Channel, class_names: tuple[str, ...]) -> None:
    stub = pb_grpc.LabelQualityStub(channel)
    if class_names == CLASS_NAMES:
        request = score_request(2)
    else:
        request = pb.ScoreRequest(examples=[pb.Example(id="after", text="red car", labels=["red"])])
    assert len(stub.Score(request, timeout=10).results) == len(request.examples)


# slow: long fuzzing
@pytest.mark.slow
@settings(FUZZ, max_examples=200)
@given(request=requests(), extra=st.one_of(st.just(b""), unknown_fields()))
def test_random_score_requests_end_ok_or_documented(
    prob_channel: grpc.Channel, request: pb.ScoreRequest, extra: bytes
) -> None:
    code, body = _raw_score(prob_channel, request.SerializeToString() + extra)
    _check_answer(request, code, body)
    _still_serves(prob_channel, CLASS_NAMES)


# slow: long fuzzing
@pytest.mark.slow
@FUZZ
@given(request=requests(TEXT_CLASS_NAMES, text=True))
def test_random_requests_to_a_text_model_end_ok_or_documented(
    text_channel: grpc.Channel, request: pb.ScoreRequest
) -> None:
    code, body = _raw_score(text_channel, request.SerializeToString())
    _check_answer(request, code, body)
    _still_serves(text_channel, TEXT_CLASS_NAMES)


@FUZZ
@given(body=st.binary(max_size=512))
def test_random_bytes_as_any_message_end_ok_or_invalid_argument(
    prob_channel: grpc.Channel, body: bytes
) -> None:
    code, answer = _raw_score(prob_channel, body)
    assert code in DOCUMENTED, code
    if code == grpc.StatusCode.OK:
        request = pb.ScoreRequest.FromString(body)  # it parsed on the server, so it parses here
        _check_answer(request, code, answer)
    info = prob_channel.unary_unary("/labelwatch.v1.LabelQuality/GetModelInfo")
    try:
        info(body, timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert "labelwatch.v1.GetModelInfoRequest" in exc.details()  # type: ignore[attr-defined]
    _still_serves(prob_channel, CLASS_NAMES)


# slow: long fuzzing
@pytest.mark.slow
@FUZZ
@given(bodies=st.lists(st.one_of(st.binary(max_size=256), requests().map(_serialized)), max_size=4))
def test_random_streams_end_ok_or_documented(
    prob_channel: grpc.Channel, bodies: list[bytes]
) -> None:
    stream = prob_channel.stream_stream("/labelwatch.v1.LabelQuality/ScoreStream")
    answered = 0
    try:
        for _ in stream(iter(bodies), timeout=30):
            answered += 1
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        code = exc.code()
    assert code in DOCUMENTED, code
    if code == grpc.StatusCode.OK:
        assert answered == len(bodies)
    _still_serves(prob_channel, CLASS_NAMES)


# --- the per-example limits, by name --------------------------------------------------------


def _details(channel: grpc.Channel, request: pb.ScoreRequest) -> tuple[grpc.StatusCode, str]:
    try:
        pb_grpc.LabelQualityStub(channel).Score(request, timeout=10)
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_too_many_tags_are_refused_naming_example_and_field(prob_channel: grpc.Channel) -> None:
    request = score_request(2)
    request.examples[1].label_indices.extend([0] * MAX_LABELS)  # plus one label: one too many
    assert _details(prob_channel, request) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"example 'ex-1': fields 'labels' and 'label_indices': {MAX_LABELS + 1} tags given; "
        f"at most {MAX_LABELS} per example (--max-labels-per-example)",
    )
    del request.examples[1].labels[:]
    request.examples[1].label_indices.append(1)
    assert _details(prob_channel, request)[1].startswith("example 'ex-1': field 'label_indices'")


def test_text_over_max_text_bytes_is_refused_and_text_at_the_limit_is_scored(
    text_channel: grpc.Channel,
) -> None:
    at_limit = "é" * (MAX_TEXT_BYTES // 2)  # 2 bytes each in UTF-8
    over = at_limit + "x"
    request = pb.ScoreRequest(
        examples=[pb.Example(id="ok", text=at_limit), pb.Example(id="long", text=over)]
    )
    assert _details(text_channel, request) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"example 'long': field 'text': {MAX_TEXT_BYTES + 1} bytes of UTF-8; at most "
        f"{MAX_TEXT_BYTES} per example (--max-text-bytes)",
    )
    del request.examples[1]
    assert _details(text_channel, request) == (grpc.StatusCode.OK, "")
