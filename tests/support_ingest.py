"""Helpers of the ``labelwatch consume`` tests: NATS publishing and reading, consumer processes.

Each NATS helper runs its own short event loop, so tests call them from plain code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from labelwatch.codec import ExampleDecoder
from labelwatch.codec.proto import example_from_proto
from labelwatch.config import Settings
from labelwatch.domain import LabeledExample, ModelSpec, ScoredBatch
from labelwatch.engine import load_pipeline
from labelwatch.flag_record import Flag, flags_from_batch
from labelwatch.ingest import ConsumeOptions, StreamConsumer
from labelwatch.ingest_app import READY_LINE
from labelwatch.metrics import IngestMetrics, Metrics
from labelwatch.outbox import Outbox
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from support_delivery import NatsServer, clean_example, flagged_example
from support_server import _env

STREAM = "EXAMPLES"
RESULTS_STREAM = "LABELWATCH_RESULTS"
RESULTS = "labelwatch.results"
DEAD = "labelwatch.dead"
DURABLE = "scorers"


def as_json(ex: pb.Example) -> bytes:
    """The JSONL form of a probabilities example."""
    return json.dumps(
        {
            "id": ex.id,
            "probabilities": list(ex.probabilities.values),
            "labels": list(ex.labels),
            "annotator_id": ex.annotator_id,
            "metadata": dict(ex.metadata),
        }
    ).encode()


def examples(n: int, prefix: str = "") -> list[pb.Example]:
    """``n`` examples, every third one flagged; ids prefixed to keep them unique."""
    out = []
    for i in range(n):
        ex = flagged_example(i) if i % 3 == 0 else clean_example(i)
        ex.id = f"{prefix}{ex.id}"
        out.append(ex)
    return out


async def _publish(url: str, payloads: Sequence[tuple[bytes, dict[str, str] | None]]) -> None:
    import nats
    from nats.js.api import RetentionPolicy, StreamConfig

    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream(timeout=10)
        with contextlib.suppress(Exception):
            await js.add_stream(
                StreamConfig(
                    name=STREAM,
                    subjects=["examples.>"],
                    retention=RetentionPolicy.WORK_QUEUE,
                    duplicate_window=600,
                )
            )
        futures = [
            await js.publish_async(f"examples.tenant{i % 2}", data, headers=headers)
            for i, (data, headers) in enumerate(payloads)
        ]
        await asyncio.wait_for(asyncio.gather(*futures), 30)
    finally:
        await nc.close()


def publish(url: str, payloads: Sequence[tuple[bytes, dict[str, str] | None]]) -> None:
    asyncio.run(_publish(url, payloads))


def publish_json(url: str, exs: Sequence[pb.Example]) -> None:
    publish(url, [(as_json(ex), None) for ex in exs])


@dataclass
class Out:
    subject: str
    msg_id: str
    headers: dict[str, str]
    body: dict[str, Any]


async def _outputs(url: str) -> list[Out]:
    """Every message of the results stream, read in batches by an ephemeral consumer."""
    import nats
    import nats.js.errors
    from nats.js.api import AckPolicy, ConsumerConfig

    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream(timeout=10)
        try:
            total = (await js.stream_info(RESULTS_STREAM)).state.messages
        except nats.js.errors.NotFoundError:
            return []
        out: list[Out] = []
        if total == 0:
            return out
        psub = await js.pull_subscribe(
            ">", stream=RESULTS_STREAM, config=ConsumerConfig(ack_policy=AckPolicy.NONE)
        )
        while len(out) < total:
            for msg in await psub.fetch(min(1000, total - len(out)), timeout=5):
                headers = dict(msg.headers or {})
                out.append(
                    Out(msg.subject, headers.get("Nats-Msg-Id", ""), headers, json.loads(msg.data))
                )
        await psub.unsubscribe()
        return out
    finally:
        await nc.close()


def outputs(url: str, subject: str) -> list[Out]:
    return [o for o in asyncio.run(_outputs(url)) if o.subject == subject]


async def _state(url: str) -> dict[str, int]:
    import nats

    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream(timeout=10)
        info = await js.consumer_info(STREAM, DURABLE)
        stream = await js.stream_info(STREAM)
        return {
            "pending": int(info.num_pending or 0),
            "ack_pending": int(info.num_ack_pending or 0),
            "redelivered": int(info.num_redelivered or 0),
            "stream_messages": int(stream.state.messages),
        }
    finally:
        await nc.close()


async def _ack_floor(url: str) -> int:
    import nats

    nc = await nats.connect(url, connect_timeout=5)
    try:
        info = await nc.jetstream(timeout=10).consumer_info(STREAM, DURABLE)
        assert info.ack_floor is not None
        return int(info.ack_floor.stream_seq)
    finally:
        await nc.close()


def state(url: str) -> dict[str, int]:
    return asyncio.run(_state(url))


async def _count(url: str, subject: str) -> int:
    import nats
    import nats.js.errors

    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream(timeout=10)
        try:
            info = await js.stream_info(RESULTS_STREAM, subjects_filter=subject)
        except nats.js.errors.NotFoundError:
            return 0
        return int((info.state.subjects or {}).get(subject, 0))
    finally:
        await nc.close()


def result_count(url: str) -> int:
    """Messages stored on the results subject (cheap: no message is read)."""
    return asyncio.run(_count(url, RESULTS))


# -- consumer processes ------------------------------------------------------------------------


@dataclass
class Consumer:
    process: subprocess.Popen[str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def processed(self) -> int:
        match = re.search(r"event=consumer_stopped processed=(\d+)", self.log())
        assert match, f"no consumer_stopped line in:\n{self.log()[-3000:]}"
        return int(match.group(1))

    def terminate(self, timeout: float = 20.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@contextlib.contextmanager
def consumers(
    nats: NatsServer,
    thresholds: Path | None,
    outbox: Path,
    n: int = 1,
    extra: Sequence[str] = (),
) -> Iterator[list[Consumer]]:
    """``n`` ``labelwatch consume`` processes on one durable; each ready when yielded."""
    started: list[Consumer] = []
    try:
        for i in range(n):
            log_path = outbox.parent / f"consumer-{i}-{time.monotonic_ns()}.log"
            cmd = [sys.executable, "-m", "labelwatch.cli", "consume", "--nats", nats.url]
            cmd += ["--stream", STREAM, "--subject", "examples.>", "--durable", DURABLE]
            if thresholds is not None:  # else the embedded default text model
                cmd += ["--thresholds", str(thresholds)]
            cmd += ["--outbox", str(outbox)]
            cmd += ["--metrics-port", "0", "--grace-seconds", "10", *extra]
            with log_path.open("w") as stderr:
                proc = subprocess.Popen(
                    cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=_env()
                )
            started.append(Consumer(proc, log_path))
        for c in started:
            assert c.process.stdout is not None
            line = c.process.stdout.readline()
            assert READY_LINE in line, f"consumer did not start: {c.log()[-3000:]}"
        yield started
    finally:
        for c in started:
            if c.process.poll() is None:
                c.process.kill()
                c.process.wait(10)
            if c.process.stdout is not None:
                c.process.stdout.close()


FlagView = tuple[str, str, tuple[str, ...], tuple[Any, ...], tuple[str, ...], float, str]


def flag_view(flag: Flag) -> FlagView:
    """What a flag says (not when it was stored): id, example, labels, issues, suggestion."""
    return (
        flag.flag_id,
        flag.example_id,
        flag.labels,
        flag.issues,
        flag.suggested_labels,
        round(flag.label_quality, 9),
        flag.model_version,
    )


def expected_flags(thresholds: Path, exs: Sequence[pb.Example]) -> set[FlagView]:
    """The flags of one in-process scoring of ``exs`` (the reference for the consumers)."""
    pipeline = load_pipeline(Settings(thresholds=thresholds), Metrics(CollectorRegistry()))
    decoder = ExampleDecoder(pipeline.spec)
    domain = [example_from_proto(ex, i, decoder) for i, ex in enumerate(exs)]
    batch = pipeline.score(domain)
    return {flag_view(f) for f in flags_from_batch(batch, pipeline.spec.class_names)}


def outbox_flags(path: Path) -> set[FlagView]:
    box = Outbox(path)
    try:
        stored = box.flags(limit=1_000_000)
    finally:
        box.close()
    views = {flag_view(f) for f in stored}
    assert len(views) == len(stored), "a flag was stored twice"
    return views


def run_in_process(
    options: ConsumeOptions,
    score: Callable[[Sequence[LabeledExample]], ScoredBatch],
    spec: ModelSpec,
    registry: CollectorRegistry,
    done: Callable[[StreamConsumer], bool],
    timeout: float = 20.0,
) -> StreamConsumer:
    """Run a :class:`StreamConsumer` in this process until ``done(consumer)``, then stop it."""

    async def consume() -> StreamConsumer:
        consumer = StreamConsumer(options, score=score, spec=spec, metrics=IngestMetrics(registry))
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop))
        deadline = time.monotonic() + timeout
        while not done(consumer) and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.02)
        stop.set()
        await task
        return consumer

    return asyncio.run(consume())
