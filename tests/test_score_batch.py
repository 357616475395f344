"""ScoreBatch, the columnar RPC: a real server on 127.0.0.1 and the real client.

It must give exactly what Score gives for the same examples (scores bit-equal, the same
issues and error probabilities, the same flags stored before the answer), refuse every bad
input with Score's message for the same example (or a precise one naming its own field), and
check sizes before it allocates anything.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import threading
import tracemalloc
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client import CollectorRegistry

from labelwatch.calibration import calibrate, save_artifact
from labelwatch.codec import ExampleDecoder
from labelwatch.codec.columnar import examples_from_batch_request
from labelwatch.domain import InputKind, ModelSpec, ScoredBatch
from labelwatch.errors import DeadlineExpired, InvalidExample
from labelwatch.grpc.servicer import LabelQualityServicer
from labelwatch.metrics import SecurityMetrics
from labelwatch.scoring import FilterBy
from labelwatch.security.admission import Admission
from labelwatch.server import RunningServer
from labelwatch_client import (
    AsyncLabelwatchClient,
    Example,
    LabelwatchClient,
    PermissionDenied,
    Unauthenticated,
)
from labelwatch_client.cli import main as client_main
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_security import bearer, make_tokens
from support_server import (
    CLASS_NAMES,
    float_model,
    float_model_probs,
    random_calibration,
    running_server,
    target_of,
    write_artifact,
)

K = len(CLASS_NAMES)
MAX_BATCH = 50
MAX_LABELS = 3


@pytest.fixture(scope="module")
def context_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact with a tag-context model: every flag carries an error probability."""
    probs, labels = random_calibration(n=800, seed=3)
    artifact = calibrate(
        probs, labels, CLASS_NAMES, filter_by=FilterBy.BUDGET, context_tags=3, flag_budget=0.4
    )
    path = tmp_path_factory.mktemp("ctx") / "thresholds.json"
    save_artifact(artifact, path)
    return path


@pytest.fixture(scope="module")
def server(context_artifact: Path) -> Iterator[RunningServer]:
    with running_server(
        thresholds=context_artifact, max_batch=MAX_BATCH, max_labels_per_example=MAX_LABELS
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[pb_grpc.LabelQualityStub]:
    with grpc.insecure_channel(target_of(server)) as channel:
        yield pb_grpc.LabelQualityStub(channel)


def _batch_of(n: int, seed: int) -> tuple[np.ndarray, list[list[int]]]:
    """``(n, K)`` float32 probabilities and each example's tags (at most MAX_LABELS)."""
    probs, labels = random_calibration(n=n, seed=seed)
    tags = [list(np.flatnonzero(row))[:MAX_LABELS] for row in labels]
    return probs.astype(np.float32), tags


def _examples(
    ids: Sequence[str], probs: np.ndarray, tags: Sequence[Sequence[int]]
) -> list[Example]:
    return [
        Example(i, probabilities=p.astype(np.float64).tolist(), label_indices=t)
        for i, p, t in zip(ids, probs, tags, strict=True)
    ]


# --- the same answers as Score ----------------------------------------------------------------


def test_score_batch_equals_score_bit_for_bit(server: RunningServer) -> None:
    probs, tags = _batch_of(40, seed=11)
    ids = [f"ex-{i}" for i in range(40)]
    with LabelwatchClient(target_of(server)) as client:
        batch = client.score_batch(ids, probabilities=probs, tags=tags, include_probabilities=True)
        expected = client.score(_examples(ids, probs, tags), include_probabilities=True)
    assert batch.results() == expected  # floats compared with ==: bit-equal
    assert batch.label_quality.tolist() == [r.label_quality for r in expected]
    assert batch.is_issue.tolist() == [r.is_issue for r in expected]
    assert batch.is_issue.any(), "the test data must raise some flags"
    assert batch.issue_error_probability is not None  # the artifact has a tag-context model
    flat = [issue for r in expected for issue in r.issues]
    assert batch.issue_error_probability.tolist() == [i.error_probability for i in flat]
    assert batch.issue_class_index.tolist() == [i.class_index for i in flat]
    assert batch.probabilities is not None
    assert batch.probabilities.tolist() == [list(r.probabilities or ()) for r in expected]


def test_tags_as_names_bool_array_and_csr_are_the_same_request(server: RunningServer) -> None:
    probs, tags = _batch_of(6, seed=12)
    ids = [f"t-{i}" for i in range(6)]
    as_bool = np.zeros((6, K), dtype=np.bool_)
    for i, row in enumerate(tags):
        as_bool[i, row] = True
    indptr = np.cumsum([0] + [len(t) for t in tags])
    indices = [k for t in tags for k in t]
    with LabelwatchClient(target_of(server)) as client:
        by_index = client.score_batch(ids, probabilities=probs, tags=tags).results()
        by_name = client.score_batch(
            ids, probabilities=probs, tags=[[CLASS_NAMES[k] for k in t] for t in tags]
        ).results()
        by_array = client.score_batch(ids, probabilities=probs, tags=as_bool).results()
        by_csr = client.score_batch(ids, probabilities=probs, tags_csr=(indptr, indices)).results()
    assert by_index == by_name == by_array == by_csr


def test_float64_probabilities_are_scored_exactly_as_score_scores_them(
    server: RunningServer,
) -> None:
    probs = random_calibration(n=8, seed=13)[0]  # float64, not float32-representable
    ids = [f"d-{i}" for i in range(8)]
    with LabelwatchClient(target_of(server)) as client:
        batch = client.score_batch(ids, probabilities=probs)
        expected = client.score(
            [Example(i, probabilities=p.tolist()) for i, p in zip(ids, probs, strict=True)]
        )
    assert batch.results() == expected


def test_async_client_scores_a_batch(server: RunningServer) -> None:
    probs, tags = _batch_of(5, seed=14)
    ids = [f"a-{i}" for i in range(5)]

    async def run() -> tuple[list[Any], list[Any]]:
        async with AsyncLabelwatchClient(target_of(server)) as client:
            batch = await client.score_batch(ids, probabilities=probs, tags=tags)
            return batch.results(), await client.score(_examples(ids, probs, tags))

    got, expected = asyncio.run(run())
    assert got == expected


def test_empty_batch_scores_nothing(server: RunningServer) -> None:
    with LabelwatchClient(target_of(server)) as client:
        batch = client.score_batch([], probabilities=np.zeros((0, K), dtype=np.float32))
    assert batch.results() == [] and batch.issue_indptr.tolist() == [0]


def test_features_path_equals_score(tmp_path: Path) -> None:
    model = float_model(tmp_path / "float.onnx")
    rng = np.random.default_rng(3)
    calib_x = rng.normal(size=(300, 4)).astype(np.float32)
    calib_p = float_model_probs(model, calib_x)
    art = write_artifact(
        tmp_path / "t.json",
        model_path=model,
        probs=calib_p,
        labels=rng.random(calib_p.shape) < calib_p,
    )
    x = rng.normal(size=(25, 4)).astype(np.float32)
    tags = [list(np.flatnonzero(rng.random(K) < 0.4)) for _ in range(25)]
    ids = [f"f{i}" for i in range(25)]
    with (
        running_server(model=model, thresholds=art) as srv,
        grpc.insecure_channel(target_of(srv)) as channel,
    ):
        with LabelwatchClient(target_of(srv)) as client:
            batch = client.score_batch(ids, features=x, tags=tags, include_probabilities=True)
            expected = client.score(
                [
                    Example(i, features=f.tolist(), label_indices=t)
                    for i, f, t in zip(ids, x, tags, strict=True)
                ],
                include_probabilities=True,
            )
            stub = pb_grpc.LabelQualityStub(channel)
            # beyond float32's range (sent as float64) or NaN: Score's message, Score's rounding
            for bad in (1e39, math.nan):
                rows = np.ones((2, 4))
                rows[1, 2] = bad
                expected_error = _refusal(
                    stub.Score,
                    pb.ScoreRequest(
                        examples=[
                            pb.Example(id=f"g{i}", features=pb.FloatFeatures(values=r.tolist()))
                            for i, r in enumerate(rows)
                        ]
                    ),
                )
                request = pb.ScoreBatchRequest(
                    ids=["g0", "g1"],
                    kind=pb.TENSOR_KIND_FEATURES,
                    dtype=pb.TENSOR_DTYPE_FLOAT64,
                    rows=2,
                    cols=4,
                    values=rows.astype("<f8").tobytes(),
                )
                got = _refusal(stub.ScoreBatch, request)
                assert (
                    got.details()
                    == expected_error.details()
                    == ("example 'g1': field 'features[2]': must be finite")
                )
                assert got.code() == grpc.StatusCode.INVALID_ARGUMENT
            request.cols = 3
            assert _refusal(stub.ScoreBatch, request).details() == (
                "field 'cols': expected 4 values a row (the model's feature length), got 3"
            )
    assert batch.results() == expected
    assert batch.is_issue.any()


def test_flags_are_stored_as_score_stores_them(context_artifact: Path, tmp_path: Path) -> None:
    probs, tags = _batch_of(30, seed=15)
    ids = [f"o-{i}" for i in range(30)]
    annotators = [f"ann-{i % 3}" for i in range(30)]
    stored = []
    for call in ("Score", "ScoreBatch"):
        with running_server(
            thresholds=context_artifact, outbox=tmp_path / f"{call}.sqlite3"
        ) as srv:
            with LabelwatchClient(target_of(srv)) as client:
                if call == "Score":
                    examples = [
                        Example(
                            e.id,
                            probabilities=e.probabilities,
                            label_indices=e.label_indices,
                            annotator_id=a,
                        )
                        for e, a in zip(_examples(ids, probs, tags), annotators, strict=True)
                    ]
                    flagged = sum(r.is_issue for r in client.score(examples))
                else:
                    batch = client.score_batch(
                        ids, probabilities=probs, tags=tags, annotator_ids=annotators
                    )
                    flagged = int(batch.is_issue.sum())
            # stored before the answer: the outbox holds them as soon as the call returned
            flags = srv.engine.outbox.flags(limit=1000)
            assert len(flags) == flagged > 0
            stored.append(
                [{**f.to_dict(), "flagged_at": None, "flagged_at_unix": None} for f in flags]
            )
    assert stored[0] == stored[1]


# --- bad input ----------------------------------------------------------------------------------


def _request(
    ids: Sequence[str],
    table: Sequence[Sequence[float]],
    tags: Sequence[Sequence[int]] | None = None,
    **fields: Any,
) -> pb.ScoreBatchRequest:
    """The request of rows ``table`` (as float32) and ``tags``; then ``fields`` set as given."""
    values = np.array(table, dtype=np.float32).reshape(len(ids), -1)
    request = pb.ScoreBatchRequest(
        ids=ids,
        kind=pb.TENSOR_KIND_PROBABILITIES,
        rows=len(ids),
        cols=values.shape[1],
        values=values.astype("<f4").tobytes(),
    )
    if tags is not None:
        request.tag_indptr.extend(np.cumsum([0] + [len(t) for t in tags]).tolist())
        request.tag_indices.extend(k for t in tags for k in t)
    for name, value in fields.items():
        if isinstance(value, list):
            getattr(request, name)[:] = value
        else:
            setattr(request, name, value)
    return request


def _score_request(
    ids: Sequence[str], rows: Sequence[Sequence[float]], tags: Sequence[Sequence[int]] | None
) -> pb.ScoreRequest:
    return pb.ScoreRequest(
        examples=[
            pb.Example(
                id=i,
                probabilities=pb.Probabilities(values=np.float32(r).astype(np.float64).tolist()),
                label_indices=[] if tags is None else tags[n],
            )
            for n, (i, r) in enumerate(zip(ids, rows, strict=True))
        ]
    )


def _refusal(call: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10)
    return caught.value


FINE = [0.5] * K
# (ids, rows, tags): one bad example among good ones; Score's message for it is ScoreBatch's
SAME_AS_SCORE: dict[str, tuple[list[str], list[list[float]], list[list[int]] | None]] = {
    "empty id": (["a", ""], [FINE, FINE], None),
    "nan": (["a", "b"], [FINE, [0.5, 0.5, math.nan, 0.5, 0.5]], None),
    "inf": (["a", "b"], [FINE, [0.5, 0.5, 0.5, math.inf, 0.5]], None),
    "above 1": (["a", "b"], [FINE, [0.5, 1.5, 0.5, 0.5, 0.5]], None),
    "below 0": (["a", "b"], [[-0.25, 0.5, 0.5, 0.5, 0.5], FINE], None),
    "tag out of range": (["a", "b"], [FINE, FINE], [[0], [1, K]]),
    "negative tag": (["a", "b"], [FINE, FINE], [[-1], []]),
    "too many tags": (["a", "b"], [FINE, FINE], [[0], [0, 1, 2, 3]]),
    "duplicate id": (["a", "b", "a"], [FINE, FINE, FINE], None),
    "first bad example wins": (
        ["a", "b", "c"],
        [FINE, [math.nan] * K, [2.0] * K],
        [[], [0], [9]],
    ),
}


@pytest.mark.parametrize("case", list(SAME_AS_SCORE))
def test_bad_example_gets_scores_message(stub: pb_grpc.LabelQualityStub, case: str) -> None:
    ids, rows, tags = SAME_AS_SCORE[case]
    expected = _refusal(stub.Score, _score_request(ids, rows, tags))
    got = _refusal(stub.ScoreBatch, _request(ids, rows, tags))
    assert expected.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (got.code(), got.details()) == (expected.code(), expected.details())


def test_score_messages_name_the_example_and_field(stub: pb_grpc.LabelQualityStub) -> None:
    # what the cases above compare with, spelled out once
    nan = _refusal(stub.ScoreBatch, _request(["a", "b"], [FINE, [0.5, 0.5, math.nan, 0.5, 0.5]]))
    assert nan.details() == "example 'b': field 'probabilities[2]': must be finite"
    tag = _refusal(stub.ScoreBatch, _request(["a", "b"], [FINE, FINE], [[], [K]]))
    assert (
        tag.details() == f"example 'b': field 'label_indices': index {K} is out of range [0, {K})"
    )


# (request fields, status, the exact message): the columnar form's own checks
TWO = {"ids": ["a", "b"], "table": [FINE, FINE]}
OWN: dict[str, tuple[dict[str, Any], grpc.StatusCode, str]] = {
    "class twice in a row": (
        {**TWO, "tags": [[1], [2, 0, 2]]},
        grpc.StatusCode.INVALID_ARGUMENT,
        "example 'b': field 'label_indices': index 2 is given twice "
        "(a row of tag_indices names each class at most once)",
    ),
    "no kind": (
        {**TWO, "kind": pb.TENSOR_KIND_UNSPECIFIED},
        grpc.StatusCode.INVALID_ARGUMENT,
        "field 'kind': TENSOR_KIND_UNSPECIFIED does not say what 'values' holds; "
        "set TENSOR_KIND_PROBABILITIES or TENSOR_KIND_FEATURES",
    ),
    "features without a float model": (
        {**TWO, "kind": pb.TENSOR_KIND_FEATURES},
        grpc.StatusCode.FAILED_PRECONDITION,
        "field 'kind': the loaded model takes probabilities input, not features",
    ),
    "unknown dtype": (
        {**TWO, "dtype": 7},
        grpc.StatusCode.INVALID_ARGUMENT,
        "field 'dtype': unknown value 7; use TENSOR_DTYPE_FLOAT32 or TENSOR_DTYPE_FLOAT64",
    ),
    "rows differ from ids": (
        {**TWO, "rows": 3},
        grpc.StatusCode.INVALID_ARGUMENT,
        "field 'rows': 3 rows, but 2 ids; 'values' has one row per example",
    ),
    "cols differ from the classes": (
        {"ids": ["a", "b"], "table": [[0.5] * 4, [0.5] * 4]},
        grpc.StatusCode.INVALID_ARGUMENT,
        f"field 'cols': expected {K} values a row (one per class), got 4",
    ),
    "values too short": (
        {**TWO, "values": b"\x00" * (2 * K * 4 - 1)},
        grpc.StatusCode.INVALID_ARGUMENT,
        f"field 'values': expected rows * cols * 4 = {2 * K * 4} bytes (float32, little-endian), "
        f"got {2 * K * 4 - 1}",
    ),
    "float64 values sent as float32": (
        {**TWO, "dtype": pb.TENSOR_DTYPE_FLOAT64},
        grpc.StatusCode.INVALID_ARGUMENT,
        f"field 'values': expected rows * cols * 8 = {2 * K * 8} bytes (float64, little-endian), "
        f"got {2 * K * 4}",
    ),
    "annotators for some examples": (
        {**TWO, "annotator_ids": ["x"]},
        grpc.StatusCode.INVALID_ARGUMENT,
        "field 'annotator_ids': 1 entries for 2 ids; give one per example or none",
    ),
    "indptr too short": (
        {**TWO, "tag_indptr": [0, 1], "tag_indices": [1]},
        grpc.StatusCode.INVALID_ARGUMENT,
        "field 'tag_indptr': expected 3 offsets (one more than ids), got 2",
    ),
    "indptr not starting at 0": (
        {**TWO, "tag_indptr": [1, 1, 2], "tag_indices": [1, 2]},
        grpc.StatusCode.INVALID_ARGUMENT,
        "field 'tag_indptr[0]': must be 0, got 1",
    ),
    "indptr decreasing": (
        {**TWO, "tag_indptr": [0, 2, 1], "tag_indices": [1, 2]},
        grpc.StatusCode.INVALID_ARGUMENT,
        "field 'tag_indptr[2]': 1 is less than tag_indptr[1] = 2; offsets must not decrease",
    ),
    "indptr not ending at len(indices)": (
        {**TWO, "tag_indptr": [0, 1, 2], "tag_indices": [1, 2, 3]},
        grpc.StatusCode.INVALID_ARGUMENT,
        "field 'tag_indptr[2]': must equal len(tag_indices) = 3, got 2",
    ),
    "more examples than --max-batch": (
        {"ids": [f"e{i}" for i in range(MAX_BATCH + 1)], "table": [FINE] * (MAX_BATCH + 1)},
        grpc.StatusCode.INVALID_ARGUMENT,
        f"request has {MAX_BATCH + 1} examples; at most {MAX_BATCH} are allowed per request "
        "(--max-batch); split it or use ScoreStream",
    ),
}


@pytest.mark.parametrize("case", list(OWN))
def test_bad_batch_gets_precise_status(stub: pb_grpc.LabelQualityStub, case: str) -> None:
    spec, code, message = OWN[case]
    err = _refusal(stub.ScoreBatch, _request(**spec))
    assert (err.code(), err.details()) == (code, message)
    # the server keeps serving
    assert len(stub.ScoreBatch(_request(["ok"], [FINE]), timeout=10).label_quality) == 1


def test_score_refuses_the_same_batch_size_with_the_same_message(
    stub: pb_grpc.LabelQualityStub,
) -> None:
    ids = [f"e{i}" for i in range(MAX_BATCH + 1)]
    expected = _refusal(stub.Score, _score_request(ids, [FINE] * len(ids), None))
    assert expected.details() == OWN["more examples than --max-batch"][2]


def test_oversize_message_is_resource_exhausted(context_artifact: Path) -> None:
    with running_server(thresholds=context_artifact, max_message_bytes=4096) as srv:
        with grpc.insecure_channel(target_of(srv)) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            big = _request([f"e{i}" for i in range(300)], [FINE] * 300)
            assert big.ByteSize() > 4096
            err = _refusal(stub.ScoreBatch, big)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert len(stub.ScoreBatch(_request(["ok"], [FINE]), timeout=10).label_quality) == 1


VALUES_BYTES = 4 << 20


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"rows": 10**9}, "field 'rows'"),
        ({"cols": 10**9}, "field 'cols'"),
        ({"values": b"\x00" * VALUES_BYTES}, "field 'values'"),
    ],
)
def test_sizes_are_checked_before_anything_is_allocated(
    fields: dict[str, Any], fragment: str
) -> None:
    decoder = ExampleDecoder(ModelSpec(InputKind.PROBABILITIES_ONLY, None, CLASS_NAMES))
    request = _request(["a", "b"], [FINE, FINE], [[0], [1]], **fields)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidExample, match=fragment):
            examples_from_batch_request(request, decoder, MAX_BATCH)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # nothing sized by the claimed shape; of the values, only protobuf's one copy of the field
    given = len(fields.get("values", b""))
    assert peak < given + 64 * 1024


# --- the server around it ---------------------------------------------------------------------


def test_score_batch_needs_the_score_role(context_artifact: Path, tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path / "tokens.jsonl")
    probs, tags = _batch_of(3, seed=16)
    ids = ["x", "y", "z"]
    with running_server(thresholds=context_artifact, auth_tokens=tokens.path) as srv:
        with LabelwatchClient(target_of(srv), token=tokens.score) as client:
            assert len(client.score_batch(ids, probabilities=probs, tags=tags).ids) == 3
        with grpc.insecure_channel(target_of(srv)) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            request = _request(ids, probs.tolist(), tags)
            err = _refusal(stub.ScoreBatch, request)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as caught:
                stub.ScoreBatch(request, timeout=10, metadata=bearer(tokens.watch))
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "lacks role 'score'" in caught.value.details()
        with LabelwatchClient(target_of(srv), token=tokens.watch) as client:
            with pytest.raises(PermissionDenied):
                client.score_batch(ids, probabilities=probs)
        with LabelwatchClient(target_of(srv)) as client:
            with pytest.raises(Unauthenticated):
                client.score_batch(ids, probabilities=probs)


def test_calls_are_counted_under_their_method(context_artifact: Path) -> None:
    with running_server(thresholds=context_artifact) as srv:
        with grpc.insecure_channel(target_of(srv)) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            stub.ScoreBatch(_request(["a"], [FINE]), timeout=10)
            _refusal(stub.ScoreBatch, _request(["a"], [[math.nan] * K]))
        labels = {
            "grpc_service": "labelwatch.v1.LabelQuality",
            "grpc_method": "ScoreBatch",
            "grpc_type": "unary",
        }
        sample = srv.engine.registry.get_sample_value
        assert sample("grpc_server_started_total", labels) == 2
        # a unary call's status is counted before its answer is sent
        assert sample("grpc_server_handled_total", {**labels, "grpc_code": "OK"}) == 1
        assert sample("grpc_server_handled_total", {**labels, "grpc_code": "INVALID_ARGUMENT"}) == 1
        version = {"model_version": srv.engine.pipeline.model_version}
        assert sample("labelwatch_examples_scored_total", version) == 1


def test_reflection_describes_score_batch(server: RunningServer) -> None:
    with grpc.insecure_channel(target_of(server)) as channel:
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName("labelwatch.v1.LabelQuality").FindMethodByName("ScoreBatch")
        assert method.input_type.full_name == "labelwatch.v1.ScoreBatchRequest"
        assert method.output_type.full_name == "labelwatch.v1.ScoreBatchResponse"


def test_a_stock_tool_calls_score_batch_with_json_through_reflection(
    server: RunningServer,
) -> None:
    """What grpcurl does: types from reflection, a JSON body (bytes as base64), JSON back."""
    values = base64.b64encode(np.full((2, K), 0.5, dtype="<f4").tobytes()).decode()
    body = json.dumps(
        {
            "ids": ["j1", "j2"],
            "kind": "TENSOR_KIND_PROBABILITIES",
            "rows": 2,
            "cols": K,
            "values": values,
            "tagIndptr": [0, 1, 1],
            "tagIndices": [2],
        }
    )
    service = "labelwatch.v1.LabelQuality"
    with grpc.insecure_channel(target_of(server)) as channel:
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName(service).FindMethodByName("ScoreBatch")
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            f"/{service}/ScoreBatch",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        reply = json_format.MessageToDict(call(json_format.Parse(body, request_type()), timeout=10))
    with LabelwatchClient(target_of(server)) as client:
        expected = client.score(
            [
                Example("j1", probabilities=[0.5] * K, label_indices=[2]),
                Example("j2", probabilities=[0.5] * K),
            ]
        )
    assert reply["labelQuality"] == [r.label_quality for r in expected]
    assert reply["modelVersion"] == expected[0].model_version


# --- the CLI ------------------------------------------------------------------------------------


def _score_batch_calls(srv: RunningServer) -> float:
    labels = {
        "grpc_service": "labelwatch.v1.LabelQuality",
        "grpc_method": "ScoreBatch",
        "grpc_type": "unary",
    }
    return srv.engine.registry.get_sample_value("grpc_server_started_total", labels) or 0.0


def test_cli_sends_probabilities_through_score_batch_with_scores_results(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    probs, tags = _batch_of(10, seed=17)
    examples = [
        Example(
            f"c-{i}",
            probabilities=probs[i].astype(np.float64).tolist(),
            labels=[CLASS_NAMES[k] for k in tags[i]],
            annotator_id=f"ann-{i % 2}",
        )
        for i in range(10)
    ]
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(
            json.dumps(
                {
                    "id": ex.id,
                    "probabilities": ex.probabilities,
                    "labels": ex.labels,
                    "annotator_id": ex.annotator_id,
                }
            )
            + "\n"
            for ex in examples
        )
    )
    before = _score_batch_calls(server)
    argv = ["score", "--target", target_of(server), "--input", str(source), "--batch-size", "4"]
    assert client_main(argv) == 0
    out, _ = capsys.readouterr()
    assert _score_batch_calls(server) == before + 3
    with LabelwatchClient(target_of(server)) as client:
        expected = client.score(examples)
    assert [json.loads(line) for line in out.splitlines()] == [
        {"index": i, **r.to_json()} for i, r in enumerate(expected)
    ]


def test_cli_bad_tag_gets_scores_message(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"id": "ok", "probabilities": [0.5, 0.5, 0.5, 0.5, 0.5]}\n'
        '{"id": "x3", "probabilities": [0.5, 0.5, 0.5, 0.5, 0.5], "label_indices": [1, 7]}\n'
    )
    before = _score_batch_calls(server)
    assert client_main(["score", "--target", target_of(server), "--input", str(source)]) == 1
    _, err = capsys.readouterr()
    assert _score_batch_calls(server) == before + 1
    message = "example 'x3': field 'label_indices': index 7 is out of range [0, 5)"
    assert f"(INVALID_ARGUMENT): {message}" in err


# --- the client's packing, without a server --------------------------------------------------


def _pack(**given: Any) -> Any:
    from labelwatch_client.columnar import batch_request

    arguments: dict[str, Any] = {
        "probabilities": None,
        "features": None,
        "tags": None,
        "tags_csr": None,
        "annotator_ids": None,
        "include_probabilities": False,
        "class_index": {name: k for k, name in enumerate(CLASS_NAMES)},
    }
    arguments.update(given)
    return batch_request(["a", "b"], **arguments)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({}, "give one of probabilities"),
        (
            {"probabilities": np.zeros((2, K)), "features": np.zeros((2, 4))},
            "give one of probabilities",
        ),
        ({"probabilities": np.zeros((3, K))}, "N = 2 ids"),
        ({"probabilities": np.zeros((2, K)), "tags": [[0]]}, "1 lists for 2 ids"),
        ({"probabilities": np.zeros((2, K)), "tags": [["cat"], ["unicorn"]]}, "'unicorn'"),
        (
            {
                "probabilities": np.zeros((2, K)),
                "tags": [[0], [1]],
                "tags_csr": ([0, 1, 2], [0, 1]),
            },
            "not both",
        ),
    ],
)
def test_client_refuses_what_it_cannot_pack(given: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _pack(**given)


def test_client_packs_float32_as_float32_and_the_rest_as_float64() -> None:
    as32 = _pack(probabilities=np.full((2, K), 0.5, dtype=np.float32)).message
    as64 = _pack(probabilities=[[0.5] * K, [0.25] * K]).message
    assert (as32.dtype, len(as32.values)) == (pb.TENSOR_DTYPE_FLOAT32, 2 * K * 4)
    assert (as64.dtype, len(as64.values)) == (pb.TENSOR_DTYPE_FLOAT64, 2 * K * 8)
    features = _pack(features=np.ones((2, 4))).message
    assert (features.kind, features.dtype) == (pb.TENSOR_KIND_FEATURES, pb.TENSOR_DTYPE_FLOAT32)
    tags = _pack(probabilities=np.zeros((2, K)), tags=[[2, 0, 2], ["dog"]]).message
    assert (list(tags.tag_indptr), list(tags.tag_indices)) == ([0, 2, 3], [0, 2, 1])
    untagged = _pack(probabilities=np.zeros((2, K))).message
    assert (list(untagged.tag_indptr), list(untagged.tag_indices)) == ([], [])


def test_a_response_that_does_not_fit_the_request_is_a_protocol_mismatch() -> None:
    from labelwatch_client import ProtocolMismatch
    from labelwatch_client.columnar import result_from_response

    request = _pack(probabilities=np.zeros((2, K)))
    good = pb.ScoreBatchResponse(
        label_quality=[0.5, 0.5],
        issue_indptr=[0, 1, 1],
        issue_class_index=[3],
        issue_kind=[pb.ISSUE_KIND_MISSING],
        issue_probability=[0.9],
        issue_threshold=[0.7],
    )
    result = result_from_response(good, request, CLASS_NAMES)
    assert [i.label for i in result.issues(0)] == [CLASS_NAMES[3]]
    assert result.issue_error_probability is None
    for broken in (
        pb.ScoreBatchResponse(label_quality=[0.5]),
        pb.ScoreBatchResponse(
            label_quality=[0.5, 0.5],
            issue_indptr=[0, 1, 1],
            issue_class_index=[3],
            issue_kind=[pb.ISSUE_KIND_UNSPECIFIED],
            issue_probability=[0.9],
            issue_threshold=[0.7],
        ),
    ):
        with pytest.raises(ProtocolMismatch):
            result_from_response(broken, request, CLASS_NAMES)


# --- admission and deadlines: the servicer alone, on a real gRPC server --------------------------


class _HeldScorer:
    """A ScoreFn that blocks until released (or raises ``error``), to hold examples in flight."""

    def __init__(self, error: Exception | None = None) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.error = error
        self.pipeline_seen: list[int] = []

    def __call__(self, examples: Sequence[Any], *, deadline: float | None = None) -> Any:
        self.pipeline_seen.append(len(examples))
        self.entered.set()
        if self.error is not None:
            raise self.error
        assert self.release.wait(30)
        n = len(examples)
        return ScoredBatch(
            examples=tuple(examples),
            probabilities=np.zeros((n, K)),
            labels=np.zeros((n, K), dtype=np.bool_),
            flags=np.zeros((n, K), dtype=np.bool_),
            label_quality=np.ones(n),
            t0=np.zeros(K),
            t1=np.ones(K),
            model_version="held",
        )


@contextlib.contextmanager
def _servicer_on_a_port(
    scorer: _HeldScorer, registry: CollectorRegistry, max_inflight: int
) -> Iterator[pb_grpc.LabelQualityStub]:
    decoder = ExampleDecoder(ModelSpec(InputKind.PROBABILITIES_ONLY, None, CLASS_NAMES))
    admission = Admission(max_inflight, SecurityMetrics(registry))
    servicer = LabelQualityServicer(
        decoder, scorer, pb.ModelInfo(), max_batch=MAX_BATCH, admission=admission
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_LabelQualityServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.LabelQualityStub(channel)
    finally:
        scorer.release.set()
        server.stop(0)


def test_score_batch_is_admitted_by_examples_in_flight() -> None:
    registry = CollectorRegistry()
    scorer = _HeldScorer()
    with _servicer_on_a_port(scorer, registry, max_inflight=12) as stub:
        first = stub.ScoreBatch.future(_request([f"a{i}" for i in range(10)], [FINE] * 10))
        assert scorer.entered.wait(30)
        assert registry.get_sample_value("labelwatch_inflight_examples") == 10
        shed = _refusal(stub.ScoreBatch, _request(["b0", "b1", "b2"], [FINE] * 3))
        assert shed.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-inflight" in shed.details()
        assert (
            registry.get_sample_value("labelwatch_requests_shed_total", {"reason": "inflight"}) == 1
        )
        scorer.release.set()
        assert len(first.result(timeout=30).label_quality) == 10
        assert registry.get_sample_value("labelwatch_inflight_examples") == 0
        # the shed request was refused before it was decoded or scored
        assert scorer.pipeline_seen == [10]


def test_score_batch_dropped_at_its_deadline_is_counted_under_its_method() -> None:
    registry = CollectorRegistry()
    scorer = _HeldScorer(error=DeadlineExpired("the deadline passed while queued"))
    with _servicer_on_a_port(scorer, registry, max_inflight=100) as stub:
        err = _refusal(stub.ScoreBatch, _request(["a"], [FINE]))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    expired = {"grpc_method": "ScoreBatch"}
    assert registry.get_sample_value("labelwatch_deadline_expired_total", expired) == 1
    assert registry.get_sample_value("labelwatch_inflight_examples") == 0
