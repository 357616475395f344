"""The real gRPC server on 127.0.0.1, called through generated stubs."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from onnx import TensorProto, helper, numpy_helper

from labelwatch.calibration import load_artifact
from labelwatch.scoring import FilterBy, decide
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_server import (
    CLASS_NAMES,
    TEXT_CLASS_NAMES,
    _env,
    float_model,
    float_model_probs,
    random_calibration,
    running_server,
    server_process,
    target_of,
    text_model,
    write_artifact,
)

K = len(CLASS_NAMES)


@pytest.fixture(scope="module")
def artifact_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_artifact(tmp_path_factory.mktemp("art") / "thresholds.json")


@pytest.fixture(scope="module")
def prob_server(artifact_path: Path) -> Iterator[str]:
    with running_server(thresholds=artifact_path, max_batch=50) as server:
        yield target_of(server)


@pytest.fixture(scope="module")
def stub(prob_server: str) -> Iterator[pb_grpc.LabelQualityStub]:
    with grpc.insecure_channel(prob_server) as channel:
        yield pb_grpc.LabelQualityStub(channel)


def prob_example(i: int, probs: np.ndarray, labels: np.ndarray, **extra: object) -> pb.Example:
    return pb.Example(
        id=f"ex-{i}",
        probabilities=pb.Probabilities(values=probs.tolist()),
        labels=[CLASS_NAMES[k] for k in np.flatnonzero(labels)],
        **extra,  # type: ignore[arg-type]
    )


def assert_results_match_core(
    results: list[pb.ScoreResult],
    probs: np.ndarray,
    labels: np.ndarray,
    artifact_path: Path,
    filter_by: FilterBy = FilterBy.CONFIDENT_LEARNING,
    class_names: tuple[str, ...] = CLASS_NAMES,
) -> None:
    artifact = load_artifact(artifact_path)
    decision = decide(artifact.fit, probs, labels, filter_by)
    assert len(results) == len(probs)
    t0, t1 = artifact.fit.thresholds.t0, artifact.fit.thresholds.t1
    for i, result in enumerate(results):
        assert result.label_quality == pytest.approx(decision.label_quality[i], abs=1e-12)
        assert result.is_issue == bool(decision.flags[i].any())
        got = {(issue.class_index, issue.kind) for issue in result.issues}
        want = {
            (int(k), pb.ISSUE_KIND_SPURIOUS if labels[i, k] else pb.ISSUE_KIND_MISSING)
            for k in np.flatnonzero(decision.flags[i])
        }
        assert got == want
        for issue in result.issues:
            assert issue.label == class_names[issue.class_index]
            k = issue.class_index
            want_t = t1[k] if issue.kind == pb.ISSUE_KIND_MISSING else 1.0 - t0[k]
            assert issue.threshold == pytest.approx(want_t, abs=1e-12)
        suggested = labels[i] ^ decision.flags[i]
        assert list(result.suggested_labels) == [class_names[k] for k in np.flatnonzero(suggested)]


def test_score_with_probabilities_equals_scoring_core(
    stub: pb_grpc.LabelQualityStub, artifact_path: Path
) -> None:
    probs, labels = random_calibration(n=40, seed=7)
    request = pb.ScoreRequest(
        examples=[prob_example(i, probs[i], labels[i]) for i in range(len(probs))]
    )
    response = stub.Score(request, timeout=10)
    assert [r.id for r in response.results] == [f"ex-{i}" for i in range(len(probs))]
    assert_results_match_core(list(response.results), probs, labels, artifact_path)
    assert any(r.is_issue for r in response.results), "synthetic noise should flag something"
    assert all(not r.probabilities for r in response.results)


def test_probabilities_returned_only_when_asked(stub: pb_grpc.LabelQualityStub) -> None:
    probs, labels = random_calibration(n=2, seed=3)
    request = pb.ScoreRequest(
        examples=[prob_example(i, probs[i], labels[i]) for i in range(2)],
        include_probabilities=True,
    )
    response = stub.Score(request, timeout=10)
    for i, result in enumerate(response.results):
        assert list(result.probabilities) == probs[i].tolist()


def test_label_indices_and_names_are_equivalent(stub: pb_grpc.LabelQualityStub) -> None:
    probs, labels = random_calibration(n=1, seed=11)
    by_name = prob_example(0, probs[0], labels[0])
    by_index = pb.Example(
        id="ex-0",
        probabilities=pb.Probabilities(values=probs[0].tolist()),
        label_indices=[int(k) for k in np.flatnonzero(labels[0])],
    )
    a = stub.Score(pb.ScoreRequest(examples=[by_name]), timeout=10).results[0]
    b = stub.Score(pb.ScoreRequest(examples=[by_index]), timeout=10).results[0]
    assert a == b


def test_score_stream_answers_each_request_in_order(
    stub: pb_grpc.LabelQualityStub, artifact_path: Path
) -> None:
    probs, labels = random_calibration(n=60, seed=5)
    chunks = [range(i, min(i + 7, 60)) for i in range(0, 60, 7)]
    requests = [
        pb.ScoreRequest(examples=[prob_example(i, probs[i], labels[i]) for i in chunk])
        for chunk in chunks
    ]
    responses = list(stub.ScoreStream(iter(requests), timeout=20))
    assert len(responses) == len(requests)
    results = [r for resp in responses for r in resp.results]
    assert [r.id for r in results] == [f"ex-{i}" for i in range(60)]
    assert_results_match_core(results, probs, labels, artifact_path)


def test_model_info_describes_calibration(
    stub: pb_grpc.LabelQualityStub, artifact_path: Path
) -> None:
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    artifact = load_artifact(artifact_path)
    assert list(info.class_names) == list(CLASS_NAMES)
    assert info.input_kind == pb.INPUT_KIND_PROBABILITIES_ONLY
    assert info.calibration.calibration_size == artifact.fit.n_examples
    assert info.calibration.filter_by == "confident_learning"
    assert [c.t1 for c in info.calibration.classes] == artifact.fit.thresholds.t1.tolist()
    assert [c.t0 for c in info.calibration.classes] == artifact.fit.thresholds.t0.tolist()
    assert info.server_version
    assert info.version.startswith("probabilities-")


def _status(stub: pb_grpc.LabelQualityStub, *examples: pb.Example) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Score(pb.ScoreRequest(examples=list(examples)), timeout=10)
    return caught.value


def _probs(values: list[float] | None = None) -> pb.Probabilities:
    return pb.Probabilities(values=values if values is not None else [0.5] * K)


@pytest.mark.parametrize(
    ("example", "code", "fragments"),
    [
        (pb.Example(id="", probabilities=_probs()), "INVALID_ARGUMENT", ["#1", "'id'"]),
        (pb.Example(id="x1"), "INVALID_ARGUMENT", ["'x1'", "'input'"]),
        (
            pb.Example(id="x2", probabilities=_probs([0.5] * (K - 1))),
            "INVALID_ARGUMENT",
            ["'x2'", "'probabilities'", f"expected {K}"],
        ),
        (
            pb.Example(id="x3", probabilities=_probs([0.5, 1.5, 0.5, 0.5, 0.5])),
            "INVALID_ARGUMENT",
            # the number as the user wrote it (numpy 2 would print np.float64(1.5))
            ["example 'x3': field 'probabilities[1]': 1.5 is outside [0, 1]"],
        ),
        (
            pb.Example(id="x4", probabilities=_probs([0.5, 0.5, math.nan, 0.5, 0.5])),
            "INVALID_ARGUMENT",
            ["'x4'", "'probabilities[2]'", "finite"],
        ),
        (
            pb.Example(id="x4i", probabilities=_probs([0.5, 0.5, 0.5, math.inf, 0.5])),
            "INVALID_ARGUMENT",
            ["'x4i'", "'probabilities[3]'", "finite"],
        ),
        (
            pb.Example(id="x4m", probabilities=_probs([-math.inf, 0.5, 0.5, 0.5, 0.5])),
            "INVALID_ARGUMENT",
            ["'x4m'", "'probabilities[0]'", "finite"],
        ),
        (
            pb.Example(id="x5", probabilities=_probs(), labels=["unicorn"]),
            "INVALID_ARGUMENT",
            ["'x5'", "'labels'", "'unicorn'"],
        ),
        (
            pb.Example(id="x6", probabilities=_probs(), label_indices=[K]),
            "INVALID_ARGUMENT",
            ["'x6'", "'label_indices'", f"[0, {K})"],
        ),
        (
            pb.Example(id="x7", probabilities=_probs(), labels=["cat"], label_indices=[1]),
            "INVALID_ARGUMENT",
            ["'x7'", "'labels'", "'label_indices'"],
        ),
        (pb.Example(id="x8", text="hello"), "FAILED_PRECONDITION", ["'x8'", "'text'"]),
        (
            pb.Example(id="x9", features=pb.FloatFeatures(values=[1.0])),
            "FAILED_PRECONDITION",
            ["'x9'", "'features'"],
        ),
    ],
)
def test_bad_example_gets_precise_status(
    stub: pb_grpc.LabelQualityStub, example: pb.Example, code: str, fragments: list[str]
) -> None:
    good = pb.Example(id="fine", probabilities=_probs())
    err = _status(stub, good, example)
    assert err.code().name == code
    for fragment in fragments:
        assert fragment in err.details()
    # the server keeps serving: the good example alone still scores
    assert stub.Score(pb.ScoreRequest(examples=[good]), timeout=10).results[0].id == "fine"


def test_duplicate_id_is_rejected(stub: pb_grpc.LabelQualityStub) -> None:
    ex = pb.Example(id="same", probabilities=_probs())
    err = _status(stub, ex, ex)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'same'" in err.details() and "duplicate" in err.details()


def test_more_than_max_batch_is_rejected(stub: pb_grpc.LabelQualityStub) -> None:
    examples = [pb.Example(id=f"e{i}", probabilities=_probs()) for i in range(51)]
    err = _status(stub, *examples)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "51 examples" in err.details() and "--max-batch" in err.details()


def test_oversize_message_is_resource_exhausted(artifact_path: Path) -> None:
    with running_server(thresholds=artifact_path, max_message_bytes=4096) as server:
        with grpc.insecure_channel(target_of(server)) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            big = pb.Example(id="big", probabilities=_probs(), metadata={"blob": "x" * 10_000})
            err = _status(stub, big)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            small = pb.Example(id="small", probabilities=_probs())
            assert stub.Score(pb.ScoreRequest(examples=[small]), timeout=10).results


def test_float_model_scores_features(tmp_path: Path) -> None:
    model = float_model(tmp_path / "float.onnx")
    rng = np.random.default_rng(3)
    calib_x = rng.normal(size=(300, 4)).astype(np.float32)
    calib_p = float_model_probs(model, calib_x)
    calib_y = rng.random(calib_p.shape) < calib_p
    art = write_artifact(tmp_path / "t.json", model_path=model, probs=calib_p, labels=calib_y)
    x = rng.normal(size=(25, 4)).astype(np.float32)
    y = rng.random((25, K)) < 0.4
    with running_server(model=model, thresholds=art) as server:
        with grpc.insecure_channel(target_of(server)) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            request = pb.ScoreRequest(
                examples=[
                    pb.Example(
                        id=f"f{i}",
                        features=pb.FloatFeatures(values=x[i].tolist()),
                        labels=[CLASS_NAMES[k] for k in np.flatnonzero(y[i])],
                    )
                    for i in range(25)
                ],
                include_probabilities=True,
            )
            response = stub.Score(request, timeout=10)
            got_p = np.array([list(r.probabilities) for r in response.results])
            np.testing.assert_allclose(got_p, float_model_probs(model, x), atol=1e-6)
            # scoring is applied to exactly the probabilities the model produced
            assert_results_match_core(list(response.results), got_p, y, art)
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
            assert info.input_kind == pb.INPUT_KIND_FEATURES
            assert list(info.input_shape) == [-1, 4]
            assert len(info.sha256) == 64
            wrong_len = pb.Example(id="short", features=pb.FloatFeatures(values=[1.0, 2.0]))
            err = _status(stub, wrong_len)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "'short'" in err.details() and "'features'" in err.details()
            nan = pb.Example(id="nan", features=pb.FloatFeatures(values=[1.0, math.inf, 0, 0]))
            err = _status(stub, nan)
            assert "'features[1]'" in err.details()
            err = _status(stub, pb.Example(id="txt", text="a text"))
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


def logits_model(path: Path, d: int = 4, seed: int = 2) -> tuple[Path, np.ndarray, np.ndarray]:
    """A linear model whose only output is logits ``(N, K)`` (no sigmoid); returns W, B too."""
    rng = np.random.default_rng(seed)
    w = (3.0 * rng.normal(size=(d, K))).astype(np.float32)
    b = rng.normal(size=(K,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["logits"]),
        ],
        "tiny_logits_model",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, d])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, K])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"class_names": json.dumps(list(CLASS_NAMES))})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path, w, b


def test_model_outputs_logits_applies_a_sigmoid(tmp_path: Path) -> None:
    model, w, b = logits_model(tmp_path / "logits.onnx")

    def sigmoid_of_logits(x: np.ndarray) -> np.ndarray:
        logits = (x.astype(np.float32) @ w + b).astype(np.float64)
        return np.asarray(1.0 / (1.0 + np.exp(-logits)))

    rng = np.random.default_rng(8)
    calib_p = sigmoid_of_logits(rng.normal(size=(300, 4)))
    calib_y = rng.random(calib_p.shape) < calib_p
    art = write_artifact(tmp_path / "t.json", model_path=model, probs=calib_p, labels=calib_y)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    logits = x @ w + b
    assert (logits < 0).any() and (logits > 1).any(), "logits must not pass for probabilities"
    y = rng.random((30, K)) < 0.4
    with running_server(model=model, thresholds=art, model_outputs_logits=True) as server:
        with grpc.insecure_channel(target_of(server)) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            request = pb.ScoreRequest(
                examples=[
                    pb.Example(
                        id=f"l{i}",
                        features=pb.FloatFeatures(values=x[i].tolist()),
                        labels=[CLASS_NAMES[k] for k in np.flatnonzero(y[i])],
                    )
                    for i in range(len(x))
                ],
                include_probabilities=True,
            )
            response = stub.Score(request, timeout=10)
    got_p = np.array([list(r.probabilities) for r in response.results])
    np.testing.assert_allclose(got_p, sigmoid_of_logits(x), rtol=0, atol=1e-6)
    assert_results_match_core(list(response.results), got_p, y, art)
    assert any(r.is_issue for r in response.results)


def test_logits_served_as_probabilities_are_refused_naming_the_flag(tmp_path: Path) -> None:
    model, w, b = logits_model(tmp_path / "logits.onnx")
    rng = np.random.default_rng(9)
    calib_p = rng.random((300, K))
    art = write_artifact(
        tmp_path / "t.json", model_path=model, probs=calib_p, labels=rng.random((300, K)) < calib_p
    )
    x = rng.normal(size=(4, 4)).astype(np.float32)
    assert ((x @ w + b) > 1).any(), "some logits must fall outside [0, 1]"
    with running_server(model=model, thresholds=art) as server:
        with grpc.insecure_channel(target_of(server)) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            request = pb.ScoreRequest(
                examples=[
                    pb.Example(id=f"l{i}", features=pb.FloatFeatures(values=x[i].tolist()))
                    for i in range(len(x))
                ]
            )
            with pytest.raises(grpc.RpcError) as err:
                stub.Score(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INTERNAL  # type: ignore[attr-defined]
    assert "--model-outputs-logits" in (err.value.details() or "")  # type: ignore[attr-defined]


def test_text_model_scores_raw_text(tmp_path: Path) -> None:
    import onnxruntime as ort

    model, texts, tags = text_model(tmp_path / "text.onnx")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feed = np.array(texts, dtype=object).reshape(-1, 1)
    calib_p = session.run(["probabilities"], {"text": feed})[0].astype(np.float64)
    art = write_artifact(
        tmp_path / "t.json",
        class_names=TEXT_CLASS_NAMES,
        model_path=model,
        probs=calib_p,
        labels=tags,
    )
    with running_server(model=model, thresholds=art) as server:
        with grpc.insecure_channel(target_of(server)) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            query = ["red car", "green apple", "blue sky"]
            given = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 1]], dtype=np.bool_)
            request = pb.ScoreRequest(
                examples=[
                    pb.Example(
                        id=f"t{i}",
                        text=text,
                        labels=[TEXT_CLASS_NAMES[k] for k in np.flatnonzero(given[i])],
                    )
                    for i, text in enumerate(query)
                ],
                include_probabilities=True,
            )
            response = stub.Score(request, timeout=10)
            want_p = session.run(
                ["probabilities"], {"text": np.array(query, dtype=object).reshape(-1, 1)}
            )[0].astype(np.float64)
            got_p = np.array([list(r.probabilities) for r in response.results])
            np.testing.assert_allclose(got_p, want_p, atol=1e-7)
            assert_results_match_core(
                list(response.results), got_p, given, art, class_names=TEXT_CLASS_NAMES
            )
            # "red car" with no tags: the model is confident of "red" -> MISSING
            first = response.results[0]
            assert "red" in {i.label for i in first.issues if i.kind == pb.ISSUE_KIND_MISSING}
            err = _status(stub, pb.Example(id="f", features=pb.FloatFeatures(values=[1.0])))
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_health_serving_and_reflection_lists_service(prob_server: str) -> None:
    with grpc.insecure_channel(prob_server) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "labelwatch.v1.LabelQuality"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert "labelwatch.v1.LabelQuality" in services
        assert "grpc.health.v1.Health" in services
        from google.protobuf.descriptor_pool import DescriptorPool

        pool = DescriptorPool(db)
        method = pool.FindServiceByName("labelwatch.v1.LabelQuality").FindMethodByName("Score")
        assert method.input_type.full_name == "labelwatch.v1.ScoreRequest"


def test_sigterm_drains_an_in_flight_stream(artifact_path: Path) -> None:
    import queue

    with server_process(["--thresholds", str(artifact_path), "--grace-seconds", "20"]) as proc:
        with grpc.insecure_channel(proc.target) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            outgoing: queue.Queue[pb.ScoreRequest | None] = queue.Queue()

            def requests() -> Iterator[pb.ScoreRequest]:
                while (item := outgoing.get(timeout=30)) is not None:
                    yield item

            responses = stub.ScoreStream(requests(), timeout=60)
            outgoing.put(pb.ScoreRequest(examples=[pb.Example(id="a", probabilities=_probs())]))
            assert next(responses).results[0].id == "a"
            health = health_pb2_grpc.HealthStub(channel)
            serving = health_pb2.HealthCheckResponse.SERVING
            not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
            # Watch calls opened before SIGTERM are in flight too, so they see the drain; a
            # new Check cannot, as the server stops accepting connections when it drains.
            # Each next() is bounded by the watch's deadline: a missing update fails, not hangs.
            watches = [
                health.Watch(health_pb2.HealthCheckRequest(service=name), timeout=30)
                for name in ("", "labelwatch.v1.LabelQuality")
            ]
            assert [next(watch).status for watch in watches] == [serving, serving]
            proc.process.send_signal(signal.SIGTERM)
            # strictly NOT_SERVING, while the stream above is still open and draining
            assert [next(watch).status for watch in watches] == [not_serving, not_serving]
            assert proc.process.poll() is None
            for watch in watches:
                watch.cancel()
            # a new health check is answered NOT_SERVING or refused (UNAVAILABLE once the
            # listener is closed, CANCELLED if it races the shutdown), never SERVING
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == not_serving
            except grpc.RpcError as exc:
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            # the open stream is still answered after SIGTERM
            outgoing.put(pb.ScoreRequest(examples=[pb.Example(id="b", probabilities=_probs())]))
            assert next(responses).results[0].id == "b"
            outgoing.put(None)
            assert list(responses) == []
        assert proc.process.wait(timeout=30) == 0


def _serve_and_fail(args: list[str]) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="labelwatch-test-") as data_dir:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "labelwatch.cli",
                "serve",
                "--port",
                "0",
                "--metrics-port",
                "0",
                "--data-dir",
                data_dir,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(),
        )


def test_mismatched_model_and_artifact_refuse_to_start(tmp_path: Path) -> None:
    model = float_model(tmp_path / "m.onnx", k=K)
    three = write_artifact(tmp_path / "three.json", class_names=("a", "b", "c"))
    done = _serve_and_fail(["--model", str(model), "--thresholds", str(three)])
    assert done.returncode == 2
    assert f"outputs {K} classes" in done.stderr and "has 3" in done.stderr
    assert "Traceback" not in done.stderr

    other = float_model(tmp_path / "other.onnx", k=K, seed=9)
    for_other = write_artifact(tmp_path / "other.json", model_path=other)
    done = _serve_and_fail(["--model", str(model), "--thresholds", str(for_other)])
    assert done.returncode == 2
    assert "sha256" in done.stderr and "re-run `labelwatch calibrate" in done.stderr

    renamed = write_artifact(
        tmp_path / "renamed.json", class_names=("cat", "dog", "bird", "fish", "zebra")
    )
    done = _serve_and_fail(["--model", str(model), "--thresholds", str(renamed)])
    assert done.returncode == 2
    assert "'horse'" in done.stderr and "'zebra'" in done.stderr


def test_serve_with_a_model_but_no_artifact_says_what_to_pass(tmp_path: Path) -> None:
    model = float_model(tmp_path / "m.onnx")
    done = _serve_and_fail(["--model", str(model)])
    assert done.returncode == 2
    assert "--thresholds" in done.stderr and "--model" in done.stderr
    assert "Traceback" not in done.stderr


def _serve_help_of(flag: str) -> str:
    """The ``labelwatch serve --help`` entry of ``flag``, whitespace collapsed."""
    done = subprocess.run(
        [sys.executable, "-m", "labelwatch.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_env(), "COLUMNS": "100"},
    )
    assert done.returncode == 0, done.stderr
    options = done.stdout[done.stdout.index("\noptions:") :]
    entries = re.split(r"\n  (?=--)", options)
    [entry] = [e for e in entries if e.startswith(f"{flag} ")]
    return " ".join(entry.split())


def test_serve_help_lists_the_filter_by_choices_and_default() -> None:
    entry = _serve_help_of("--filter-by")
    for rule in FilterBy:
        assert rule.value in entry
    assert "default confident_learning" in entry
    assert "LABELWATCH_FILTER_BY" in entry


@pytest.mark.parametrize("flag", ["--model", "--thresholds"])
def test_serve_help_says_the_embedded_default_model_is_served_without_model_flags(
    flag: str,
) -> None:
    entry = _serve_help_of(flag)
    assert "embedded default model" in entry
    assert "--model" in entry and "--thresholds" in entry


def test_drain_delay_keeps_serving_while_check_already_says_not_serving(
    artifact_path: Path,
) -> None:
    args = ["--thresholds", str(artifact_path), "--drain-delay-seconds", "30"]
    with server_process(args) as proc:
        with grpc.insecure_channel(proc.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = pb_grpc.LabelQualityStub(channel)
            check = health_pb2.HealthCheckRequest(service="")
            assert health.Check(check, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
            proc.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 20
            status = health_pb2.HealthCheckResponse.SERVING
            while status == health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline, "health never said NOT_SERVING"
                time.sleep(0.02)  # poll interval
                status = health.Check(check, timeout=10).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            # still listening and answering during the delay: a poller can take it out first
            request = pb.ScoreRequest(examples=[pb.Example(id="late", probabilities=_probs())])
            assert stub.Score(request, timeout=10).results[0].id == "late"
