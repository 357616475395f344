"""Dynamic batching and stream flow control, through the real server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from labelwatch.calibration import load_artifact
from labelwatch.scoring import FilterBy, decide
from labelwatch.server import RunningServer
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
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


@pytest.fixture(scope="module")
def model_and_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("batching")
    model = float_model(folder / "m.onnx")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    p = float_model_probs(model, x)
    art = write_artifact(
        folder / "t.json", model_path=model, probs=p, labels=rng.random(p.shape) < p
    )
    return model, art


def _request(client: int, seq: int, size: int, rng: np.random.Generator) -> pb.ScoreRequest:
    x = rng.normal(size=(size, 4)).astype(np.float32)
    tags = rng.random((size, K)) < 0.4
    return pb.ScoreRequest(
        examples=[
            pb.Example(
                id=f"c{client}-r{seq}-e{i}",
                features=pb.FloatFeatures(values=x[i].tolist()),
                label_indices=[int(k) for k in np.flatnonzero(tags[i])],
            )
            for i in range(size)
        ],
        include_probabilities=True,
    )


def test_concurrent_requests_each_get_their_own_results_in_order(
    model_and_artifact: tuple[Path, Path],
) -> None:
    model, art = model_and_artifact
    fit = load_artifact(art).fit
    n_clients, n_requests = 16, 12
    with running_server(model=model, thresholds=art, threads=n_clients + 2) as server:
        failures: list[str] = []

        def client(c: int) -> int:
            rng = np.random.default_rng(100 + c)
            checked = 0
            with grpc.insecure_channel(target_of(server)) as channel:
                stub = pb_grpc.LabelQualityStub(channel)
                for r in range(n_requests):
                    request = _request(c, r, int(rng.integers(1, 9)), rng)
                    bad = c % 4 == 0 and r == 5
                    if bad:  # a bad example fails only its own request
                        request.examples[-1].features.values[0] = float("nan")
                        try:
                            stub.Score(request, timeout=30)
                            failures.append(f"client {c}: NaN request succeeded")
                        except grpc.RpcError as exc:
                            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                                failures.append(f"client {c}: {exc.code()}")
                        continue
                    response = stub.Score(request, timeout=30)
                    ids = [r.id for r in response.results]
                    if ids != [e.id for e in request.examples]:
                        failures.append(f"client {c}: ids {ids}")
                        continue
                    x = np.array([list(e.features.values) for e in request.examples], np.float32)
                    tags = np.zeros((len(x), K), dtype=np.bool_)
                    for i, e in enumerate(request.examples):
                        tags[i, list(e.label_indices)] = True
                    got_p = np.array([list(res.probabilities) for res in response.results])
                    np.testing.assert_allclose(got_p, float_model_probs(model, x), atol=1e-6)
                    want = decide(fit, got_p, tags, FilterBy.CONFIDENT_LEARNING)
                    got_q = np.array([res.label_quality for res in response.results])
                    np.testing.assert_allclose(got_q, want.label_quality, rtol=0, atol=1e-12)
                    checked += 1
            return checked

        with ThreadPoolExecutor(n_clients) as pool:
            checked = sum(pool.map(client, range(n_clients)))
        assert failures == []
        assert checked == n_clients * n_requests - n_clients // 4
        # concurrency was merged into fewer model calls than requests
        hist = server.metrics.batch_size
        batches = hist.collect()[0]
        count = next(s.value for s in batches.samples if s.name.endswith("_count"))
        total = next(s.value for s in batches.samples if s.name.endswith("_sum"))
        assert total >= checked  # every scored example went through a batch
        assert count < checked, f"{count} batches for {checked} requests: nothing merged"


def test_lone_request_does_not_wait_for_the_window(
    model_and_artifact: tuple[Path, Path],
) -> None:
    model, art = model_and_artifact
    # an hour's window: a lone request that waited for it would run into its deadline
    # (DEADLINE_EXCEEDED) instead of being answered
    with running_server(model=model, thresholds=art, batch_window_ms=3_600_000.0) as server:
        with grpc.insecure_channel(target_of(server)) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            rng = np.random.default_rng(1)
            for seq in range(3):
                assert stub.Score(_request(0, seq, 1, rng), timeout=60).results


def _scored(server: RunningServer) -> float:
    samples = server.metrics.examples_scored.collect()[0].samples
    return sum(s.value for s in samples if s.name.endswith("_total"))


def test_stream_flow_control_slows_a_fast_producer(tmp_path: Path) -> None:
    probs, labels = random_calibration(n=200)
    art = write_artifact(tmp_path / "t.json", probs=probs, labels=labels)
    pulled = 0
    stop = threading.Event()
    blob = "x" * 64 * 1024  # 64 KiB a request: an unbounded buffer would show quickly

    def producer() -> Iterator[pb.ScoreRequest]:
        nonlocal pulled
        seq = 0
        while not stop.is_set() and seq < 200_000:
            pulled += 1
            yield pb.ScoreRequest(
                examples=[
                    pb.Example(
                        id=f"s{seq}",
                        probabilities=pb.Probabilities(values=[0.5] * K),
                        metadata={"blob": blob},
                    )
                ]
            )
            seq += 1

    with running_server(thresholds=art) as server:
        with grpc.insecure_channel(target_of(server)) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            responses = stub.ScoreStream(producer(), timeout=120)
            received = 0

            def reader() -> None:
                nonlocal received
                try:
                    for _ in responses:
                        received += 1
                except grpc.RpcError as exc:  # our own cancel() ends the stream
                    assert exc.code() == grpc.StatusCode.CANCELLED

            thread = threading.Thread(target=reader, daemon=True)
            thread.start()
            # sample the gap between what the producer handed to gRPC and what the
            # server has scored: flow control must keep it bounded. Sample for 3 s and until
            # 100 responses came back, however slow a busy machine is (up to 120 s).
            sample_until, give_up = time.monotonic() + 3.0, time.monotonic() + 120.0
            worst = 0.0
            while time.monotonic() < give_up and (
                time.monotonic() < sample_until or received <= 100
            ):
                worst = max(worst, pulled - _scored(server))
                time.sleep(0.01)
            stop.set()
            responses.cancel()
            thread.join(timeout=30)
        assert received > 100, "the stream made no progress"
        # a few hundred 64 KiB requests in flight at most: tens of MB, not unbounded
        assert worst < 1_000, f"{worst} requests buffered ahead of the server"
