"""Watch consumers: stream flags from a consumer's cursor, redeliver what is not acknowledged.

Transport-agnostic: :class:`FlagFeed` yields :class:`Delivery` values and takes
acks; :mod:`labelwatch.grpc.flag_feed` translates them to and from gRPC.

One active stream per consumer: a newer :meth:`FlagFeed.watch` for the same
consumer ends the older one with :class:`Superseded`. Each stream keeps the
flags it sent and that are not yet acknowledged ("in flight", at most
``max_in_flight``) and sends one again when its ack timeout passes. A stream
that ends forgets its in-flight set, so a consumer that reconnects gets every
flag above its stored cursor that it had not acknowledged.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field

from labelwatch.errors import (
    ConsumerNotFound,
    FeedUnavailable,
    InvalidWatch,
    Superseded,
    TooManyStreams,
)
from labelwatch.flag_record import Flag
from labelwatch.outbox import AckResult, Outbox, OutboxError, UnknownConsumer
from labelwatch.scoring import IssueKind

CONSUMER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DEFAULT_MAX_IN_FLIGHT = 1000
_SCAN_BATCH = 256


@dataclass(frozen=True)
class WatchFilter:
    """Which flags a stream sends. Empty collections and None mean "any"."""

    classes: frozenset[str] = frozenset()
    kinds: frozenset[IssueKind] = frozenset()
    max_label_quality: float | None = None
    annotator_ids: frozenset[str] = frozenset()
    min_error_probability: float | None = None

    def matches(self, flag: Flag) -> bool:
        """Whether ``flag`` passes every filter that is set.

        ``classes``, ``kinds`` and ``min_error_probability`` must all hold for one issue;
        an issue without an error probability counts as 0.
        """
        if self.max_label_quality is not None and flag.label_quality > self.max_label_quality:
            return False
        if self.annotator_ids and flag.annotator_id not in self.annotator_ids:
            return False
        least = self.min_error_probability
        if not self.classes and not self.kinds and not least:
            return True
        return any(
            (not self.classes or issue.label in self.classes)
            and (not self.kinds or issue.kind in self.kinds)
            and (not least or (issue.error_probability or 0.0) >= least)
            for issue in flag.issues
        )


@dataclass(frozen=True)
class StartAt:
    """Where a new consumer starts: a position, a time (unix seconds), or the oldest flag."""

    position: int | None = None
    time: float | None = None


@dataclass(frozen=True)
class Delivery:
    """One flag sent on a stream; ``redelivered`` = sent before on it, ack timed out."""

    flag: Flag
    redelivered: bool


@dataclass
class _Stream:
    consumer: str
    in_flight: dict[int, tuple[float, Flag]] = field(default_factory=dict)
    superseded: bool = False


def check_consumer(name: str) -> None:
    """Raise :class:`InvalidWatch` unless ``name`` is a valid consumer name."""
    if not CONSUMER_NAME.match(name):
        raise InvalidWatch(
            f"field 'consumer': {name!r} is not a valid consumer name "
            "(1-64 characters from A-Z a-z 0-9 _ . -)"
        )


class FlagFeed:
    """Serves watch consumers from ``outbox``.

    ``ack_timeout_seconds``: default redelivery delay; ``poll_seconds``: how
    often a waiting stream looks at the outbox even without a wake-up (flags
    written by another process, e.g. a replay); ``max_streams``: open streams
    at most (each holds a server thread, so scoring keeps the rest). ``clock``
    is monotonic seconds.
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        ack_timeout_seconds: float = 30.0,
        poll_seconds: float = 1.0,
        max_streams: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._outbox = outbox
        self._max_streams = max_streams
        self._ack_timeout = ack_timeout_seconds
        self._poll = poll_seconds
        self._clock = clock
        self._cond = threading.Condition()
        self._generation = 0
        self._streams: dict[str, _Stream] = {}
        self._closed = False
        outbox.add_write_listener(self.wake)

    def wake(self) -> None:
        """Wake every waiting stream (new flags, acks, shutdown)."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def close(self) -> None:
        """End every stream at its next step (server shutdown)."""
        self._closed = True
        self.wake()

    def _start_consumer(self, consumer: str, start: StartAt) -> None:
        if self._outbox.consumer("watch", consumer) is not None:
            return
        if start.position is not None:
            cursor = start.position - 1
        elif start.time is not None:
            cursor = self._outbox.position_before(start.time)
        else:
            cursor = 0
        self._outbox.ensure_consumer("watch", consumer, cursor=cursor)

    def watch(
        self,
        consumer: str,
        *,
        start: StartAt = StartAt(),
        flag_filter: WatchFilter = WatchFilter(),
        ack_timeout_seconds: float = 0.0,
        max_in_flight: int = 0,
        is_active: Callable[[], bool] = lambda: True,
    ) -> Iterator[Delivery]:
        """Yield flags for ``consumer`` until ``is_active()`` turns false or the feed closes.

        Raises :class:`InvalidWatch` for bad arguments, :class:`Superseded` when
        another stream takes the consumer over and :class:`FeedUnavailable`
        when the outbox fails.
        """
        check_consumer(consumer)
        if ack_timeout_seconds < 0 or ack_timeout_seconds > 86400:
            raise InvalidWatch("field 'ack_timeout_seconds': must be in [0, 86400]")
        if max_in_flight < 0:
            raise InvalidWatch("field 'max_in_flight': must be >= 0")
        timeout = ack_timeout_seconds or self._ack_timeout
        window = max_in_flight or DEFAULT_MAX_IN_FLIGHT
        try:
            self._start_consumer(consumer, start)
        except OutboxError as exc:
            raise FeedUnavailable(f"the flag outbox is unavailable: {exc}") from exc
        stream = _Stream(consumer)
        with self._cond:
            older = self._streams.get(consumer)
            if older is not None:
                older.superseded = True
            elif len(self._streams) >= self._max_streams:
                raise TooManyStreams(
                    f"this server already serves {len(self._streams)} WatchFlags streams, its "
                    "limit (half of --threads); retry later, or raise --threads"
                )
            self._streams[consumer] = stream
            self._generation += 1
            self._cond.notify_all()
        try:
            yield from self._run(stream, flag_filter, timeout, window, is_active)
        finally:
            with self._cond:
                if self._streams.get(consumer) is stream:
                    del self._streams[consumer]

    def _run(
        self,
        stream: _Stream,
        flag_filter: WatchFilter,
        timeout: float,
        window: int,
        is_active: Callable[[], bool],
    ) -> Iterator[Delivery]:
        scanned = 0
        while True:
            with self._cond:
                generation = self._generation
                if stream.superseded:
                    raise Superseded(
                        f"a newer WatchFlags stream for consumer {stream.consumer!r} took over"
                    )
                if self._closed or not is_active():
                    return
                now = self._clock()
                due = [(p, f) for p, (t, f) in stream.in_flight.items() if t <= now]
            if due:
                due = self._still_due(stream, due, now + timeout)
            for _, flag in due:
                yield Delivery(flag, redelivered=True)
            with self._cond:
                room = window - len(stream.in_flight)
            fresh: list[Flag] = []
            if room > 0:
                try:
                    batch, scanned = self._outbox.pending(
                        "watch", stream.consumer, after=scanned, limit=min(room, _SCAN_BATCH)
                    )
                    fresh = [f for f in batch if flag_filter.matches(f)]
                    skipped = [f.position for f in batch if not flag_filter.matches(f)]
                    if skipped:
                        self._outbox.ack("watch", stream.consumer, positions=skipped)
                except OutboxError as exc:
                    raise FeedUnavailable(f"the flag outbox is unavailable: {exc}") from exc
                with self._cond:
                    sent_at = self._clock()
                    for flag in fresh:
                        stream.in_flight[flag.position] = (sent_at + timeout, flag)
                for flag in fresh:
                    yield Delivery(flag, redelivered=False)
                if batch:
                    continue
            if due:
                continue
            with self._cond:
                if self._generation == generation and not stream.superseded:
                    deadlines = [t for t, _ in stream.in_flight.values()]
                    wait = self._poll
                    if deadlines:
                        wait = max(0.0, min(wait, min(deadlines) - self._clock()))
                    self._cond.wait(wait)

    def _still_due(
        self, stream: _Stream, due: list[tuple[int, Flag]], next_deadline: float
    ) -> list[tuple[int, Flag]]:
        """Drop from ``due`` what was acknowledged meanwhile (perhaps via another process)."""
        try:
            pending = self._outbox.still_pending("watch", stream.consumer, [p for p, _ in due])
        except OutboxError as exc:
            raise FeedUnavailable(f"the flag outbox is unavailable: {exc}") from exc
        with self._cond:
            for position, flag in due:
                if position not in pending:
                    stream.in_flight.pop(position, None)
                elif position in stream.in_flight:
                    stream.in_flight[position] = (next_deadline, flag)
        return [(p, f) for p, f in due if p in pending]

    def ack(self, consumer: str, *, up_to: int = 0, flag_ids: Collection[str] = ()) -> AckResult:
        """Acknowledge flags for ``consumer``; its stream stops redelivering them."""
        check_consumer(consumer)
        if up_to < 0:
            raise InvalidWatch("field 'up_to': must be >= 0")
        if up_to == 0 and not flag_ids:
            raise InvalidWatch("give 'up_to' (a position) or 'flag_ids' to acknowledge")
        try:
            result = self._outbox.ack("watch", consumer, up_to=up_to, flag_ids=flag_ids)
        except UnknownConsumer as exc:
            raise ConsumerNotFound(
                f"consumer {consumer!r} is unknown: it must call WatchFlags first"
            ) from exc
        except OutboxError as exc:
            raise FeedUnavailable(f"the flag outbox is unavailable: {exc}") from exc
        acked = set(result.acked_positions)
        with self._cond:
            stream = self._streams.get(consumer)
            if stream is not None:
                for position in list(stream.in_flight):
                    if position <= result.cursor or position in acked:
                        del stream.in_flight[position]
        return result
