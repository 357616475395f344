"""``--workers N``: several processes share one port, all answer, and their metrics add up.

Each worker exports its own /metrics on ``--metrics-port + i`` (docs/metrics.md, "Several
worker processes"); summed over the workers, the counters must equal what one process reports
for the same calls.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_ports import free_port
from support_server import (
    CLASS_NAMES,
    random_calibration,
    running_server,
    server_process,
    target_of,
    write_artifact,
)
from support_tools import REPO, require_tool

Series = tuple[str, tuple[tuple[str, str], ...]]
"""A sample's name and its sorted labels."""

# Families whose samples add up over workers: every one is a counter or a histogram of
# per-call or per-example observations, so N processes together must match one process.
ADDITIVE = (
    "labelwatch_examples_scored_total",
    "labelwatch_examples_flagged_total",
    "labelwatch_class_flags_total",
    "labelwatch_label_quality_bucket",
    "labelwatch_label_quality_count",
    "grpc_server_started_total",
    "grpc_server_handled_total",
)
LABEL_QUALITY = "labelwatch.v1.LabelQuality"
WORKERS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus-workers.yml"


def _samples(text: str) -> dict[Series, float]:
    """Every sample of the exposition ``text`` (gRPC series of LabelQuality only)."""
    out: dict[Series, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("grpc_service", LABEL_QUALITY) != LABEL_QUALITY:
                continue  # health checks and reflection are not part of the workload
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _scrape(port: int) -> dict[Series, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return _samples(r.read().decode())


def _summed(per_worker: list[dict[Series, float]], names: tuple[str, ...]) -> dict[Series, float]:
    """Samples of ``names`` summed over workers; zero-valued series dropped."""
    total: dict[Series, float] = defaultdict(float)
    for samples in per_worker:
        for (name, labels), value in samples.items():
            if name in names:
                total[(name, labels)] += value
    return {key: value for key, value in total.items() if value != 0}


def _workload() -> list[tuple[str, pb.ScoreRequest | pb.GetModelInfoRequest]]:
    """A fixed mix of calls: 30 Score requests of 1-5 examples, one invalid, model info."""
    probs, labels = random_calibration(n=90, seed=7)
    examples = [
        pb.Example(
            id=f"w-{i}",
            probabilities=pb.Probabilities(values=p.tolist()),
            labels=[CLASS_NAMES[k] for k in np.flatnonzero(y)],
        )
        for i, (p, y) in enumerate(zip(probs, labels, strict=True))
    ]
    calls: list[tuple[str, pb.ScoreRequest | pb.GetModelInfoRequest]] = []
    start = 0
    for size in [1, 2, 3, 4, 5] * 6:
        calls.append(("Score", pb.ScoreRequest(examples=examples[start : start + size])))
        start = (start + size) % len(examples)
    bad = pb.Example(id="bad", probabilities=pb.Probabilities(values=[0.5] * 3))  # 3 != 5 classes
    calls.insert(7, ("Score", pb.ScoreRequest(examples=[bad])))
    calls.insert(3, ("GetModelInfo", pb.GetModelInfoRequest()))
    calls.append(("GetModelInfo", pb.GetModelInfoRequest()))
    return calls


def _send(target: str, calls: list[tuple[str, pb.ScoreRequest | pb.GetModelInfoRequest]]) -> int:
    """Send each call on its own connection; return how many examples were scored."""
    scored = 0
    for method, request in calls:
        # a new channel with its own subchannel is a new TCP connection, which the kernel
        # hands to one of the workers (SO_REUSEPORT hashes the connection's addresses)
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            stub = pb_grpc.LabelQualityStub(ch)
            if method == "GetModelInfo":
                stub.GetModelInfo(request, timeout=20)
                continue
            assert isinstance(request, pb.ScoreRequest)
            try:
                reply = stub.Score(request, timeout=20)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
                continue
            assert [r.id for r in reply.results] == [e.id for e in request.examples]
            scored += len(request.examples)
    return scored


def _poll(what: str, probe: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _handled(samples: dict[Series, float]) -> float:
    return sum(v for (name, _), v in samples.items() if name == "grpc_server_handled_total")


def test_metrics_summed_over_two_workers_equal_one_process_scoring_the_same_calls(
    tmp_path: Path,
) -> None:
    art = write_artifact(tmp_path / "t.json")
    calls = _workload()

    # the reference: one in-process server, same artifact, same calls
    with running_server(thresholds=art) as server:
        expected_scored = _send(target_of(server), calls)
        reference = _samples(generate_latest(server.metrics.registry).decode())
    expected = _summed([reference], ADDITIVE)
    assert expected_scored == 90
    assert any(name == "labelwatch_class_flags_total" for name, _ in expected), "no flags"
    assert _handled(reference) == len(calls)

    args = ["--thresholds", str(art), "--workers", "2", "--metrics-port", "0"]
    with server_process(args) as proc:
        assert _send(proc.target, calls) == expected_scored
        ports = proc.metrics_ports
        assert len(set(ports)) == 2, ports  # each worker bound a free port of its own
        # the interceptor counts a call as its handler returns: wait until all are counted
        _poll(
            "every call to be counted",
            lambda: sum(_handled(_scrape(p)) for p in ports) >= len(calls),
        )
        per_worker = [_scrape(p) for p in ports]
        got = _summed(per_worker, ADDITIVE)

        scored = [
            sum(v for (n, _), v in s.items() if n == "labelwatch_examples_scored_total")
            for s in per_worker
        ]
        assert all(n > 0 for n in scored), f"the connections all went to one worker: {scored}"
        assert got == expected
        # each worker's drift window holds its own examples: together, all of them
        window = _summed(per_worker, ("labelwatch_drift_window_examples",))
        assert sum(window.values()) == expected_scored

        proc.process.send_signal(signal.SIGTERM)
        assert proc.process.wait(timeout=60) == 0


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(
        f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}), timeout=5
    ) as r:
        data = json.loads(r.read().decode())
    assert data["status"] == "success", data
    result: list[dict[str, Any]] = data["data"]["result"]
    return result


# slow: a real Prometheus
@pytest.mark.slow
def test_prometheus_with_the_shipped_workers_config_sums_every_worker(tmp_path: Path) -> None:
    """deploy/prometheus/prometheus-workers.yml, ports moved to free ones, over --workers 2."""
    binary = require_tool("prometheus")
    art = write_artifact(tmp_path / "t.json")
    calls = _workload()
    config = yaml.safe_load(WORKERS_CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(WORKERS_CONFIG.parent / "alerts.yml")]
    [job] = config["scrape_configs"]
    assert len(job["static_configs"]) == 2  # one target per worker of --workers 2
    for i, group in enumerate(job["static_configs"]):
        assert group["targets"] == [f"127.0.0.1:{9464 + i}"]

    args = ["--thresholds", str(art), "--workers", "2", "--metrics-port", "0"]
    with server_process(args) as proc:
        for group, bound in zip(job["static_configs"], proc.metrics_ports, strict=True):
            group["targets"] = [f"127.0.0.1:{bound}"]  # the shipped ports, moved to the bound ones
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        scored = _send(proc.target, calls)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = (tmp_path / "prometheus.log").open("w")
        prometheus = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:

            def both_scraped() -> bool:
                assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()
                try:
                    up = _query(url, 'up{job="labelwatch"} == 1')
                    got = _query(url, 'sum(labelwatch_examples_scored_total{job="labelwatch"})')
                except OSError:
                    return False
                return len(up) == 2 and bool(got) and float(got[0]["value"][1]) == scored

            _poll("Prometheus to scrape both workers", both_scraped, timeout=60)
            workers = _query(url, 'labelwatch_build_info{job="labelwatch"}')
            assert sorted(r["metric"]["worker"] for r in workers) == ["0", "1"]
            handled = _query(
                url,
                'sum(grpc_server_handled_total{job="labelwatch", '
                f'grpc_service="{LABEL_QUALITY}"}})',
            )
            assert float(handled[0]["value"][1]) == len(calls)
        finally:
            prometheus.terminate()
            prometheus.wait(timeout=30)
            log.close()
        proc.process.send_signal(signal.SIGTERM)
        assert proc.process.wait(timeout=60) == 0
