"""What tag context costs a server: CPU of :func:`labelwatch.scoring.decide` per example.

Measured in-process on the thread's CPU clock (``time.thread_time``, so other processes on
the shared cores do not count), over the evaluation data in batches of ``batch`` rows,
``repeats`` passes; the median pass is reported.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from detectbench.compare import Variant
from labelwatch.scoring import decide

SERVER_CPU_US_K100 = 74.0
"""Server CPU per example at K = 100 (thresholds-only server, unary batch 64, 8 clients;
``docs/performance.md``, "Cost as K grows"): the smallest per-example server cost measured,
so the most demanding denominator for the 10 % target."""


@dataclass(frozen=True)
class Cost:
    """Median CPU microseconds per example of ``decide`` for two variants."""

    with_context_us: float
    without_context_us: float
    batch: int
    n_classes: int

    @property
    def extra_us(self) -> float:
        """What tag context adds per example."""
        return self.with_context_us - self.without_context_us


def _pass_us(
    variant: Variant, probs: NDArray[np.float64], labels: NDArray[np.bool_], batch: int
) -> float:
    fit = variant.artifact.fit
    spent = 0.0
    for lo in range(0, probs.shape[0], batch):
        p, y = probs[lo : lo + batch], labels[lo : lo + batch]
        start = time.thread_time()
        decide(fit, p, y, variant.rule, flag_budget=variant.budget)
        spent += time.thread_time() - start
    return spent / int(probs.shape[0]) * 1e6


def decide_cost(
    with_context: Variant,
    without_context: Variant,
    probs: NDArray[np.float64],
    labels: NDArray[np.bool_],
    *,
    batch: int = 64,
    repeats: int = 5,
) -> Cost:
    """Per-example CPU of both variants over ``(n, K)`` data, interleaved pass by pass."""
    runs: tuple[list[float], list[float]] = ([], [])
    _pass_us(with_context, probs[:batch], labels[:batch], batch)  # warm-up
    for _ in range(repeats):
        runs[0].append(_pass_us(with_context, probs, labels, batch))
        runs[1].append(_pass_us(without_context, probs, labels, batch))
    return Cost(
        with_context_us=statistics.median(runs[0]),
        without_context_us=statistics.median(runs[1]),
        batch=batch,
        n_classes=int(probs.shape[1]),
    )
