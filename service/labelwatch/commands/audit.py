"""``labelwatch audit``: score a whole labeled dataset offline, write a JSONL (and HTML) report."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
from numpy.typing import NDArray

from labelwatch import datasets, report_html
from labelwatch.annotators import QualityReport, annotator_quality, interval_of, page
from labelwatch.calibration import ArtifactError, CalibrationArtifact, load_artifact
from labelwatch.commands._offline import (
    DATA_HELP,
    Progress,
    add_class_names_argument,
    add_pooling_arguments,
    fail,
    pooling_name,
    pooling_settings,
)
from labelwatch.commands.calibrate import check_budget_flag
from labelwatch.outbox import AnnotatorCounts
from labelwatch.scoring import (
    FilterBy,
    Pooling,
    decide,
    find_label_issues,
    fit_thresholds,
    label_quality_scores,
)
from labelwatch.scoring.budget import DEFAULT_BUDGET
from labelwatch.scoring.context import DEFAULT_CONTEXT_TAGS
from labelwatch.scoring.cutoffs import Basis, Cutoffs, batch_cutoffs, online_cutoffs
from labelwatch.scoring.online import decide_cross_fitted, fit_calibration_with_scores

BATCH_DEFAULT_RULE = FilterBy.PRUNE_BY_NOISE_RATE  # cleanlab's default

_DESCRIPTION = f"""\
Score every example of a labeled dataset and report suspected label issues.

Two modes:
  without --thresholds  the batch setting of cleanlab: per-class thresholds are
                        fitted on DATA itself, flags are
                        cleanlab.multilabel_classification.filter.find_label_issues
                        (--filter-by, default {BATCH_DEFAULT_RULE.value}) and
                        scores are ...rank.get_label_quality_scores; the output
                        equals cleanlab's.
  with --thresholds     the online rule of `labelwatch serve`: each example is
                        judged against an artifact from `labelwatch calibrate`
                        (--filter-by default: the artifact's rule, as in
                        serve); DATA's classes must match the artifact's, and
                        pooling comes from the artifact.

--out gets one JSON object a line, in input order:
  {{"index": 0, "id": "a1", "label_quality": 0.41, "is_issue": true,
   "issues": [{{"label": "dog", "class_index": 1, "kind": "MISSING",
               "probability": 0.93, "threshold": 0.71,
               "decided_by": "confident_threshold"}}]}}
label_quality is in [0, 1], lower = more likely mislabeled. "probability" is
the model's p[k] of the class; "threshold" is the bound on the same p scale
that the rule used for this class: a MISSING flag has p >= threshold, a
SPURIOUS flag p <= threshold. "decided_by" says which bound it is:
  confident_threshold  confident_learning: t1[k] for MISSING, 1 - t0[k] for
                       SPURIOUS (t1[k] is the mean p of the examples tagged k,
                       t0[k] the mean 1 - p of the others; within 1e-6)
  rank_cutoff          prune_by_noise_rate, prune_by_class, both: these flag
                       the m most suspicious pairs of each class and side; the
                       threshold is the p of the last pair taken (with
                       --thresholds: the calibration's cut-off)
  argmax               predicted_neq_given: 0.5
  example_score        low_self_confidence, low_normalized_margin: no
                       threshold (null); the example's "score" (self-confidence
                       pooled by EMA, alpha 0.8) is <= "score_cutoff"
  none                 a rule that decides by something else than a bound on p:
                       threshold null

A per-class table (class, tagged, t0, t1, flagged missing, flagged spurious)
goes to stdout; when DATA names annotators ("annotator_id" in JSONL,
annotator_ids in .npz), a per-annotator table follows (examples, flagged, and
an error-rate estimate shrunk towards the global rate, flags taken at face
value; the 20 highest first). Exit status: 0 done, 2 bad arguments, data or artifact
(one-line message on stderr), 1 the report cannot be written.

{DATA_HELP}"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``audit`` subcommand."""
    parser = subparsers.add_parser(
        "audit",
        help="score a labeled dataset offline and report suspected label issues",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, type=Path, help="labeled data, .npz or .jsonl.")
    parser.add_argument(
        "--thresholds",
        type=Path,
        default=None,
        help="calibration artifact (JSON) from `labelwatch calibrate`; selects the online rule.",
    )
    parser.add_argument(
        "--filter-by",
        choices=[rule.value for rule in FilterBy],
        default=None,
        metavar="RULE",
        help=f"flag rule, one of: {', '.join(rule.value for rule in FilterBy)} (default "
        f"{BATCH_DEFAULT_RULE.value}, or the artifact's rule with --thresholds).",
    )
    parser.add_argument(
        "--flag-budget",
        type=float,
        default=None,
        metavar="R",
        help="for the budget rule: flagged (example, tag) pairs per example (default: the "
        f"artifact's, or {DEFAULT_BUDGET} without --thresholds, where the tag-context model "
        "is cross-fitted on DATA itself).",
    )
    add_pooling_arguments(parser, defaults_shown="without --thresholds ")
    add_class_names_argument(parser)
    parser.add_argument("--out", required=True, type=Path, help="JSONL report to write.")
    parser.add_argument(
        "--html", type=Path, default=None, help="also write a self-contained HTML report here."
    )
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class Audit:
    """A scored dataset.

    ``flags`` ``(N, K)`` bool; ``label_quality`` ``(N,)`` in ``[0, 1]``; ``t0``/``t1``
    ``(K,)`` the thresholds used; ``mode`` says batch or online, for the reports.
    """

    data: datasets.LabeledData
    flags: NDArray[np.bool_]
    label_quality: NDArray[np.float64]
    t0: NDArray[np.float64]
    t1: NDArray[np.float64]
    rule: FilterBy
    mode: str
    cutoffs: Cutoffs
    error_probability: NDArray[np.float64] | None = None


def run(args: argparse.Namespace) -> int:
    """Load, score, write the reports, print the summary; return the exit code."""
    progress = Progress("audit")
    try:
        artifact = load_artifact(args.thresholds) if args.thresholds else None
        expected = _expected_class_names(args, artifact)
        progress.stage(f"loading {args.data}")
        data = datasets.load(args.data, class_names=expected, progress=progress.fraction)
        progress.done()
        progress.set_total(data.n_examples)
        progress.stage(f"scoring {data.n_examples} examples x {data.n_classes} classes")
        audit = score(data, args, artifact)
        progress.done()
    except (ArtifactError, ValueError) as exc:  # DataError is a ValueError
        progress.clear()
        return fail("audit", str(exc))
    try:
        progress.stage(f"writing {args.out}")
        with args.out.open("w", encoding="utf-8") as out:
            write_jsonl(audit, out, progress)
        progress.done()
        if args.html:
            meta = {"data": str(args.data), "mode": audit.mode, "rule": audit.rule.value}
            queue = review_queue_line(audit)
            if queue:
                meta["review queue"] = queue
            page = report_html.render(
                data, audit.flags, audit.label_quality, audit.t0, audit.t1, meta, audit.cutoffs
            )
            args.html.write_text(page, encoding="utf-8")
    except OSError as exc:
        progress.clear()
        return fail("audit", f"cannot write {exc.filename}: {exc.strerror}", code=1)
    print_summary(audit, sys.stdout)
    extra = f" and {args.html}" if args.html else ""
    print(f"wrote {args.out}{extra}")
    return 0


def _expected_class_names(
    args: argparse.Namespace, artifact: CalibrationArtifact | None
) -> tuple[str, ...] | None:
    given = datasets.parse_class_names(args.class_names) if args.class_names else None
    if artifact is None:
        return given
    if given is not None and given != tuple(artifact.class_names):
        raise datasets.DataError(
            f"--class-names differ from the classes of {args.thresholds}; drop --class-names"
        )
    return tuple(artifact.class_names)


def score(
    data: datasets.LabeledData, args: argparse.Namespace, artifact: CalibrationArtifact | None
) -> Audit:
    """Flags and scores for ``data``: batch (cleanlab) mode, or online with ``artifact``."""
    budget = getattr(args, "flag_budget", None)
    if artifact is None:
        rule = FilterBy(args.filter_by or BATCH_DEFAULT_RULE)
        pooling, alpha, temperature = pooling_settings(args)
        if rule is FilterBy.BUDGET:
            return _batch_budget(data, budget, pooling, alpha, temperature)
        if budget is not None:
            raise ValueError("--flag-budget applies to the budget rule only (--filter-by budget)")
        thresholds = fit_thresholds(data.pred_probs, data.labels)
        flags = find_label_issues(data.pred_probs, data.labels, filter_by=rule)
        quality = label_quality_scores(
            data.pred_probs, data.labels, pooling=pooling, alpha=alpha, temperature=temperature
        )
        mode = f"batch (cleanlab), pooling {pooling_name(pooling)}"
        cutoffs = batch_cutoffs(data.pred_probs, data.labels, rule)
        return Audit(data, flags, quality, thresholds.t0, thresholds.t1, rule, mode, cutoffs)
    for flag in ("pooling", "alpha", "temperature"):
        if getattr(args, flag) is not None:
            raise ValueError(
                f"--{flag} is fixed at calibration time and stored in {args.thresholds}; "
                f"drop --{flag} or re-run `labelwatch calibrate --{flag} ...`"
            )
    rule = FilterBy(args.filter_by) if args.filter_by else artifact.filter_by
    fit = artifact.fit
    if budget is not None:
        if rule is not FilterBy.BUDGET:
            raise ValueError("--flag-budget applies to the budget rule only (--filter-by budget)")
        check_budget_flag(budget, data.n_classes)
    decision = decide(fit, data.pred_probs, data.labels, rule, flag_budget=budget)
    mode = f"online, thresholds from {args.thresholds}, pooling {pooling_name(fit.pooling)}"
    return Audit(
        data,
        decision.flags,
        decision.label_quality,
        fit.thresholds.t0,
        fit.thresholds.t1,
        rule,
        mode,
        online_cutoffs(fit, data.pred_probs, data.labels, rule),
        decision.error_probability,
    )


def _batch_budget(
    data: datasets.LabeledData,
    budget: float | None,
    pooling: Pooling,
    alpha: float,
    temperature: float,
) -> Audit:
    """The budget rule on DATA alone: every example judged by models cross-fitted without it."""
    chosen = check_budget_flag(DEFAULT_BUDGET if budget is None else budget, data.n_classes)
    fit, errors = fit_calibration_with_scores(
        data.pred_probs,
        data.labels,
        pooling=pooling,
        alpha=alpha,
        temperature=temperature,
        context_tags=DEFAULT_CONTEXT_TAGS,
        flag_budget=chosen,
        context_quality=True,
    )
    assert errors is not None
    decision = decide_cross_fitted(fit, errors, data.labels)
    th = fit.thresholds
    mode = (
        f"batch, tag context cross-fitted on DATA, budget {chosen:g}, "
        f"pooling {pooling_name(pooling)}"
    )
    return Audit(
        data,
        decision.flags,
        decision.label_quality,
        th.t0,
        th.t1,
        FilterBy.BUDGET,
        mode,
        batch_cutoffs(data.pred_probs, data.labels, FilterBy.BUDGET),
        decision.error_probability,
    )


def review_precision(audit: Audit, k: int) -> float | None:
    """Expected precision of the first ``k`` flags in review order: the mean error
    probability of the ``k`` flagged tags most likely wrong (``None``: no probabilities)."""
    if audit.error_probability is None:
        return None
    values = audit.error_probability[audit.flags]
    if values.size == 0:
        return None
    top = np.sort(values)[::-1][:k]
    return float(top.mean())


def issues_of(audit: Audit, i: int) -> list[dict[str, object]]:
    """The ``issues`` list of example ``i`` (see ``--help`` for the fields)."""
    data = audit.data
    cutoffs = audit.cutoffs
    out: list[dict[str, object]] = []
    for k in np.flatnonzero(audit.flags[i]).tolist():
        spurious = bool(data.labels[i, k])
        issue: dict[str, object] = {
            "label": data.class_names[k],
            "class_index": k,
            "kind": "SPURIOUS" if spurious else "MISSING",
            "probability": float(data.pred_probs[i, k]),
            "threshold": None,
            "decided_by": cutoffs.basis.value,
            "error_probability": (
                None if audit.error_probability is None else float(audit.error_probability[i, k])
            ),
        }
        if cutoffs.basis is Basis.EXAMPLE_SCORE:
            assert cutoffs.scores is not None
            issue["score"] = float(cutoffs.scores[i])
            issue["score_cutoff"] = cutoffs.score_cutoff
        elif cutoffs.basis is not Basis.NONE:
            issue["threshold"] = float(cutoffs.p[k, int(spurious)])
        out.append(issue)
    return out


def write_jsonl(audit: Audit, out: TextIO, progress: Progress | None = None) -> None:
    """Write one JSON object per example, in input order."""
    is_issue: NDArray[np.bool_] = np.asarray(audit.flags.any(axis=1))
    quality = audit.label_quality.tolist()
    for i, id_ in enumerate(audit.data.ids):
        flagged = bool(is_issue[i])
        row = {
            "index": i,
            "id": id_,
            "label_quality": quality[i],
            "is_issue": flagged,
            "issues": issues_of(audit, i) if flagged else [],
        }
        out.write(json.dumps(row, ensure_ascii=False))
        out.write("\n")
        if progress is not None and i % 4096 == 0:
            progress.update(i)
    if progress is not None:
        progress.update(audit.data.n_examples)


def summary_rows(audit: Audit) -> list[tuple[str, int, float, float, int, int]]:
    """Per class: ``(name, tagged, t0, t1, flagged missing, flagged spurious)``."""
    labels = audit.data.labels
    tagged = labels.sum(axis=0).tolist()
    missing = (audit.flags & ~labels).sum(axis=0).tolist()
    spurious = (audit.flags & labels).sum(axis=0).tolist()
    return [
        (name, tagged[k], float(audit.t0[k]), float(audit.t1[k]), missing[k], spurious[k])
        for k, name in enumerate(audit.data.class_names)
    ]


def print_summary(audit: Audit, out: TextIO) -> None:
    """Print the per-class table and a one-line total to ``out``."""
    rows = summary_rows(audit)
    width = min(max([5, *(len(r[0]) for r in rows)]), 40)
    header = ("class", "tagged", "t0", "t1", "missing", "spurious")
    print(f"{header[0]:<{width}}  " + "  ".join(f"{h:>8}" for h in header[1:]), file=out)
    for name, tagged, t0, t1, missing, spurious in rows:
        shown = name if len(name) <= width else name[: width - 1] + "~"
        print(
            f"{shown:<{width}}  {tagged:>8}  {t0:>8.4f}  {t1:>8.4f}  {missing:>8}  {spurious:>8}",
            file=out,
        )
    n = audit.data.n_examples
    n_issue = int(audit.flags.any(axis=1).sum())
    print(
        f"{n} examples, {n_issue} with an issue ({100 * n_issue / n:.2f}%); "
        f"rule {audit.rule.value}; {audit.mode}",
        file=out,
    )
    queue = review_queue_line(audit)
    if queue:
        print(queue, file=out)
    print_annotators(audit, out)


ANNOTATOR_ROWS = 20
"""Annotators shown by :func:`print_annotators` (the highest estimated error rates)."""


def annotator_rows(audit: Audit) -> QualityReport | None:
    """Per-annotator quality of the audited data (None: the data names no annotator)."""
    who = audit.data.annotator_ids
    if who is None:
        return None
    hits = np.asarray(audit.flags.any(axis=1), dtype=np.bool_).tolist()
    flagged: list[bool] = [bool(x) for x in hits]
    tally: dict[str, list[int]] = {}
    for name, hit in zip(who, flagged, strict=True):
        if name:
            row = tally.setdefault(name, [0, 0])
            row[0] += 1
            row[1] += int(bool(hit))
    counts = [AnnotatorCounts(name, s, f, 0, 0) for name, (s, f) in sorted(tally.items())]
    return annotator_quality(counts)


def print_annotators(audit: Audit, out: TextIO) -> None:
    """Print the per-annotator table (nothing when the data names no annotator)."""
    report = annotator_rows(audit)
    if report is None or not report.annotators:
        return
    rows, _ = page(report, order_by="error_rate", descending=True, offset=0, limit=ANNOTATOR_ROWS)
    width = min(max([9, *(len(q.annotator_id) for q in rows)]), 32)
    print(file=out)
    print(
        f"{'annotator':<{width}}  {'examples':>8}  {'flagged':>8}  {'raw rate':>8}  "
        f"{'est rate':>8}  95% interval",
        file=out,
    )
    for q in rows:
        r = interval_of(q, report)
        print(
            f"{q.annotator_id[:width]:<{width}}  {q.scored:>8}  {q.flagged:>8}  "
            f"{q.raw_rate:>8.4f}  {r.estimate:>8.4f}  [{r.lower:.4f}, {r.upper:.4f}]",
            file=out,
        )
    print(
        f"{len(report.annotators)} annotators; rates are flagged examples per example, shrunk "
        f"towards the global {report.global_rate:.4f} for annotators with few examples",
        file=out,
    )


def review_queue_line(audit: Audit) -> str | None:
    """Flag volume and expected precision@100/@500 of the review queue (None: no error
    probabilities, or nothing flagged)."""
    n_flags = int(audit.flags.sum())
    at = [(k, review_precision(audit, k)) for k in (100, 500)]
    if not n_flags or any(p is None for _, p in at):
        return None
    shown = ", ".join(f"@{k} {p:.2f}" for k, p in at)
    return (
        f"{n_flags} flagged tags ({n_flags / audit.data.n_examples:.3f} per example); expected "
        f"precision of the review queue (mean error probability of the most likely flags): "
        f"{shown}"
    )
