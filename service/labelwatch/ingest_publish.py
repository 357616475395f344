"""Publish a batch's messages to JetStream at once, then wait for all their acks together.

The consumer (:mod:`labelwatch.ingest`) sends every result of a scored batch
without waiting for each JetStream ack (``publish_async``), so they leave in one
write; :meth:`BatchPublisher.settle` then waits once for the whole batch, and
says per message whether JetStream stored it. Only those inputs are acked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck

log = logging.getLogger("labelwatch.ingest")

_CLIENT_WINDOW = 4000
"""nats-py's default bound on async publishes awaiting their JetStream ack."""


def publish_window(max_inflight: int) -> int:
    """The client's async-publish window for a consumer holding ``max_inflight`` messages.

    Each message in hand has at most one publish out (its result or its dead
    letter), so a window of at least ``max_inflight`` never stalls a publish.
    """
    return max(_CLIENT_WINDOW, max_inflight)


class BatchPublisher:
    """Sends without waiting; settles a batch's publish acks within ``timeout_seconds``."""

    def __init__(self, js: JetStreamContext, timeout_seconds: float) -> None:
        self._js = js
        self._timeout = timeout_seconds

    async def send(
        self, subject: str, body: bytes, headers: dict[str, str]
    ) -> asyncio.Future[PubAck] | None:
        """Publish without waiting for the ack; its future, or None if it could not be sent.

        No stall wait (``wait_stall=None``: nats-py would otherwise start a timer task
        and yield per message, splitting a batch into many socket writes); the window
        is :func:`publish_window`, never full.
        """
        try:
            return await self._js.publish_async(subject, body, wait_stall=None, headers=headers)
        except (nats.errors.Error, OSError) as exc:
            log.warning("event=publish_failed subject=%s error=%r", subject, exc)
            return None

    async def settle(
        self, futures: Sequence[asyncio.Future[PubAck] | None], event: str
    ) -> list[bool]:
        """Wait once for every ack (``timeout_seconds`` in all); per future, whether
        JetStream stored the message (a duplicate it dropped counts as stored).

        A failure is logged once per call as ``event=<event>`` with the count and the
        first error; an ack still missing at the deadline counts as not stored.
        """
        sent = [f for f in futures if f is not None]
        if sent:
            _, late = await asyncio.wait(sent, timeout=self._timeout)
            for unacked in late:
                unacked.cancel()  # frees its slot in the client's async-publish window
        out: list[bool] = []
        errors: list[BaseException] = []
        for future in futures:
            if future is None:  # not sent; send() logged why
                out.append(False)
            elif future.cancelled():
                out.append(False)
                errors.append(TimeoutError(f"no publish ack within {self._timeout}s"))
            else:
                error = future.exception()
                out.append(error is None)
                if error is not None:
                    errors.append(error)
        if errors:
            log.warning("event=%s messages=%d error=%r", event, len(errors), errors[0])
        return out
