"""Consume labeled examples from NATS JetStream, score them, publish results, ack.

One :class:`StreamConsumer` holds a durable pull consumer on the input stream
(pulled by :class:`~labelwatch.ingest_fetch.PullFetcher`). Any number of
processes using the same durable name share the messages (JetStream hands each
message to one of them). For every fetched batch:

1. each message is decoded (:mod:`labelwatch.ingest_messages`) and validated
   by the codec every transport shares (:class:`~labelwatch.codec.ExampleDecoder`);
   a malformed one is published to the dead-letter subject with its reason (while
   its neighbours are scored) and acked once stored, so it is never retried;
2. the valid examples are scored as one call in a worker thread through the
   shared ``score`` callable (the :class:`~labelwatch.batcher.Batcher`, so
   concurrent batches merge into one model call) -- the pipeline stores their
   flags in the outbox before it returns;
3. the batch's results are encoded from its arrays
   (:func:`~labelwatch.ingest_messages.results_json`) and all published to the
   results subject at once, one message each with ``Nats-Msg-Id =
   <stream>-<sequence>`` (a redelivered input gets the same id, so JetStream
   drops the repeat within the duplicate window); then the JetStream acks of the
   whole batch are awaited together, within ``publish_timeout_seconds``;
4. only then are the inputs acked, each one whose result JetStream stored (the
   acks of a batch go out in one write; a plain ack suffices: a lost one means a
   redelivery, whose result is a dropped duplicate and whose flags the outbox
   already holds). A transient failure (outbox not writable, server stopping,
   a result not stored) naks those inputs with a delay instead.
   Any other scoring failure is isolated: the batch's examples are scored one
   by one, and one that still fails is nak'd until JetStream has delivered it
   ``max_deliveries`` times, then dead-lettered with the error (a poison
   message is not retried forever, nor does it hold up its neighbours).

Back-pressure: at most ``max_inflight`` messages are fetched and not yet
acked or nak'd; a slow model slows fetching. On stop (SIGTERM) fetching ends,
what is in hand is finished and acked within ``grace_seconds``; what is still
unfinished then is nak'd, so the other processes get it at once.

Consumer lag (JetStream's pending and ack-pending counts of the durable) is
read every ``lag_interval_seconds`` into the metrics, and from each fetched
message in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StreamConfig

from labelwatch.codec import DEFAULT_LIMITS, ExampleDecoder
from labelwatch.config import mask_url
from labelwatch.domain import LabeledExample, ModelSpec, ScoredBatch
from labelwatch.errors import ErrorCode, PublicError, WrongInputKind
from labelwatch.ingest_fetch import PullFetcher, ensure_durable
from labelwatch.ingest_messages import dead_letter_json, fields_from_message, results_json
from labelwatch.ingest_publish import BatchPublisher, Published
from labelwatch.metrics import IngestMetrics
from labelwatch.security.limits import ExampleLimits

log = logging.getLogger(__name__)

ScoreFn = Callable[[Sequence[LabeledExample]], ScoredBatch]
REASON_HEADER = "Labelwatch-Dead-Letter-Reason"
"""Header of a dead-letter message holding the reason (also in its JSON body)."""
TRANSIENT_CODES = frozenset(
    {ErrorCode.UNAVAILABLE, ErrorCode.RESOURCE_EXHAUSTED, ErrorCode.DEADLINE_EXCEEDED}
)
"""Scoring errors that may pass by themselves: nak'd with a delay, retried without limit."""
_INPUT_CODES = frozenset({ErrorCode.INVALID_ARGUMENT, ErrorCode.FAILED_PRECONDITION})


@dataclass(frozen=True)
class ConsumeOptions:
    """Where to read and write, and how much to hold at once. Times in seconds."""

    url: str
    stream: str
    subject: str
    durable: str
    results_subject: str = "labelwatch.results"
    dead_letter_subject: str = "labelwatch.dead"
    results_stream: str = "LABELWATCH_RESULTS"
    batch: int = 64
    max_inflight: int = 1024
    fetch_timeout_seconds: float = 1.0
    nak_delay_seconds: float = 5.0
    ack_wait_seconds: float = 60.0
    duplicate_window_seconds: float = 600.0
    grace_seconds: float = 10.0
    publish_timeout_seconds: float = 10.0
    connect_timeout_seconds: float = 15.0
    max_deliveries: int = 5
    """Deliveries of a message whose scoring fails (not transiently) before it is dead-lettered."""
    lag_interval_seconds: float = 2.0


@dataclass
class ConsumeStats:
    """What one process did (input messages)."""

    processed: int = 0
    dead_lettered: int = 0
    naked: int = 0
    abandoned: int = 0
    """Messages still in hand when the grace ran out (nak'd for the other processes)."""


async def _log_nats_error(exc: Exception) -> None:
    log.warning("event=nats_error error=%r", exc)


class StreamConsumer:
    """Scores the examples of ``options.stream`` with ``score``; see the module docs."""

    def __init__(
        self,
        options: ConsumeOptions,
        *,
        score: ScoreFn,
        spec: ModelSpec,
        metrics: IngestMetrics,
        limits: ExampleLimits = DEFAULT_LIMITS,
    ) -> None:
        if options.batch < 1 or options.max_inflight < options.batch:
            raise ValueError("batch must be >= 1 and max_inflight >= batch")
        if options.max_deliveries < 1:
            raise ValueError("max_deliveries must be >= 1")
        self.options = options
        self._score = score
        self._spec = spec
        self._decoder = ExampleDecoder(spec, limits)
        self._metrics = metrics
        self.stats = ConsumeStats()
        self._in_flight = 0
        self._slot_freed = asyncio.Event()
        self._tasks: dict[asyncio.Task[None], list[Msg]] = {}
        self._publisher: BatchPublisher | None = None

    # -- set-up ------------------------------------------------------------------------------

    async def _ensure_streams(self, js: JetStreamContext) -> None:
        o = self.options
        try:
            await js.stream_info(o.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(
                StreamConfig(
                    name=o.stream,
                    subjects=[o.subject],
                    retention=RetentionPolicy.WORK_QUEUE,
                    duplicate_window=o.duplicate_window_seconds,
                )
            )
            log.info("event=stream_created stream=%s subject=%s", o.stream, o.subject)
        try:
            await js.stream_info(o.results_stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(
                StreamConfig(
                    name=o.results_stream,
                    subjects=[o.results_subject, o.dead_letter_subject],
                    duplicate_window=o.duplicate_window_seconds,
                )
            )
            log.info(
                "event=stream_created stream=%s subjects=%s,%s",
                o.results_stream,
                o.results_subject,
                o.dead_letter_subject,
            )

    async def _connect(self) -> tuple[Client, JetStreamContext, PullFetcher]:
        o = self.options
        try:
            # the client retries an unreachable server forever: bound the first connect
            nc = await asyncio.wait_for(
                nats.connect(
                    o.url,
                    name=f"labelwatch-consume-{o.durable}",
                    connect_timeout=5,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    error_cb=_log_nats_error,
                ),
                o.connect_timeout_seconds,
            )
        except asyncio.TimeoutError as exc:
            raise ConnectionError(
                f"no connection to NATS at {mask_url(o.url)} within {o.connect_timeout_seconds}s"
            ) from exc
        js = nc.jetstream(timeout=o.publish_timeout_seconds)
        await self._ensure_streams(js)
        await ensure_durable(js, o.stream, o.durable, o.subject, o.ack_wait_seconds)
        fetcher = PullFetcher(nc, o.stream, o.durable)
        await fetcher.start()
        return nc, js, fetcher

    # -- main loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, on_ready: Callable[[], object] | None = None) -> None:
        """Fetch and process until ``stop`` is set, then drain what is in hand."""
        nc, js, fetcher = await self._connect()
        self._publisher = BatchPublisher(nc, self.options.publish_timeout_seconds)
        await self._publisher.start()
        log.info(
            "event=consuming stream=%s subject=%s durable=%s results=%s dead_letter=%s "
            "batch=%d max_inflight=%d",
            self.options.stream,
            self.options.subject,
            self.options.durable,
            self.options.results_subject,
            self.options.dead_letter_subject,
            self.options.batch,
            self.options.max_inflight,
        )
        if on_ready is not None:
            on_ready()
        lag = asyncio.create_task(self._watch_lag(js, stop))
        try:
            await self._fetch_until(stop, fetcher)
        finally:
            lag.cancel()
            await asyncio.gather(lag, return_exceptions=True)
            await self._drain(fetcher)
            with contextlib.suppress(Exception):
                await nc.flush(timeout=5)
            await nc.close()
        log.info(
            "event=consumer_stopped processed=%d dead_lettered=%d naked=%d abandoned=%d",
            self.stats.processed,
            self.stats.dead_lettered,
            self.stats.naked,
            self.stats.abandoned,
        )

    async def _fetch_until(self, stop: asyncio.Event, fetcher: PullFetcher) -> None:
        o = self.options
        while not stop.is_set():
            free = o.max_inflight - self._in_flight
            if free < 1:
                self._slot_freed.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._slot_freed.wait(), o.fetch_timeout_seconds)
                continue
            try:
                msgs = await fetcher.fetch(min(o.batch, free), o.fetch_timeout_seconds)
            except nats.errors.TimeoutError:
                continue  # nothing to fetch
            except (nats.errors.Error, OSError) as exc:
                log.warning("event=fetch_failed error=%r", exc)
                await asyncio.sleep(min(1.0, o.fetch_timeout_seconds))
                continue
            if not msgs:
                continue
            self._take(len(msgs))
            with contextlib.suppress(nats.errors.Error):
                self._metrics.pending.set(msgs[-1].metadata.num_pending)
            task = asyncio.create_task(self._handle(msgs))
            self._tasks[task] = msgs
            task.add_done_callback(self._forget)

    @property
    def _out(self) -> BatchPublisher:
        assert self._publisher is not None, "run() connects first"
        return self._publisher

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def _watch_lag(self, js: JetStreamContext, stop: asyncio.Event) -> None:
        """Every ``lag_interval_seconds``: the durable's pending and ack-pending counts."""
        while not stop.is_set():
            try:
                info = await js.consumer_info(self.options.stream, self.options.durable)
            except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
                log.debug("event=consumer_info_failed error=%r", exc)
            else:
                self._metrics.pending.set(info.num_pending or 0)
                self._metrics.ack_pending.set(info.num_ack_pending or 0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.options.lag_interval_seconds)

    async def _drain(self, fetcher: PullFetcher) -> None:
        """Finish the batches in hand within the grace; nak what is left."""
        if self._tasks:
            log.info("event=draining in_flight=%d", self._in_flight)
            _, late = await asyncio.wait(set(self._tasks), timeout=self.options.grace_seconds)
            if late:
                abandoned = self._in_flight  # only the late tasks still hold messages
                held = [m for task in late for m in self._tasks.get(task, [])]
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
                for msg in held:  # those already acked ignore the nak
                    with contextlib.suppress(nats.errors.Error):
                        await msg.nak()
                self.stats.abandoned += abandoned
                log.warning(
                    "event=drain_grace_expired abandoned=%d: nak'd for the other processes",
                    abandoned,
                )
        with contextlib.suppress(Exception):
            await fetcher.stop()
        for msg in fetcher.leftovers():  # delivered late, never handed out: back at once
            with contextlib.suppress(nats.errors.Error):
                await msg.nak()

    def _take(self, n: int) -> None:
        self._in_flight += n
        self._metrics.in_flight.set(self._in_flight)

    def _release(self, n: int) -> None:
        self._in_flight -= n
        self._metrics.in_flight.set(self._in_flight)
        self._slot_freed.set()

    # -- one batch ---------------------------------------------------------------------------

    async def _handle(self, msgs: list[Msg]) -> None:
        try:
            valid: list[tuple[Msg, LabeledExample]] = []
            bad: list[tuple[Msg, str, str]] = []
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                try:
                    example = self._decoder.decode(fields_from_message(msg.data, msg.headers), seq)
                except PublicError as exc:
                    kind = "wrong_input_kind" if isinstance(exc, WrongInputKind) else "invalid"
                    bad.append((msg, exc.message, kind))
                    continue
                valid.append((msg, example))
            # the dead letters' round trip overlaps the scoring of their neighbours
            dead = [await self._send_dead_letter(msg, reason) for msg, reason, _ in bad]
            if valid:
                await self._score_and_publish(valid)
            if bad:
                await self._settle_dead_letters(bad, dead)
        except asyncio.CancelledError:
            raise
        except Exception:  # never lose a task silently; JetStream redelivers after ack_wait
            log.exception("event=batch_failed messages=%d", len(msgs))
        finally:
            self._release(len(msgs))  # acked, nak'd, or left to the ack wait: no longer held

    async def _score_and_publish(
        self, valid: list[tuple[Msg, LabeledExample]], *, isolated: bool = False
    ) -> None:
        """Score ``valid`` in one engine call, publish every result, then ack the inputs."""
        o = self.options
        msgs = [m for m, _ in valid]
        if not isolated:
            self._metrics.batch_size.observe(len(valid))
        try:
            batch = await asyncio.to_thread(self._score, [ex for _, ex in valid])
        except PublicError as exc:
            if exc.code in TRANSIENT_CODES:
                log.warning(
                    "event=score_failed messages=%d code=%s error=%r: nak, retry in %ss",
                    len(msgs),
                    exc.code.value,
                    exc.message,
                    o.nak_delay_seconds,
                )
                await self._nak(msgs)
            else:
                await self._score_failed(valid, exc, exc.message)
            return
        except Exception as exc:  # a bug or a model crash: isolate, retry, at last dead-letter
            log.exception("event=score_failed messages=%d", len(msgs))
            await self._score_failed(valid, exc, f"{type(exc).__name__}: {exc}")
            return
        # the flags are in the outbox now; publish every result before waiting for any ack
        sequences = [m.metadata.sequence.stream for m in msgs]
        bodies = results_json(batch, self._spec.class_names, stream=o.stream, sequences=sequences)
        futures = [
            await self._out.send(o.results_subject, body, {"Nats-Msg-Id": f"{o.stream}-{seq}"})
            for body, seq in zip(bodies, sequences, strict=True)
        ]
        published = await self._out.settle(futures, "result_publish_failed")
        done = [m for m, ok in zip(msgs, published, strict=True) if ok]
        failed = [m for m, ok in zip(msgs, published, strict=True) if not ok]
        acked = await self._ack(done)
        now = time.time()
        for msg in acked:
            sent = msg.metadata.timestamp.timestamp()
            self._metrics.end_to_end_seconds.observe(max(0.0, now - sent))
        self.stats.processed += len(acked)
        self._metrics.processed.inc(len(acked))
        if failed:
            await self._nak(failed)

    async def _score_failed(
        self, valid: list[tuple[Msg, LabeledExample]], exc: Exception, error: str
    ) -> None:
        """A non-transient scoring failure: score the examples alone to find the culprit(s)."""
        if len(valid) > 1:
            for item in valid:
                await self._score_and_publish([item], isolated=True)
            return
        ((msg, example),) = valid
        where = f"example {example.id!r}"
        if isinstance(exc, PublicError) and exc.code in _INPUT_CODES:
            reason = error if where in error else f"{where}: {error}"
            await self._dead_letter(msg, reason, "invalid")
            return
        delivered = msg.metadata.num_delivered or 1
        if delivered >= self.options.max_deliveries:
            reason = (
                f"{where}: scoring failed on each of {delivered} deliveries; last error: {error}"
            )
            await self._dead_letter(msg, reason, "scoring_failed")
            return
        await self._nak([msg])

    # -- publishing and acking -----------------------------------------------------------------

    async def _ack(self, msgs: Sequence[Msg]) -> list[Msg]:
        """Ack ``msgs`` (one write for all of them); those whose ack could be sent."""
        acked: list[Msg] = []
        failed: nats.errors.Error | None = None
        for msg in msgs:
            try:
                await msg.ack()
            except nats.errors.Error as exc:  # the redelivery's result is a duplicate, dropped
                failed = exc
                continue
            acked.append(msg)
        if failed is not None:
            log.warning(
                "event=ack_failed messages=%d error=%r: JetStream redelivers them after the "
                "ack wait",
                len(msgs) - len(acked),
                failed,
            )
        return acked

    async def _send_dead_letter(self, msg: Msg, reason: str) -> Published | None:
        o = self.options
        seq = msg.metadata.sequence.stream
        body = dead_letter_json(
            reason=reason, stream=o.stream, sequence=seq, subject=msg.subject, data=msg.data
        )
        headers = {
            "Nats-Msg-Id": f"dead-{o.stream}-{seq}",
            REASON_HEADER: reason.replace("\r", " ").replace("\n", " ")[:1024],
        }
        return await self._out.send(o.dead_letter_subject, body, headers)

    async def _settle_dead_letters(
        self, bad: Sequence[tuple[Msg, str, str]], futures: Sequence[Published | None]
    ) -> None:
        """Ack each input whose dead letter JetStream stored; nak the others."""
        o = self.options
        published = await self._out.settle(futures, "dead_letter_publish_failed")
        stored = [item for item, ok in zip(bad, published, strict=True) if ok]
        failed = [msg for (msg, _, _), ok in zip(bad, published, strict=True) if not ok]
        acked = set(map(id, await self._ack([msg for msg, _, _ in stored])))
        for msg, reason, kind in stored:
            if id(msg) not in acked:
                continue
            seq = msg.metadata.sequence.stream
            log.info("event=dead_lettered stream=%s sequence=%d reason=%r", o.stream, seq, reason)
            self.stats.dead_lettered += 1
            self._metrics.dead_lettered.labels(kind).inc()
        if failed:
            await self._nak(failed)

    async def _dead_letter(self, msg: Msg, reason: str, kind: str) -> None:
        """Publish ``msg`` with ``reason`` to the dead-letter subject, then ack it."""
        await self._settle_dead_letters(
            [(msg, reason, kind)], [await self._send_dead_letter(msg, reason)]
        )

    async def _nak(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            with contextlib.suppress(nats.errors.Error):
                await msg.nak(delay=self.options.nak_delay_seconds)
        self.stats.naked += len(msgs)
        self._metrics.naked.inc(len(msgs))
