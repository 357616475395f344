"""The models the benchmark serves and the rows its clients send.

Three kinds of workload, each a :class:`ServedModel` (what the server loads) plus a
:class:`Workload` (a picklable recipe for the rows, rebuilt in every client process):

* ``text``: the default model shipped in the package (TF-IDF + logistic regression over
  Debian debtags, string input, 124 classes) and packages of the debtags test split;
* ``float``: a float-input model built here, ``(N, 256)`` -> MatMul + Add + Sigmoid ->
  ``(N, 124)``, calibrated on synthetic tags drawn from its own probabilities;
* ``probs-K``: no model (thresholds-only mode); clients send K probabilities per example.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
from numpy.typing import NDArray

from labelwatch import default_model
from labelwatch.calibration import calibrate, load_artifact, save_artifact
from labelwatch.model import file_sha256

REPO = Path(__file__).resolve().parents[2]
DEBTAGS = REPO / "data" / "debtags" / "debtags.jsonl.gz"
REPO_DATA = REPO / "service" / "labelwatch" / "data"
FLOAT_DIM = 256
FLOAT_CLASSES = 124


@dataclass(frozen=True)
class Workload:
    """A recipe for ``n_rows`` labeled rows; :func:`make_rows` builds them anywhere.

    ``kind``: ``text`` (rows from ``text_path``, tags mapped by ``class_names``),
    ``float`` (``(n, feature_dim)`` float32 features) or ``probs`` (``(n, n_classes)``
    probabilities). ``seed`` fixes the synthetic rows and tags.
    """

    name: str
    kind: str
    n_classes: int
    n_rows: int = 512
    feature_dim: int = 0
    seed: int = 0
    text_path: str = ""
    class_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rows:
    """Labeled rows: exactly one input array is set. ``labels``: ``(n, K)`` bool."""

    labels: NDArray[np.bool_]
    texts: tuple[str, ...] | None = None
    features: NDArray[np.float32] | None = None
    probs: NDArray[np.float64] | None = None

    @property
    def n(self) -> int:
        """Number of rows."""
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class ServedModel:
    """What a server loads (``model`` None: thresholds-only) and what clients send."""

    name: str
    model: Path | None
    thresholds: Path
    workload: Workload


LOGIT_SCALE = 2.5
TAGS_PER_EXAMPLE = 5.0
FLIPS_PER_EXAMPLE = 1.0


def _logit_mean(k: int) -> float:
    """Mean logit that makes ~``TAGS_PER_EXAMPLE`` of ``k`` classes positive (like debtags)."""
    positive = min(TAGS_PER_EXAMPLE / k, 0.3)
    return -LOGIT_SCALE * NormalDist().inv_cdf(1.0 - positive)


def _sparse_tags(rng: np.random.Generator, probs: NDArray[np.float64]) -> NDArray[np.bool_]:
    """The classes with ``probs`` > 0.5, then ~``FLIPS_PER_EXAMPLE`` cells a row flipped (noise)."""
    tags = probs > 0.5
    flips = rng.random(probs.shape) < FLIPS_PER_EXAMPLE / probs.shape[1]
    return np.asarray(tags ^ flips, dtype=np.bool_)


def _sigmoid(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(1.0 / (1.0 + np.exp(-logits)), dtype=np.float64)


def _float_weights(k: int, d: int, seed: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    w = (rng.normal(size=(d, k)) * (LOGIT_SCALE / np.sqrt(d))).astype(np.float32)
    b = np.full(k, _logit_mean(k), dtype=np.float32)
    return w, b


def _float_features(n: int, d: int, seed: int) -> NDArray[np.float32]:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _float_forward(x: NDArray[np.float32], seed: int, k: int) -> NDArray[np.float64]:
    w, b = _float_weights(k, x.shape[1], seed)
    return _sigmoid((x @ w + b).astype(np.float64))


def _synthetic_probs(rng: np.random.Generator, n: int, k: int) -> NDArray[np.float64]:
    """``(n, k)`` probabilities shaped like a sparse multi-label model's output."""
    return _sigmoid(rng.normal(_logit_mean(k), LOGIT_SCALE, size=(n, k)))


def make_rows(workload: Workload) -> Rows:
    """Build the rows of ``workload`` (deterministic: the same in every process)."""
    rng = np.random.default_rng(workload.seed + 1)
    k = workload.n_classes
    if workload.kind == "text":
        index = {name: i for i, name in enumerate(workload.class_names)}
        texts: list[str] = []
        labels = np.zeros((workload.n_rows, k), dtype=np.bool_)
        with gzip.open(workload.text_path, "rt", encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                if row.get("split") != "test":
                    continue
                for tag in row["labels"]:
                    if tag in index:
                        labels[len(texts), index[tag]] = True
                texts.append(row["text"])
                if len(texts) == workload.n_rows:
                    break
        if len(texts) < workload.n_rows:
            raise ValueError(f"{workload.text_path}: only {len(texts)} test rows")
        return Rows(labels=labels, texts=tuple(texts))
    if workload.kind == "float":
        x = _float_features(workload.n_rows, workload.feature_dim, workload.seed + 2)
        probs = _float_forward(x, workload.seed, k)
        return Rows(labels=_sparse_tags(rng, probs), features=x)
    if workload.kind == "probs":
        probs = _synthetic_probs(rng, workload.n_rows, k)
        return Rows(labels=_sparse_tags(rng, probs), probs=probs)
    raise ValueError(f"unknown workload kind {workload.kind!r}")


def batch_indices(n_rows: int, batch: int, count: int = 8) -> list[NDArray[np.int64]]:
    """``count`` batches of ``batch`` consecutive row indices, wrapping around the rows."""
    return [np.arange(i * batch, (i + 1) * batch, dtype=np.int64) % n_rows for i in range(count)]


def text_model(n_rows: int = 512) -> ServedModel:
    """The default model and thresholds: the checkout's files, else the installed package's.

    The checkout comes first so that a retrained model is measured without a reinstall.
    """
    model, thresholds = REPO_DATA / "default_model.onnx", REPO_DATA / "default_thresholds.json"
    if not (model.is_file() and thresholds.is_file()):
        if not default_model.available():
            raise FileNotFoundError(f"no default model in {REPO_DATA} or {default_model.DATA_DIR}")
        model, thresholds = default_model.DEFAULT_MODEL, default_model.DEFAULT_THRESHOLDS
    artifact = load_artifact(thresholds)
    workload = Workload(
        name="text",
        kind="text",
        n_classes=artifact.n_classes,
        n_rows=n_rows,
        text_path=str(DEBTAGS),
        class_names=artifact.class_names,
    )
    return ServedModel("text", model, thresholds, workload)


def float_model(
    out_dir: Path, *, d: int = FLOAT_DIM, k: int = FLOAT_CLASSES, seed: int = 0, n_rows: int = 512
) -> ServedModel:
    """Write ``float.onnx`` ``(N, d) -> (N, k)`` and its calibration artifact in ``out_dir``."""
    import onnx  # only the parent builds models; client processes stay light
    from onnx import TensorProto, helper, numpy_helper

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "float.onnx"
    names = [f"class-{i:03d}" for i in range(k)]
    w, b = _float_weights(k, d, seed)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["logits0"]),
            helper.make_node("Add", ["logits0", "B"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["probabilities"]),
        ],
        "bench_float_model",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, d])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, k])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"class_names": json.dumps(names)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    # held-out calibration rows: features from another seed than the clients' rows
    x = _float_features(4000, d, seed + 100)
    probs = _float_forward(x, seed, k)
    tags = _sparse_tags(np.random.default_rng(seed + 101), probs)
    thresholds = out_dir / "float_thresholds.json"
    save_artifact(calibrate(probs, tags, names, model_sha256=file_sha256(path)), thresholds)
    workload = Workload("float", "float", k, n_rows=n_rows, feature_dim=d, seed=seed)
    return ServedModel("float", path, thresholds, workload)


def probs_model(out_dir: Path, k: int, *, seed: int = 0, n_rows: int = 128) -> ServedModel:
    """A thresholds-only artifact for ``k`` classes; clients send probabilities."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 200)
    probs = _synthetic_probs(rng, 2000, k)
    tags = _sparse_tags(rng, probs)
    names = [f"class-{i:05d}" for i in range(k)]
    thresholds = out_dir / f"probs_{k}_thresholds.json"
    save_artifact(calibrate(probs, tags, names), thresholds)
    workload = Workload(f"probs-{k}", "probs", k, n_rows=n_rows, seed=seed)
    return ServedModel(f"probs-{k}", None, thresholds, workload)
