"""``labelwatch calibrate``: fit the per-class thresholds artifact from held-out data."""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from labelwatch import datasets
from labelwatch.adaptation import labels_from_verdicts
from labelwatch.calibration import ArtifactError, calibrate, save_artifact
from labelwatch.commands._offline import (
    DATA_HELP,
    add_class_names_argument,
    add_pooling_arguments,
    fail,
    pooling_name,
    pooling_settings,
)
from labelwatch.outbox import Outbox, OutboxError
from labelwatch.scoring import FilterBy
from labelwatch.scoring.budget import DEFAULT_BUDGET, check_budget
from labelwatch.scoring.context import DEFAULT_CONTEXT_TAGS

_CHUNK = 1 << 20  # bytes read at a time when hashing the model

_DESCRIPTION = f"""\
Fit the calibration artifact (per-class thresholds t0/t1, pooling settings and
calibration statistics) that `labelwatch serve` and `labelwatch audit
--thresholds` judge new examples against, one at a time.

DATA must hold held-out predictions: probabilities from a model that did not
train on these examples (a validation split, or cross-validation), with the
tags the annotators gave.

By default it also cross-fits the tag-context model (per class, a logistic
regression on logit(p) and the M most informative other tags), the flag budget
curve (the `budget` rule: --flag-budget flagged tags per example on data like
DATA) and the calibrated error probability of every flag; --no-context leaves
them out (cleanlab's rules only, no error probabilities).

With --model, the sha256 of that ONNX file is stored in the artifact and
`labelwatch serve` refuses any other model with it.
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
        "--verdicts",
        type=Path,
        default=None,
        metavar="OUTBOX",
        help="a labelwatch outbox file: reviewers' CONFIRMED verdicts on flags of DATA's "
        "examples (matched by id) correct DATA's tags before fitting (majority per flag and "
        "class; docs/label-studio.md).",
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
        default=None,
        help="flag rule recorded in the artifact: `labelwatch serve` flags tags with it "
        "unless its own --filter-by is given; docs/detection.md compares the rules "
        f"(default {FilterBy.BUDGET.value}, or {FilterBy.CONFIDENT_LEARNING.value} "
        "with --no-context).",
    )
    parser.add_argument(
        "--flag-budget",
        type=float,
        default=DEFAULT_BUDGET,
        metavar="R",
        help="flagged (example, tag) pairs per example that the budget rule aims at on data "
        f"like DATA, in (0, number of classes] (default {DEFAULT_BUDGET}; serve, consume and "
        "audit can override it).",
    )
    parser.add_argument(
        "--context-tags",
        type=int,
        default=DEFAULT_CONTEXT_TAGS,
        metavar="M",
        help="other tags per class the tag-context model looks at, >= 0 (default "
        f"{DEFAULT_CONTEXT_TAGS}; 0: the model's probability alone, recalibrated per class).",
    )
    parser.add_argument(
        "--no-context",
        action="store_true",
        help="fit no tag-context model: no budget rule, no error probabilities, label "
        "quality from the model's probabilities (an artifact older labelwatch versions "
        "would also serve the same way).",
    )
    parser.add_argument(
        "--label-quality-from",
        choices=("context", "model"),
        default=None,
        help="probabilities the label-quality score pools: the tag-context model's "
        "(default with context) or the model's own (cleanlab's score; default with "
        "--no-context).",
    )
    add_class_names_argument(parser)
    parser.set_defaults(func=run)


def check_budget_flag(budget: float, n_classes: int) -> float:
    """``budget`` if in (0, K], else ``ValueError`` naming ``--flag-budget``."""
    try:
        return check_budget(budget, n_classes)
    except ValueError as exc:
        raise ValueError(f"--flag-budget: {exc}") from None


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _with_verdicts(path: Path, data: datasets.LabeledData) -> NDArray[np.bool_]:
    """DATA's labels corrected by the verdicts in the outbox at ``path`` (ValueError if
    it cannot be read)."""
    outbox = Outbox(path, create=False, busy_timeout_seconds=30.0)
    try:
        if not outbox.writable and outbox.last_error:
            raise ValueError(f"--verdicts: {outbox.last_error}")
        labels, changed = labels_from_verdicts(outbox, data.ids, data.class_names, data.labels)
    except OutboxError as exc:
        raise ValueError(f"--verdicts: {exc}") from exc
    finally:
        outbox.close()
    print(f"verdicts: {changed} tags of DATA corrected by reviewers' confirmed flags in {path}")
    return labels


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
        context = None if args.no_context else args.context_tags
        if context is not None and context < 0:
            raise ValueError(f"--context-tags must be >= 0, got {context}")
        source = args.label_quality_from or ("model" if context is None else "context")
        default_rule = FilterBy.CONFIDENT_LEARNING if context is None else FilterBy.BUDGET
        rule = FilterBy(args.filter_by) if args.filter_by else default_rule
        if context is None and (rule is FilterBy.BUDGET or source == "context"):
            raise ValueError(
                "--no-context leaves out the tag-context model that --filter-by budget and "
                "--label-quality-from context need"
            )
        check_budget_flag(args.flag_budget, data.n_classes)
        labels = data.labels
        if args.verdicts is not None:
            labels = _with_verdicts(args.verdicts, data)
        artifact = calibrate(
            data.pred_probs,
            labels,
            data.class_names,
            model_sha256=sha,
            pooling=pooling,
            alpha=alpha,
            temperature=temperature,
            filter_by=rule,
            context_tags=context,
            flag_budget=args.flag_budget,
            context_quality=source == "context",
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
    if fit.context is not None and fit.budget is not None:
        print(
            f"tag context: {fit.context.m} tags per class, cross-fitted; flag budget "
            f"{fit.budget.default:g} per example (error-score cut-off "
            f"{fit.budget.cutoff():.4f}); label quality from "
            f"{'the tag-context model' if fit.context_quality else 'the model'}"
        )
    print(f"model sha256: {sha}" if sha else "model sha256: not recorded (no --model)")
    print(f"wrote {args.out}")
    sys.stdout.flush()
    return 0
