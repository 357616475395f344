"""Dynamic batching: concurrent requests share model calls, then split back in order.

gRPC handler threads call :meth:`Batcher.score` with one request's validated
examples and block until their slice of a merged batch is ready. ``concurrency``
worker threads run the pipeline, so that many model calls can be in flight at
once (onnxruntime releases the GIL; the engine gives each call cores / calls
intra-op threads). A free worker takes the jobs queued so far (up to
``max_batch`` examples), leaving idle workers an even share of them. A lone
request runs at once; only when other requests are already waiting (and no
worker is idle) does the worker linger up to ``window_seconds`` for more, so
batches grow under load without adding latency when idle.

With a flag outbox, one more thread, the recorder, stores the flags of every
batch computed since its last commit in one transaction (group commit) and only
then releases the batches' callers. Model calls overlap with the previous
batches' commit (SQLite and onnxruntime both release the GIL), and a result is
still never returned before its flags are stored. Batches may finish in any
order: each job gets its own slice, a request's examples (and so its flags) stay
together and in order inside one batch, and what is shared between batches (the
commit, metrics, the shadow sampler) is done by one thread at a time.

The pipeline comes from a :class:`PipelineSource` read once per merged batch: a
model reload (:mod:`labelwatch.engine.models`) takes effect between two batches,
and a batch already taken finishes on the pipeline it started with.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from labelwatch.domain import LabeledExample, ScoredBatch
from labelwatch.errors import DeadlineExpired, ServerStopping
from labelwatch.pipeline import Pipeline

log = logging.getLogger(__name__)


class PipelineSource(Protocol):
    """Where the batcher gets the pipeline of the next batch (the engine's model holder)."""

    @property
    def current(self) -> Pipeline: ...


@dataclass(frozen=True)
class _Fixed:
    """A source that always gives the same pipeline."""

    current: Pipeline


@dataclass
class _Job:
    examples: Sequence[LabeledExample]
    deadline: float | None = None  # time.monotonic() seconds; None = no deadline
    done: threading.Event = field(default_factory=threading.Event)
    result: ScoredBatch | None = None
    error: BaseException | None = None
    handed: bool = False  # given to the recorder or committed: it will be finished there


class Batcher:
    """Merges concurrent :meth:`score` calls into batches of at most ``max_batch`` examples."""

    def __init__(
        self,
        pipeline: Pipeline | PipelineSource,
        *,
        max_batch: int,
        window_seconds: float,
        on_batch: Callable[[ScoredBatch], None] | None = None,
        concurrency: int = 1,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self._source: PipelineSource = (
            _Fixed(pipeline) if isinstance(pipeline, Pipeline) else pipeline
        )
        self._on_batch = on_batch
        self._max_batch = max_batch
        self._window = window_seconds
        self._jobs: deque[_Job] = deque()
        self._queued_examples = 0  # examples in _jobs
        self._idle = 0  # workers waiting for a job
        self._cv = threading.Condition()
        self._closed = False
        self.concurrency = concurrency
        """Model calls in flight at most (worker threads)."""
        self._workers = [
            threading.Thread(target=self._run, name=f"batcher-{i}", daemon=True)
            for i in range(concurrency)
        ]
        # inline commits (no recorder) and the shadow sampler: one batch at a time
        self._commit_lock = threading.Lock()
        self._observe_lock = threading.Lock()
        # computed batches waiting for the recorder: (jobs, their slices, the merged batch)
        self._to_record: deque[tuple[list[_Job], list[ScoredBatch], ScoredBatch]] = deque()
        self._record_cv = threading.Condition()
        self._workers_left = concurrency  # under _record_cv: workers that may still hand batches
        self._recorder: threading.Thread | None = None
        if self._source.current.outbox is not None:
            self._recorder = threading.Thread(
                target=self._record_loop, name="recorder", daemon=True
            )
            self._recorder.start()
        for worker in self._workers:
            worker.start()

    @property
    def queued_jobs(self) -> int:
        """Jobs waiting for a worker (for tests and metrics)."""
        with self._cv:
            return len(self._jobs)

    @property
    def closing(self) -> bool:
        """True once :meth:`close` was called: new calls are refused, queued ones finish."""
        with self._cv:
            return self._closed

    def score(
        self, examples: Sequence[LabeledExample], *, deadline: float | None = None
    ) -> ScoredBatch:
        """Score ``examples`` as part of a merged batch; block until done.

        ``deadline`` is the caller's deadline in :func:`time.monotonic` seconds: a job
        still queued when it passes is dropped unscored with :class:`DeadlineExpired`.
        Raises what the pipeline raised for this job's examples.
        """
        if not examples:
            return self._source.current.score(examples)
        job = _Job(examples, deadline)
        with self._cv:
            if self._closed:
                raise ServerStopping("the server is shutting down")
            self._jobs.append(job)
            self._queued_examples += len(examples)
            self._cv.notify()
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def close(self) -> None:
        """Finish the queued jobs, then stop the workers and the recorder."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for worker in self._workers:
            worker.join()
        if self._recorder is not None:
            self._recorder.join()

    def _take(self) -> list[_Job] | None:
        """Block for the next group of live jobs (None once closed and drained)."""
        with self._cv:
            while True:
                self._idle += 1
                while not self._jobs and not self._closed:
                    self._cv.wait()
                self._idle -= 1
                if not self._jobs:
                    return None
                first = self._pop_live()
                if first is not None:
                    break
            taken = [first]
            size = len(first.examples)
            # idle workers get their share of the queue: two calls in flight beat one big one
            limit = self._max_batch
            if self._idle:
                share = -(-(size + self._queued_examples) // (self._idle + 1))
                limit = min(limit, max(share, size))
            lingered = False
            while size < limit:
                if self._jobs:
                    if size + len(self._jobs[0].examples) > limit:
                        break
                    job = self._pop_live()
                    if job is not None:
                        taken.append(job)
                        size += len(job.examples)
                    continue
                # others were waiting: more are probably on their way, linger once (unless
                # a worker is idle: it would take them at once)
                if (
                    len(taken) > 1
                    and not lingered
                    and not self._idle
                    and self._window > 0
                    and not self._closed
                ):
                    lingered = True
                    self._cv.wait(self._window)
                    continue
                break
            if self._jobs:  # what did not fit: wake an idle worker for it
                self._cv.notify()
            return taken

    def _pop_live(self) -> _Job | None:
        """Pop the first queued job; if its deadline has passed, fail it and return None."""
        job = self._jobs.popleft()
        self._queued_examples -= len(job.examples)
        if job.deadline is not None and time.monotonic() >= job.deadline:
            self._finish(
                job,
                error=DeadlineExpired(
                    "the deadline passed while the request waited for the model; "
                    "it was dropped unscored"
                ),
            )
            return None
        return job

    def _run(self) -> None:
        try:
            while (jobs := self._take()) is not None:
                try:
                    self._process(jobs)
                except BaseException as exc:  # a fault past the model call: fail, keep serving
                    log.exception("event=batch_crashed jobs=%d", len(jobs))
                    for job in jobs:
                        if not job.handed and not job.done.is_set():
                            self._finish(job, error=exc)
        finally:
            with self._record_cv:
                self._workers_left -= 1
                self._record_cv.notify()

    def _process(self, jobs: list[_Job]) -> None:
        merged = [ex for job in jobs for ex in job.examples]
        pipeline = self._source.current  # once per batch: a reload swaps between batches
        try:
            batch = pipeline.compute(merged)
        except BaseException as exc:  # handed to the callers' threads, never lost
            if len(jobs) == 1:
                self._finish(jobs[0], error=exc)
                return
            log.warning("event=batch_failed jobs=%d error=%s: retrying each", len(jobs), exc)
            # isolate: one request's failure must not fail its neighbours
            for job in jobs:
                try:
                    alone = pipeline.compute(job.examples)
                except BaseException as job_exc:
                    self._finish(job, error=job_exc)
                else:
                    self._observe(alone)
                    self._record([job], [alone], alone)
            return
        self._observe(batch)
        slices: list[ScoredBatch] = []
        start = 0
        for job in jobs:
            stop = start + len(job.examples)
            slices.append(batch.slice(start, stop))
            start = stop
        self._record(jobs, slices, batch)

    def _observe(self, batch: ScoredBatch) -> None:
        """Hand a computed batch to ``on_batch`` (the shadow sampler); never fails a caller."""
        if self._on_batch is None:
            return
        try:
            with self._observe_lock:
                self._on_batch(batch)
        except Exception:
            log.exception("event=on_batch_failed")

    def _record(self, jobs: list[_Job], slices: list[ScoredBatch], batch: ScoredBatch) -> None:
        """Record ``batch`` and release its jobs: inline, or through the recorder thread."""
        for job in jobs:
            job.handed = True
        if self._recorder is None:
            with self._commit_lock:
                self._commit([(jobs, slices, batch)])
            return
        with self._record_cv:
            self._to_record.append((jobs, slices, batch))
            self._record_cv.notify()

    def _record_loop(self) -> None:
        while True:
            with self._record_cv:
                while not self._to_record and self._workers_left:
                    self._record_cv.wait()
                if not self._to_record:
                    return
                pending = list(self._to_record)
                self._to_record.clear()
            self._commit(pending)

    def _commit(self, pending: list[tuple[list[_Job], list[ScoredBatch], ScoredBatch]]) -> None:
        """One outbox transaction for every pending batch, then each job gets its slice."""
        try:
            self._source.current.record([batch for _, _, batch in pending])
        except BaseException as exc:
            for jobs, _, _ in pending:
                for job in jobs:
                    self._finish(job, error=exc)
            return
        for jobs, slices, _ in pending:
            for job, result in zip(jobs, slices, strict=True):
                self._finish(job, result=result)

    @staticmethod
    def _finish(
        job: _Job, *, result: ScoredBatch | None = None, error: BaseException | None = None
    ) -> None:
        job.result = result
        job.error = error
        job.done.set()
