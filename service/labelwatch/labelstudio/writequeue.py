"""Durable write-back queue: scored annotations waiting to be written to Label Studio.

:class:`WriteBackQueue` stores each :class:`WriteBack` in the outbox's write-back
table (:mod:`labelwatch.outbox.writeback`: same file, WAL and lock as the flags;
survives a restart of labelwatch), one pending write per annotation: a newer
version of an annotation replaces the write still waiting for an older one.

:class:`WriteBackWorker` drains it (see its docstring). Several processes
(``--workers``) may drain the same table: a row is claimed in a transaction and
leased with every other write of its task, so only one of them writes a task at a
time (no annotation's entry is lost to two read-merge-patches crossing).
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from labelwatch.labelstudio.client import LabelStudioError
from labelwatch.labelstudio.leases import lease_owner
from labelwatch.outbox import NewWrite, Outbox, OutboxError
from labelwatch.sinks.base import RetryPolicy

log = logging.getLogger(__name__)

LEASE_SECONDS = 120.0
"""How long a claimed write stays invisible to other drainers (a crashed one's rows return)."""


@dataclass(frozen=True)
class WriteBack:
    """What is written to one task for one annotation version (JSON round-trips exactly)."""

    project_id: int
    task_id: int
    annotation_id: int
    version: str  # the annotation's updated_at
    label_quality: float  # in [0, 1]; low = likely mislabeled
    flagged: bool
    issues: tuple[tuple[str, str, float], ...]  # (label, "missing"/"spurious", probability)
    suggested: tuple[str, ...]  # the tags labelwatch suggests (labels XOR flags)
    model_version: str
    choices_name: str  # from_name of predictions
    to_name: str
    # the highest error probability of the flagged tags (None: none, or no tag-context model)
    error_probability: float | None = None
    deleted: bool = False  # the annotation was deleted: remove its entry, keep nothing else

    @property
    def key(self) -> str:
        """The queue key: one pending write per annotation."""
        return f"{self.task_id}:{self.annotation_id}"

    def queued(self) -> NewWrite:
        """This write as a row of the outbox's write-back queue."""
        return NewWrite(self.key, self.task_id, self.version, self.to_json())

    def to_json(self) -> str:
        """This write as a JSON object."""
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> WriteBack:
        """Inverse of :meth:`to_json`."""
        d: dict[str, Any] = json.loads(raw)
        d["issues"] = tuple((str(a), str(b), float(c)) for a, b, c in d["issues"])
        d["suggested"] = tuple(d["suggested"])
        return cls(**d)


@dataclass(frozen=True)
class Claimed:
    """A write taken off the queue by :meth:`WriteBackQueue.claim`."""

    write: WriteBack
    attempts: int  # failed tries before this one


class WriteBackQueue:
    """The write-back queue of ``outbox``, in :class:`WriteBack` values.

    Every method raises :class:`OutboxError` when the file cannot be read or written.
    """

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self.listeners: list[Callable[[], None]] = []
        """Called after :meth:`put` stored a write, or :meth:`notify` (wakes the worker)."""

    def clock(self) -> float:
        """Now, in unix seconds (the outbox's clock)."""
        return self._outbox.clock()

    def put(self, write: WriteBack) -> None:
        """Store ``write``, replacing a waiting write of an older version of the annotation."""
        self._outbox.put_writeback(write.key, write.version, write.to_json(), task_id=write.task_id)
        self.notify()

    def notify(self) -> None:
        """Tell the listeners a write was queued (also by the event inbox's transaction)."""
        for callback in list(self.listeners):
            callback()

    def claim(self, limit: int, *, lease_seconds: float = LEASE_SECONDS) -> list[Claimed]:
        """Up to ``limit`` due writes, oldest due first, leased for ``lease_seconds``."""
        rows = self._outbox.claim_writebacks(
            limit, lease_seconds=lease_seconds, owner=lease_owner()
        )
        return [Claimed(WriteBack.from_json(row.payload), row.attempts) for row in rows]

    def done(self, write: WriteBack) -> None:
        """Remove ``write`` (kept if a newer version of the annotation replaced it meanwhile)."""
        self._outbox.finish_writeback(write.key, write.version)

    def retry_at(self, write: WriteBack, due_at: float, error: str) -> None:
        """Count a failed try of ``write`` and make it due again at ``due_at`` (unix seconds)."""
        self._outbox.retry_writeback(write.key, write.version, due_at=due_at, error=error)

    def release(self, writes: Sequence[WriteBack]) -> None:
        """Make claimed but unattempted ``writes`` due again now (no attempt counted)."""
        self._outbox.release_writebacks([(w.key, w.version) for w in writes])

    def pending(self) -> tuple[int, float | None]:
        """(writes waiting, created_at of the oldest one or None)."""
        return self._outbox.writeback_backlog()

    def next_due_in(self) -> float | None:
        """Seconds until the next write is due (0 if one is due now), None when empty."""
        return self._outbox.next_writeback_due_in()


def _permanent(exc: LabelStudioError) -> bool:
    """Label Studio refused this write for good: the task is gone or the content is wrong."""
    return 400 <= exc.status < 500 and exc.status not in (401, 403, 408, 429)


class WriteBackWorker:
    """A thread writing the queue to Label Studio with ``write`` (:class:`TaskWriter`).

    * success: the row is removed;
    * Label Studio unreachable, 401/403, 408, 429 or 5xx: the row is retried with
      ``policy``'s exponential backoff, for as long as it takes (the worker also
      pauses that long before trying any other row, so a Label Studio that is down
      is not hammered);
    * any other 4xx (e.g. 404: the task was deleted): the write is dropped and logged.

    ``on_outcome`` is called with ``written``, ``retry`` or ``dropped`` (metrics).
    """

    def __init__(
        self,
        queue: WriteBackQueue,
        write: Callable[[WriteBack], None],
        *,
        policy: RetryPolicy,
        on_outcome: Callable[[str], None] = lambda outcome: None,
        batch: int = 20,
        idle_seconds: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self._queue = queue
        self._write = write
        self._policy = policy
        self._on_outcome = on_outcome
        self._batch = batch
        self._idle = idle_seconds
        self._rng = rng or random.Random()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._failures = 0  # consecutive failed writes (worker-wide pause)
        queue.listeners.append(self._wake.set)
        self._thread = threading.Thread(target=self._loop, name="ls-writeback", daemon=True)

    def start(self) -> None:
        """Start draining (rows left by an earlier run are written first)."""
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Stop after the write in progress; what is left stays queued for the next start."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                pause = self.drain_once()
            except OutboxError as exc:
                log.error("event=ls_writeback_queue_error error=%r", str(exc))
                pause = self._policy.backoff(3, self._rng)
            except Exception:  # a bug must not stop write-backs silently
                log.exception("event=ls_writeback_worker_error")
                pause = self._policy.backoff(3, self._rng)
            if pause > 0:
                self._wake.clear()
                self._wake.wait(pause)

    def drain_once(self) -> float:
        """Write the due rows; return how long to wait before the next pass (seconds)."""
        claimed = self._queue.claim(self._batch)
        for i, item in enumerate(claimed):
            if self._stopping.is_set():
                self._release(claimed[i:])
                return 0.0
            if not self._try(item):
                self._release(claimed[i + 1 :])
                return self._policy.backoff(self._failures, self._rng)
        if claimed:
            return 0.0
        due = self._queue.next_due_in()
        return self._idle if due is None else min(self._idle, due)

    def _release(self, items: Sequence[Claimed]) -> None:
        if items:
            self._queue.release([item.write for item in items])

    def _try(self, item: Claimed) -> bool:
        """Write one row; False when Label Studio is unavailable (the caller pauses)."""
        write = item.write
        try:
            self._write(write)
        except LabelStudioError as exc:
            if _permanent(exc):
                self._queue.done(write)
                self._on_outcome("dropped")
                log.error(
                    "event=ls_writeback_dropped task=%d annotation=%d version=%s error=%r",
                    write.task_id,
                    write.annotation_id,
                    write.version,
                    str(exc),
                )
                return True
            self._failures += 1
            wait = self._policy.backoff(max(self._failures, item.attempts + 1), self._rng)
            self._queue.retry_at(write, self._queue.clock() + wait, str(exc))
            self._on_outcome("retry")
            log.warning(
                "event=ls_writeback_failed task=%d annotation=%d attempt=%d retry_in=%.1fs "
                "error=%r",
                write.task_id,
                write.annotation_id,
                item.attempts + 1,
                wait,
                str(exc),
            )
            return False
        self._failures = 0
        self._queue.done(write)
        self._on_outcome("written")
        log.info(
            "event=ls_writeback_written task=%d annotation=%d version=%s label_quality=%.4f",
            write.task_id,
            write.annotation_id,
            write.version,
            write.label_quality,
        )
        return True
