"""The batcher's recorder: group commit off the model's path, never an answer before its flags.

In-process Pipeline (thresholds only, client probabilities) + Batcher + a real
SQLite outbox, with one model call in flight and with several (``concurrency``). A
second SQLite connection holding the write lock stands in for a
slow disk: it blocks the recorder's commit exactly as a slow fsync would.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from labelwatch.batcher import Batcher
from labelwatch.domain import ScoredBatch
from labelwatch.errors import DeadlineExpired, OutboxUnavailable
from labelwatch.flag_record import flags_from_batch
from labelwatch.outbox import Outbox
from support_batcher import NAMES, CountingPipeline, GatedPipeline, flagged_example
from support_delivery import wait_until


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite3", synchronous="NORMAL", busy_timeout_seconds=30.0)
    yield box
    box.close()


@pytest.mark.parametrize("concurrency", [1, 4])
def test_every_answer_finds_its_flags_already_stored(outbox: Outbox, concurrency: int) -> None:
    pipeline = CountingPipeline(outbox)
    batcher = Batcher(pipeline, max_batch=64, window_seconds=0.001, concurrency=concurrency)

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


@pytest.mark.parametrize("concurrency", [1, 3])
def test_the_next_batch_is_computed_while_a_commit_is_blocked_then_all_share_one_commit(
    outbox: Outbox, concurrency: int
) -> None:
    pipeline = CountingPipeline(outbox)
    # one example per batch
    batcher = Batcher(pipeline, max_batch=1, window_seconds=0.0, concurrency=concurrency)
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


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_failed_commit_fails_every_caller_in_it_and_stores_nothing(
    tmp_path: Path, concurrency: int
) -> None:
    box = Outbox(tmp_path / "outbox.sqlite3", busy_timeout_seconds=0.2)
    pipeline = CountingPipeline(box)
    batcher = Batcher(pipeline, max_batch=1, window_seconds=0.0, concurrency=concurrency)
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


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_queued_job_whose_deadline_passes_is_dropped_not_computed(concurrency: int) -> None:
    pipeline = GatedPipeline()
    batcher = Batcher(pipeline, max_batch=1, window_seconds=0.0, concurrency=concurrency)
    pool = ThreadPoolExecutor(concurrency + 2)
    try:
        busy = [pool.submit(batcher.score, [flagged_example(i)]) for i in range(concurrency)]
        # every worker is busy with a first job
        wait_until(lambda: pipeline.entered == concurrency, 10, "every worker busy", 0.005)
        deadline = time.monotonic() + 0.05
        late = pool.submit(batcher.score, [flagged_example(100)], deadline=deadline)
        alive = pool.submit(batcher.score, [flagged_example(101)], deadline=deadline + 60)
        wait_until(lambda: batcher.queued_jobs == 2, 10, "two jobs queued behind them", 0.005)
        wait_until(lambda: time.monotonic() > deadline, 10, "the short deadline to pass", 0.005)
        pipeline.gate.set()
        assert sorted(f.result(timeout=30).examples[0].id for f in busy) == sorted(
            f"ex-{i}" for i in range(concurrency)
        )
        assert alive.result(timeout=30).examples[0].id == "ex-101"
        assert isinstance(late.exception(timeout=30), DeadlineExpired)
    finally:
        pipeline.gate.set()
        batcher.close()
        pool.shutdown()
    assert pipeline.computed == concurrency + 1  # the expired job never reached the model
