"""The live /metrics endpoint, linted by promtool and scraped by a real Prometheus on 127.0.0.1."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest

from labelwatch.calibration import load_artifact
from labelwatch.scoring import FilterBy, decide
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_ports import free_port
from support_server import (
    CLASS_NAMES,
    random_calibration,
    running_server,
    target_of,
    write_artifact,
)
from support_tools import REPO, alert_exprs, dashboard_exprs, require_tool

# slow: promtool and a real Prometheus server
pytestmark = pytest.mark.slow

T = TypeVar("T")
DEADLINE_SECONDS = 60.0


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = DEADLINE_SECONDS) -> T:
    """Call ``probe`` until it returns something other than None; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (OSError, urllib.error.URLError) as exc:
            last_error, value = exc, None
        if value is not None:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


@dataclass(frozen=True)
class LiveServer:
    metrics_url: str
    expected_flags: dict[tuple[str, str], int]  # (class, kind) -> count, non-zero only
    examples: int


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real server with /metrics on a free port, after scoring 60 known examples."""
    artifact_path = write_artifact(tmp_path_factory.mktemp("live") / "thresholds.json")
    probs, labels = random_calibration(n=60, seed=11)
    decision = decide(load_artifact(artifact_path).fit, probs, labels, FilterBy.CONFIDENT_LEARNING)
    expected = {}
    for kind, mask in (("MISSING", decision.missing), ("SPURIOUS", decision.spurious)):
        for k, name in enumerate(CLASS_NAMES):
            if mask[:, k].any():
                expected[(name, kind)] = int(mask[:, k].sum())
    assert expected, "the workload must produce flags"

    with running_server(thresholds=artifact_path, metrics_port=0) as server:
        metrics_port = server.metrics_port
        with grpc.insecure_channel(target_of(server)) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            for start in range(0, len(probs), 20):
                request = pb.ScoreRequest(
                    examples=[
                        pb.Example(
                            id=f"ex-{start + i}",
                            probabilities=pb.Probabilities(values=p.tolist()),
                            labels=[CLASS_NAMES[k] for k in np.flatnonzero(y)],
                        )
                        for i, (p, y) in enumerate(
                            zip(probs[start : start + 20], labels[start : start + 20], strict=True)
                        )
                    ]
                )
                stub.Score(request)
        yield LiveServer(f"http://127.0.0.1:{metrics_port}/metrics", expected, len(probs))


def test_live_metrics_pass_promtool_check_metrics(live_server: LiveServer) -> None:
    promtool = require_tool("promtool")
    text = http_get(live_server.metrics_url)
    assert "labelwatch_class_flags_total" in text
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@dataclass(frozen=True)
class Prometheus:
    url: str

    def query(self, expr: str) -> dict[str, Any]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            body = http_get(url)
        except urllib.error.HTTPError as exc:  # 400 for a bad expression: report its error
            body = exc.read().decode()
        data: dict[str, Any] = json.loads(body)
        return data


@pytest.fixture(scope="module")
def prometheus(
    live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """Debian's Prometheus on a free loopback port, scraping the live server every second."""
    binary = require_tool("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    target = urllib.parse.urlsplit(live_server.metrics_url).netloc
    config = work / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "rule_files:\n"
        f"  - {REPO / 'deploy' / 'prometheus' / 'alerts.yml'}\n"
        "scrape_configs:\n"
        "  - job_name: labelwatch\n"
        "    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    port = free_port()
    log = (work / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool | None:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited: {(work / 'prometheus.log').read_text()}")
            return True if "Ready" in http_get(f"{url}/-/ready") else None

        wait_for("prometheus to be ready", ready)
        yield Prometheus(url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def test_prometheus_scrapes_the_server_and_returns_the_flag_counters(
    live_server: LiveServer, prometheus: Prometheus
) -> None:
    def flag_counters() -> dict[tuple[str, str], int] | None:
        data = prometheus.query('labelwatch_class_flags_total{job="labelwatch"}')
        assert data["status"] == "success", data
        got = {
            (r["metric"]["class"], r["metric"]["kind"]): int(float(r["value"][1]))
            for r in data["data"]["result"]
        }
        return got or None

    assert wait_for("the flag counters in Prometheus", flag_counters) == live_server.expected_flags
    scored = prometheus.query('sum(labelwatch_examples_scored_total{job="labelwatch"})')
    assert float(scored["data"]["result"][0]["value"][1]) == live_server.examples
    up = prometheus.query('up{job="labelwatch"}')
    assert [r["value"][1] for r in up["data"]["result"]] == ["1"]


def _substitute_dashboard_variables(expr: str) -> str:
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$job", "labelwatch")
        .replace("$instance", ".*")
    )


def test_every_dashboard_and_alert_expression_is_accepted_by_prometheus(
    prometheus: Prometheus,
) -> None:
    exprs = [_substitute_dashboard_variables(e) for e in dashboard_exprs()] + alert_exprs()
    assert not [e for e in exprs if re.search(r"\$\w", e) and "$labels" not in e]
    failures = {}
    for expr in exprs:
        data = prometheus.query(expr)
        if data["status"] != "success":
            failures[expr] = data.get("error")
    assert failures == {}


def test_alert_rules_evaluate_cleanly_and_the_live_server_does_not_alert(
    live_server: LiveServer, prometheus: Prometheus
) -> None:
    def evaluated_rules() -> list[dict[str, Any]] | None:
        data = json.loads(http_get(f"{prometheus.url}/api/v1/rules"))
        rules = [r for g in data["data"]["groups"] for r in g["rules"]]
        evaluated = rules and all(r.get("lastEvaluation", "0001").startswith("20") for r in rules)
        # wait until the first scrape is visible to the rules as well
        scraped = prometheus.query('up{job="labelwatch"}')["data"]["result"]
        return rules if evaluated and scraped else None

    rules = wait_for("alert rules to be evaluated", evaluated_rules)
    assert len(rules) == len(alert_exprs())
    assert {r["name"]: r["health"] for r in rules if r["health"] != "ok"} == {}
    model_not_loaded = prometheus.query(
        'up{job="labelwatch"} == 1 unless on (job, instance) labelwatch_model_info == 1'
    )
    assert model_not_loaded["data"]["result"] == []  # model_info is exported with value 1


def _handled(metrics_url: str, method: str, code: str) -> float | None:
    """``grpc_server_handled_total`` for ``method`` and ``code``, or None while absent."""
    labels = f'[^}}]*grpc_code="{code}"[^}}]*grpc_method="{method}"[^}}]*'
    pattern = re.compile(r"^grpc_server_handled_total\{" + labels + r"\} (\S+)$", re.M)
    match = pattern.search(http_get(metrics_url))
    return float(match.group(1)) if match else None


def _then_hold(
    requests: Iterator[pb.ScoreRequest], release: threading.Event
) -> Iterator[pb.ScoreRequest]:
    """Yield ``requests``, then keep the stream open until ``release`` is set."""
    yield from requests
    release.wait(30)


def test_a_stream_the_client_cancels_is_counted_as_cancelled(tmp_path: Any) -> None:
    artifact_path = write_artifact(tmp_path / "thresholds.json")
    probs, labels = random_calibration(n=2, seed=3)
    request = pb.ScoreRequest(
        examples=[
            pb.Example(
                id="ex-0",
                probabilities=pb.Probabilities(values=probs[0].tolist()),
                labels=[CLASS_NAMES[k] for k in np.flatnonzero(labels[0])],
            )
        ]
    )
    with running_server(thresholds=artifact_path, metrics_port=0) as server:
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        with grpc.insecure_channel(target_of(server)) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            release = threading.Event()
            calls = stub.ScoreStream(_then_hold(iter([request]), release))
            try:
                assert next(calls).results[0].id == "ex-0"
                calls.cancel()
            finally:
                release.set()
        assert (
            wait_for(
                "the cancelled stream's count", lambda: _handled(url, "ScoreStream", "CANCELLED")
            )
            == 1
        )
        assert _handled(url, "ScoreStream", "UNKNOWN") is None
        assert _handled(url, "ScoreStream", "OK") is None
