"""Detection metrics over one decision: flag volume and hits, package ranking, review queue,
calibration of the error probability. Plain numpy (and scikit-learn's AUROC/AUPRC).

Shapes: ``flags``/``wrong``/``labels`` ``(n, K)`` bool, ``label_quality`` ``(n,)``,
``error_probability`` ``(n, K)`` with NaN where not flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import average_precision_score, roc_auc_score

from labelwatch.scoring import Decision

Bools = NDArray[np.bool_]
Floats = NDArray[np.float64]

ECE_BINS = 10
"""Equal-width bins of the error probability in [0, 1] for ECE and the reliability diagram."""


def ratio(num: float, den: float) -> float:
    """``num / den``, NaN when ``den`` is 0."""
    return num / den if den else float("nan")


def ranking(label_quality: Floats, corrupted: Bools) -> dict[str, float]:
    """AUROC / AUPRC of ``-label_quality`` (low quality = suspicious) for ``corrupted`` ``(n,)``."""
    return {
        "auroc": float(roc_auc_score(corrupted, -label_quality)),
        "auprc": float(average_precision_score(corrupted, -label_quality)),
    }


def review_order(decision: Decision, probs: Floats) -> NDArray[np.int64]:
    """Flat ``(n * K)`` indices of the flagged pairs in the order a reviewer sees them.

    With an error probability: highest first, ties (the calibrator is piecewise linear with
    flat steps) by the package's label quality, lowest first. Without one: by label quality,
    lowest first, then by the pair's self-confidence under the model (lowest first). Stable
    otherwise (row-major order).
    """
    flat = np.flatnonzero(decision.flags.ravel())
    rows = flat // decision.flags.shape[1]
    quality = decision.label_quality[rows]
    if decision.error_probability is not None:
        keys: tuple[Floats, ...] = (quality, -decision.error_probability.ravel()[flat])
    else:
        p = probs.ravel()[flat]
        tagged = decision.labels.ravel()[flat]
        pair_confidence = np.where(tagged, p, 1.0 - p)
        keys = (pair_confidence, quality)
    order = np.lexsort(keys)  # last key is the primary one
    out: NDArray[np.int64] = flat[order].astype(np.int64)
    return out


def precision_at(order: NDArray[np.int64], wrong: Bools, k: int) -> float:
    """Share of the first ``k`` queued pairs that are wrong (NaN if the queue is empty)."""
    head = order[:k]
    return ratio(float(wrong.ravel()[head].sum()), float(head.shape[0]))


@dataclass(frozen=True)
class Reliability:
    """Per bin (``ECE_BINS`` equal-width bins of the error probability): pairs, summed
    error probability, pairs that are wrong. Sums, so trials pool by addition."""

    count: Floats
    prob_sum: Floats
    wrong_sum: Floats

    @staticmethod
    def of(prob: Floats, wrong: Bools) -> Reliability:
        """From ``(F,)`` error probabilities of flagged pairs and whether each is wrong."""
        idx = np.minimum((prob * ECE_BINS).astype(np.int64), ECE_BINS - 1)
        count = np.bincount(idx, minlength=ECE_BINS).astype(np.float64)
        prob_sum = np.bincount(idx, weights=prob, minlength=ECE_BINS).astype(np.float64)
        wrong_sum = np.bincount(idx, weights=wrong, minlength=ECE_BINS).astype(np.float64)
        return Reliability(count, prob_sum, wrong_sum)

    def __add__(self, other: Reliability) -> Reliability:
        return Reliability(
            self.count + other.count,
            self.prob_sum + other.prob_sum,
            self.wrong_sum + other.wrong_sum,
        )

    def ece(self) -> float:
        """Expected calibration error: sum over bins of share of pairs x |mean p - share wrong|."""
        total = float(self.count.sum())
        if not total:
            return float("nan")
        seen = self.count > 0
        gap = np.abs(self.prob_sum[seen] - self.wrong_sum[seen]) / self.count[seen]
        return float((self.count[seen] / total * gap).sum())

    def rows(self) -> list[tuple[float, float, int, float, float]]:
        """Per non-empty bin: lower edge, upper edge, pairs, mean error probability, share wrong."""
        out = []
        for b in np.flatnonzero(self.count).tolist():
            n = float(self.count[b])
            out.append(
                (
                    b / ECE_BINS,
                    (b + 1) / ECE_BINS,
                    int(n),
                    float(self.prob_sum[b]) / n,
                    float(self.wrong_sum[b]) / n,
                )
            )
        return out


def trial_metrics(
    decision: Decision, probs: Floats, wrong: Bools
) -> tuple[dict[str, float], Reliability | None]:
    """Every number of one decision against the truth ``wrong`` ``(n, K)``.

    Flags per example, precision and recall of flagged pairs (and recall of missing and of
    spurious errors: a wrong untagged / tagged pair), precision@100/@500 of the review queue,
    package AUROC/AUPRC of label quality, and (with error probabilities) their mean over the
    flagged pairs, ECE and reliability bins.
    """
    flags, labels = decision.flags, decision.labels
    n = flags.shape[0]
    hit = flags & wrong
    missing, spurious = wrong & ~labels, wrong & labels
    order = review_order(decision, probs)
    out = {
        "flags_per_example": float(flags.sum()) / n,
        "precision": ratio(float(hit.sum()), float(flags.sum())),
        "recall": ratio(float(hit.sum()), float(wrong.sum())),
        "recall_missing": ratio(float((hit & missing).sum()), float(missing.sum())),
        "recall_spurious": ratio(float((hit & spurious).sum()), float(spurious.sum())),
        "p_at_100": precision_at(order, wrong, 100),
        "p_at_500": precision_at(order, wrong, 500),
    }
    out |= ranking(decision.label_quality, np.asarray(wrong.any(axis=1)))
    if decision.error_probability is None:
        return out, None
    prob = decision.error_probability[flags]
    reliability = Reliability.of(prob, wrong[flags])
    out["mean_error_probability"] = float(prob.mean()) if prob.shape[0] else float("nan")
    out["ece"] = reliability.ece()
    return out, reliability
