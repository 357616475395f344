"""Value types shared by the scoring modules (contract; helpers may extend)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:  # annotations only: these modules build on this one
    from labelwatch.scoring.budget import BudgetCurve
    from labelwatch.scoring.context import ContextModel
    from labelwatch.scoring.errorprob import SidedCalibrator


class FilterBy(str, enum.Enum):
    """Flag rules, named as cleanlab's ``filter_by`` values."""

    CONFIDENT_LEARNING = "confident_learning"
    PRUNE_BY_NOISE_RATE = "prune_by_noise_rate"
    PRUNE_BY_CLASS = "prune_by_class"
    BOTH = "both"
    PREDICTED_NEQ_GIVEN = "predicted_neq_given"
    LOW_SELF_CONFIDENCE = "low_self_confidence"
    LOW_NORMALIZED_MARGIN = "low_normalized_margin"
    BUDGET = "budget"  # labelwatch's: one cut on the tag-context error score, set by a budget


CLEANLAB_RULES = tuple(rule for rule in FilterBy if rule is not FilterBy.BUDGET)
"""The rules cleanlab has (``find_label_issues``'s ``filter_by`` values)."""


class Pooling(str, enum.Enum):
    """How per-class scores are pooled into one label-quality score."""

    EMA = "exponential_moving_average"
    SOFTMIN = "softmin"


class ClassScore(str, enum.Enum):
    """Per-class label-quality score (cleanlab's ``method``)."""

    SELF_CONFIDENCE = "self_confidence"
    NORMALIZED_MARGIN = "normalized_margin"


class IssueKind(str, enum.Enum):
    """What is wrong with one class of one example."""

    MISSING = "MISSING"  # class not tagged, model confident it applies
    SPURIOUS = "SPURIOUS"  # class tagged, model confident it does not


@dataclass(frozen=True)
class Thresholds:
    """Per-class confident thresholds, each array of shape ``(n_classes,)``.

    ``t1[k]``: mean of ``p[:, k]`` over examples tagged k (2.0 if none);
    ``t0[k]``: mean of ``1 - p[:, k]`` over examples not tagged k (2.0 if none);
    both clipped below at 2e-6. ``n_pos``/``n_neg``: tagged/untagged counts.
    """

    t0: NDArray[np.float64]
    t1: NDArray[np.float64]
    n_pos: NDArray[np.int64]
    n_neg: NDArray[np.int64]


@dataclass(frozen=True)
class CalibrationFit:
    """Everything the online decision needs, fitted on held-out data.

    ``margin_cutoffs[rule]``: ``(n_classes, 2)`` float64; column 0 applies to
    untagged examples (MISSING side), column 1 to tagged (SPURIOUS side).
    Semantics are defined in :mod:`labelwatch.scoring.online`.
    ``score_cutoff``: label-quality cut-off for ``low_self_confidence``.
    ``flag_rates[rule]``: ``(n_classes, 2)`` fraction of calibration examples
    flagged per class (column 0 MISSING, column 1 SPURIOUS).
    ``method``: the per-class score pooled into ``Decision.label_quality``;
    ``context_quality``: computed from the tag-context probabilities ``q`` instead of
    the model's ``p`` (needs ``context``).
    ``context``, ``budget``, ``error_calibrator``: the tag-context model, the budget
    curve of its cross-fitted error scores and the error-probability calibrator (all
    three or none; ``None`` in fits made without tag context, which then have neither
    the ``budget`` rule nor error probabilities).
    """

    thresholds: Thresholds
    margin_cutoffs: Mapping[str, NDArray[np.float64]]
    score_cutoff: float
    pooling: Pooling
    alpha: float
    temperature: float
    n_examples: int
    flag_rates: Mapping[str, NDArray[np.float64]]
    method: ClassScore = ClassScore.SELF_CONFIDENCE
    context_quality: bool = False
    context: ContextModel | None = None
    budget: BudgetCurve | None = None
    error_calibrator: SidedCalibrator | None = None


@dataclass(frozen=True)
class Decision:
    """Online result for a batch: ``flags`` ``(n, K)`` bool, ``label_quality`` ``(n,)``.

    ``error_probability``: ``(n, K)`` float64, the calibrated probability that a flagged
    tag is wrong, NaN where not flagged; ``None`` when the fit has no tag context.
    """

    flags: NDArray[np.bool_]
    label_quality: NDArray[np.float64]
    labels: NDArray[np.bool_]
    error_probability: NDArray[np.float64] | None = None

    @property
    def missing(self) -> NDArray[np.bool_]:
        """``(n, K)``: flagged and not tagged."""
        return self.flags & ~self.labels

    @property
    def spurious(self) -> NDArray[np.bool_]:
        """``(n, K)``: flagged and tagged."""
        return self.flags & self.labels

    @property
    def is_issue(self) -> NDArray[np.bool_]:
        """``(n,)``: any class flagged."""
        return np.asarray(self.flags.any(axis=1))

    @property
    def suggested(self) -> NDArray[np.bool_]:
        """``(n, K)``: the tag set with every flagged class toggled."""
        return self.labels ^ self.flags
