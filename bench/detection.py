"""Benchmark: how well the default model + calibrated thresholds find corrupted tags.

On the test split of the shipped debtags dataset, tags are corrupted with a known seed
(per-class 2x2 noise matrices: a tagged class is dropped with probability ``m[k]``, an
untagged class is added with probability ``s[k]``; at most ``--max-flips`` flips per
package). Then every package is scored with the shipped model and thresholds exactly as
``labelwatch serve`` would (``labelwatch.scoring.decide(artifact.fit, probs, labels,
filter_by)``) and, side by side, with cleanlab 2.9.0's batch setting (thresholds fitted
on the corrupted test data itself).

Reported, averaged over ``--seeds``:

* per pooling (EMA alpha 0.8, softmin T 0.1, mean, min of per-class self-confidence):
  AUROC and AUPRC of ``label_quality`` for "this package was corrupted";
* per flag rule: precision and recall of class-level flags against the injected flips,
  recall of missing and of spurious flips, and the same at package level;
* for the served rule: per-class recall of missing and spurious flips;
* the ``--show-real`` lowest-scoring test packages *without* injected noise (real errors).

The test split's own tags are noisy too: a flag on a real, un-injected error counts as a
false positive here, so precision is a lower bound.

::

    python bench/detection.py                  # ~1 min; markdown on stdout
    python bench/detection.py --json out.json  # also the raw numbers
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "service"))
sys.path.insert(0, str(REPO / "scripts"))

import debtags_data  # noqa: E402
from cleanlab.multilabel_classification.filter import (  # noqa: E402
    find_label_issues as cl_find_label_issues,
)
from cleanlab.multilabel_classification.filter import (  # noqa: E402
    find_multilabel_issues_per_class,
)
from cleanlab.multilabel_classification.rank import get_label_quality_scores  # noqa: E402
from sklearn.metrics import average_precision_score, roc_auc_score  # noqa: E402

from labelwatch.calibration import CalibrationArtifact, calibrate, load_artifact  # noqa: E402
from labelwatch.default_model import DEFAULT_MODEL, DEFAULT_THRESHOLDS  # noqa: E402
from labelwatch.model import OnnxModel  # noqa: E402
from labelwatch.scoring import CalibrationFit, FilterBy, Pooling, decide  # noqa: E402

Bools = NDArray[np.bool_]
Floats = NDArray[np.float64]
RuleFlags = tuple[Bools | None, Bools]  # class-level flags (n, K) if any, package flags (n,)

EMA_ALPHA = 0.8
SOFTMIN_T = 0.1
POOLINGS = ("ema", "softmin", "mean", "min")
# cleanlab's multi-label low_* rules flag packages, not classes
CLASS_LEVEL_BATCH_RULES = (
    FilterBy.CONFIDENT_LEARNING,
    FilterBy.PRUNE_BY_NOISE_RATE,
    FilterBy.PRUNE_BY_CLASS,
    FilterBy.BOTH,
    FilterBy.PREDICTED_NEQ_GIVEN,
)
PACKAGE_LEVEL_BATCH_RULES = (FilterBy.LOW_SELF_CONFIDENCE, FilterBy.LOW_NORMALIZED_MARGIN)


@dataclass(frozen=True)
class NoiseSpec:
    """Ranges the per-class rates are drawn from (uniformly), and the per-package cap.

    ``missing``: P(tag dropped | class tagged). ``spurious``: expected added tags of a class
    as a fraction of its tagged packages, i.e. P(tag added | untagged) = q * prev / (1 - prev).
    """

    missing: tuple[float, float] = (0.01, 0.06)
    spurious: tuple[float, float] = (0.01, 0.05)
    max_flips: int = 3


@dataclass(frozen=True)
class Noise:
    """Corrupted labels ``(n, K)``, the flip mask ``(n, K)`` and the drawn rates ``(K,)``."""

    labels: Bools
    flipped: Bools
    p_missing: Floats
    p_spurious: Floats


def inject_noise(labels: Bools, spec: NoiseSpec, seed: int) -> Noise:
    """Flip tags per class with a 2x2 noise matrix; cap flips per package (random keep)."""
    rng = np.random.default_rng(seed)
    n, k = labels.shape
    prevalence = labels.mean(axis=0).clip(1e-9, 1 - 1e-9)
    p_missing = rng.uniform(*spec.missing, size=k)
    q = rng.uniform(*spec.spurious, size=k)
    p_spurious = np.clip(q * prevalence / (1 - prevalence), 0.0, 1.0)
    draws = rng.random((n, k))
    flipped = np.where(labels, draws < p_missing, draws < p_spurious)
    for i in np.flatnonzero(flipped.sum(axis=1) > spec.max_flips):
        keep = rng.choice(np.flatnonzero(flipped[i]), size=spec.max_flips, replace=False)
        flipped[i] = False
        flipped[i, keep] = True
    return Noise(labels ^ flipped, flipped, np.asarray(p_missing), np.asarray(p_spurious))


def self_confidence(probs: Floats, labels: Bools) -> Floats:
    """Per-class self-confidence ``(n, K)``: ``p`` where tagged, ``1 - p`` where not."""
    return np.where(labels, probs, 1.0 - probs)


def pooled_scores(
    probs: Floats, labels: Bools, fits: dict[str, CalibrationFit]
) -> dict[str, Floats]:
    """Label-quality ``(n,)`` per pooling; ema/softmin through the served ``decide``."""
    sc = self_confidence(probs, labels)
    out = {
        name: decide(fits[name], probs, labels, FilterBy.CONFIDENT_LEARNING).label_quality
        for name in ("ema", "softmin")
    }
    out["mean"] = sc.mean(axis=1)
    out["min"] = sc.min(axis=1)
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


def ranking(scores: Floats, corrupted: Bools) -> dict[str, float]:
    """AUROC / AUPRC of ``-scores`` (low label quality = suspicious) for ``corrupted``."""
    return {
        "auroc": float(roc_auc_score(corrupted, -scores)),
        "auprc": float(average_precision_score(corrupted, -scores)),
    }


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
    """Every rule's ``decide`` flags ``(n, K)`` and package flags ``(n,)``.

    Flags do not depend on the fit's pooling (the score rules rank by cleanlab's
    EMA either way), so one fit serves all rules.
    """
    out: dict[str, RuleFlags] = {}
    for rule in FilterBy:
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
    """The served fit (softmin) and an EMA fit refitted from the same calibration data."""
    if artifact.fit.pooling is not Pooling.SOFTMIN:
        raise SystemExit(f"shipped artifact pools with {artifact.fit.pooling}, expected softmin")
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
    served_rule: FilterBy,
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
    for key, now in (
        ("online_flags", online_flags(fits["softmin"], probs, noise.labels)),
        ("batch_flags", batch_flags(probs, noise.labels)),
    ):
        result[key] = {
            rule: flag_quality(flags, pkg, noise, before[key][rule][0])
            for rule, (flags, pkg) in now.items()
        }
    served = decide(fits["softmin"], probs, noise.labels, served_rule)
    result["per_class"] = [arr.tolist() for arr in per_class_recall(served.flags, noise)]
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
    served_rule: FilterBy,
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
    for name in POOLINGS:
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
        ("online (served artifact)", "online_flags"),
        ("cleanlab batch", "batch_flags"),
    ):
        lines += ["", f"### Flags: {title}", "", header, "|---" * 10 + "|"]
        for row in runs[0][key]:
            cells = [collect(runs, key, row, col) for col in cols + pkg_cols]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"### Per-class recall of the served rule ({served_rule.value}), summed over seeds",
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
        "### Lowest-scoring test packages, no injected noise",
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


def lowest_real(
    probs: Floats,
    labels: Bools,
    fit: CalibrationFit,
    rule: FilterBy,
    split: debtags_data.Split,
    class_names: Sequence[str],
    count: int,
) -> list[dict[str, Any]]:
    """The ``count`` lowest-scoring packages under their real tags, with the served flags."""
    decision = decide(fit, probs, labels, rule)
    order = np.argsort(decision.label_quality, kind="stable")[:count]
    out = []
    for i in order.tolist():
        out.append(
            {
                "id": split.ids[i],
                "score": float(decision.label_quality[i]),
                "given": [class_names[k] for k in np.flatnonzero(labels[i]).tolist()],
                "missing": [
                    f"{class_names[k]} ({probs[i, k]:.2f})"
                    for k in np.flatnonzero(decision.missing[i]).tolist()
                ],
                "spurious": [
                    f"{class_names[k]} ({probs[i, k]:.2f})"
                    for k in np.flatnonzero(decision.spurious[i]).tolist()
                ],
                "text": split.texts[i],
            }
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Detection benchmark: inject tag noise into the debtags test split and "
        "measure how well the default model + thresholds (online) and cleanlab's batch "
        "setting find it. Prints markdown tables.",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="noise seeds")
    parser.add_argument("--max-flips", type=int, default=NoiseSpec.max_flips)
    parser.add_argument(
        "--served-rule",
        choices=[f.value for f in FilterBy],
        default=FilterBy.CONFIDENT_LEARNING.value,
        help="flag rule whose per-class recall and real-error list are shown",
    )
    parser.add_argument("--show-real", type=int, default=20, help="lowest-scoring real packages")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    parser.add_argument("--texts", type=Path, help="write the real packages' texts here (JSON)")
    args = parser.parse_args(argv)
    served_rule = FilterBy(args.served_rule)
    spec = dataclasses.replace(NoiseSpec(), max_flips=args.max_flips)

    started = time.monotonic()
    data = debtags_data.load()
    artifact = load_artifact(DEFAULT_THRESHOLDS)
    if tuple(artifact.class_names) != data.class_names:
        raise SystemExit("the shipped artifact's classes differ from the dataset's")
    model = OnnxModel(DEFAULT_MODEL)
    test, cal = data["test"], data["calibration"]
    probs = predict(model, test.texts)
    cal_probs = predict(model, cal.texts)
    fits = fits_per_pooling(cal_probs, cal.labels, artifact)

    before = {
        "online_flags": online_flags(fits["softmin"], probs, test.labels),
        "batch_flags": batch_flags(probs, test.labels),
    }
    runs = [run_seed(probs, test.labels, fits, spec, s, served_rule, before) for s in args.seeds]
    real = lowest_real(
        probs, test.labels, fits["softmin"], served_rule, test, data.class_names, args.show_real
    )
    print(markdown(runs, data.class_names, served_rule, real))
    print(f"\n(took {time.monotonic() - started:.0f} s)", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps({"spec": dataclasses.asdict(spec), "runs": runs}, indent=1))
    if args.texts is not None:
        args.texts.write_text(json.dumps(real, indent=1, ensure_ascii=False))
    return 0


def predict(model: OnnxModel, texts: Sequence[str], batch: int = 64) -> Floats:
    """The server's model runner over ``texts`` in batches; ``(n, K)`` float64."""
    return np.vstack([model.predict(texts[i : i + batch]) for i in range(0, len(texts), batch)])


if __name__ == "__main__":
    sys.exit(main())
