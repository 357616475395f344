"""NATS JetStream sink: publish each flag as JSON, deduplicated by ``Nats-Msg-Id``.

Each flag (the JSON object of ``docs/delivery.md``) is one message on
``subject``, with header ``Nats-Msg-Id`` = the flag id, so JetStream drops a
republished flag within the stream's duplicate window. A flag counts as
delivered only once its publish ack arrived. The stream is created when
missing (``subjects=[subject]``, file storage, the configured duplicate window).

nats-py is asyncio; the sink runs its own event loop in a daemon thread, so the
connection keeps answering server pings between batches.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from labelwatch.flag_record import Flag
from labelwatch.sinks.base import (
    DeliveryError,
    PermanentError,
    RetryableError,
    SinkUnavailable,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class NatsSink:
    """Publishes flags to JetStream ``stream`` on ``subject`` at ``url`` (``nats://host:port``)."""

    name = "nats"

    def __init__(
        self,
        url: str,
        *,
        subject: str = "labelwatch.flags",
        stream: str = "LABELWATCH_FLAGS",
        duplicate_window_seconds: float = 600.0,
        max_batch: int = 100,
        timeout_seconds: float = 5.0,
    ) -> None:
        self.url = url
        self.subject = subject
        self.stream = stream
        self.duplicate_window = duplicate_window_seconds
        self.max_batch = max_batch
        self._timeout = timeout_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=loop.run_forever, name=f"sink-{self.name}-loop", daemon=True
            )
            self._thread.start()
            self._loop = loop
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise TimeoutError(f"no answer from {self.url} within {timeout}s") from exc

    def open(self) -> None:
        """Connect (if not connected) and make sure the stream exists."""
        try:
            self._run(self._open(), self._timeout * 3)
        except DeliveryError:
            raise
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise SinkUnavailable(f"cannot reach NATS at {self.url}: {exc!r}") from exc

    async def _open(self) -> None:
        if self._nc is None or self._nc.is_closed:
            self._nc = await nats.connect(
                self.url,
                name="labelwatch",
                connect_timeout=int(max(1, self._timeout)),
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
            )
        self._js = self._nc.jetstream(timeout=self._timeout)
        try:
            info = await self._js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await self._js.add_stream(
                name=self.stream,
                subjects=[self.subject],
                duplicate_window=self.duplicate_window,
            )
            log.info(
                "event=nats_stream_created stream=%s subject=%s duplicate_window=%ss",
                self.stream,
                self.subject,
                self.duplicate_window,
            )
            return
        subjects = info.config.subjects or []
        if self.subject not in subjects:
            # publishing would fail for every flag: a configuration problem, not a flag's
            raise SinkUnavailable(
                f"NATS stream {self.stream} does not take subject {self.subject!r} "
                f"(its subjects: {', '.join(subjects) or 'none'}); fix --nats-subject/--nats-stream"
            )

    def deliver(self, flags: Sequence[Flag]) -> int:
        """Publish ``flags`` pipelined, in order; return how many were acked before a failure."""
        if self._nc is None or self._js is None:
            raise SinkUnavailable(f"not connected to NATS at {self.url}")
        try:
            return self._run(self._publish(flags), self._timeout * 2)
        except DeliveryError:
            raise
        except TimeoutError as exc:
            raise self._transport_error(f"publish acks timed out: {exc}", 0) from exc

    def _transport_error(self, message: str, delivered: int) -> DeliveryError:
        if self._nc is None or not self._nc.is_connected:
            return SinkUnavailable(
                f"NATS at {self.url} is unreachable: {message}", delivered=delivered
            )
        return RetryableError(message, delivered=delivered)

    async def _publish(self, flags: Sequence[Flag]) -> int:
        assert self._js is not None
        acks: list[asyncio.Future[Any]] = []
        try:
            for flag in flags:
                acks.append(
                    await self._js.publish_async(
                        self.subject,
                        flag.to_json().encode("utf-8"),
                        wait_stall=self._timeout,
                        stream=self.stream,
                        headers={"Nats-Msg-Id": flag.flag_id},
                    )
                )
        except (nats.errors.Error, OSError) as exc:
            for pending in acks:
                pending.cancel()
            raise self._transport_error(f"publish failed: {exc!r}", 0) from exc
        delivered = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            for pending in acks:
                await asyncio.wait_for(pending, max(0.0, deadline - loop.time()))
                delivered += 1
        except nats.js.errors.BadRequestError as exc:
            raise PermanentError(f"JetStream refused the flag: {exc}", delivered=delivered) from exc
        except nats.js.errors.APIError as exc:
            raise RetryableError(f"JetStream error: {exc}", delivered=delivered) from exc
        except (asyncio.TimeoutError, nats.errors.Error, OSError) as exc:
            raise self._transport_error(f"no publish ack: {exc!r}", delivered) from exc
        finally:
            for pending in acks[delivered:]:
                pending.cancel()
        return delivered

    def close(self) -> None:
        """Close the connection and stop the event loop thread."""
        loop = self._loop
        if loop is None:
            return
        if self._nc is not None and not self._nc.is_closed:
            try:
                self._run(self._nc.close(), self._timeout)
            except Exception:  # best effort at shutdown
                log.debug("event=nats_close_failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(self._timeout)
        loop.close()
        self._loop = None
        self._nc = None
        self._js = None
