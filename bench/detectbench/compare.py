"""The rules compared, and their evaluation on a track of noisy trials with known errors.

A *variant* is what a server would run: a calibration fit, a flag rule and (for the
budget rule) a flag budget. Every cleanlab rule runs on a context-free artifact (the
thresholds served before tag context existed, label quality = softmin T 0.1 of the model's
self-confidence); the budget rule runs on artifacts with a tag-context model of ``m``
context tags per class (m = 0: the model's probability recalibrated per class), label
quality = softmin T 0.1 of the context self-confidence. All are fitted here, from the
calibration data, with :func:`labelwatch.calibration.calibrate`.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from detectbench.metrics import Reliability, trial_metrics
from labelwatch.calibration import CalibrationArtifact, calibrate
from labelwatch.scoring import CLEANLAB_RULES, FilterBy, Pooling, decide

Bools = NDArray[np.bool_]
Floats = NDArray[np.float64]

SOFTMIN_T = 0.1
DEFAULT_M = 16
DEFAULT_BUDGET = 0.1
BUDGETS = (0.02, 0.05, 0.1, 0.2, 0.4, 0.62)
"""Flag budgets swept (pairs per example); 0.62 is the old default's volume on debtags."""


@dataclass(frozen=True)
class Variant:
    """A served configuration: ``name`` for tables, the fitted artifact, rule and budget."""

    name: str
    artifact: CalibrationArtifact
    rule: FilterBy
    budget: float | None = None

    @property
    def is_default(self) -> bool:
        """The shipped default: budget rule, m = 16, budget 0.1."""
        return self.name == f"budget m={DEFAULT_M}" and self.budget == DEFAULT_BUDGET


def fit_artifacts(
    probs: Floats,
    labels: Bools,
    class_names: Sequence[str],
    *,
    model_sha256: str | None = None,
    context_tags: Sequence[int] = (0, DEFAULT_M),
) -> dict[str, CalibrationArtifact]:
    """``"plain"`` (no context) and ``"budget m=<m>"`` artifacts fitted on ``(N, K)`` data."""
    fit = functools.partial(
        calibrate,
        probs,
        labels,
        class_names,
        model_sha256=model_sha256,
        pooling=Pooling.SOFTMIN,
        temperature=SOFTMIN_T,
    )
    out = {"plain": fit(filter_by=FilterBy.CONFIDENT_LEARNING)}
    for m in context_tags:
        out[f"budget m={m}"] = fit(
            filter_by=FilterBy.BUDGET,
            context_tags=m,
            flag_budget=DEFAULT_BUDGET,
            context_quality=True,
        )
    return out


def variants(
    artifacts: dict[str, CalibrationArtifact], budgets: Sequence[float] = BUDGETS
) -> list[Variant]:
    """Every cleanlab rule on ``plain``, then the budget rule at each budget per context model."""
    out = [Variant(rule.value, artifacts["plain"], rule) for rule in CLEANLAB_RULES]
    for name, artifact in artifacts.items():
        if name != "plain":
            out += [Variant(name, artifact, FilterBy.BUDGET, b) for b in budgets]
    return out


@dataclass(frozen=True)
class Trial:
    """One noisy copy of the evaluation data: ``probs`` ``(n, K)``, the given ``labels``
    ``(n, K)`` and the truth ``wrong`` ``(n, K)`` (the given tag differs from the true one)."""

    probs: Floats
    labels: Bools
    wrong: Bools


@dataclass(frozen=True)
class Track:
    """Trials to evaluate on. ``own``: the un-injected ``(probs, labels)`` whose flag volume
    is reported (real data, where the own tags' errors are unknown); ``None``: the volume is
    the flags per example on the trials' given tags."""

    name: str
    trials: tuple[Trial, ...]
    own: tuple[Floats, Bools] | None = None


@dataclass
class Row:
    """One variant on one track: per-trial numbers, and reliability pooled over trials."""

    variant: Variant
    volume: float
    trials: list[dict[str, float]] = field(default_factory=list)
    reliability: Reliability | None = None

    def values(self, key: str) -> list[float]:
        """``key`` of every trial (NaN dropped)."""
        return [t[key] for t in self.trials if key in t and t[key] == t[key]]

    def mean(self, key: str) -> float:
        """Mean of ``key`` over trials (``"volume"``: the flag volume); NaN if none."""
        if key == "volume":
            return self.volume
        vals = self.values(key)
        return statistics.mean(vals) if vals else float("nan")


def evaluate(variant: Variant, track: Track) -> Row:
    """Run ``variant`` on the track's own data (volume) and on every trial."""
    results = []
    pooled: Reliability | None = None
    for trial in track.trials:
        decision = decide(
            variant.artifact.fit,
            trial.probs,
            trial.labels,
            variant.rule,
            flag_budget=variant.budget,
        )
        numbers, reliability = trial_metrics(decision, trial.probs, trial.wrong)
        results.append(numbers)
        if reliability is not None:
            pooled = reliability if pooled is None else pooled + reliability
    if track.own is not None:
        probs, labels = track.own
        own = decide(variant.artifact.fit, probs, labels, variant.rule, flag_budget=variant.budget)
        volume = float(own.flags.sum()) / labels.shape[0]
    else:
        volume = statistics.mean(r["flags_per_example"] for r in results)
    return Row(variant, volume, results, pooled)


def merge(per_trial: Sequence[Sequence[Row]]) -> list[Row]:
    """Rows of the same variants evaluated on separate tracks (one per trial, each with its
    own calibration) joined into one row per variant; volume = mean flags per example."""
    out = []
    for same in zip(*per_trial, strict=True):
        trials = [t for row in same for t in row.trials]
        pooled: Reliability | None = None
        for row in same:
            if row.reliability is not None:
                pooled = row.reliability if pooled is None else pooled + row.reliability
        volume = statistics.mean(t["flags_per_example"] for t in trials)
        out.append(Row(same[0].variant, volume, trials, pooled))
    return out


def recall_at_volume(rows: Sequence[Row], volume: float) -> float:
    """Recall interpolated at flag ``volume`` along one variant's budget sweep (NaN outside)."""
    vols = np.array([r.volume for r in rows])
    recs = np.array([r.mean("recall") for r in rows])
    order = np.argsort(vols)
    vols, recs = vols[order], recs[order]
    if not (vols[0] <= volume <= vols[-1]):
        return float("nan")
    return float(np.interp(volume, vols, recs))
