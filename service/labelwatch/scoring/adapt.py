"""Per-class cut-offs that move towards a target precision of flags, from reviewers' verdicts.

Opt-in (``--adapt-to-verdicts --target-precision P``). A flagged (example, class)
pair is kept only when its **flag score** reaches the class's cut-off ``c_k``
(0 = every flag kept, the served rule unchanged). The flag score is the pair's
calibrated error probability when the served rule has one, else the model's
confidence in the suggested direction (``p`` for MISSING, ``1 - p`` for SPURIOUS).

:func:`next_cutoff` decides one class's next cut-off from the verdicts on its
flags that reach the current cut-off:

* the precision of those flags has a Beta prior whose mean is the mean calibrated
  error probability of the judged flags (what the model itself expects their
  precision to be; the target when there is none) and whose strength is
  ``prior_strength`` verdicts; the verdicts make it Beta(a + confirmed, b + rejected);
* posterior mean below ``target - tolerance``: the cut-off rises by ``step``;
  above ``target + tolerance`` with a cut-off above 0: it falls by ``step / 2``
  (slower down than up, so it does not oscillate); otherwise it stays;
* with fewer than ``min_verdicts`` verdicts nothing moves; the cut-off stays in
  ``[0, max_cutoff]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class AdaptPolicy:
    """How cut-offs move (see the module docstring); all in [0, 1] but the counts."""

    target: float
    step: float = 0.05
    tolerance: float = 0.02
    prior_strength: float = 10.0
    min_verdicts: int = 10
    max_cutoff: float = 0.99

    def __post_init__(self) -> None:
        if not 0.0 < self.target < 1.0:
            raise ValueError(f"target precision must be in (0, 1), got {self.target}")
        if not 0.0 < self.step <= 0.5:
            raise ValueError(f"step must be in (0, 0.5], got {self.step}")


@dataclass(frozen=True)
class ClassEvidence:
    """Verdicts on a class's flags that reach its cut-off; ``expected``: their mean
    calibrated error probability (None: no rule with error probabilities)."""

    confirmed: int
    rejected: int
    expected: float | None


@dataclass(frozen=True)
class CutoffDecision:
    """The next cut-off of a class and why (for the log and the outbox)."""

    cutoff: float
    posterior_precision: float | None  # None: too few verdicts to judge
    reason: str  # "raise", "lower", "hold" or "too_few_verdicts"


def next_cutoff(current: float, evidence: ClassEvidence, policy: AdaptPolicy) -> CutoffDecision:
    """One bounded step of one class's cut-off (see the module docstring).

    >>> p = AdaptPolicy(target=0.8)
    >>> next_cutoff(0.0, ClassEvidence(5, 15, 0.7), p)
    CutoffDecision(cutoff=0.05, posterior_precision=0.4, reason='raise')
    >>> next_cutoff(0.0, ClassEvidence(29, 1, 0.9), p).reason
    'hold'
    """
    n = evidence.confirmed + evidence.rejected
    if n < policy.min_verdicts:
        return CutoffDecision(current, None, "too_few_verdicts")
    mean = policy.target if evidence.expected is None else evidence.expected
    a = mean * policy.prior_strength + evidence.confirmed
    b = (1.0 - mean) * policy.prior_strength + evidence.rejected
    precision = a / (a + b)
    if precision < policy.target - policy.tolerance:
        return CutoffDecision(min(policy.max_cutoff, current + policy.step), precision, "raise")
    if precision > policy.target + policy.tolerance and current > 0.0:
        return CutoffDecision(max(0.0, current - policy.step / 2.0), precision, "lower")
    return CutoffDecision(current, precision, "hold")


def flag_scores(
    probabilities: NDArray[np.float64],
    labels: NDArray[np.bool_],
    error_probability: NDArray[np.float64] | None,
) -> NDArray[np.float64]:
    """``(n, K)`` flag scores: the error probability where there is one, else ``p`` for an
    untagged class and ``1 - p`` for a tagged one."""
    side = np.where(labels, 1.0 - probabilities, probabilities)
    if error_probability is None:
        return np.asarray(side, dtype=np.float64)
    return np.asarray(np.where(np.isnan(error_probability), side, error_probability))


def gate(
    flags: NDArray[np.bool_], scores: NDArray[np.float64], cutoffs: NDArray[np.float64]
) -> NDArray[np.bool_]:
    """``flags`` ``(n, K)`` with the pairs whose score is below their class's cut-off
    (``cutoffs`` ``(K,)``) removed.

    >>> gate(np.array([[True, True]]), np.array([[0.5, 0.9]]), np.array([0.6, 0.6])).tolist()
    [[False, True]]
    """
    return np.asarray(flags & (scores >= cutoffs[None, :]), dtype=np.bool_)
