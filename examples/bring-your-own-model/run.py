#!/usr/bin/env python3
"""Bring your own model: train, export, calibrate, serve and score, start to finish.

Every step a labelwatch user takes with their own multi-label classifier, on data that
ships with the project (Debian package descriptions and their debtags,
``data/debtags/debtags.jsonl.gz``), with a model unlike the default one:

1. features: hashed word counts of each description (``D`` floats; the default model
   reads raw text instead), computed here, on the client side;
2. model: a scikit-learn ``MLPClassifier`` over the ``K`` most common tags, trained on
   part of the *train* split;
3. ``model.onnx``: the model exported with skl2onnx (``zipmap`` off, so the output
   ``probabilities`` is a ``(N, K)`` float tensor), the class names in its metadata;
4. ``calib.npz``: the model's probabilities on held-out packages (the *calibration*
   split, never trained on) with their tags: ``pred_probs`` ``(N, K)``, ``labels``
   ``(N, K)`` 0/1, ``class_names``, ``ids``. ``test.npz`` is the same for the *test* split;
5. ``labelwatch calibrate --data calib.npz --model model.onnx --out thresholds.json``;
6. ``labelwatch serve --model model.onnx --thresholds thresholds.json`` (on a free port);
7. the Python client scores the test packages, sent as ``features`` with their tags.

Everything is written under ``--out`` (default ``byom``). Needs scikit-learn and skl2onnx
beside labelwatch: ``.venv/bin/pip install scikit-learn skl2onnx``. About 20 s on 2 cores
with the defaults::

    .venv/bin/python examples/bring-your-own-model/run.py --out byom
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import signal
import subprocess
import sys
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from labelwatch_client import Example, LabelwatchClient

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data" / "debtags" / "debtags.jsonl.gz"
TOKEN = re.compile(r"[a-z0-9][a-z0-9+#]*")


@dataclass(frozen=True)
class Split:
    """``n`` packages: ``ids``, ``texts`` and their tags (each a tuple of names)."""

    ids: list[str]
    texts: list[str]
    tags: list[tuple[str, ...]]


def load(path: Path, sizes: dict[str, int]) -> dict[str, Split]:
    """The first ``sizes[split]`` packages of each named split, in file order."""
    rows: dict[str, list[dict[str, object]]] = {name: [] for name in sizes}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            part = rows.get(row["split"])
            if part is not None and len(part) < sizes[row["split"]]:
                part.append(row)
    return {
        name: Split(
            [str(r["id"]) for r in part],
            [str(r["text"]) for r in part],
            [tuple(r["labels"]) for r in part],  # type: ignore[arg-type]
        )
        for name, part in rows.items()
    }


def hashed_features(texts: Sequence[str], dim: int) -> NDArray[np.float32]:
    """``(n, dim)`` float32: log(1 + count) of each word's hash bucket, each row L2-normed."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in TOKEN.findall(text.lower()):
            out[i, zlib.crc32(word.encode()) % dim] += 1.0
    np.log1p(out, out=out)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def tag_matrix(tags: Sequence[tuple[str, ...]], classes: Sequence[str]) -> NDArray[np.int8]:
    """``(n, K)`` 0/1: which of ``classes`` each package carries."""
    index = {name: k for k, name in enumerate(classes)}
    out = np.zeros((len(tags), len(classes)), dtype=np.int8)
    for i, given in enumerate(tags):
        out[i, [index[t] for t in given if t in index]] = 1
    return out


def export(model: MLPClassifier, dim: int, classes: Sequence[str], path: Path) -> None:
    """Write ``model`` as ONNX: input ``features`` ``(N, dim)``, output ``probabilities``."""
    onx = convert_sklearn(
        model,
        name="byom-hashed-mlp",
        initial_types=[("features", FloatTensorType([None, dim]))],
        options={id(model): {"zipmap": False}},  # a plain (N, K) tensor, not a list of dicts
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    # keep only the probabilities: labelwatch thresholds them itself
    for output in [o for o in onx.graph.output if o.name != "probabilities"]:
        onx.graph.output.remove(output)
    meta = onx.metadata_props.add()
    meta.key, meta.value = "class_names", json.dumps(list(classes))
    onnx.checker.check_model(onx)
    path.write_bytes(onx.SerializeToString())


def onnx_probabilities(path: Path, features: NDArray[np.float32]) -> NDArray[np.float32]:
    """``(n, K)`` probabilities of the exported model: what the server will compute."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (probs,) = session.run(["probabilities"], {"features": features})
    return np.asarray(probs, dtype=np.float32)


def save_npz(
    path: Path,
    probs: NDArray[np.float32],
    labels: NDArray[np.int8],
    classes: Sequence[str],
    ids: Sequence[str],
) -> None:
    """The file ``labelwatch calibrate`` and ``labelwatch audit`` read."""
    np.savez(
        path,
        pred_probs=probs,
        labels=labels,
        class_names=np.asarray(classes, dtype=str),
        ids=np.asarray(ids, dtype=str),
    )


def labelwatch(*args: str) -> list[str]:
    """The command line of ``labelwatch ARGS`` with this Python."""
    return [sys.executable, "-m", "labelwatch.cli", *args]


def say(command: Sequence[str]) -> None:
    shown = " ".join(command[3:] if command[:3] == labelwatch() else command)
    print(f"$ labelwatch {shown}", flush=True)


class Server:
    """``labelwatch serve`` in a child process on a free port; stopped with SIGTERM."""

    def __init__(self, model: Path, thresholds: Path, data_dir: Path) -> None:
        command = labelwatch(
            "serve", "--model", str(model), "--thresholds", str(thresholds),
            "--port", "0", "--metrics-port", "0", "--data-dir", str(data_dir),
        )  # fmt: skip
        say(command)
        self.log = (data_dir.parent / "serve.log").open("w")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # "labelwatch listening on HOST:PORT"
        match = re.search(r"listening on (\S+)", line)
        if match is None:
            self.stop()
            log = (data_dir.parent / "serve.log").read_text()
            raise SystemExit(f"labelwatch serve did not start:\n{log}")
        self.target = match.group(1)
        print(f"  listening on {self.target}", flush=True)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        self.log.close()


def batches(examples: Sequence[Example], size: int) -> Iterator[list[Example]]:
    for start in range(0, len(examples), size):
        yield list(examples[start : start + size])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("byom"), help="output folder")
    parser.add_argument("--data", type=Path, default=DATA, help="debtags JSONL.gz")
    parser.add_argument("--train", type=int, default=4000, help="train-split packages")
    parser.add_argument("--calibration", type=int, default=2000, help="held-out packages")
    parser.add_argument("--test", type=int, default=1000, help="test-split packages scored")
    parser.add_argument("--classes", type=int, default=24, help="the K most common tags")
    parser.add_argument("--dim", type=int, default=1024, help="hashed feature dimension D")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    splits = load(args.data, {"train": args.train, "calibration": args.calibration,
                              "test": args.test})  # fmt: skip
    counts = Counter(t for tags in splits["train"].tags for t in tags)
    classes = sorted(name for name, _ in counts.most_common(args.classes))
    print(
        f"1. data: {len(splits['train'].ids)} train, {len(splits['calibration'].ids)} "
        f"calibration, {len(splits['test'].ids)} test packages; {len(classes)} tags"
    )

    features = {name: hashed_features(s.texts, args.dim) for name, s in splits.items()}
    labels = {name: tag_matrix(s.tags, classes) for name, s in splits.items()}
    # small and regularised: an overfitted network's held-out probabilities are extreme,
    # and every confident mistake on them becomes a flag
    model = MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-2, max_iter=30, random_state=0)
    with warnings.catch_warnings():  # 30 epochs are enough for an example, not convergence
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features["train"], labels["train"])
    print(f"2. model: MLP over {args.dim} hashed word features, trained")

    model_path = out / "model.onnx"
    export(model, args.dim, classes, model_path)
    print(f"3. exported {model_path}")

    for name in ("calibration", "test"):
        probs = onnx_probabilities(model_path, features[name])
        file = out / ("calib.npz" if name == "calibration" else "test.npz")
        save_npz(file, probs, labels[name], classes, splits[name].ids)
        print(f"4. {file}: probabilities {probs.shape} and tags of the {name} packages")

    thresholds = out / "thresholds.json"
    command = labelwatch(
        "calibrate", "--data", str(out / "calib.npz"), "--model", str(model_path),
        "--out", str(thresholds),
    )  # fmt: skip
    say(command)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    print(f"5. calibrated: {thresholds}")

    server = Server(model_path, thresholds, out / "server")
    try:
        test = splits["test"]
        examples = [
            Example(id=pid, features=row.tolist(), labels=[t for t in tags if t in classes])
            for pid, row, tags in zip(test.ids, features["test"], test.tags, strict=True)
        ]
        with LabelwatchClient(server.target) as client:
            results = [r for batch in batches(examples, 256) for r in client.score(batch)]
    finally:
        server.stop()
    flagged = sorted((r for r in results if r.is_issue), key=lambda r: r.label_quality)
    print(f"6. scored {len(results)} test packages through the server: {len(flagged)} flagged")
    for result in flagged[:3]:
        issues = ", ".join(f"{i.kind.value} {i.label}" for i in result.issues)
        print(f"   {result.id}: label quality {result.label_quality:.3f}, suspects {issues}")
    print(
        f"done in {time.perf_counter() - started:.0f} s; next: "
        f"{Path(sys.executable).parent / 'labelwatch'} audit --data {out / 'test.npz'} "
        f"--thresholds {thresholds} --out {out / 'audit.jsonl'} --html {out / 'report.html'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
