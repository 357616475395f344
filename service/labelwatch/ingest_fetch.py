"""Pull batches of messages from a durable JetStream consumer, one plain callback per message.

The pull protocol: a request to ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>``
(``{"batch": n}`` plus ``no_wait`` or ``expires``) whose reply subject receives up
to ``n`` messages, then, if fewer, a status message that ends it (``404`` no
messages, ``408`` request expired). :class:`PullFetcher` speaks it as nats-py's
``PullSubscription.fetch`` does (first a ``no_wait`` request for what is there;
if nothing, one request lingering until the timeout), but collects the messages in
a subscription callback: nats-py waits for each message with a task, a timer and
a task name read from the OS, about 20 µs of event-loop time per message, a large
share of what the consumer spends on one.

Each request has its own reply subject under the fetcher's inbox, so a late
status cannot end a newer request; a message delivered while no request is
awaited (a late delivery after a reconnect) is kept and handed out by the next
:meth:`PullFetcher.fetch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, Header

_ENDS_REQUEST = frozenset({"404", "408"})
"""Statuses that end a pull request normally: no messages, request expired."""
_HEARTBEAT = "100"
_EXPIRY_MARGIN_SECONDS = 0.5
"""How long past a lingering request's expiry to wait for the server's 408 before giving up."""


async def ensure_durable(
    js: JetStreamContext, stream: str, durable: str, subject: str, ack_wait_seconds: float
) -> None:
    """Create the durable pull consumer with explicit acks if it does not exist yet.

    An existing one is used as it is (its ack wait included), as nats-py's
    ``pull_subscribe`` does.
    """
    try:
        await js.consumer_info(stream, durable)
    except nats.js.errors.NotFoundError:
        await js.add_consumer(
            stream,
            ConsumerConfig(
                name=durable,
                durable_name=durable,
                filter_subject=subject,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ack_wait_seconds,
                max_ack_pending=-1,
            ),
        )


class FetchError(nats.errors.Error):
    """JetStream ended a pull request with an error status (e.g. 409 consumer deleted)."""


class PullFetcher:
    """Fetches from ``durable`` on ``stream`` (which must exist) over ``nc``."""

    def __init__(self, nc: Client, stream: str, durable: str, api_prefix: str = "$JS.API") -> None:
        self._nc = nc
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = nc.new_inbox()
        self._ids = itertools.count()
        self._sub: Subscription | None = None
        self._request: str | None = None
        """Reply subject of the request being awaited (None: none is)."""
        self._got: list[Msg] = []
        self._want = 0
        self._status: tuple[str, str] | None = None
        self._ended = asyncio.Event()
        self._strays: list[Msg] = []

    async def start(self) -> None:
        """Subscribe to the replies (before the first :meth:`fetch`)."""
        self._sub = await self._nc.subscribe(self._inbox + ".*", cb=self._on_msg)

    async def stop(self) -> None:
        """Stop receiving (messages delivered later come back after the ack wait)."""
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    def leftovers(self) -> list[Msg]:
        """Messages delivered for a request no longer awaited and not yet handed out."""
        out, self._strays = self._strays, []
        return out

    async def _on_msg(self, msg: Msg) -> None:
        # A message keeps its stream subject; only a status comes on the request's reply
        # subject. So a message counts for the request being awaited, a status only
        # ends the request it answers.
        status = msg.headers.get(Header.STATUS) if msg.headers else None
        if status is None:
            if self._request is None:
                self._strays.append(msg)  # delivered to us: ours to process, not to drop
                return
            self._got.append(msg)
            if len(self._got) >= self._want:
                self._ended.set()
        elif msg.subject == self._request and status != _HEARTBEAT:
            description = msg.headers.get(Header.DESCRIPTION, "") if msg.headers else ""
            self._status = (status, description)
            self._ended.set()

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """Up to ``batch`` messages, waiting up to ``timeout`` seconds for the first.

        Raises :class:`nats.errors.TimeoutError` if none came, :class:`FetchError`
        if JetStream answered with an error status.
        """
        if batch < 1 or timeout <= 0:
            raise ValueError("batch must be >= 1 and timeout > 0")
        if self._strays:
            out, self._strays = self._strays[:batch], self._strays[batch:]
            return out
        start = time.monotonic()
        got = await self._pull({"batch": batch, "no_wait": True}, batch, timeout)
        if got:
            return got
        left = timeout - (time.monotonic() - start)
        if left > 0.001:
            expires = int(left * 1e9) - 100_000
            got = await self._pull(
                {"batch": batch, "expires": expires}, batch, left + _EXPIRY_MARGIN_SECONDS
            )
        if not got:
            raise nats.errors.TimeoutError
        return got

    async def _pull(self, request: dict[str, object], batch: int, wait: float) -> list[Msg]:
        reply = f"{self._inbox}.{next(self._ids)}"
        self._request, self._got, self._want, self._status = reply, [], batch, None
        self._ended.clear()
        try:
            await self._nc.publish(self._next_subject, json.dumps(request).encode(), reply=reply)
            # no end status in time (a lost request, a reconnect): return what came
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ended.wait(), wait)
            got, status = self._got, self._status
        finally:
            self._request, self._got = None, []
        if status is not None and status[0] not in _ENDS_REQUEST:
            self._strays.extend(got)
            raise FetchError(f"pull request ended with status {status[0]} {status[1]}".strip())
        return got
