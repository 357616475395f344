"""Every Prometheus metric family labelwatch exports, on an injectable registry.

Each class takes a :class:`prometheus_client.CollectorRegistry` and registers its
families on it, so a test builds its own registry and asserts on exact samples.
``docs/metrics.md`` lists each metric with its labels and meaning (and
``docs/ingestion.md`` those of ``labelwatch consume``). One module per area:

* :mod:`.scoring`: :class:`Metrics`, the scoring server's families (examples,
  flags, label quality, model and scoring time, model and build info); it also
  holds the gRPC families and the drift gauges below.
* :mod:`.grpc`: ``grpc_server_*``, counted by the gRPC interceptor.
* :mod:`.drift`: the drift gauges, computed at scrape time.
* :mod:`.delivery`: :class:`DeliveryMetrics`, the outbox and its sinks.
* :mod:`.security`: :class:`SecurityMetrics`, admission control and authentication.
* :mod:`.label_studio`: :class:`LabelStudioMetrics`, the Label Studio HTTP port.
* :mod:`.ingest`: :class:`IngestMetrics`, the JetStream consumer.
* :mod:`.verdicts`: :class:`VerdictMetrics`, reviewers' verdicts on flags.
* :mod:`.annotators`: :class:`AnnotatorCollector`, per-annotator quality.
* :mod:`.buckets`: histogram bounds shared by several families.

A new family goes into the module of its area (or a new small module listed
here), with its name, labels and help text added to ``docs/metrics.md``.
"""

from labelwatch.metrics.annotators import AnnotatorCollector
from labelwatch.metrics.delivery import DeliveryMetrics
from labelwatch.metrics.drift import DEFAULT_MAX_CLASS_SERIES, KINDS, OTHER_CLASS
from labelwatch.metrics.ingest import IngestMetrics
from labelwatch.metrics.label_studio import LabelStudioMetrics
from labelwatch.metrics.scoring import Metrics
from labelwatch.metrics.security import SecurityMetrics
from labelwatch.metrics.verdicts import VerdictMetrics

__all__ = [
    "DEFAULT_MAX_CLASS_SERIES",
    "KINDS",
    "OTHER_CLASS",
    "AnnotatorCollector",
    "DeliveryMetrics",
    "IngestMetrics",
    "LabelStudioMetrics",
    "Metrics",
    "SecurityMetrics",
    "VerdictMetrics",
]
