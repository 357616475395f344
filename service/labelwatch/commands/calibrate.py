"""``labelwatch calibrate``: fit the per-class thresholds artifact from held-out data."""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

from labelwatch import datasets
from labelwatch.calibration import DEFAULT_FILTER_BY, ArtifactError, calibrate, save_artifact
from labelwatch.commands._offline import (
    DATA_HELP,
    add_class_names_argument,
    add_pooling_arguments,
    fail,
    pooling_name,
    pooling_settings,
)
from labelwatch.scoring import FilterBy

_CHUNK = 1 << 20  # bytes read at a time when hashing the model

_DESCRIPTION = f"""\
Fit the calibration artifact (per-class thresholds t0/t1, pooling settings and
calibration statistics) that `labelwatch serve` and `labelwatch audit
--thresholds` judge new examples against, one at a time.

DATA must hold held-out predictions: probabilities from a model that did not
train on these examples (a validation split, or cross-validation), with the
tags the annotators gave. With --model, the sha256 of that ONNX file is stored
in the artifact and `labelwatch serve` refuses any other model with it.
Exit status: 0 done, 2 bad arguments or data (one-line message on stderr),
1 the artifact cannot be written.

{DATA_HELP}"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``calibrate`` subcommand."""
    parser = subparsers.add_parser(
        "calibrate",
        help="fit the thresholds artifact from held-out labeled data",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data", required=True, type=Path, help="held-out labeled data, .npz or .jsonl."
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="artifact to write (JSON), e.g. thresholds.json."
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="the ONNX model that produced DATA's probabilities; only its sha256 is recorded.",
    )
    add_pooling_arguments(parser, defaults_shown="")
    parser.add_argument(
        "--filter-by",
        choices=[rule.value for rule in FilterBy],
        default=DEFAULT_FILTER_BY.value,
        help="flag rule recorded in the artifact: `labelwatch serve` flags tags with it "
        "unless its own --filter-by is given; docs/detection.md compares the rules "
        f"(default {DEFAULT_FILTER_BY.value}).",
    )
    add_class_names_argument(parser)
    parser.set_defaults(func=run)


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def run(args: argparse.Namespace) -> int:
    """Fit and save the artifact, print a short summary; return the exit code."""
    try:
        pooling, alpha, temperature = pooling_settings(args)
        expected = datasets.parse_class_names(args.class_names) if args.class_names else None
        data = datasets.load(args.data, class_names=expected)
        sha = None
        if args.model is not None:
            try:
                sha = file_sha256(args.model)
            except OSError as exc:
                raise ValueError(f"--model {args.model}: cannot read ({exc.strerror})") from exc
        artifact = calibrate(
            data.pred_probs,
            data.labels,
            data.class_names,
            model_sha256=sha,
            pooling=pooling,
            alpha=alpha,
            temperature=temperature,
            filter_by=FilterBy(args.filter_by),
        )
    except (ArtifactError, ValueError) as exc:  # DataError is a ValueError
        return fail("calibrate", str(exc))
    try:
        save_artifact(artifact, args.out)
    except OSError as exc:
        return fail("calibrate", f"cannot write {args.out}: {exc.strerror}", code=1)
    fit = artifact.fit
    print(
        f"calibrated on {data.n_examples} examples x {data.n_classes} classes "
        f"(pooling {pooling_name(pooling)}, alpha {alpha:g}, temperature {temperature:g}, "
        f"flag rule {artifact.filter_by.value})"
    )
    for counts, what, side, kind in (
        (fit.thresholds.n_pos, "never tagged", "t1", "MISSING"),
        (fit.thresholds.n_neg, "tagged on every example", "t0", "SPURIOUS"),
    ):
        empty = [data.class_names[k] for k in np.flatnonzero(counts == 0).tolist()]
        if empty:
            shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
            print(
                f"warning: {len(empty)} classes are {what} in DATA ({side} = 2.0, unreachable: "
                f"confident_learning never flags them {kind}): {shown}"
            )
    print(f"model sha256: {sha}" if sha else "model sha256: not recorded (no --model)")
    print(f"wrote {args.out}")
    sys.stdout.flush()
    return 0
