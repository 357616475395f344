"""Failures inside the server reach the caller as INTERNAL, short and generic, and the log.

Two real ways to fail: an ONNX model that loads and answers one example but fails inside
onnxruntime for two (its Reshape is fixed to one row), served by ``labelwatch serve``; and a
bug of any other kind (a plain exception from the scoring step) in a servicer served on
127.0.0.1.
"""

from __future__ import annotations

import importlib
import json
import logging
import pkgutil
import signal
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import labelwatch
from labelwatch.codec import ExampleDecoder
from labelwatch.domain import InputKind, LabeledExample, ModelSpec, ScoredBatch
from labelwatch.errors import ErrorCode, PublicError
from labelwatch.grpc.servicer import LabelQualityServicer
from labelwatch.grpc.status import STATUS_OF
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_server import CLASS_NAMES, server_process, write_artifact

K = len(CLASS_NAMES)
D = 3


def one_row_model(path: Path) -> Path:
    """Float input ``(N, D)`` -> sigmoid ``(N, K)`` reshaped to ``(1, K)``: fails for N > 1."""
    rng = np.random.default_rng(4)
    w = numpy_helper.from_array(rng.normal(size=(D, K)).astype(np.float32), "W")
    shape = numpy_helper.from_array(np.array([1, K], dtype=np.int64), "one_row")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["p"]),
            helper.make_node("Reshape", ["p", "one_row"], ["probabilities"]),
        ],
        "one_row_model",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, D])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, K])],
        initializer=[w, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"class_names": json.dumps(list(CLASS_NAMES))})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _features(example_id: str) -> pb.Example:
    return pb.Example(
        id=example_id, features=pb.FloatFeatures(values=[0.1, -0.2, 0.3]), labels=["cat"]
    )


def test_model_failing_inside_onnxruntime_is_internal_and_logged_once(tmp_path: Path) -> None:
    model = one_row_model(tmp_path / "one_row.onnx")
    artifact = write_artifact(tmp_path / "thresholds.json", model_path=model)
    args = ["--model", str(model), "--thresholds", str(artifact), "--log-format", "json"]
    with server_process(args) as proc:
        with grpc.insecure_channel(proc.target) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                request = pb.ScoreRequest(examples=[_features("a"), _features("b")])
                stub.Score(request, timeout=30)
            err = caught.value
            assert err.code() == grpc.StatusCode.INTERNAL
            details = err.details() or ""
            # onnxruntime's exception class at most: no node names, shapes or paths
            assert details.startswith("model run failed: ") and len(details) < 60
            # the server keeps serving: one row fits the model
            one = stub.Score(pb.ScoreRequest(examples=[_features("c")]), timeout=30)
            assert [r.id for r in one.results] == ["c"]
        proc.process.send_signal(signal.SIGTERM)
        _, stderr = proc.process.communicate(timeout=30)
    assert proc.process.returncode == 0
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    internal = [r for r in records if r.get("event") == "internal_error"]
    assert len(internal) == 1, stderr
    [record] = internal
    assert record["level"] == "error"
    assert record["method"] == "Score" and "model run failed" in record["error"]
    # the operator gets onnxruntime's own reason, which the caller did not
    assert "Reshape" in record["exc"]
    assert "Reshape" not in details and "Traceback" not in details


class _Broken:
    """A scoring step with a bug: raises an exception no layer translates."""

    def __call__(
        self, examples: Sequence[LabeledExample], *, deadline: float | None = None
    ) -> ScoredBatch:
        raise KeyError("secret-internal-detail at /srv/labelwatch/pipeline.py")


@pytest.fixture
def broken_stub() -> Iterator[pb_grpc.LabelQualityStub]:
    spec = ModelSpec(InputKind.PROBABILITIES_ONLY, None, CLASS_NAMES)
    servicer = LabelQualityServicer(ExampleDecoder(spec), _Broken(), pb.ModelInfo(), max_batch=10)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_LabelQualityServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.LabelQualityStub(channel)
    finally:
        server.stop(None)


@pytest.mark.parametrize("method", ["Score", "ScoreStream"])
def test_unexpected_exception_is_generic_internal_with_one_log_line(
    broken_stub: pb_grpc.LabelQualityStub, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    request = pb.ScoreRequest(
        examples=[pb.Example(id="x", probabilities=pb.Probabilities(values=[0.5] * K))]
    )
    caplog.set_level(logging.INFO, logger="labelwatch")
    with pytest.raises(grpc.RpcError) as caught:
        if method == "Score":
            broken_stub.Score(request, timeout=10)
        else:
            list(broken_stub.ScoreStream(iter([request]), timeout=10))
    err = caught.value
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == f"internal error in {method}; see the server log"
    events = [r for r in caplog.records if "event=internal_error" in r.getMessage()]
    assert len(events) == 1
    assert f"method={method}" in events[0].getMessage()
    assert events[0].levelno == logging.ERROR
    assert events[0].exc_info is not None and isinstance(events[0].exc_info[1], KeyError)


def test_every_error_code_maps_to_the_grpc_status_of_the_same_name() -> None:
    assert set(STATUS_OF) == set(ErrorCode)
    for code in ErrorCode:
        assert STATUS_OF[code].name == code.value


def test_every_public_error_is_declared_in_the_errors_module() -> None:
    """The status a failure gets is decided in one module: no PublicError subclass elsewhere."""
    for info in pkgutil.walk_packages(labelwatch.__path__, "labelwatch."):
        importlib.import_module(info.name)
    declared: list[type[PublicError]] = []
    pending: list[type[PublicError]] = [PublicError]
    while pending:
        cls = pending.pop()
        declared.append(cls)
        pending.extend(cls.__subclasses__())
    assert {cls.__module__ for cls in declared} == {"labelwatch.errors"}
    for cls in declared:
        assert cls.code in STATUS_OF
