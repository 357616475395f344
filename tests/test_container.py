"""The container image: built with podman from the repository's Dockerfile, run, scored, stopped.

Runs scripts/container_build_and_run.sh (debootstrap base image, host-built wheels installed with
--no-index, runc, ulimits from a CONTAINERS_CONF file). It needs root and the packages of
scripts/ci_system_deps.sh; without them it is skipped, except under CI=true where that is a
failure. A cold run (base image, wheels, build) takes about 2.5 minutes here, a warm one about
35 seconds; every step has its own timeout.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from labelwatch.calibration import load_artifact
from labelwatch.scoring import FilterBy, decide
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_security import make_pki
from support_server import CLASS_NAMES, random_calibration, write_artifact
from support_tools import REPO, in_ci, require_tool

# slow: builds the image with podman (about a minute, more on a cold cache)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

SCRIPT = REPO / "scripts" / "container_build_and_run.sh"
PODMAN = REPO / "scripts" / "container" / "podman.sh"
BUILD_TIMEOUT = 900.0
RUN_TIMEOUT = 120.0
GRACE_SECONDS = 5.0
DEFAULT_MODEL = REPO / "service" / "labelwatch" / "data" / "default_model.onnx"


def _log(message: str) -> None:
    print(f"[test_container] {message}", file=sys.stderr, flush=True)


def _run(cmd: Sequence[str | Path], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False
    )


def podman(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """podman with the scripts' settings (runc, ulimits, CONTAINERS_CONF)."""
    return _run([PODMAN, *args], timeout)


@pytest.fixture(scope="module")
def image() -> str:
    """Build the image once for this module (the base image is cached between runs)."""
    for tool in ("podman", "buildah", "runc", "debootstrap"):
        require_tool(tool)
    if os.geteuid() != 0:
        reason = "building the image needs root (debootstrap, rootful podman)"
        if in_ci():
            pytest.fail(f"{reason}; CI=true")
        pytest.skip(reason)
    started = time.monotonic()
    result = _run([SCRIPT, "--build-only"], BUILD_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    _log(f"image built in {time.monotonic() - started:.1f}s")
    return os.environ.get("LABELWATCH_IMAGE", "localhost/labelwatch:dev")


@dataclass(frozen=True)
class Container:
    name: str
    grpc_target: str
    metrics_url: str


@contextlib.contextmanager
def running_container(
    image: str, mount: Path | None, serve_args: Sequence[str]
) -> Iterator[Container]:
    """Run the image via the script on free loopback ports; remove the container afterwards."""
    del image  # built by the fixture; the script runs $LABELWATCH_IMAGE
    name = f"labelwatch-test-{uuid.uuid4().hex[:8]}"
    cmd: list[str | Path] = [SCRIPT, "--no-build", "--name", name, "--grpc-port", "0"]
    cmd += ["--metrics-port", "0"]
    if mount is not None:
        cmd += ["--mount", mount]
    cmd += ["--", *serve_args] if serve_args else []
    started = time.monotonic()
    try:
        result = _run(cmd, RUN_TIMEOUT)
        assert result.returncode == 0, result.stdout + result.stderr
        match = re.search(r"name=(\S+) grpc=(\S+) metrics=(\S+)", result.stdout)
        assert match, result.stdout
        _log(f"container {name} serving after {time.monotonic() - started:.1f}s")
        try:
            yield Container(name, match.group(2), f"http://{match.group(3)}/metrics")
        except BaseException:
            logs = podman("logs", name)
            _log(f"log of {name}:\n{logs.stdout}{logs.stderr}")
            raise
    finally:
        podman("rm", "--force", "--ignore", "--volumes", name)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """A directory with a calibration artifact, readable by the image's non-root user."""
    models = tmp_path / "models"
    models.mkdir()
    write_artifact(models / "thresholds.json").chmod(0o644)
    models.chmod(0o755)
    return models


def stop_with_sigterm(name: str) -> tuple[int, float, str]:
    """Send SIGTERM, wait for the exit; return (exit code, seconds taken, container log)."""
    started = time.monotonic()
    kill = podman("kill", "--signal", "TERM", name)
    assert kill.returncode == 0, kill.stderr
    waited = podman("wait", name, timeout=GRACE_SECONDS + 30)
    elapsed = time.monotonic() - started
    assert waited.returncode == 0, waited.stderr
    logs = podman("logs", name)
    return int(waited.stdout.strip()), elapsed, logs.stdout + logs.stderr


def test_image_scores_through_the_published_port_and_stops_cleanly_on_sigterm(
    image: str, models_dir: Path
) -> None:
    serve_args = ["--thresholds", "/models/thresholds.json", "--grace-seconds", str(GRACE_SECONDS)]
    with running_container(image, models_dir, serve_args) as container:
        probs, labels = random_calibration(n=30, seed=3)
        request = pb.ScoreRequest(
            examples=[
                pb.Example(
                    id=f"c-{i}",
                    probabilities=pb.Probabilities(values=p.tolist()),
                    labels=[CLASS_NAMES[k] for k in np.flatnonzero(y)],
                )
                for i, (p, y) in enumerate(zip(probs, labels, strict=True))
            ]
        )
        with grpc.insecure_channel(container.grpc_target) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            response = stub.Score(request, timeout=30)
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        fit = load_artifact(models_dir / "thresholds.json").fit
        decision = decide(fit, probs, labels, FilterBy.CONFIDENT_LEARNING)
        assert [r.is_issue for r in response.results] == decision.is_issue.tolist()
        np.testing.assert_allclose(
            [r.label_quality for r in response.results], decision.label_quality, atol=1e-12
        )
        assert info.name == "probabilities-only"
        assert list(info.class_names) == list(CLASS_NAMES)

        with urllib.request.urlopen(container.metrics_url, timeout=10) as metrics_response:
            metrics = metrics_response.read().decode()
        scored = re.search(r"^labelwatch_examples_scored_total\{[^}]*\} (\S+)$", metrics, re.M)
        assert scored and float(scored.group(1)) == len(probs)
        assert "process_start_time_seconds" in metrics

        whoami = podman("exec", container.name, "id", "-u")
        assert whoami.stdout.strip() == "10001"  # the image's non-root user
        health = podman("healthcheck", "run", container.name)
        assert health.returncode == 0, health.stdout + health.stderr  # the image's HEALTHCHECK

        code, elapsed, log = stop_with_sigterm(container.name)
        _log(f"stopped {elapsed:.1f}s after SIGTERM with exit code {code}")
        assert code == 0, log
        # it stopped by itself (podman kill sends only SIGTERM; `podman wait` has a deadline)
        assert "signal=SIGTERM" in log and "event=stopped" in log, log


def test_image_healthcheck_follows_tls_and_a_port_given_on_the_command_line(
    image: str, models_dir: Path
) -> None:
    """The HEALTHCHECK must use TLS and the --port the server was really started with."""
    pki = make_pki(models_dir / "pki")
    for path in (models_dir / "pki", *(models_dir / "pki").iterdir()):
        os.chown(path, 10001, 10001)  # the image's user reads the key; it stays mode 600
    serve_args = [
        "--port",
        "6000",
        "--tls-cert",
        f"/models/pki/{pki.server_cert.name}",
        "--tls-key",
        f"/models/pki/{pki.server_key.name}",
    ]
    # the script waits until `python -m labelwatch.healthcheck` succeeds inside the container
    with running_container(image, models_dir, serve_args) as container:
        health = podman("healthcheck", "run", container.name)
        assert health.returncode == 0, health.stdout + health.stderr  # the image's HEALTHCHECK
        check = podman("exec", container.name, "python", "-m", "labelwatch.healthcheck")
        assert "127.0.0.1:6000 (TLS" in check.stdout, check.stdout + check.stderr
        code, _, log = stop_with_sigterm(container.name)
        assert code == 0, log


@pytest.mark.skipif(
    not DEFAULT_MODEL.exists(), reason=f"no embedded default model yet ({DEFAULT_MODEL})"
)
def test_image_default_command_serves_the_embedded_model(image: str) -> None:
    with running_container(image, None, []) as container:
        with grpc.insecure_channel(container.grpc_target) as channel:
            stub = pb_grpc.LabelQualityStub(channel)
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
            assert info.name != "probabilities-only" and info.sha256
            if info.input_kind == pb.INPUT_KIND_TEXT:  # the model runs inside the image
                example = pb.Example(
                    id="t", text="Python bindings for libfoo", labels=[info.class_names[0]]
                )
                response = stub.Score(pb.ScoreRequest(examples=[example]), timeout=30)
                [result] = response.results
                assert 0.0 <= result.label_quality <= 1.0
        code, _, log = stop_with_sigterm(container.name)
        assert code == 0, log
