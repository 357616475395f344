"""Model lifecycle: serve from a repository, reload under load without a failed request,
refuse broken candidates, and reload on SIGHUP / --watch-repository."""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
import urllib.request
import weakref
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from support_lifecycle import write_version

from labelwatch.config import Settings
from labelwatch.errors import StartupError
from labelwatch.server import start
from labelwatch_proto.labelwatch.v1 import admin_pb2, admin_pb2_grpc
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_security import bearer, make_tokens
from support_server import (
    CLASS_NAMES,
    float_model,
    running_server,
    server_process,
    target_of,
    write_artifact,
)

RELOAD = admin_pb2.ReloadModelRequest()


def _request(rng: np.random.Generator, n: int = 4) -> pb.ScoreRequest:
    feats = rng.normal(size=(n, 4)).astype(np.float32)
    return pb.ScoreRequest(
        examples=[
            pb.Example(
                id=f"ex-{i}",
                features=pb.FloatFeatures(values=feats[i].tolist()),
                labels=[CLASS_NAMES[i % len(CLASS_NAMES)]],
            )
            for i in range(n)
        ]
    )


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _info(channel: grpc.Channel) -> pb.ModelInfo:
    return pb_grpc.LabelQualityStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)


def test_serves_the_highest_version_and_names_it(tmp_path: Path) -> None:
    write_version(tmp_path, "1", model_seed=1)
    write_version(tmp_path, "2", model_seed=2)
    with running_server(model_repository=tmp_path) as server:
        with grpc.insecure_channel(target_of(server)) as channel:
            info = _info(channel)
            reply = pb_grpc.LabelQualityStub(channel).Score(
                _request(np.random.default_rng(0)), timeout=10
            )
    assert info.version == "2"
    assert info.loaded_at.endswith("Z")
    assert {r.model_version for r in reply.results} == {"2"}


def test_bad_repository_stops_start_up_with_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "v 1").mkdir()
    settings = Settings(
        port=0, metrics_port=0, data_dir=tmp_path / "data", model_repository=tmp_path
    )
    with pytest.raises(StartupError, match="'v 1' is not a path-safe name"):
        start(settings)


def test_reload_under_load_drops_no_request_and_switches_once(tmp_path: Path) -> None:
    write_version(tmp_path, "1", model_seed=1)
    errors: list[BaseException] = []
    seen: list[list[str]] = [[] for _ in range(4)]
    health_states: set[int] = set()
    stop = threading.Event()
    with running_server(model_repository=tmp_path, batch_window_ms=1.0) as server:
        target = target_of(server)

        def client(index: int) -> None:
            rng = np.random.default_rng(index)
            with grpc.insecure_channel(target) as channel:
                stub = pb_grpc.LabelQualityStub(channel)
                while not stop.is_set():
                    try:
                        reply = stub.Score(_request(rng), timeout=30)
                    except grpc.RpcError as exc:
                        errors.append(exc)
                        return
                    versions = {r.model_version for r in reply.results}
                    assert len(versions) == 1  # one request is scored by one version
                    seen[index].append(versions.pop())

        def watch_health() -> None:
            with grpc.insecure_channel(target) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                while not stop.is_set():
                    health_states.add(
                        stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status
                    )

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        threads.append(threading.Thread(target=watch_health))
        for thread in threads:
            thread.start()
        old_models = []
        try:
            with grpc.insecure_channel(target) as channel:
                admin = admin_pb2_grpc.AdminStub(channel)
                for number in (2, 3, 4):
                    wait_for(lambda: all(len(s) > 5 for s in seen), "steady load")
                    old_models.append(weakref.ref(server.engine.models.current.model))
                    write_version(tmp_path, str(number), model_seed=number)
                    reply = admin.ReloadModel(RELOAD, timeout=60)
                    assert reply.outcome == admin_pb2.ReloadModelResponse.OUTCOME_SWAPPED
                    assert (reply.previous_version, reply.version) == (str(number - 1), str(number))
                    for s in seen:
                        s.append("mark")  # later replies must come from the new version
                    wait_for(
                        lambda n=str(number): all(s[-1] == n for s in seen), f"version {number}"
                    )
                    assert _info(channel).version == str(number)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        assert errors == []
        assert health_states == {health_pb2.HealthCheckResponse.SERVING}
        order = {"1": 1, "2": 2, "3": 3, "4": 4}
        for s in seen:
            versions = [order[v] for v in s if v != "mark"]
            assert versions == sorted(versions)  # one switch point per version, never back
            assert set(versions) == {1, 2, 3, 4}
    gc.collect()
    assert [ref() for ref in old_models] == [None, None, None]  # no session kept alive


def _broken_versions(root: Path) -> dict[str, Callable[[Path], None]]:
    def wrong_class_count(folder: Path) -> None:
        names = CLASS_NAMES[:3]
        model = float_model(folder / "model.onnx", k=3, seed=5)
        write_artifact(folder / "thresholds.json", class_names=names, model_path=model)

    def wrong_sha256(folder: Path) -> None:
        other = float_model(root / "other.onnx", seed=6)
        float_model(folder / "model.onnx", seed=5)
        write_artifact(folder / "thresholds.json", model_path=other)

    def corrupt_file(folder: Path) -> None:
        (folder / "model.onnx").write_bytes(b"\x08\x07 this is not an onnx model")
        write_artifact(folder / "thresholds.json")

    def thresholds_only(folder: Path) -> None:
        write_artifact(folder / "thresholds.json")  # serves probabilities: another input

    return {
        "wrong class count": wrong_class_count,
        "sha256": wrong_sha256,
        "cannot load ONNX model": corrupt_file,
        "probabilities_only input": thresholds_only,
    }


def test_broken_candidates_are_refused_and_the_old_version_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "repo"
    write_version(root, "1", model_seed=1)
    caplog.set_level(logging.INFO, logger="labelwatch.engine.models")
    with running_server(model_repository=root) as server:
        with grpc.insecure_channel(target_of(server)) as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            stub = pb_grpc.LabelQualityStub(channel)
            for number, (expected, make) in enumerate(_broken_versions(tmp_path).items(), 2):
                folder = root / str(number)
                folder.mkdir()
                make(folder)
                caplog.clear()
                with pytest.raises(grpc.RpcError) as info:
                    admin.ReloadModel(RELOAD, timeout=60)
                assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
                message = info.value.details() or ""
                if expected == "wrong class count":
                    assert "3 classes" in message and "5 classes" in message
                else:
                    assert expected in message, message
                refusals = [r for r in caplog.records if "outcome=refused" in r.getMessage()]
                assert len(refusals) == 1
                reply = stub.Score(_request(np.random.default_rng(number)), timeout=10)
                assert {r.model_version for r in reply.results} == {"1"}
                assert _info(channel).version == "1"
                for path in sorted(folder.iterdir()):
                    path.unlink()
                folder.rmdir()
            # a bad repository is refused the same way: two current markers
            (root / "current").write_text("1")
            (root / "current.txt").write_text("1")
            with pytest.raises(grpc.RpcError, match="2 'current' markers"):
                admin.ReloadModel(RELOAD, timeout=60)


def test_reload_needs_the_admin_role_when_tokens_are_on(tmp_path: Path) -> None:
    write_version(tmp_path / "repo", "1")
    tokens = make_tokens(tmp_path / "tokens.jsonl")
    with running_server(model_repository=tmp_path / "repo", auth_tokens=tokens.path) as server:
        with grpc.insecure_channel(target_of(server)) as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                admin.ReloadModel(RELOAD, timeout=10, metadata=bearer(tokens.score))
            assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
            reply = admin.ReloadModel(RELOAD, timeout=10, metadata=bearer(tokens.admin))
            assert reply.outcome == admin_pb2.ReloadModelResponse.OUTCOME_UNCHANGED


def test_reload_without_a_repository_is_a_failed_precondition(tmp_path: Path) -> None:
    write_version(tmp_path, "1")
    with running_server(
        model=tmp_path / "1" / "model.onnx", thresholds=tmp_path / "1" / "thresholds.json"
    ) as server:
        with grpc.insecure_channel(target_of(server)) as channel:
            with pytest.raises(grpc.RpcError) as info:
                admin_pb2_grpc.AdminStub(channel).ReloadModel(RELOAD, timeout=10)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "--model-repository" in (info.value.details() or "")


def test_sighup_reloads_a_serving_process(tmp_path: Path) -> None:
    write_version(tmp_path, "1")
    with server_process(["--model-repository", str(tmp_path)]) as proc:
        with grpc.insecure_channel(proc.target) as channel:
            assert _info(channel).version == "1"
            write_version(tmp_path, "2", model_seed=2)
            proc.process.send_signal(signal.SIGHUP)
            wait_for(lambda: _info(channel).version == "2", "the SIGHUP reload")
            reply = pb_grpc.LabelQualityStub(channel).Score(
                _request(np.random.default_rng(0)), timeout=10
            )
            assert {r.model_version for r in reply.results} == {"2"}


def test_watch_repository_follows_new_versions_and_the_marker(tmp_path: Path) -> None:
    write_version(tmp_path, "1")
    args = ["--model-repository", str(tmp_path), "--watch-repository"]
    with server_process([*args, "--repository-poll-seconds", "0.2"]) as proc:
        with grpc.insecure_channel(proc.target) as channel:
            assert _info(channel).version == "1"
            write_version(tmp_path, "2", model_seed=2)
            wait_for(lambda: _info(channel).version == "2", "the watcher's reload")
            (tmp_path / "current").write_text("1")  # roll back with the marker
            wait_for(lambda: _info(channel).version == "1", "the watcher's roll-back")


def _served_versions(port: int) -> set[str]:
    """The ``version`` labels of ``labelwatch_model_info`` on one worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        sample.labels["version"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "labelwatch_model_info"
    }


def test_every_worker_reloads_and_its_metrics_say_which_version(tmp_path: Path) -> None:
    write_version(tmp_path, "1")
    args = ["--model-repository", str(tmp_path), "--workers", "2", "--metrics-port", "0"]
    with server_process(args) as proc:
        ports = proc.metrics_ports
        assert len(ports) == 2
        assert [_served_versions(p) for p in ports] == [{"1"}, {"1"}]
        write_version(tmp_path, "2", model_seed=2)
        proc.process.send_signal(signal.SIGHUP)  # the parent passes it to every worker
        wait_for(
            lambda: [_served_versions(p) for p in ports] == [{"2"}, {"2"}], "both workers on 2"
        )
        write_version(tmp_path, "3", model_seed=3)
        with grpc.insecure_channel(proc.target) as channel:  # the RPC reaches one worker ...
            reply = admin_pb2_grpc.AdminStub(channel).ReloadModel(RELOAD, timeout=60)
        assert reply.version == "3"
        wait_for(  # ... which asks the parent to reload the others
            lambda: [_served_versions(p) for p in ports] == [{"3"}, {"3"}], "both workers on 3"
        )
