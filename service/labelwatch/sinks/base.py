"""What every sink shares: the error classes, the retry policy and the delivery worker.

A sink turns a batch of flags into a delivery to one destination. A
:class:`SinkWorker` thread feeds it from the outbox, in position order,
head of line first:

* the sink delivers a prefix of the batch and returns how many (all, normally);
* :class:`SinkUnavailable` (cannot connect): retried with backoff for as long
  as it lasts; the attempt does not count, the backlog grows and drains in
  order when the sink is back;
* :class:`RetryableError` (5xx, 429, timeout): retried with exponential
  backoff and jitter; after ``max_attempts`` the head flag is dead-lettered;
* :class:`PermanentError` (the destination refused this content): the batch is
  retried one flag at a time to find the culprit, which is dead-lettered.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from labelwatch.flag_record import Flag
from labelwatch.metrics import DeliveryMetrics
from labelwatch.outbox import Outbox, OutboxError

log = logging.getLogger(__name__)


class DeliveryError(Exception):
    """A failed delivery. ``delivered``: how many flags of the batch got through first."""

    def __init__(self, message: str, *, delivered: int = 0) -> None:
        super().__init__(message)
        self.delivered = delivered


class SinkUnavailable(DeliveryError):
    """The destination cannot be reached (refused, DNS, auth rejected): not the flag's fault."""


class RetryableError(DeliveryError):
    """The destination answered "try again" (5xx, 429, timeout)."""

    def __init__(
        self, message: str, *, delivered: int = 0, retry_after: float | None = None
    ) -> None:
        super().__init__(message, delivered=delivered)
        self.retry_after = retry_after


class PermanentError(DeliveryError):
    """The destination refused the content (e.g. HTTP 4xx): retrying will not help."""


class Sink(Protocol):
    """One destination. ``name`` is its outbox consumer name and metric label."""

    name: str
    max_batch: int

    def open(self) -> None:
        """Connect and prepare (e.g. create the project/stream); raise DeliveryError if not."""

    def deliver(self, flags: Sequence[Flag]) -> int:
        """Deliver ``flags`` in order; return how many were delivered (normally all).

        Raise a :class:`DeliveryError` whose ``delivered`` says how many of the
        batch got through before the failure.
        """

    def close(self) -> None:
        """Release connections."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; ``max_attempts`` tries before a dead letter.

    The n-th retry waits ``d/2 + uniform(0, d/2)`` seconds with
    ``d = min(max_seconds, initial_seconds * 2**(n-1))``.
    """

    max_attempts: int = 10
    initial_seconds: float = 0.5
    max_seconds: float = 60.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after the ``attempt``-th consecutive failure (1-based)."""
        d = min(self.max_seconds, self.initial_seconds * 2.0 ** max(0, attempt - 1))
        return d / 2 + rng.uniform(0, d / 2)


class SinkWorker:
    """A thread delivering the outbox to one sink (see the module docstring)."""

    def __init__(
        self,
        sink: Sink,
        outbox: Outbox,
        metrics: DeliveryMetrics,
        *,
        policy: RetryPolicy = RetryPolicy(),
        poll_seconds: float = 2.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self._outbox = outbox
        self._metrics = metrics
        self._policy = policy
        self._poll = poll_seconds
        self._rng = rng or random.Random()
        self._clock = clock
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._opened = False
        self._attempts = 0  # consecutive counted failures of the head flag
        self._unavailable = 0  # consecutive unavailable results
        self._isolate_through = 0  # deliver one at a time up to this position
        outbox.add_write_listener(self._wake.set)

    def start(self) -> None:
        """Register the sink as an outbox consumer (from the oldest flag) and start the thread."""
        try:
            self._outbox.ensure_consumer("sink", self.sink.name)
        except OutboxError as exc:  # the loop retries; health reports the outbox
            log.error("event=sink_register_failed sink=%s error=%r", self.sink.name, str(exc))
        self._thread = threading.Thread(
            target=self._loop, name=f"sink-{self.sink.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Stop after the delivery in progress (waits at most ``timeout`` seconds)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        try:
            self.sink.close()
        except Exception:  # closing is best effort at shutdown
            log.warning("event=sink_close_failed sink=%s", self.sink.name, exc_info=True)

    def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        self._wake.wait(seconds)

    def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` without waking up early for new flags (backoff)."""
        self._stopping.wait(seconds)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                worked = self._step()
            except OutboxError as exc:
                log.error("event=sink_outbox_error sink=%s error=%r", self.sink.name, str(exc))
                self._pause(self._policy.backoff(3, self._rng))
                continue
            except Exception:  # a bug in a sink must not kill its worker silently
                log.exception("event=sink_worker_error sink=%s", self.sink.name)
                self._pause(self._policy.backoff(3, self._rng))
                continue
            if not worked:
                self._sleep(self._poll)

    def _step(self) -> bool:
        """One delivery attempt; return False when there was nothing to deliver."""
        if self._outbox.consumer("sink", self.sink.name) is None:
            self._outbox.ensure_consumer("sink", self.sink.name)
        batch, requeued = self._outbox.next_for_sink(self.sink.name, self.sink.max_batch)
        if not batch:
            return False
        if batch[0].position <= self._isolate_through and not requeued:
            batch = batch[:1]
        if requeued:
            batch = batch[:1]  # requeued dead letters go one by one: each may fail again
        try:
            if not self._opened:
                self.sink.open()
                self._opened = True
            delivered = self.sink.deliver(batch)
            error: DeliveryError | None = None
        except DeliveryError as exc:
            delivered, error = exc.delivered, exc
        delivered = max(0, min(delivered, len(batch)))
        if delivered:
            self._outbox.delivered(self.sink.name, batch[:delivered])
            self._metrics.deliveries.labels(self.sink.name, "delivered").inc(delivered)
            self._attempts = 0
            self._unavailable = 0
        if error is None:
            return True
        self._failed(batch[delivered:], error)
        return True

    def _failed(self, rest: Sequence[Flag], error: DeliveryError) -> None:
        name, head = self.sink.name, rest[0]
        if isinstance(error, SinkUnavailable):
            self._opened = False  # reconnect (and re-check the destination) next time
            self._unavailable += 1
            self._metrics.deliveries.labels(name, "unavailable").inc(len(rest))
            wait = self._policy.backoff(self._unavailable, self._rng)
            log.warning(
                "event=sink_unavailable sink=%s pending_from=%d retry_in=%.1fs error=%r",
                name,
                head.position,
                wait,
                str(error),
            )
            self._pause(wait)
            return
        if isinstance(error, PermanentError):
            if len(rest) > 1:
                self._isolate_through = rest[-1].position
                return
            self._dead_letter(head, self._attempts + 1, error)
            return
        self._attempts += 1
        self._metrics.deliveries.labels(name, "retry").inc(len(rest))
        if self._attempts >= self._policy.max_attempts:
            if len(rest) > 1:  # find out whether one flag is the cause
                self._isolate_through = rest[-1].position
                self._attempts = 0
                return
            self._dead_letter(head, self._attempts, error)
            return
        wait = self._policy.backoff(self._attempts, self._rng)
        if isinstance(error, RetryableError) and error.retry_after is not None:
            wait = max(wait, min(error.retry_after, self._policy.max_seconds))
        log.warning(
            "event=sink_retry sink=%s position=%d attempt=%d retry_in=%.1fs error=%r",
            name,
            head.position,
            self._attempts,
            wait,
            str(error),
        )
        self._pause(wait)

    def _dead_letter(self, flag: Flag, attempts: int, error: DeliveryError) -> None:
        name = self.sink.name
        self._outbox.dead_letter(name, flag, attempts=attempts, error=str(error))
        self._metrics.deliveries.labels(name, "dead_letter").inc()
        self._metrics.dead_letters.labels(name).inc()
        self._attempts = 0
        log.error(
            "event=sink_dead_letter sink=%s flag_id=%s position=%d attempts=%d error=%r",
            name,
            flag.flag_id,
            flag.position,
            attempts,
            str(error),
        )
