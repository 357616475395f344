"""Prometheus metrics of ``labelwatch consume`` (the JetStream consumer), on an injectable registry.

``docs/ingestion.md`` lists each metric with its meaning.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_E2E_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class IngestMetrics:
    """Consumer metrics: lag, processed/dead-lettered/nak'd counts, batch sizes, latency."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pending = Gauge(
            "labelwatch_ingest_pending_messages",
            "Messages of the durable consumer not yet delivered to any consumer process "
            "(consumer lag), as last reported by JetStream.",
            registry=registry,
        )
        self.ack_pending = Gauge(
            "labelwatch_ingest_ack_pending_messages",
            "Messages of the durable consumer delivered to some consumer process and not yet "
            "acked, as last reported by JetStream.",
            registry=registry,
        )
        self.in_flight = Gauge(
            "labelwatch_ingest_in_flight_messages",
            "Messages fetched by this process and not yet acked or nak'd.",
            registry=registry,
        )
        self.processed = Counter(
            "labelwatch_ingest_processed_messages_total",
            "Input messages scored, their result published and the input acked.",
            registry=registry,
        )
        self.dead_lettered = Counter(
            "labelwatch_ingest_dead_lettered_messages_total",
            "Input messages published to the dead-letter subject and acked: malformed "
            "(invalid, wrong_input_kind) or failing to score on every delivery (scoring_failed).",
            ["reason"],
            registry=registry,
        )
        self.naked = Counter(
            "labelwatch_ingest_nak_messages_total",
            "Input messages handed back (nak with delay) after a transient failure.",
            registry=registry,
        )
        self.batch_size = Histogram(
            "labelwatch_ingest_batch_size",
            "Valid examples per fetched batch sent to scoring.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.end_to_end_seconds = Histogram(
            "labelwatch_ingest_end_to_end_seconds",
            "Seconds from the input's arrival in the stream to its result being published.",
            buckets=_E2E_BUCKETS,
            registry=registry,
        )
