"""A consumer that kills itself with SIGKILL right after its first batch's results are stored.

Run as ``python support_ingest_dies_before_ack.py NATS_URL THRESHOLDS OUTBOX BATCH``: it
scores (flags committed to OUTBOX), publishes every result of the first fetched batch and
waits for JetStream's acks, then dies before acking a single input, as a process killed
between publish and ack would. tests/test_ingest_batching.py checks what JetStream and
dedupe make of it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry
from support_ingest import DURABLE, STREAM

from labelwatch.config import Settings
from labelwatch.engine import load_pipeline
from labelwatch.ingest import ConsumeOptions, StreamConsumer
from labelwatch.metrics import IngestMetrics, Metrics
from labelwatch.outbox import Outbox


class DiesBeforeAck(StreamConsumer):
    """Its first ack kills the process (results published, inputs not acked)."""

    async def _ack(self, msgs: Sequence[Msg]) -> list[Msg]:
        print(f"published={len(msgs)}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


def main(url: str, thresholds: str, outbox: str, batch: str) -> None:
    registry = CollectorRegistry()
    pipeline = load_pipeline(
        Settings(thresholds=Path(thresholds)), Metrics(registry), outbox=Outbox(Path(outbox))
    )
    options = ConsumeOptions(
        url=url,
        stream=STREAM,
        subject="examples.>",
        durable=DURABLE,
        batch=int(batch),
        max_inflight=int(batch),
        ack_wait_seconds=1.0,
    )
    consumer = DiesBeforeAck(
        options, score=pipeline.score, spec=pipeline.spec, metrics=IngestMetrics(registry)
    )
    asyncio.run(consumer.run(asyncio.Event()))


if __name__ == "__main__":
    main(*sys.argv[1:])
