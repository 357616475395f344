"""Pure multi-label Confident Learning math (numpy only, no I/O, no grpc).

Conventions used across this package:

* ``pred_probs``: ``(n_examples, n_classes)`` float64 array of per-class
  probabilities in ``[0, 1]`` (one-vs-rest, rows need not sum to 1); the batch
  functions keep float32 input float32, computing as cleanlab does on it.
* ``labels``: ``(n_examples, n_classes)`` bool array, ``True`` where the
  annotator gave the tag.
* A flag matrix is an ``(n_examples, n_classes)`` bool array; a flagged
  untagged class is a suspected MISSING tag, a flagged tagged class a suspected
  SPURIOUS tag.

Public entry points (the service and the CLI use only these):

* :func:`fit_thresholds` -> :class:`Thresholds`
* :func:`find_label_issues` (batch, identical to
  ``cleanlab.multilabel_classification.filter.find_label_issues``)
* :func:`label_quality_scores` (batch, identical to
  ``cleanlab.multilabel_classification.rank.get_label_quality_scores``)
* :func:`fit_calibration` -> :class:`CalibrationFit` (offline step)
* :func:`decide` -> :class:`Decision` (online, one or many examples at a time,
  using only a :class:`CalibrationFit`)

Beyond cleanlab (``filter_by="budget"``, error probabilities): :mod:`.context` (the
tag-context model), :mod:`.budget` (the flag budget's cut-off curve) and
:mod:`.errorprob` (the error-probability calibrator), fitted by :func:`fit_calibration`
with ``context_tags``.
"""

from labelwatch.scoring.batch import find_label_issues, label_quality_scores
from labelwatch.scoring.online import decide, fit_calibration
from labelwatch.scoring.thresholds import fit_thresholds
from labelwatch.scoring.types import (
    CLEANLAB_RULES,
    CalibrationFit,
    ClassScore,
    Decision,
    FilterBy,
    IssueKind,
    Pooling,
    Thresholds,
)

__all__ = [
    "CLEANLAB_RULES",
    "CalibrationFit",
    "ClassScore",
    "Decision",
    "FilterBy",
    "IssueKind",
    "Pooling",
    "Thresholds",
    "decide",
    "find_label_issues",
    "fit_calibration",
    "fit_thresholds",
    "label_quality_scores",
]
