"""Dynamic batching: concurrent requests share one model call, then split back in order.

gRPC handler threads call :meth:`Batcher.score` with one request's validated
examples and block until their slice of a merged batch is ready. One worker
thread runs the pipeline: it takes every job queued while the previous batch
ran (up to ``max_batch`` examples). A lone request runs at once; only when
other requests are already waiting does the worker linger up to
``window_seconds`` for more, so batches grow under load without adding latency
when idle.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from labelwatch.domain import LabeledExample, ScoredBatch
from labelwatch.errors import ServerStopping
from labelwatch.pipeline import Pipeline

log = logging.getLogger(__name__)


@dataclass
class _Job:
    examples: Sequence[LabeledExample]
    done: threading.Event = field(default_factory=threading.Event)
    result: ScoredBatch | None = None
    error: BaseException | None = None


class Batcher:
    """Merges concurrent :meth:`score` calls into batches of at most ``max_batch`` examples."""

    def __init__(self, pipeline: Pipeline, *, max_batch: int, window_seconds: float) -> None:
        self._pipeline = pipeline
        self._max_batch = max_batch
        self._window = window_seconds
        self._jobs: deque[_Job] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="batcher", daemon=True)
        self._worker.start()

    @property
    def queued_jobs(self) -> int:
        """Jobs waiting for the worker (for tests and metrics)."""
        with self._cv:
            return len(self._jobs)

    def score(self, examples: Sequence[LabeledExample]) -> ScoredBatch:
        """Score ``examples`` as part of a merged batch; block until done.

        Raises what the pipeline raised for this job's examples.
        """
        if not examples:
            return self._pipeline.score(examples)
        job = _Job(examples)
        with self._cv:
            if self._closed:
                raise ServerStopping("the server is shutting down")
            self._jobs.append(job)
            self._cv.notify()
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def close(self) -> None:
        """Finish the queued jobs, then stop the worker."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._worker.join()

    def _take(self) -> list[_Job] | None:
        """Block for the next group of jobs (None once closed and drained)."""
        with self._cv:
            while not self._jobs and not self._closed:
                self._cv.wait()
            if not self._jobs:
                return None
            taken = [self._jobs.popleft()]
            size = len(taken[0].examples)
            lingered = False
            while size < self._max_batch:
                if self._jobs:
                    if size + len(self._jobs[0].examples) > self._max_batch:
                        break
                    job = self._jobs.popleft()
                    taken.append(job)
                    size += len(job.examples)
                    continue
                # others were waiting: more are probably on their way, linger once
                if len(taken) > 1 and not lingered and self._window > 0 and not self._closed:
                    lingered = True
                    self._cv.wait(self._window)
                    continue
                break
            return taken

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            self._process(jobs)

    def _process(self, jobs: list[_Job]) -> None:
        merged = [ex for job in jobs for ex in job.examples]
        try:
            batch = self._pipeline.score(merged)
        except BaseException as exc:  # handed to the callers' threads, never lost
            if len(jobs) == 1:
                self._finish(jobs[0], error=exc)
                return
            log.warning("event=batch_failed jobs=%d error=%s: retrying each", len(jobs), exc)
            # isolate: one request's failure must not fail its neighbours
            for job in jobs:
                try:
                    self._finish(job, result=self._pipeline.score(job.examples))
                except BaseException as job_exc:
                    self._finish(job, error=job_exc)
            return
        start = 0
        for job in jobs:
            stop = start + len(job.examples)
            self._finish(job, result=batch.slice(start, stop))
            start = stop

    @staticmethod
    def _finish(
        job: _Job, *, result: ScoredBatch | None = None, error: BaseException | None = None
    ) -> None:
        job.result = result
        job.error = error
        job.done.set()
