"""``labelwatch consume``: the NATS adapter over one engine; run until a signal.

Start-up either completes or undoes itself: the engine (model, outbox, batcher,
``/metrics``) is closed whatever step fails, connecting to NATS included.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from labelwatch.config import Settings
from labelwatch.engine import Engine
from labelwatch.ingest import ConsumeOptions, StreamConsumer, log
from labelwatch.metrics import IngestMetrics
from labelwatch.ports import shown

READY_LINE = "labelwatch consuming"
"""Printed on stdout once the durable consumer is bound (scripts and tests wait for it),
followed by ``metrics_port=<bound port>`` (or ``off``)."""


def consumer_for(engine: Engine, options: ConsumeOptions) -> StreamConsumer:
    """The NATS consumer over ``engine``: its scorer, model spec, input limits and registry."""
    return StreamConsumer(
        options,
        score=engine.score,
        spec=engine.spec,
        metrics=IngestMetrics(engine.registry),
        limits=engine.decoder.limits,
    )


def consume_forever(
    settings: Settings, options: ConsumeOptions, *, registry: CollectorRegistry | None = None
) -> int:
    """Consume until SIGTERM/SIGINT, drain within ``options.grace_seconds``; return 0."""
    with Engine(settings, registry=registry) as engine:
        metrics_port = engine.serve_metrics(engine.settings.host, engine.settings.metrics_port)
        consumer = consumer_for(engine, options)
        engine.start()
        ready = f"{READY_LINE} metrics_port={shown(metrics_port)}"
        asyncio.run(_main(consumer, ready, engine.request_reload))
    return 0


async def _main(consumer: StreamConsumer, ready: str, reload: Callable[[], None]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def _on_signal(signum: signal.Signals) -> None:
        log.info("event=shutdown_requested signal=%s", signum.name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, reload)  # --model-repository: reload the model
    await consumer.run(stop, on_ready=lambda: print(ready, flush=True))
