"""The batcher's recorder: group commit off the model's path, never an answer before its flags.

In-process Pipeline (thresholds only, client probabilities) + Batcher + a real
SQLite outbox. A second SQLite connection holding the write lock stands in for a
slow disk: it blocks the recorder's commit exactly as a slow fsync would.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from labelwatch.batcher import Batcher
from labelwatch.calibration import calibrate
from labelwatch.domain import LabeledExample, ScoredBatch
from labelwatch.errors import DeadlineExpired, OutboxUnavailable
from labelwatch.flag_record import flags_from_batch
from labelwatch.metrics import Metrics
from labelwatch.outbox import Outbox
from labelwatch.pipeline import Pipeline
from labelwatch.scoring import FilterBy
from support_delivery import wait_until

K = 6
NAMES = tuple(f"c{k}" for k in range(K))


class CountingPipeline(Pipeline):
    """A real pipeline that counts model+scoring calls and outbox transactions."""

    def __init__(self, outbox: Outbox | None) -> None:
        rng = np.random.default_rng(0)
        probs = rng.random((400, K))
        labels = rng.random((400, K)) < probs
        super().__init__(
            model=None,
            artifact=calibrate(probs, labels, NAMES),
            filter_by=FilterBy.CONFIDENT_LEARNING,
            model_version="m-1",
            metrics=Metrics(CollectorRegistry()),
            outbox=outbox,
        )
        self.computed = 0
        self.recorded: list[int] = []  # batches per record() call

    def compute(self, examples: Sequence[LabeledExample]) -> ScoredBatch:
        self.computed += 1
        return super().compute(examples)

    def record(self, batches: Sequence[ScoredBatch]) -> None:
        super().record(batches)
        self.recorded.append(len(batches))


def flagged_example(i: int) -> LabeledExample:
    """An example the fit flags for sure: class 0 at p=0.999 but not tagged."""
    p = np.full(K, 0.001)
    p[0] = 0.999
    return LabeledExample(id=f"ex-{i}", labels=np.zeros(K, dtype=np.bool_), probabilities=p)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite3", synchronous="NORMAL", busy_timeout_seconds=30.0)
    yield box
    box.close()


def test_every_answer_finds_its_flags_already_stored(outbox: Outbox) -> None:
    pipeline = CountingPipeline(outbox)
    batcher = Batcher(pipeline, max_batch=64, window_seconds=0.001)

    def call(i: int) -> bool:
        batch = batcher.score([flagged_example(i)])
        flags = flags_from_batch(batch, NAMES)
        assert len(flags) == 1
        # checked in the caller's thread the moment it has its answer
        return outbox.get(flags[0].flag_id) is not None

    try:
        with ThreadPoolExecutor(16) as pool:
            stored = list(pool.map(call, range(400)))
    finally:
        batcher.close()
    assert all(stored)
    assert sum(1 for f in outbox.flags(limit=1000)) == 400


def test_the_next_batch_is_computed_while_a_commit_is_blocked_then_all_share_one_commit(
    outbox: Outbox,
) -> None:
    pipeline = CountingPipeline(outbox)
    batcher = Batcher(pipeline, max_batch=1, window_seconds=0.0)  # one example per batch
    blocker = sqlite3.connect(outbox.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: the recorder's commit waits
    pool = ThreadPoolExecutor(8)
    try:
        futures: list[Future[ScoredBatch]] = [
            pool.submit(batcher.score, [flagged_example(i)]) for i in range(8)
        ]
        # all 8 one-example batches get computed although the first commit cannot finish
        wait_until(
            lambda: pipeline.computed == 8, 10, "8 batches computed during a blocked commit", 0.005
        )
        assert not any(f.done() for f in futures), "an answer went out before its flags"
        assert pipeline.recorded == []
        blocker.execute("ROLLBACK")
        results = [f.result(timeout=30) for f in futures]
    finally:
        blocker.close()
        batcher.close()
        pool.shutdown()
    assert [r.examples[0].id for r in results] == [f"ex-{i}" for i in range(8)]
    # the first transaction took one batch; the other seven were grouped behind it
    assert sum(pipeline.recorded) == 8
    assert len(pipeline.recorded) <= 2
    assert len(outbox.flags(limit=100)) == 8


def test_a_failed_commit_fails_every_caller_in_it_and_stores_nothing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite3", busy_timeout_seconds=0.2)
    pipeline = CountingPipeline(box)
    batcher = Batcher(pipeline, max_batch=1, window_seconds=0.0)
    blocker = sqlite3.connect(box.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the write lock is never released in time
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(batcher.score, [flagged_example(i)]) for i in range(4)]
            errors = [f.exception(timeout=30) for f in futures]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        batcher.close()
    assert all(isinstance(e, OutboxUnavailable) for e in errors), errors
    assert box.flags(limit=100) == []
    box.close()


def test_without_an_outbox_no_recorder_thread_runs() -> None:
    pipeline = CountingPipeline(None)
    batcher = Batcher(pipeline, max_batch=8, window_seconds=0.0)
    try:
        assert batcher._recorder is None  # recorded inline, on the batcher thread
        result = batcher.score([flagged_example(1)])
    finally:
        batcher.close()
    assert bool(result.flags.any()) and pipeline.recorded == [1]


class GatedPipeline(CountingPipeline):
    """Its first model call waits for ``gate``: the queue behind it stands still."""

    def __init__(self) -> None:
        super().__init__(None)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def compute(self, examples: Sequence[LabeledExample]) -> ScoredBatch:
        self.entered.set()
        assert self.gate.wait(30)
        return super().compute(examples)


def test_a_queued_job_whose_deadline_passes_is_dropped_not_computed() -> None:
    pipeline = GatedPipeline()
    batcher = Batcher(pipeline, max_batch=1, window_seconds=0.0)
    pool = ThreadPoolExecutor(3)
    try:
        first = pool.submit(batcher.score, [flagged_example(0)])
        assert pipeline.entered.wait(10)  # the worker is busy with the first job
        deadline = time.monotonic() + 0.05
        late = pool.submit(batcher.score, [flagged_example(1)], deadline=deadline)
        alive = pool.submit(batcher.score, [flagged_example(2)], deadline=deadline + 60)
        wait_until(lambda: batcher.queued_jobs == 2, 10, "two jobs queued behind the first", 0.005)
        wait_until(lambda: time.monotonic() > deadline, 10, "the short deadline to pass", 0.005)
        pipeline.gate.set()
        assert first.result(timeout=30).examples[0].id == "ex-0"
        assert alive.result(timeout=30).examples[0].id == "ex-2"
        assert isinstance(late.exception(timeout=30), DeadlineExpired)
    finally:
        pipeline.gate.set()
        batcher.close()
        pool.shutdown()
    assert pipeline.computed == 2  # the expired job never reached the model
