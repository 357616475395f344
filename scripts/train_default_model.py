#!/usr/bin/env python3
"""Train labelwatch's default model and calibrate its thresholds, from the shipped dataset.

Reads ``data/debtags/debtags.jsonl.gz`` (see ``service/labelwatch/data/DATASET.md``) and writes

* ``service/labelwatch/data/default_model.onnx``: TF-IDF (word 1-2 grams) + one-vs-rest
  logistic regression, fitted on the *train* split. Input ``text``: string ``(N, 1)``, raw
  text; output ``probabilities``: float32 ``(N, K)``. Metadata ``class_names`` is a JSON list.
* ``service/labelwatch/data/default_thresholds.json``: the calibration artifact, fitted on
  the model's probabilities for the *calibration* split and tied to the model's sha256.

* ``data/debtags/default_model_reference.json.gz``: scikit-learn's ``predict_proba``
  (float64) of the fitted pipeline on a seeded sample of test-split texts, so that the test
  suite can check the shipped ONNX against scikit-learn without scikit-learn or a pickle
  (``tests/test_default_model.py``, tolerance 1e-5).

and prints test-split metrics (micro/macro F1 at 0.5, average precision) as JSON.

The ONNX graph is the TfidfVectorizer exported by skl2onnx followed by one
``MatMul(W (V, K)) + Add(b) + Sigmoid``; the stock OneVsRest export would make one node per
class, several times larger and slower. The ONNX output is checked against scikit-learn's
``predict_proba`` (max abs difference ``--tolerance``) on a sample of the test split.

The run is deterministic: re-running it writes the same bytes (and so the same sha256).
Takes about a minute on 2 cores::

    python scripts/train_default_model.py
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path

import debtags_data
import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import StringTensorType
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, f1_score

REPO = debtags_data.REPO
sys.path.insert(0, str(REPO / "service"))

from labelwatch.calibration import CalibrationArtifact, calibrate, save_artifact  # noqa: E402
from labelwatch.scoring import FilterBy, Pooling  # noqa: E402

DATA_DIR = REPO / "service" / "labelwatch" / "data"
REFERENCE = REPO / "data" / "debtags" / "default_model_reference.json.gz"
REFERENCE_SEED = 0
GRAPH_NAME = "debtags-tfidf-lr"
INPUT_NAME = "text"
OUTPUT_NAME = "probabilities"
# ASCII only, so that Python's re (scikit-learn) and RE2 (onnxruntime's Tokenizer) agree;
# single characters and '+'/'#' are kept for "C", "R", "C++", "C#".
TOKEN_PATTERN = r"[a-z0-9][a-z0-9+#]*"
OPSET = {"": 17, "ai.onnx.ml": 3}
ORT_BATCH = 64


@dataclass(frozen=True)
class Hyperparameters:
    """Everything that shapes the model; stored in the model's metadata."""

    max_features: int = 16000
    ngram_max: int = 2
    min_df: int = 2
    c: float = 10.0
    max_iter: int = 2000


def fit_vectorizer(texts: Sequence[str], hp: Hyperparameters) -> TfidfVectorizer:
    """TF-IDF over ``texts``; every kept bigram's words are kept unigrams.

    onnxruntime's TfIdfVectorizer only counts an n-gram whose words are all in its pool,
    so a bigram whose word was cut (by ``max_features`` ties) is dropped before the
    final fit. ``sublinear_tf`` stays off (skl2onnx exports it differently).
    """
    common = {
        "lowercase": True,
        "token_pattern": TOKEN_PATTERN,
        "ngram_range": (1, hp.ngram_max),
        "dtype": np.float32,
    }
    first = TfidfVectorizer(min_df=hp.min_df, max_features=hp.max_features, **common)
    first.fit(texts)
    vocab = set(first.vocabulary_)
    kept = sorted(w for w in vocab if all(part in vocab for part in w.split(" ")))
    final = TfidfVectorizer(vocabulary=kept, **common)
    final.fit(texts)
    return final


def fit_classifiers(
    features: object, labels: NDArray[np.bool_], hp: Hyperparameters
) -> list[LogisticRegression]:
    """One L2 logistic regression per class (one-vs-rest) on ``(n, V)`` features."""
    classifiers = []
    for k in range(labels.shape[1]):
        clf = LogisticRegression(C=hp.c, max_iter=hp.max_iter)
        classifiers.append(clf.fit(features, labels[:, k]))
    return classifiers


def stack_weights(
    classifiers: Sequence[LogisticRegression],
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """``W`` ``(V, K)`` and ``b`` ``(K,)`` as float32, class ``k`` in column ``k``."""
    weights = np.stack([np.asarray(c.coef_[0]) for c in classifiers], axis=1)
    bias = np.asarray([c.intercept_[0] for c in classifiers])
    return weights.astype(np.float32), bias.astype(np.float32)


def sklearn_probs(
    vectorizer: TfidfVectorizer, classifiers: Sequence[LogisticRegression], texts: Sequence[str]
) -> NDArray[np.float64]:
    """The reference: scikit-learn's ``predict_proba`` of each class, ``(n, K)`` float64."""
    x = vectorizer.transform(texts)
    return np.stack([c.predict_proba(x)[:, 1] for c in classifiers], axis=1).astype(np.float64)


def export_onnx(
    vectorizer: TfidfVectorizer,
    weights: NDArray[np.float32],
    bias: NDArray[np.float32],
    class_names: Sequence[str],
    metadata: dict[str, str],
) -> onnx.ModelProto:
    """skl2onnx's TfidfVectorizer graph + ``Sigmoid(MatMul(tfidf, W) + b)``."""
    model: onnx.ModelProto = convert_sklearn(
        vectorizer,
        initial_types=[(INPUT_NAME, StringTensorType([None, 1]))],
        # the ONNX StringNormalizer needs an installed locale; "C" always is
        options={id(vectorizer): {"locale": "C"}},
        target_opset=OPSET,
    )
    graph = model.graph
    (tfidf_out,) = (o.name for o in graph.output)
    n_classes = weights.shape[1]
    graph.initializer.extend(
        [numpy_helper.from_array(weights, "coef"), numpy_helper.from_array(bias, "intercept")]
    )
    graph.node.extend(
        [
            helper.make_node("MatMul", [tfidf_out, "coef"], ["scores"], name="MatMulCoef"),
            helper.make_node("Add", ["scores", "intercept"], ["logits"], name="AddIntercept"),
            helper.make_node("Sigmoid", ["logits"], [OUTPUT_NAME], name="Sigmoid"),
        ]
    )
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None, n_classes])
    )
    graph.name = GRAPH_NAME
    # skl2onnx collects opsets in a set: its order follows the per-process string hash seed
    opsets = sorted((o.domain, o.version) for o in model.opset_import)
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in opsets)
    graph.doc_string = (
        f"TF-IDF (word 1-{vectorizer.ngram_range[1]} grams, {len(vectorizer.vocabulary_)} "
        f"features) + one-vs-rest logistic regression over {n_classes} debtags. "
        f"Input {INPUT_NAME!r}: string (N, 1) raw text; output {OUTPUT_NAME!r}: float (N, K) "
        "per-class probabilities; class order in metadata 'class_names'."
    )
    model.producer_name = "labelwatch scripts/train_default_model.py"
    model.producer_version = "1"
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {"class_names": json.dumps(list(class_names)), **metadata})
    onnx.checker.check_model(model)
    return model


def onnx_probs(session: ort.InferenceSession, texts: Sequence[str]) -> NDArray[np.float64]:
    """Run the exported model in batches of ``ORT_BATCH``; ``(n, K)`` float64."""
    parts = []
    for start in range(0, len(texts), ORT_BATCH):
        feed = np.asarray(list(texts[start : start + ORT_BATCH]), dtype=object).reshape(-1, 1)
        (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: feed})
        parts.append(np.asarray(out, dtype=np.float64))
    return np.vstack(parts)


def test_metrics(probs: NDArray[np.float64], labels: NDArray[np.bool_]) -> dict[str, float]:
    """Micro/macro F1 at 0.5 and micro/macro average precision, over ``(n, K)`` arrays."""
    pred = probs >= 0.5
    present = labels.any(axis=0)  # AP is undefined for a class with no positive
    return {
        "micro_f1": float(f1_score(labels, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(labels, pred, average="macro", zero_division=0)),
        "micro_ap": float(average_precision_score(labels, probs, average="micro")),
        "macro_ap": float(
            average_precision_score(labels[:, present], probs[:, present], average="macro")
        ),
    }


def reference_document(
    ids: Sequence[str],
    texts: Sequence[str],
    probs: NDArray[np.float64],
    class_names: Sequence[str],
    model_sha256: str,
) -> bytes:
    """The sklearn reference sample as gzip JSON, byte-identical across runs.

    ``probs``: ``(n, K)`` float64 ``predict_proba``; floats are written with ``repr``
    precision, so reading them back gives the same bits. gzip's header time is fixed at 0.
    """
    document = {
        "description": "scikit-learn predict_proba of the pipeline exported as the model with "
        "this sha256, on a seeded sample of test-split texts; written by "
        "scripts/train_default_model.py",
        "model_sha256": model_sha256,
        "class_names": list(class_names),
        "ids": list(ids),
        "texts": list(texts),
        "probabilities": [[float(v) for v in row] for row in probs.tolist()],
    }
    text = json.dumps(document, indent=None, separators=(",", ":"), allow_nan=False)
    return gzip.compress((text + "\n").encode("utf-8"), compresslevel=9, mtime=0)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Train the default debtags model (ONNX) and calibrate its thresholds "
        "artifact from the shipped dataset; print test-split metrics as JSON.",
    )
    parser.add_argument(
        "--dataset", type=Path, default=debtags_data.DATASET, help="debtags .jsonl.gz file"
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=DATA_DIR,
        help="where default_model.onnx and default_thresholds.json go",
    )
    parser.add_argument("--max-features", type=int, default=Hyperparameters.max_features)
    parser.add_argument("--c", type=float, default=Hyperparameters.c, help="inverse L2 strength")
    parser.add_argument(
        "--pooling",
        choices=[p.value for p in Pooling],
        default=Pooling.SOFTMIN.value,
        help="label-quality pooling stored in the artifact",
    )
    parser.add_argument(
        "--filter-by",
        choices=[r.value for r in FilterBy],
        default=FilterBy.BUDGET.value,
        help="flag rule stored in the artifact, served by default (docs/detection.md)",
    )
    parser.add_argument(
        "--context-tags", type=int, default=16, help="tag-context model: other tags per class"
    )
    parser.add_argument(
        "--flag-budget", type=float, default=0.1, help="default flags per example (budget rule)"
    )
    parser.add_argument(
        "--calibrate-only",
        action="store_true",
        help="keep OUT_DIR/default_model.onnx as it is and only re-fit the thresholds artifact "
        "(its probabilities on the calibration split, onnxruntime with 1 thread)",
    )
    parser.add_argument("--temperature", type=float, default=0.1, help="softmin temperature")
    parser.add_argument("--alpha", type=float, default=0.8, help="EMA alpha")
    parser.add_argument(
        "--tolerance", type=float, default=1e-5, help="max |ONNX - sklearn| probability"
    )
    parser.add_argument("--check-rows", type=int, default=1000, help="test rows compared")
    parser.add_argument(
        "--reference-out",
        type=Path,
        default=REFERENCE,
        help="where the scikit-learn reference sample (gzip JSON) goes",
    )
    parser.add_argument(
        "--reference-rows", type=int, default=64, help="test rows in the reference sample"
    )
    parser.add_argument("--metrics-out", type=Path, help="also write the metrics JSON here")
    args = parser.parse_args(argv)
    hp = Hyperparameters(max_features=args.max_features, c=args.c)
    if args.calibrate_only:
        return recalibrate(args)

    started = time.monotonic()
    data = debtags_data.load(args.dataset)
    train, cal, test = data["train"], data["calibration"], data["test"]
    vectorizer = fit_vectorizer(train.texts, hp)
    classifiers = fit_classifiers(vectorizer.transform(train.texts), train.labels, hp)
    weights, bias = stack_weights(classifiers)
    fitted = time.monotonic()

    metadata = {
        "dataset": "debtags: " + _dataset_release(args.dataset),
        "hyperparameters": json.dumps(asdict(hp), sort_keys=True),
        "token_pattern": TOKEN_PATTERN,
    }
    model = export_onnx(vectorizer, weights, bias, data.class_names, metadata)
    model_bytes = model.SerializeToString()
    model_sha = sha256_bytes(model_bytes)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # reproducible float sums
    session = ort.InferenceSession(
        model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
    )

    sample = test.texts[: args.check_rows]
    reference = sklearn_probs(vectorizer, classifiers, sample)
    diff = float(np.abs(onnx_probs(session, sample) - reference).max())
    # a seeded sample over the whole test split, not only its first rows
    picked = np.random.default_rng(REFERENCE_SEED).choice(
        len(test), size=min(args.reference_rows, len(test)), replace=False
    )
    ref_rows = sorted(int(i) for i in picked)
    ref_texts = [test.texts[i] for i in ref_rows]
    ref_probs = sklearn_probs(vectorizer, classifiers, ref_texts)
    diff = max(diff, float(np.abs(onnx_probs(session, ref_texts) - ref_probs).max()))
    if diff > args.tolerance:
        print(f"ONNX and scikit-learn disagree: max |diff| {diff:.3g}", file=sys.stderr)
        return 1

    cal_probs = onnx_probs(session, cal.texts)
    test_probs = onnx_probs(session, test.texts)
    artifact = fit_artifact(args, cal_probs, cal.labels, data.class_names, model_sha)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    model_path = args.out_dir / "default_model.onnx"
    model_path.write_bytes(model_bytes)
    thresholds_path = args.out_dir / "default_thresholds.json"
    save_artifact(artifact, thresholds_path)
    reference_bytes = reference_document(
        [test.ids[i] for i in ref_rows], ref_texts, ref_probs, data.class_names, model_sha
    )
    args.reference_out.parent.mkdir(parents=True, exist_ok=True)
    args.reference_out.write_bytes(reference_bytes)

    report = {
        "model": str(model_path),
        "model_sha256": model_sha,
        "model_bytes": len(model_bytes),
        "thresholds": str(thresholds_path),
        "thresholds_sha256": sha256_bytes(thresholds_path.read_bytes()),
        "thresholds_bytes": thresholds_path.stat().st_size,
        "reference": str(args.reference_out),
        "reference_sha256": sha256_bytes(reference_bytes),
        "n_features": len(vectorizer.vocabulary_),
        "n_classes": len(data.class_names),
        "split_sizes": {name: len(data[name]) for name in debtags_data.SPLITS},
        "onnx_vs_sklearn_max_abs_diff": diff,
        "test": test_metrics(test_probs, test.labels),
        "calibration": test_metrics(cal_probs, cal.labels),
        "seconds": {"fit": fitted - started, "total": time.monotonic() - started},
        "hyperparameters": asdict(hp),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.metrics_out is not None:
        args.metrics_out.write_text(text + "\n")
    return 0


def fit_artifact(
    args: argparse.Namespace,
    cal_probs: NDArray[np.float64],
    cal_labels: NDArray[np.bool_],
    class_names: Sequence[str],
    model_sha: str,
) -> CalibrationArtifact:
    """The shipped artifact: the chosen rule, pooling and tag context (docs/detection.md)."""
    return calibrate(
        cal_probs,
        cal_labels,
        class_names,
        model_sha256=model_sha,
        pooling=Pooling(args.pooling),
        alpha=args.alpha,
        temperature=args.temperature,
        filter_by=FilterBy(args.filter_by),
        context_tags=args.context_tags,
        flag_budget=args.flag_budget,
        context_quality=True,
        now=_created_at(args.dataset),
    )


def recalibrate(args: argparse.Namespace) -> int:
    """``--calibrate-only``: re-fit OUT_DIR/default_thresholds.json for the existing model."""
    data = debtags_data.load(args.dataset)
    model_bytes = (args.out_dir / "default_model.onnx").read_bytes()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
    )
    cal = data["calibration"]
    artifact = fit_artifact(
        args, onnx_probs(session, cal.texts), cal.labels, data.class_names,
        sha256_bytes(model_bytes),
    )  # fmt: skip
    path = args.out_dir / "default_thresholds.json"
    save_artifact(artifact, path)
    print(json.dumps({"thresholds": str(path), "sha256": sha256_bytes(path.read_bytes())}))
    return 0


def _release(dataset: Path) -> dict[str, str]:
    """The ``release`` block of the dataset's ``.meta.json`` (empty if there is none)."""
    meta_path = dataset.with_name(dataset.name.split(".")[0] + ".meta.json")
    if not meta_path.is_file():
        return {}
    release = json.loads(meta_path.read_text()).get("release", {})
    return {str(k): str(v) for k, v in release.items()}


def _created_at(dataset: Path) -> datetime:
    """A fixed ``created_at`` for the artifact, so that re-runs write the same bytes.

    ``SOURCE_DATE_EPOCH`` if set (the reproducible-builds convention), else the date of
    the Debian release the dataset was built from, else the Unix epoch.
    """
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        return datetime.fromtimestamp(int(epoch), tz=timezone.utc)
    date = _release(dataset).get("Date")
    if date:
        return parsedate_to_datetime(date).astimezone(timezone.utc)
    return datetime.fromtimestamp(0, tz=timezone.utc)


def _dataset_release(dataset: Path) -> str:
    """``"Debian 12.15 bookworm main, <date>"`` from the dataset's meta file, if present."""
    release = _release(dataset)
    if not release:
        return dataset.name
    return (
        f"{release.get('Origin', 'Debian')} {release.get('Version', '?')} "
        f"{release.get('Codename', '?')} main, {release.get('Date', '?')}"
    )


if __name__ == "__main__":
    sys.exit(main())
