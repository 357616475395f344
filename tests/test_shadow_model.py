"""The shadow model: scored off the response path, compared, never returned or stored."""

from __future__ import annotations

import io
import math
import urllib.request
from contextlib import redirect_stdout
from pathlib import Path

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from support_lifecycle import copy_version, write_version

from labelwatch.cli import main
from labelwatch.commands.models import collect
from labelwatch.domain import LabeledExample
from labelwatch.engine import Engine
from labelwatch.engine.shadow import Shadow
from labelwatch.metrics.models import ShadowMetrics
from labelwatch.server import RunningServer
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_server import CLASS_NAMES, running_server, target_of


def _score(server: RunningServer, batches: int, n: int = 16) -> list[pb.ScoreResult]:
    rng = np.random.default_rng(3)
    results: list[pb.ScoreResult] = []
    with grpc.insecure_channel(target_of(server)) as channel:
        stub = pb_grpc.LabelQualityStub(channel)
        for b in range(batches):
            feats = rng.normal(scale=2.0, size=(n, 4)).astype(np.float32)
            request = pb.ScoreRequest(
                examples=[
                    pb.Example(
                        id=f"b{b}-{i}",
                        features=pb.FloatFeatures(values=feats[i].tolist()),
                        labels=[CLASS_NAMES[(i + b) % len(CLASS_NAMES)]],
                    )
                    for i in range(n)
                ]
            )
            results.extend(stub.Score(request, timeout=10).results)
    return results


def _shadow_server(root: Path, shadow: str, **overrides: object) -> object:
    return running_server(
        model_repository=root, shadow_version=shadow, shadow_fraction=1.0, **overrides
    )


def test_identical_shadow_agrees_fully(tmp_path: Path) -> None:
    write_version(tmp_path, "1", model_seed=1)
    copy_version(tmp_path, "1", "2")
    (tmp_path / "current").write_text("1")
    with _shadow_server(tmp_path, "2") as server:  # type: ignore[attr-defined]
        results = _score(server, batches=10)
        assert server.engine.shadow.wait_idle(60)
        pairs = collect([generate_latest(server.engine.registry).decode()])
        flagged_versions = {f.model_version for f in server.engine.outbox.flags(limit=10_000)}
    assert {r.model_version for r in results} == {"1"}  # shadow results never returned
    assert flagged_versions <= {"1"}  # ... nor stored as flags
    stats = pairs[("1", "2")]
    assert stats.examples == len(results)
    assert stats.agreeing == stats.examples
    assert stats.correlation() > 1 - 1e-9
    assert stats.flag_rate("live") == stats.flag_rate("shadow") > 0
    for counts in stats.classes.values():
        assert counts["live"] == counts["shadow"] == counts["both"]


def test_different_shadow_shows_the_difference_and_compare_prints_it(tmp_path: Path) -> None:
    write_version(tmp_path, "1", model_seed=1)
    write_version(tmp_path, "2", model_seed=9, artifact_seed=4)
    (tmp_path / "current").write_text("1")
    with _shadow_server(tmp_path, "2", metrics_port=0) as server:  # type: ignore[attr-defined]
        results = _score(server, batches=10)
        assert server.engine.shadow.wait_idle(60)
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            pairs = collect([response.read().decode()])
        out = io.StringIO()
        with redirect_stdout(out):
            code = main(["models", "compare", "--metrics-url", url])
    stats = pairs[("1", "2")]
    assert stats.examples == len(results)
    assert stats.agreeing < stats.examples
    assert stats.correlation() < 0.99 or math.isnan(stats.correlation())
    assert code == 0
    text = out.getvalue()
    assert f"live 1 vs shadow 2: {len(results)} examples compared" in text
    assert "label-quality correlation" in text


def test_full_shadow_queue_drops_and_counts(tmp_path: Path) -> None:
    write_version(tmp_path, "1", model_seed=1)
    copy_version(tmp_path, "1", "2")
    (tmp_path / "current").write_text("1")
    with _shadow_server(tmp_path, "2") as server:  # type: ignore[attr-defined]
        registry = CollectorRegistry()
        engine = server.engine
        bounded = Shadow(
            engine.shadow.pipeline,
            ShadowMetrics(registry),
            fraction=1.0,
            max_queued=8,
            max_class_series=10,
        )
        try:
            batch = engine.score(_examples(engine, 16))  # 16 samples exceed the bound of 8
            for _ in range(3):
                bounded.offer(batch)
            assert bounded.wait_idle(60)
        finally:
            bounded.close()
    assert registry.get_sample_value("labelwatch_shadow_dropped_total") == 48
    assert (
        registry.get_sample_value(
            "labelwatch_shadow_examples_total", {"live_version": "1", "shadow_version": "2"}
        )
        is None
    )


def _examples(engine: Engine, n: int) -> list[LabeledExample]:
    rng = np.random.default_rng(0)
    k = engine.spec.n_classes
    return [
        LabeledExample(
            id=f"e{i}",
            labels=np.eye(k, dtype=np.bool_)[i % k],
            features=rng.normal(size=4).astype(np.float32),
        )
        for i in range(n)
    ]
