"""Assemble ``labelwatch consume``: outbox, pipeline, batcher, metrics; run until a signal."""

from __future__ import annotations

import asyncio
import signal

from prometheus_client import CollectorRegistry, start_http_server

from labelwatch import __version__
from labelwatch.batcher import Batcher
from labelwatch.config import Settings
from labelwatch.delivery import Delivery
from labelwatch.errors import StartupError
from labelwatch.ingest import ConsumeOptions, StreamConsumer, log
from labelwatch.metrics import IngestMetrics, Metrics
from labelwatch.security.limits import ExampleLimits
from labelwatch.server import load_pipeline, with_default_model

READY_LINE = "labelwatch consuming"
"""Printed on stdout once the durable consumer is bound (scripts and tests wait for it)."""


def consume_forever(
    settings: Settings, options: ConsumeOptions, *, registry: CollectorRegistry | None = None
) -> int:
    """Consume until SIGTERM/SIGINT, drain within ``options.grace_seconds``; return 0."""
    settings = with_default_model(settings)
    registry = registry if registry is not None else CollectorRegistry()
    metrics = Metrics(registry)
    delivery = Delivery(settings, registry=registry)
    pipeline = load_pipeline(settings, metrics, outbox=delivery.outbox)
    metrics.build_info.labels(__version__).set(1)
    batcher = Batcher(
        pipeline, max_batch=settings.max_batch, window_seconds=settings.batch_window_ms / 1000.0
    )
    httpd = None
    if settings.metrics_port:
        try:
            httpd, _ = start_http_server(
                settings.metrics_port, addr=settings.host, registry=registry
            )
        except OSError as exc:
            raise StartupError(
                f"cannot bind metrics port {settings.host}:{settings.metrics_port}: {exc}"
            ) from exc
    consumer = StreamConsumer(
        options,
        score=batcher.score,
        spec=pipeline.spec,
        metrics=IngestMetrics(registry),
        limits=ExampleLimits(
            max_labels=settings.max_labels_per_example, max_text_bytes=settings.max_text_bytes
        ),
    )
    delivery.start(pipeline.spec.class_names)
    try:
        asyncio.run(_main(consumer))
    finally:
        batcher.close()
        delivery.stop()
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
    return 0


async def _main(consumer: StreamConsumer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def _on_signal(signum: signal.Signals) -> None:
        log.info("event=shutdown_requested signal=%s", signum.name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, signum)
    await consumer.run(stop, on_ready=lambda: print(READY_LINE, flush=True))
