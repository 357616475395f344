"""Benchmark: how well the default model + calibrated artifacts find corrupted tags.

On the test split of the shipped debtags dataset, tags are corrupted with a known seed
(per-class 2x2 noise matrices: a tagged class is dropped with probability ``m[k]``, an
untagged class is added with probability ``s[k]``; at most ``--max-flips`` flips per
package). Then every package is scored with the shipped model exactly as ``labelwatch
serve`` would (``labelwatch.scoring.decide(fit, probs, labels, filter_by)``) with
artifacts fitted here on the calibration split (``labelwatch.calibration.calibrate``),
and, side by side, with cleanlab 2.9.0's batch setting (thresholds fitted on the
corrupted test data itself).

Reported, averaged over ``--seeds``:

* **rules compared** (``bench/detectbench``): every cleanlab rule on a context-free
  artifact, and the budget rule with tag context (m = 16) and without (m = 0) at each
  of ``--budgets``: flags per package on the split's *un-injected* tags, recall of the
  injected flips, precision@100/@500 of the review queue (flagged tags by error
  probability, else by label quality), package AUROC/AUPRC of ``label_quality``; the
  served default against the issue's targets; the same on a synthetic track with exact
  truth (independent and correlated noise) with the expected calibration error of
  ``error_probability`` (``--reliability-png`` draws its reliability diagram); and the
  CPU that tag context adds to ``decide`` per example (batch 64, K = 124);
* per pooling (EMA alpha 0.8, softmin T 0.1, mean, min of per-class self-confidence):
  AUROC and AUPRC of ``label_quality`` for "this package was corrupted";
* per cleanlab rule: precision and recall of class-level flags against the injected
  flips, recall of missing and of spurious flips, and the same at package level;
* for the ``--served-rule``: per-class recall of missing and spurious flips;
* the ``--show-real`` lowest-scoring test packages *without* injected noise (real errors),
  and the first ``--show-queue`` flagged tags of the served rule's review queue there.

The test split's own tags are noisy too: a flag on a real, un-injected error counts as a
false positive here, so precision is a lower bound.

::

    python bench/detection.py                  # ~3 min on 2 cores; markdown on stdout
    python bench/detection.py --json out.json --reliability-png docs/images/reliability.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "service"))
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "bench"))

import debtags_data  # noqa: E402
from cleanlab.multilabel_classification.filter import (  # noqa: E402
    find_label_issues as cl_find_label_issues,
)
from cleanlab.multilabel_classification.filter import (  # noqa: E402
    find_multilabel_issues_per_class,
)
from cleanlab.multilabel_classification.rank import get_label_quality_scores  # noqa: E402
from detectbench import compare, report  # noqa: E402
from detectbench.cost import Cost, decide_cost  # noqa: E402
from detectbench.metrics import ranking, review_order  # noqa: E402
from detectbench.tracks import (  # noqa: E402
    Noise,
    NoiseSpec,
    inject_noise,
    real_track,
    synthetic_calibration,
    synthetic_track,
)

from labelwatch.calibration import CalibrationArtifact, calibrate, load_artifact  # noqa: E402
from labelwatch.default_model import DEFAULT_MODEL, DEFAULT_THRESHOLDS  # noqa: E402
from labelwatch.model import OnnxModel  # noqa: E402
from labelwatch.scoring import CLEANLAB_RULES, CalibrationFit, FilterBy, Pooling, decide  # noqa: E402
from labelwatch.scoring.context import context_probabilities  # noqa: E402
from labelwatch.scoring.pooling import pool  # noqa: E402

Bools = NDArray[np.bool_]
Floats = NDArray[np.float64]
RuleFlags = tuple[Bools | None, Bools]  # class-level flags (n, K) if any, package flags (n,)

EMA_ALPHA = 0.8
SOFTMIN_T = 0.1
POOLINGS = ("ema", "softmin", "mean", "min")
CONTEXT_POOLINGS = tuple(f"{name} (context m={compare.DEFAULT_M})" for name in POOLINGS)
"""The same poolings over the tag-context self-confidence (online only)."""
# cleanlab's multi-label low_* rules flag packages, not classes
CLASS_LEVEL_BATCH_RULES = (
    FilterBy.CONFIDENT_LEARNING,
    FilterBy.PRUNE_BY_NOISE_RATE,
    FilterBy.PRUNE_BY_CLASS,
    FilterBy.BOTH,
    FilterBy.PREDICTED_NEQ_GIVEN,
)
PACKAGE_LEVEL_BATCH_RULES = (FilterBy.LOW_SELF_CONFIDENCE, FilterBy.LOW_NORMALIZED_MARGIN)


def self_confidence(probs: Floats, labels: Bools) -> Floats:
    """Per-class self-confidence ``(n, K)``: ``p`` where tagged, ``1 - p`` where not."""
    return np.where(labels, probs, 1.0 - probs)


def pooled_scores(
    probs: Floats, labels: Bools, fits: dict[str, CalibrationFit]
) -> dict[str, Floats]:
    """Label-quality ``(n,)`` per pooling; ema/softmin through the served ``decide``.

    With ``fits["context"]`` (a fit with a tag-context model) also every pooling of the
    context self-confidence (``q`` where tagged, ``1 - q`` where not).
    """
    sc = self_confidence(probs, labels)
    out = {
        name: decide(fits[name], probs, labels, FilterBy.CONFIDENT_LEARNING).label_quality
        for name in ("ema", "softmin")
    }
    out["mean"] = sc.mean(axis=1)
    out["min"] = sc.min(axis=1)
    context = fits.get("context")
    if context is not None and context.context is not None:
        sc = self_confidence(context_probabilities(context.context, probs, labels), labels)
        ema, softmin, mean, low = CONTEXT_POOLINGS
        out[ema] = pool(sc, Pooling.EMA, alpha=EMA_ALPHA)
        out[softmin] = pool(sc, Pooling.SOFTMIN, temperature=SOFTMIN_T)
        out[mean] = sc.mean(axis=1)
        out[low] = sc.min(axis=1)
    return out


def batch_scores(probs: Floats, labels: Bools) -> dict[str, Floats]:
    """cleanlab's ``get_label_quality_scores`` (self_confidence) per pooling, ``(n,)``."""
    lists = to_lists(labels)
    aggregators: dict[str, dict[str, Any]] = {
        "ema": {"method": "exponential_moving_average", "alpha": EMA_ALPHA},
        "softmin": {"method": "softmin", "temperature": SOFTMIN_T},
        "mean": {"method": np.mean},
        "min": {"method": np.min},
    }
    return {
        name: np.asarray(
            get_label_quality_scores(
                lists, probs, method="self_confidence", aggregator_kwargs=kwargs
            ),
            dtype=np.float64,
        )
        for name, kwargs in aggregators.items()
    }


def to_lists(labels: Bools) -> list[list[int]]:
    """cleanlab's multi-label format: the tagged class indices of each row."""
    return [np.flatnonzero(row).tolist() for row in labels]


def flag_quality(
    flags: Bools | None, pkg_flags: Bools, noise: Noise, before: Bools | None
) -> dict[str, float]:
    """Precision/recall of class-level ``flags`` ``(n, K)`` (if any) and of package flags.

    ``before``: the same rule's flags on the un-injected tags (reported as a count: most
    flags that miss an injected flip were already raised there, on the dataset's own tags).
    """
    corrupted = noise.flipped.any(axis=1)
    out: dict[str, float] = {
        "pkg_flagged": float(pkg_flags.mean()),
        "pkg_precision": _ratio(int((pkg_flags & corrupted).sum()), int(pkg_flags.sum())),
        "pkg_recall": _ratio(int((pkg_flags & corrupted).sum()), int(corrupted.sum())),
    }
    if flags is None or before is None:
        return out
    hit = flags & noise.flipped
    was_missing = noise.flipped & ~noise.labels  # dropped tag: now untagged
    was_spurious = noise.flipped & noise.labels  # added tag: now tagged
    out |= {
        "flags": float(flags.sum()),
        "flags_before": float(before.sum()),
        "precision": _ratio(int(hit.sum()), int(flags.sum())),
        "recall": _ratio(int(hit.sum()), int(noise.flipped.sum())),
        "recall_missing": _ratio(int((hit & was_missing).sum()), int(was_missing.sum())),
        "recall_spurious": _ratio(int((hit & was_spurious).sum()), int(was_spurious.sum())),
    }
    return out


def online_flags(fit: CalibrationFit, probs: Floats, labels: Bools) -> dict[str, RuleFlags]:
    """Every cleanlab rule's ``decide`` flags ``(n, K)`` and package flags ``(n,)``.

    Flags do not depend on the fit's pooling (the score rules rank by cleanlab's
    EMA either way), so one fit serves all rules.
    """
    out: dict[str, RuleFlags] = {}
    for rule in CLEANLAB_RULES:
        decision = decide(fit, probs, labels, rule)
        out[rule.value] = (decision.flags, decision.is_issue)
    return out


def batch_flags(probs: Floats, labels: Bools) -> dict[str, RuleFlags]:
    """cleanlab's batch flags: per class where cleanlab has them (else ``None``), per package."""
    lists = to_lists(labels)
    out: dict[str, RuleFlags] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for rule in CLASS_LEVEL_BATCH_RULES:
            per_class = np.asarray(
                find_multilabel_issues_per_class(lists, probs, filter_by=rule.value, n_jobs=1),
                dtype=bool,
            )
            out[rule.value] = (per_class, np.asarray(per_class.any(axis=1)))
        for rule in PACKAGE_LEVEL_BATCH_RULES:
            mask = np.asarray(
                cl_find_label_issues(lists, probs, filter_by=rule.value, n_jobs=1), dtype=bool
            )
            out[rule.value] = (None, mask)
    return out


def per_class_recall(flags: Bools, noise: Noise) -> tuple[Floats, Floats, Floats, Floats]:
    """Per class: missing flips, their recall, spurious flips, their recall (``(K,)`` each)."""
    hit = flags & noise.flipped
    was_missing = noise.flipped & ~noise.labels
    was_spurious = noise.flipped & noise.labels
    n_m = was_missing.sum(axis=0).astype(np.float64)
    n_s = was_spurious.sum(axis=0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        r_m = (hit & was_missing).sum(axis=0) / n_m
        r_s = (hit & was_spurious).sum(axis=0) / n_s
    return n_m, r_m, n_s, r_s


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def fits_per_pooling(
    cal_probs: Floats, cal_labels: Bools, artifact: CalibrationArtifact
) -> dict[str, CalibrationFit]:
    """The context-free softmin fit (``artifact``, fitted on the calibration split) and an
    EMA fit refitted from the same calibration data."""
    if artifact.fit.pooling is not Pooling.SOFTMIN or artifact.fit.context is not None:
        raise SystemExit("expected a context-free softmin artifact for the cleanlab rules")
    ema = calibrate(
        cal_probs,
        cal_labels,
        artifact.class_names,
        model_sha256=artifact.model_sha256,
        pooling=Pooling.EMA,
        alpha=EMA_ALPHA,
        temperature=SOFTMIN_T,
    )
    return {"softmin": artifact.fit, "ema": ema.fit}


def run_seed(
    probs: Floats,
    labels: Bools,
    fits: dict[str, CalibrationFit],
    spec: NoiseSpec,
    seed: int,
    served: compare.Variant,
    before: dict[str, dict[str, RuleFlags]],
) -> dict[str, Any]:
    """All numbers for one noise seed; ``before``: the flags on the un-injected tags."""
    noise = inject_noise(labels, spec, seed)
    corrupted = np.asarray(noise.flipped.any(axis=1))
    result: dict[str, Any] = {
        "corrupted_packages": float(corrupted.mean()),
        "flips": int(noise.flipped.sum()),
        "missing_flips": int((noise.flipped & labels).sum()),
        "spurious_flips": int((noise.flipped & ~labels).sum()),
    }
    online = pooled_scores(probs, noise.labels, fits)
    batch = batch_scores(probs, noise.labels)
    result["ranking"] = {
        name: {"online": ranking(online[name], corrupted), "batch": ranking(batch[name], corrupted)}
        for name in POOLINGS
    }
    for name in CONTEXT_POOLINGS:
        if name in online:
            result["ranking"][name] = {"online": ranking(online[name], corrupted)}
    for key, now in (
        ("online_flags", online_flags(fits["softmin"], probs, noise.labels)),
        ("batch_flags", batch_flags(probs, noise.labels)),
    ):
        result[key] = {
            rule: flag_quality(flags, pkg, noise, before[key][rule][0])
            for rule, (flags, pkg) in now.items()
        }
    flags = decide(
        served.artifact.fit, probs, noise.labels, served.rule, flag_budget=served.budget
    ).flags
    result["per_class"] = [arr.tolist() for arr in per_class_recall(flags, noise)]
    return result


def mean_sd(values: Sequence[float]) -> str:
    """``"0.881 ± 0.004"`` (sd over seeds; nan-safe)."""
    vals = [v for v in values if v == v]
    if not vals:
        return "n/a"
    mean = statistics.mean(vals)
    digits = 0 if abs(mean) >= 10 else 3  # counts vs rates
    if len(vals) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def collect(runs: Sequence[dict[str, Any]], *path: str) -> str:
    """Aggregate the number at ``run[path[0]][path[1]]...`` across seed runs."""
    vals = []
    for run in runs:
        node: Any = run
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            vals.append(float(node))
    return mean_sd(vals)


def markdown(
    runs: Sequence[dict[str, Any]],
    class_names: Sequence[str],
    served: compare.Variant,
    real: list[dict[str, Any]],
) -> str:
    """The report tables."""
    lines = [
        f"Seeds: {len(runs)}; corrupted packages "
        f"{collect(runs, 'corrupted_packages')}, flips per run "
        f"{collect(runs, 'flips')} (missing "
        f"{collect(runs, 'missing_flips')}, spurious "
        f"{collect(runs, 'spurious_flips')}).",
        "",
        "### Label quality ranking (package corrupted?)",
        "",
        "| pooling | AUROC online | AUPRC online | AUROC cleanlab batch | AUPRC cleanlab batch |",
        "|---|---|---|---|---|",
    ]
    for name in (*POOLINGS, *CONTEXT_POOLINGS):
        if name not in runs[0]["ranking"]:
            continue
        cells = [
            collect(runs, "ranking", name, mode, key)
            for mode in ("online", "batch")
            for key in ("auroc", "auprc")
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cols = (
        "precision",
        "recall",
        "recall_missing",
        "recall_spurious",
        "flags",
        "flags_before",
    )
    pkg_cols = ("pkg_flagged", "pkg_precision", "pkg_recall")
    header = (
        "| rule | class P | class R | R missing | R spurious | class flags "
        "| flags before | pkgs flagged | pkg P | pkg R |"
    )
    for title, key in (
        ("online (context-free artifact)", "online_flags"),
        ("cleanlab batch", "batch_flags"),
    ):
        lines += ["", f"### Flags: {title}", "", header, "|---" * 10 + "|"]
        for row in runs[0][key]:
            cells = [collect(runs, key, row, col) for col in cols + pkg_cols]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"### Per-class recall of the served rule ({served_label(served)}), summed over seeds",
        "",
        "| class | missing flips | R missing | spurious flips | R spurious |",
        "|---|---|---|---|---|",
    ]
    n_m = np.sum([r["per_class"][0] for r in runs], axis=0)
    n_s = np.sum([r["per_class"][2] for r in runs], axis=0)
    hit_m = np.nansum([np.multiply(r["per_class"][0], r["per_class"][1]) for r in runs], axis=0)
    hit_s = np.nansum([np.multiply(r["per_class"][2], r["per_class"][3]) for r in runs], axis=0)
    for k, name in enumerate(class_names):
        rm = f"{hit_m[k] / n_m[k]:.2f}" if n_m[k] else "n/a"
        rs = f"{hit_s[k] / n_s[k]:.2f}" if n_s[k] else "n/a"
        lines.append(f"| {name} | {int(n_m[k])} | {rm} | {int(n_s[k])} | {rs} |")
    lines += [
        "",
        f"### Lowest-scoring test packages, no injected noise ({served_label(served)})",
        "",
        "Suspected tags with the model's probability (and the error probability, if any).",
        "",
        "| # | package | score | given tags | suspected missing | suspected spurious |",
        "|---|---|---|---|---|---|",
    ]
    for i, item in enumerate(real, 1):
        lines.append(
            f"| {i} | {item['id']} | {item['score']:.3f} | {', '.join(item['given'])} | "
            f"{', '.join(item['missing']) or '-'} | {', '.join(item['spurious']) or '-'} |"
        )
    return "\n".join(lines)


def served_label(served: compare.Variant) -> str:
    """``budget m=16, budget 0.1`` or the cleanlab rule's name."""
    if served.budget is None:
        return served.rule.value
    return f"{served.name}, budget {served.budget:g}"


def queue_head(
    probs: Floats,
    labels: Bools,
    served: compare.Variant,
    split: debtags_data.Split,
    class_names: Sequence[str],
    count: int,
) -> list[str]:
    """The first ``count`` flagged tags of the served rule's review queue on the split's
    own tags (no injected noise), as markdown rows."""
    decision = decide(served.artifact.fit, probs, labels, served.rule, flag_budget=served.budget)
    order = review_order(decision, probs)[:count]
    k = labels.shape[1]
    lines = [
        f"### Head of the review queue, no injected noise ({served_label(served)})",
        "",
        f"{int(decision.flags.sum())} flagged tags in all; `+tag` = suspected missing, "
        "`-tag` = suspected spurious; p = the model's probability.",
        "",
        "| # | package | flag | p | error probability | given tags |",
        "|---|---|---|---|---|---|",
    ]
    error = decision.error_probability
    for rank, flat in enumerate(order.tolist(), 1):
        i, c = divmod(flat, k)
        sign = "-" if labels[i, c] else "+"
        ep = "n/a" if error is None else f"{error[i, c]:.2f}"
        given = ", ".join(class_names[j] for j in np.flatnonzero(labels[i]).tolist())
        lines.append(
            f"| {rank} | {split.ids[i]} | {sign}{class_names[c]} | {probs[i, c]:.3f} | {ep} "
            f"| {given} |"
        )
    return lines


def lowest_real(
    probs: Floats,
    labels: Bools,
    served: compare.Variant,
    split: debtags_data.Split,
    class_names: Sequence[str],
    count: int,
) -> list[dict[str, Any]]:
    """The ``count`` lowest-scoring packages under their real tags, with the served flags."""
    decision = decide(served.artifact.fit, probs, labels, served.rule, flag_budget=served.budget)
    order = np.argsort(decision.label_quality, kind="stable")[:count]
    error = decision.error_probability

    def shown(i: int, k: int) -> str:
        extra = "" if error is None else f", {error[i, k]:.2f}"
        return f"{class_names[k]} ({probs[i, k]:.2f}{extra})"

    out = []
    for i in order.tolist():
        out.append(
            {
                "id": split.ids[i],
                "score": float(decision.label_quality[i]),
                "given": [class_names[k] for k in np.flatnonzero(labels[i]).tolist()],
                "missing": [shown(i, k) for k in np.flatnonzero(decision.missing[i]).tolist()],
                "spurious": [shown(i, k) for k in np.flatnonzero(decision.spurious[i]).tolist()],
                "text": split.texts[i],
            }
        )
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    parser = argparse.ArgumentParser(
        description="Detection benchmark: inject tag noise into the debtags test split and "
        "measure how well the default model with each flag rule (cleanlab's rules online, "
        "the budget rule with and without tag context) and cleanlab's batch setting find "
        "it; then the same rules on a synthetic track with exact truth, and the serving "
        "cost of tag context. Artifacts are fitted here on the calibration split. Prints "
        "markdown tables.",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="noise seeds")
    parser.add_argument("--max-flips", type=int, default=NoiseSpec.max_flips)
    parser.add_argument(
        "--budgets",
        type=float,
        nargs="+",
        default=list(compare.BUDGETS),
        help="flag budgets (flagged tags per example) swept for the budget rule",
    )
    parser.add_argument(
        "--served-rule",
        choices=[f.value for f in FilterBy],
        default=FilterBy.BUDGET.value,
        help="flag rule whose per-class recall and real-error list are shown "
        "(budget: m=16 tag context at budget 0.1, the shipped default)",
    )
    parser.add_argument(
        "--synthetic-n",
        type=int,
        default=6000,
        help="examples per synthetic calibration set and trial (0: skip the synthetic track)",
    )
    parser.add_argument(
        "--no-cost", action="store_true", help="skip the CPU measurement of tag context"
    )
    parser.add_argument("--show-real", type=int, default=20, help="lowest-scoring real packages")
    parser.add_argument(
        "--show-queue",
        type=int,
        default=40,
        help="first flagged tags of the served rule's review queue on the real tags",
    )
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    parser.add_argument("--texts", type=Path, help="write the real packages' texts here (JSON)")
    parser.add_argument(
        "--reliability-png",
        type=Path,
        help="draw the synthetic track's reliability diagram of error_probability here "
        "(needs matplotlib: pip install '.[bench]')",
    )
    return parser.parse_args(argv)


def log(message: str, started: float) -> None:
    """Progress on stderr, with the seconds since start."""
    print(f"[{time.monotonic() - started:5.0f} s] {message}", file=sys.stderr, flush=True)


def synthetic_rows(
    n: int, seeds: Sequence[int], budgets: Sequence[float], started: float
) -> dict[str, list[compare.Row]]:
    """The rule comparison on the synthetic track, per noise kind; every trial calibrates
    on its own synthetic calibration set, so the spread includes the calibration's."""
    out = {}
    for correlated in (False, True):
        per_trial = []
        for seed in seeds:
            cal = synthetic_calibration(n, seed, correlated=correlated)
            artifacts = compare.fit_artifacts(cal.probs, cal.given, cal.class_names)
            track = synthetic_track(n, seed, correlated=correlated)
            per_trial.append(
                [compare.evaluate(v, track) for v in compare.variants(artifacts, budgets)]
            )
        kind = "correlated" if correlated else "independent"
        out[kind] = compare.merge(per_trial)
        log(f"synthetic track, {kind} noise", started)
    return out


def rows_json(rows: Sequence[compare.Row]) -> list[dict[str, Any]]:
    """The comparison rows as JSON-able dicts (NaN as null)."""
    return [
        {
            "rule": row.variant.name,
            "budget": row.variant.budget,
            "volume": report.nan_safe(row.volume),
            "trials": [{k: report.nan_safe(v) for k, v in t.items()} for t in row.trials],
            "reliability": None
            if row.reliability is None
            else {
                "count": row.reliability.count.tolist(),
                "prob_sum": row.reliability.prob_sum.tolist(),
                "wrong_sum": row.reliability.wrong_sum.tolist(),
            },
        }
        for row in rows
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    spec = dataclasses.replace(NoiseSpec(), max_flips=args.max_flips)
    for b in args.budgets:
        if not 0 < b <= 1:
            raise SystemExit(f"--budgets: {b} is outside (0, 1] flagged tags per example")

    started = time.monotonic()
    data = debtags_data.load()
    shipped = load_artifact(DEFAULT_THRESHOLDS)
    if tuple(shipped.class_names) != data.class_names:
        raise SystemExit("the shipped artifact's classes differ from the dataset's")
    model = OnnxModel(DEFAULT_MODEL)
    test, cal = data["test"], data["calibration"]
    probs = predict(model, test.texts)
    cal_probs = predict(model, cal.texts)
    log("model probabilities of the calibration and test splits", started)
    artifacts = compare.fit_artifacts(
        cal_probs, cal.labels, data.class_names, model_sha256=shipped.model_sha256
    )
    log("artifacts fitted on the calibration split (plain, budget m=0, budget m=16)", started)
    if not np.array_equal(artifacts["plain"].fit.thresholds.t1, shipped.fit.thresholds.t1):
        print("note: the shipped artifact's thresholds differ from the refit", file=sys.stderr)
    fits = fits_per_pooling(cal_probs, cal.labels, artifacts["plain"])
    fits["context"] = artifacts[f"budget m={compare.DEFAULT_M}"].fit
    if args.served_rule == FilterBy.BUDGET.value:
        name = f"budget m={compare.DEFAULT_M}"
        served = compare.Variant(name, artifacts[name], FilterBy.BUDGET, compare.DEFAULT_BUDGET)
    else:
        rule = FilterBy(args.served_rule)
        served = compare.Variant(rule.value, artifacts["plain"], rule)

    budgets = sorted({*args.budgets, compare.DEFAULT_BUDGET})  # the default's row always
    track = real_track(probs, test.labels, spec, args.seeds)
    real_rows = [compare.evaluate(v, track) for v in compare.variants(artifacts, budgets)]
    log("rules compared on the test split", started)
    synthetic: dict[str, list[compare.Row]] = {}
    if args.synthetic_n > 0:
        synthetic_budgets = sorted({*budgets, 0.2, 0.5})
        synthetic = synthetic_rows(args.synthetic_n, args.seeds, synthetic_budgets, started)
    cost: Cost | None = None
    if not args.no_cost:
        default = next(r.variant for r in real_rows if r.variant.is_default)
        plain = next(r.variant for r in real_rows if r.variant.rule is FilterBy.CONFIDENT_LEARNING)
        cost = decide_cost(default, plain, probs, test.labels)
        log("serving cost of tag context", started)

    before = {
        "online_flags": online_flags(fits["softmin"], probs, test.labels),
        "batch_flags": batch_flags(probs, test.labels),
    }
    runs = [run_seed(probs, test.labels, fits, spec, s, served, before) for s in args.seeds]
    real = lowest_real(probs, test.labels, served, test, data.class_names, args.show_real)
    log("cleanlab online and batch tables", started)
    print(report.comparison_markdown(real_rows, synthetic, cost, len(args.seeds)))
    print()
    print("## cleanlab rules: online and batch")
    print()
    print(markdown(runs, data.class_names, served, real))
    if args.show_queue > 0:
        print()
        head = queue_head(probs, test.labels, served, test, data.class_names, args.show_queue)
        print("\n".join(head))
    if args.reliability_png is not None and synthetic:
        from detectbench.plot import reliability_png

        panels = {
            kind: {
                r.variant.budget: r.reliability
                for r in rows
                if r.variant.name == f"budget m={compare.DEFAULT_M}"
                and r.variant.budget in (compare.DEFAULT_BUDGET, 0.2, 0.5)
                and r.reliability is not None
                and r.variant.budget is not None
            }
            for kind, rows in synthetic.items()
        }
        reliability_png(panels, args.reliability_png, default_budget=compare.DEFAULT_BUDGET)
        log(f"wrote {args.reliability_png}", started)
    log("done", started)
    if args.json is not None:
        doc = {
            "spec": dataclasses.asdict(spec),
            "runs": runs,
            "comparison": {
                "real": rows_json(real_rows),
                "synthetic": {kind: rows_json(rows) for kind, rows in synthetic.items()},
                "cost": None if cost is None else dataclasses.asdict(cost),
            },
        }
        args.json.write_text(json.dumps(doc, indent=1))
    if args.texts is not None:
        args.texts.write_text(json.dumps(real, indent=1, ensure_ascii=False))
    return 0


def predict(model: OnnxModel, texts: Sequence[str], batch: int = 64) -> Floats:
    """The server's model runner over ``texts`` in batches; ``(n, K)`` float64."""
    return np.vstack([model.predict(texts[i : i + batch]) for i in range(0, len(texts), batch)])


if __name__ == "__main__":
    sys.exit(main())
