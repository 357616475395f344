"""Publish a batch's messages to JetStream at once, then wait for all their acks together.

The consumer (:mod:`labelwatch.ingest`) sends every result of a scored batch
without waiting for its JetStream ack, so a batch leaves in one socket write;
:meth:`BatchPublisher.settle` then waits once for the whole batch and says, per
message, whether JetStream stored it. Only those inputs are acked.

A JetStream publish is a core NATS request whose reply is the stream's
``PubAck`` (or an error). :class:`BatchPublisher` sends each with a reply
subject under one inbox of its own and resolves the matching future when the
reply arrives: the same protocol as nats-py's ``publish_async``, without its
per-message costs on the event loop (a random token read from the OS, a stall
semaphore, a done callback), and an error reply fails its future at once
(nats-py 2.16 raises it in the reply handler, leaving the future to time out).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Sequence

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import Header

log = logging.getLogger("labelwatch.ingest")

Published = asyncio.Future[None]
"""Done when JetStream stored the message (or dropped it as a duplicate); failed otherwise."""
_NO_RESPONDERS = "503"
"""Status of the reply NATS sends when no stream listens on the subject."""


class BatchPublisher:
    """Sends without waiting; settles a batch's publish acks within ``timeout_seconds``."""

    def __init__(self, nc: Client, timeout_seconds: float) -> None:
        self._nc = nc
        self._timeout = timeout_seconds
        self._inbox = nc.new_inbox()
        self._ids = itertools.count()
        self._waiting: dict[str, Published] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        """Subscribe to the replies (before the first :meth:`send`)."""
        self._sub = await self._nc.subscribe(self._inbox + ".*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject, None)
        if future is None or future.done():
            return  # given up on (timed out): the message's input was nak'd
        if msg.headers and msg.headers.get(Header.STATUS) == _NO_RESPONDERS:
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            reply = json.loads(msg.data)
            if "error" in reply:
                nats.js.errors.APIError.from_error(reply["error"])  # raises the typed error
            if "stream" not in reply:  # a PubAck names the stream that stored the message
                raise ValueError(f"not a publish ack: {msg.data[:200]!r}")
            future.set_result(None)
        except (nats.errors.Error, ValueError, KeyError, TypeError) as exc:
            future.set_exception(exc)

    async def send(self, subject: str, body: bytes, headers: dict[str, str]) -> Published | None:
        """Publish without waiting for the ack; its future, or None if it could not be sent."""
        reply = f"{self._inbox}.{next(self._ids)}"
        future: Published = asyncio.get_running_loop().create_future()
        self._waiting[reply] = future
        try:
            await self._nc.publish(subject, body, reply=reply, headers=headers)
        except (nats.errors.Error, OSError) as exc:
            del self._waiting[reply]
            log.warning("event=publish_failed subject=%s error=%r", subject, exc)
            return None
        return future

    async def settle(self, futures: Sequence[Published | None], event: str) -> list[bool]:
        """Wait once for every ack (``timeout_seconds`` in all); per future, whether
        JetStream stored the message (a duplicate it dropped counts as stored).

        A failure is logged once per call as ``event=<event>`` with the count and the
        first error; an ack still missing at the deadline counts as not stored.
        """
        sent = [f for f in futures if f is not None]
        if sent:
            _, late = await asyncio.wait(sent, timeout=self._timeout)
            if late:
                for unacked in late:
                    unacked.cancel()
                self._waiting = {r: f for r, f in self._waiting.items() if not f.done()}
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
