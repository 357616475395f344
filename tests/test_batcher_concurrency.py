"""Several model calls in flight (``Batcher(concurrency=N)``): every guarantee still holds.

In-process real pipelines (thresholds only, client probabilities) and, where flags are
stored, a real SQLite outbox. Model calls are held at gates (events), so every
interleaving below is forced, not hoped for; nothing depends on timing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from labelwatch.batcher import Batcher
from labelwatch.domain import LabeledExample, ScoredBatch
from labelwatch.errors import ModelFailure, ServerStopping
from labelwatch.flag_record import flags_from_batch
from labelwatch.outbox import Outbox
from support_batcher import (
    NAMES,
    CountingPipeline,
    GatedPipeline,
    PoisonPipeline,
    Source,
    flagged_example,
)
from support_delivery import wait_until


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite3", synchronous="NORMAL", busy_timeout_seconds=30.0)
    yield box
    box.close()


class HeldPipeline(CountingPipeline):
    """Model calls whose first example id is in ``holds`` wait for that event."""

    def __init__(self, outbox: Outbox | None) -> None:
        super().__init__(outbox)
        self.holds: dict[str, threading.Event] = {}
        self.held = threading.Semaphore(0)  # released once per call that reached its hold

    def compute(self, examples: Sequence[LabeledExample]) -> ScoredBatch:
        hold = self.holds.get(examples[0].id)
        if hold is not None:
            self.held.release()
            assert hold.wait(30)
        return super().compute(examples)


def test_zero_concurrency_is_refused() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        Batcher(CountingPipeline(None), max_batch=8, window_seconds=0.0, concurrency=0)


def test_a_later_batch_finishes_first_with_its_flags_stored_and_in_request_order(
    outbox: Outbox,
) -> None:
    pipeline = HeldPipeline(outbox)
    pipeline.holds["slow-0"] = threading.Event()
    batcher = Batcher(pipeline, max_batch=8, window_seconds=0.0, concurrency=2)
    pool = ThreadPoolExecutor(2)
    try:
        slow = pool.submit(batcher.score, [flagged_example(i, "slow") for i in range(3)])
        assert pipeline.held.acquire(timeout=10)  # one worker is held in the model
        # the other worker scores and stores a later request, which is answered first
        fast = batcher.score([flagged_example(i, "fast") for i in range(4)])
        assert [ex.id for ex in fast.examples] == [f"fast-{i}" for i in range(4)]
        for flag in flags_from_batch(fast, NAMES):
            assert outbox.get(flag.flag_id) is not None
        assert not slow.done()
        pipeline.holds["slow-0"].set()
        result = slow.result(timeout=30)
    finally:
        for hold in pipeline.holds.values():
            hold.set()
        batcher.close()
        pool.shutdown()
    assert [ex.id for ex in result.examples] == [f"slow-{i}" for i in range(3)]
    stored = [f.example_id for f in outbox.flags(limit=100)]
    # batches were stored in the order they finished; each request's flags together, in order
    assert stored == [f"fast-{i}" for i in range(4)] + [f"slow-{i}" for i in range(3)]


def test_a_failing_merged_batch_retries_each_job_alone_while_others_run() -> None:
    pipeline = PoisonPipeline()
    batcher = Batcher(pipeline, max_batch=64, window_seconds=0.0, concurrency=2)
    pool = ThreadPoolExecutor(5)
    try:
        busy = [pool.submit(batcher.score, [flagged_example(i, "busy")]) for i in range(2)]
        wait_until(lambda: pipeline.entered == 2, 10, "both workers busy", 0.005)
        good = [pool.submit(batcher.score, [flagged_example(i, "good")]) for i in range(2)]
        wait_until(lambda: batcher.queued_jobs == 2, 10, "two good jobs queued", 0.005)
        bad = pool.submit(batcher.score, [flagged_example(0, "poison")])
        wait_until(lambda: batcher.queued_jobs == 3, 10, "the poisoned job queued", 0.005)
        pipeline.gate.set()
        assert isinstance(bad.exception(timeout=30), ModelFailure)
        assert sorted(f.result(timeout=30).examples[0].id for f in good) == ["good-0", "good-1"]
        assert sorted(f.result(timeout=30).examples[0].id for f in busy) == ["busy-0", "busy-1"]
    finally:
        pipeline.gate.set()
        batcher.close()
        pool.shutdown()
    # the three queued jobs were merged into one call (which failed), then retried alone
    assert 3 in pipeline.sizes
    assert pipeline.sizes.count(1) == 2 + 3


def test_close_finishes_every_queued_and_running_job_then_refuses_new_ones(
    outbox: Outbox,
) -> None:
    pipeline = GatedPipeline(outbox)
    batcher = Batcher(pipeline, max_batch=2, window_seconds=0.0, concurrency=3)
    pool = ThreadPoolExecutor(12)
    futures = [pool.submit(batcher.score, [flagged_example(i)]) for i in range(10)]
    closer = threading.Thread(target=batcher.close)
    try:
        wait_until(lambda: pipeline.entered == 3, 10, "three model calls in flight", 0.005)
        wait_until(
            lambda: pipeline.entered_examples + batcher.queued_jobs == 10,
            10,
            "every job in a model call or queued",
            0.005,
        )
        closer.start()
        wait_until(lambda: batcher.closing, 10, "close() to start", 0.005)
        with pytest.raises(ServerStopping):
            batcher.score([flagged_example(999, "late")])
        assert not any(f.done() for f in futures)
        pipeline.gate.set()
        closer.join(30)
        assert not closer.is_alive()
        ids = sorted(f.result(timeout=30).examples[0].id for f in futures)
    finally:
        pipeline.gate.set()
        pool.shutdown()
    assert ids == sorted(f"ex-{i}" for i in range(10))
    assert outbox.count() == 10


def test_a_reload_swaps_between_batches_and_taken_batches_finish_on_their_pipeline() -> None:
    old = GatedPipeline(version="v1")
    new = CountingPipeline(None, version="v2")
    source = Source(old)
    batcher = Batcher(source, max_batch=1, window_seconds=0.0, concurrency=2)
    pool = ThreadPoolExecutor(4)
    try:
        taken = [pool.submit(batcher.score, [flagged_example(i, "a")]) for i in range(2)]
        wait_until(lambda: old.entered == 2, 10, "two batches taken with v1", 0.005)
        source.current = new  # the swap, while both workers are inside v1's model call
        queued = [pool.submit(batcher.score, [flagged_example(i, "b")]) for i in range(2)]
        wait_until(lambda: batcher.queued_jobs == 2, 10, "two jobs queued", 0.005)
        old.gate.set()
        assert {f.result(timeout=30).model_version for f in taken} == {"v1"}
        assert {f.result(timeout=30).model_version for f in queued} == {"v2"}
    finally:
        old.gate.set()
        batcher.close()
        pool.shutdown()
    assert (old.computed, new.computed) == (2, 2)


def test_concurrent_batches_score_exactly_as_one_at_a_time() -> None:
    examples = [flagged_example(i) for i in range(200)]
    results: dict[int, list[ScoredBatch]] = {}
    for concurrency in (1, 4):
        batcher = Batcher(
            CountingPipeline(None), max_batch=16, window_seconds=0.0, concurrency=concurrency
        )
        try:
            with ThreadPoolExecutor(16) as pool:
                chunks = [examples[i : i + 5] for i in range(0, 200, 5)]
                results[concurrency] = list(pool.map(batcher.score, chunks))
        finally:
            batcher.close()
    for one, many in zip(results[1], results[4], strict=True):
        assert [e.id for e in one.examples] == [e.id for e in many.examples]
        assert one.label_quality.tobytes() == many.label_quality.tobytes()
        assert (one.flags == many.flags).all()


class BrokenSource:
    """A pipeline source whose lookup fails once (a fault outside the model call)."""

    def __init__(self, pipeline: CountingPipeline) -> None:
        self.pipeline = pipeline
        self.fail_next = True

    @property
    def current(self) -> CountingPipeline:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("pipeline lookup failed")
        return self.pipeline


def _score_within(batcher: Batcher, example: LabeledExample, timeout: float) -> ScoredBatch:
    """``batcher.score([example])`` on a daemon thread; fail the test after ``timeout`` s."""
    outcome: list[ScoredBatch | BaseException] = []
    done = threading.Event()

    def call() -> None:
        try:
            outcome.append(batcher.score([example]))
        except BaseException as exc:
            outcome.append(exc)
        done.set()

    threading.Thread(target=call, daemon=True).start()
    assert done.wait(timeout), f"score({example.id}) still waiting after {timeout} s"
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_fault_outside_the_model_call_fails_its_callers_and_the_worker_keeps_serving(
    concurrency: int,
) -> None:
    pipeline = CountingPipeline(None)
    source = BrokenSource(pipeline)
    source.fail_next = False  # the constructor reads the source once
    batcher = Batcher(source, max_batch=8, window_seconds=0.0, concurrency=concurrency)
    try:
        source.fail_next = True
        with pytest.raises(RuntimeError, match="pipeline lookup failed"):
            _score_within(batcher, flagged_example(0), 30)  # it used to wait forever
        # the worker survived: later calls are served (with one worker, by that worker)
        for i in range(1, 2 * concurrency + 1):
            assert _score_within(batcher, flagged_example(i), 30).examples[0].id == f"ex-{i}"
    finally:
        batcher.close()
    assert pipeline.computed == 2 * concurrency
