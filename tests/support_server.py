"""Test support: tiny ONNX models, calibration artifacts, and real servers on 127.0.0.1.

Imported by tests (``from support_server import ...``); pytest puts ``tests/``
on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper
from prometheus_client import CollectorRegistry

from labelwatch.calibration import calibrate, save_artifact
from labelwatch.config import Settings
from labelwatch.model import file_sha256
from labelwatch.server import RunningServer, start

SERVE_TEST_FLAGS = ("--port", "0", "--metrics-port", "off")
"""Flags for a test ``labelwatch serve``: pick a free gRPC port, no metrics port."""

CLASS_NAMES = ("cat", "dog", "bird", "fish", "horse")


def random_calibration(
    n: int = 400, k: int = len(CLASS_NAMES), seed: int = 0
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Synthetic out-of-sample probabilities ``(n, k)`` and noisy tags ``(n, k)``."""
    rng = np.random.default_rng(seed)
    truth = rng.random((n, k)) < 0.3
    probs = np.clip(np.where(truth, rng.beta(5, 2, (n, k)), rng.beta(2, 5, (n, k))), 0, 1)
    noise = rng.random((n, k)) < 0.08
    return probs, truth ^ noise


def write_artifact(
    path: Path,
    *,
    class_names: Sequence[str] = CLASS_NAMES,
    model_path: Path | None = None,
    seed: int = 0,
    probs: NDArray[np.float64] | None = None,
    labels: NDArray[np.bool_] | None = None,
) -> Path:
    """Calibrate on synthetic (or given) data and save the artifact at ``path``."""
    if probs is None or labels is None:
        probs, labels = random_calibration(k=len(class_names), seed=seed)
    sha = file_sha256(model_path) if model_path is not None else None
    artifact = calibrate(probs, labels, tuple(class_names), model_sha256=sha)
    save_artifact(artifact, path)
    return path


def float_model(path: Path, d: int = 4, k: int = len(CLASS_NAMES), seed: int = 1) -> Path:
    """A linear + sigmoid multi-label model: float input ``(N, d)`` -> ``(N, k)``."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(d, k)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.normal(size=(k,)).astype(np.float32), "B")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["logits0"]),
            helper.make_node("Add", ["logits0", "B"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["probabilities"]),
        ],
        "tiny_float_model",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, d])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, k])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"class_names": json.dumps(list(CLASS_NAMES[:k]))})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def float_model_probs(path: Path, features: NDArray[np.float32]) -> NDArray[np.float64]:
    """Reference forward pass of :func:`float_model` in numpy, ``(N, k)``."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    logits = features.astype(np.float32) @ inits["W"] + inits["B"]
    return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float64)


def text_model(path: Path) -> tuple[Path, list[str], NDArray[np.bool_]]:
    """A TF-IDF + one-vs-rest logistic regression over strings, via skl2onnx.

    Returns the path, the training texts and their tags ``(n, 3)``.
    """
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline

    texts = ["red apple", "green apple", "red car", "blue car", "green tree", "blue sky"] * 4
    tags = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1], [0, 1, 0], [0, 0, 0]] * 4)
    tfidf = TfidfVectorizer()
    clf = OneVsRestClassifier(LogisticRegression())
    pipe = make_pipeline(tfidf, clf)
    pipe.fit(texts, tags)
    onx = to_onnx(
        pipe,
        initial_types=[("text", StringTensorType([None, 1]))],
        # locale "C": onnxruntime's StringNormalizer needs an installed locale otherwise
        options={id(clf): {"zipmap": False}, id(tfidf): {"locale": "C"}},
        target_opset=17,
    )
    path.write_bytes(onx.SerializeToString())
    return path, texts, tags.astype(np.bool_)


TEXT_CLASS_NAMES = ("red", "green", "vehicle")


@contextlib.contextmanager
def running_server(**overrides: object) -> Iterator[RunningServer]:
    """Start a real server in this process on 127.0.0.1:0; stop it on exit.

    ``overrides`` are :class:`Settings` fields (e.g. ``thresholds=Path(...)``); the
    metrics endpoint is off unless ``metrics_port`` is given (0: any free port, read
    back as ``server.metrics_port``).
    """
    with tempfile.TemporaryDirectory(prefix="labelwatch-test-") as data_dir:
        settings = dataclasses.replace(
            Settings(port=0, metrics_port=None, grace_seconds=2.0, data_dir=Path(data_dir)),
            **overrides,  # type: ignore[arg-type]
        )
        server = start(settings, registry=CollectorRegistry())
        try:
            yield server
        finally:
            server.stop(0.5)


def target_of(server: RunningServer) -> str:
    """``host:port`` of a running in-process server."""
    return f"127.0.0.1:{server.port}"


@dataclass
class ServerProcess:
    """``labelwatch serve`` running as a child process."""

    process: subprocess.Popen[str]
    port: int
    metrics_ports: tuple[int, ...] = ()
    """The bound ``/metrics`` port of each worker process (none when off)."""

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def _env() -> dict[str, str]:
    import labelwatch

    src = str(Path(labelwatch.__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


@contextlib.contextmanager
def server_process(args: Sequence[str], *, timeout: float = 120.0) -> Iterator[ServerProcess]:
    """Run ``labelwatch serve ARGS --port 0`` and wait for its 'listening on' line.

    The outbox goes to a fresh temporary data dir unless ``args`` name another.
    """
    data_dir = tempfile.mkdtemp(prefix="labelwatch-test-")
    cmd = [
        sys.executable,
        "-m",
        "labelwatch.cli",
        "serve",
        "--port",
        "0",
        "--metrics-port",
        "off",
        "--data-dir",
        data_dir,
        *args,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    try:
        deadline = time.monotonic() + timeout
        port = None
        metrics_ports: tuple[int, ...] = ()
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            match = re.search(r"listening on [\d.]+:(\d+)", line)
            if match:
                port = int(match.group(1))
                bound = re.search(r"metrics_port=([\d,]+)", line)
                metrics_ports = tuple(int(p) for p in bound.group(1).split(",")) if bound else ()
                break
        if port is None:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise RuntimeError(f"server did not start: {err}")
        yield ServerProcess(proc, port, metrics_ports)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        shutil.rmtree(data_dir, ignore_errors=True)
