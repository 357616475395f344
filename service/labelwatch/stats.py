"""Interval estimates over verdict and annotator counts: plain functions, no I/O.

* :func:`wilson_interval`: a binomial proportion's Wilson score interval (the
  precision of flags from confirmed / rejected verdicts).
* :func:`beta_binomial_prior` and :func:`shrunk_rate`: empirical-Bayes error rates
  per annotator, pulled towards the global rate when an annotator has few
  examples (see ``docs/label-studio.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist


@dataclass(frozen=True)
class Interval:
    """An estimate in [0, 1] with its interval ``[lower, upper]``."""

    estimate: float
    lower: float
    upper: float


def z_of(confidence: float) -> float:
    """The two-sided standard normal quantile for ``confidence`` in (0, 1).

    >>> round(z_of(0.95), 3)
    1.96
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> Interval:
    """``successes / trials`` with its Wilson score interval; ``(0, 0, 1)`` for no trials.

    >>> i = wilson_interval(8, 10)
    >>> round(i.estimate, 2), round(i.lower, 3), round(i.upper, 3)
    (0.8, 0.49, 0.943)
    """
    if trials <= 0:
        return Interval(0.0, 0.0, 1.0)
    if not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes}/{trials}")
    z = z_of(confidence)
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # exact ends at 0 and n successes (the closed form leaves rounding dust there)
    lower = 0.0 if successes == 0 else max(0.0, centre - half)
    upper = 1.0 if successes == trials else min(1.0, centre + half)
    return Interval(p, lower, upper)


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-12:
            break
    return h


def beta_cdf(x: float, a: float, b: float) -> float:
    """P(X <= x) for X ~ Beta(a, b), a, b > 0 (the regularized incomplete beta function).

    >>> round(beta_cdf(0.5, 2.0, 2.0), 6), round(beta_cdf(0.3, 1.0, 1.0), 6)
    (0.5, 0.3)
    """
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, 1.0 - x) / b


def beta_quantile(q: float, a: float, b: float) -> float:
    """The ``q`` quantile of Beta(a, b) (bisection on :func:`beta_cdf`; to ~1e-10).

    >>> round(beta_quantile(0.5, 3.0, 3.0), 6)
    0.5
    """
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2.0
        if beta_cdf(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


MAX_PRIOR_STRENGTH = 10_000.0
"""Cap of a + b of a fitted prior (annotators that do not differ at all)."""


def beta_binomial_prior(errors: Sequence[float], trials: Sequence[int]) -> tuple[float, float]:
    """Beta(a, b) prior of per-group rates, fitted by the method of moments (empirical Bayes).

    ``errors[i]`` of ``trials[i]`` (errors may be fractional estimates). The mean is the
    pooled rate; the spread is what is left of the rates' variance once the binomial
    noise of each group's size is taken out. Groups that do not differ beyond that
    noise get a strong prior (a + b up to :data:`MAX_PRIOR_STRENGTH`), so every group is
    pulled to the pooled rate; very different groups get a weak one.

    >>> a, b = beta_binomial_prior([1, 2, 30], [100, 100, 100])
    >>> round(a / (a + b), 4)
    0.11
    """
    pairs = [(float(e), int(n)) for e, n in zip(errors, trials, strict=True) if n > 0]
    total = sum(n for _, n in pairs)
    if total == 0:
        return 1.0, 1.0
    mean = sum(e for e, _ in pairs) / total
    mean = min(max(mean, 0.5 / total), 1.0 - 0.5 / total)  # keep a, b > 0
    if len(pairs) < 2:
        strength = 2.0
    else:
        weights = [n / total for _, n in pairs]
        var = sum(w * (e / n - mean) ** 2 for w, (e, n) in zip(weights, pairs, strict=True))
        noise = mean * (1 - mean) * sum(w / n for w, (_, n) in zip(weights, pairs, strict=True))
        between = var - noise
        strength = MAX_PRIOR_STRENGTH if between <= 0 else mean * (1 - mean) / between - 1.0
        strength = min(max(strength, 2.0), MAX_PRIOR_STRENGTH)
    return mean * strength, (1.0 - mean) * strength


def shrunk_rate(
    errors: float, trials: int, prior: tuple[float, float], confidence: float = 0.95
) -> Interval:
    """The posterior mean rate and equal-tailed interval under ``prior`` = Beta(a, b).

    >>> r = shrunk_rate(0, 2, (10.0, 90.0))  # two clean examples: still near the prior's 0.1
    >>> round(r.estimate, 3), r.lower < r.estimate < r.upper
    (0.098, True)
    """
    a = prior[0] + errors
    b = prior[1] + max(0.0, trials - errors)
    tail = (1.0 - confidence) / 2.0
    return Interval(a / (a + b), beta_quantile(tail, a, b), beta_quantile(1.0 - tail, a, b))
