"""The consumer's JetStream pull (:class:`labelwatch.ingest_fetch.PullFetcher`), real NATS."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from labelwatch.ingest_fetch import FetchError, PullFetcher, ensure_durable
from support_delivery import nats_server

STREAM = "EXAMPLES"
ACK = AckPolicy.EXPLICIT
DURABLE = "pullers"


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    with nats_server(tmp_path / "jetstream") as server:
        yield server.url


async def _fetcher(url: str, *, durable: str = DURABLE) -> tuple[nats.NATS, PullFetcher]:
    nc = await nats.connect(url, connect_timeout=5)
    js = nc.jetstream(timeout=10)
    await js.add_stream(
        StreamConfig(name=STREAM, subjects=["examples.>"], retention=RetentionPolicy.WORK_QUEUE)
    )
    await ensure_durable(js, STREAM, DURABLE, "examples.>", 30.0)
    fetcher = PullFetcher(nc, STREAM, durable)
    await fetcher.start()
    return nc, fetcher


def test_a_fetch_hands_out_at_most_a_batch_in_stream_order_and_acks_reach_jetstream(
    nats_url: str,
) -> None:
    async def run() -> tuple[list[list[bytes]], int]:
        nc, fetcher = await _fetcher(nats_url)
        js = nc.jetstream(timeout=10)
        for i in range(10):
            await js.publish("examples.a", str(i).encode())
        batches = []
        for size in (4, 4, 4):
            msgs = await fetcher.fetch(size, 2.0)
            batches.append([m.data for m in msgs])
            for m in msgs:
                await m.ack_sync()
        left = (await js.stream_info(STREAM)).state.messages
        await nc.close()
        return batches, left

    batches, left = asyncio.run(run())
    assert batches == [[b"0", b"1", b"2", b"3"], [b"4", b"5", b"6", b"7"], [b"8", b"9"]]
    assert left == 0  # a work queue: every ack removed its message


def test_an_idle_fetch_times_out_and_a_waiting_one_gets_what_is_published_meanwhile(
    nats_url: str,
) -> None:
    async def run() -> list[bytes]:
        nc, fetcher = await _fetcher(nats_url)
        with pytest.raises(nats.errors.TimeoutError):
            await fetcher.fetch(8, 0.2)
        waiting = asyncio.create_task(fetcher.fetch(1, 30.0))
        await nc.jetstream(timeout=10).publish("examples.b", b"late")
        msgs = await waiting
        await nc.close()
        return [m.data for m in msgs]

    assert asyncio.run(run()) == [b"late"]


def test_a_request_jetstream_refuses_is_an_error_not_a_timeout(nats_url: str) -> None:
    async def run() -> None:
        nc, _ = await _fetcher(nats_url)
        js = nc.jetstream(timeout=10)
        await js.add_stream(StreamConfig(name="PUSHED", subjects=["pushed.>"]))
        await js.add_consumer(
            "PUSHED",
            ConsumerConfig(durable_name="pushed", deliver_subject="elsewhere", ack_policy=ACK),
        )
        pushed = PullFetcher(nc, "PUSHED", "pushed")
        await pushed.start()
        try:
            with pytest.raises(FetchError, match="409"):  # Consumer is push based
                await pushed.fetch(8, 5.0)
        finally:
            await nc.close()

    asyncio.run(run())


def test_bad_arguments_are_refused(nats_url: str) -> None:
    async def run() -> None:
        nc, fetcher = await _fetcher(nats_url)
        try:
            with pytest.raises(ValueError):
                await fetcher.fetch(0, 1.0)
        finally:
            await nc.close()

    asyncio.run(run())
