"""Test support for the batcher: real pipelines (thresholds only) that count, gate or fail.

Every pipeline here is a real :class:`~labelwatch.pipeline.Pipeline` over client
probabilities (K = 6 classes), so scoring, flags and the outbox are the real ones; the
subclasses only count calls, hold model calls at a gate, or fail on chosen examples.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
from prometheus_client import CollectorRegistry

from labelwatch.calibration import calibrate
from labelwatch.domain import LabeledExample, ScoredBatch
from labelwatch.errors import ModelFailure
from labelwatch.metrics import Metrics
from labelwatch.outbox import Outbox
from labelwatch.pipeline import Pipeline
from labelwatch.scoring import FilterBy

K = 6
NAMES = tuple(f"c{k}" for k in range(K))


class CountingPipeline(Pipeline):
    """A real pipeline that counts model+scoring calls and outbox transactions."""

    def __init__(self, outbox: Outbox | None, *, version: str = "m-1") -> None:
        rng = np.random.default_rng(0)
        probs = rng.random((400, K))
        labels = rng.random((400, K)) < probs
        super().__init__(
            model=None,
            artifact=calibrate(probs, labels, NAMES),
            filter_by=FilterBy.CONFIDENT_LEARNING,
            model_version=version,
            metrics=Metrics(CollectorRegistry()),
            outbox=outbox,
        )
        self._lock = threading.Lock()
        self.computed = 0
        self.sizes: list[int] = []  # examples per compute() call
        self.recorded: list[int] = []  # batches per record() call

    def compute(self, examples: Sequence[LabeledExample]) -> ScoredBatch:
        with self._lock:
            self.computed += 1
            self.sizes.append(len(examples))
        return super().compute(examples)

    def record(self, batches: Sequence[ScoredBatch]) -> None:
        super().record(batches)
        self.recorded.append(len(batches))


class GatedPipeline(CountingPipeline):
    """Every model call waits for ``gate``; ``entered`` counts the calls that reached it
    (``entered_examples`` their examples)."""

    def __init__(self, outbox: Outbox | None = None, *, version: str = "m-1") -> None:
        super().__init__(outbox, version=version)
        self.gate = threading.Event()
        self.entered = 0
        self.entered_examples = 0

    def compute(self, examples: Sequence[LabeledExample]) -> ScoredBatch:
        with self._lock:
            self.entered += 1
            self.entered_examples += len(examples)
        assert self.gate.wait(30)
        return super().compute(examples)


class PoisonPipeline(GatedPipeline):
    """Gated, and any model call holding an example whose id starts with ``poison`` fails."""

    def compute(self, examples: Sequence[LabeledExample]) -> ScoredBatch:
        batch = super().compute(examples)
        if any(ex.id.startswith("poison") for ex in examples):
            raise ModelFailure("model run failed: poisoned input")
        return batch


class Source:
    """A :class:`~labelwatch.batcher.PipelineSource` whose pipeline a test swaps."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.current = pipeline


def flagged_example(i: int, prefix: str = "ex") -> LabeledExample:
    """An example the fit flags for sure: class 0 at p=0.999 but not tagged."""
    p = np.full(K, 0.001)
    p[0] = 0.999
    return LabeledExample(id=f"{prefix}-{i}", labels=np.zeros(K, dtype=np.bool_), probabilities=p)
