"""The gRPC server families, named as go-grpc-prometheus / py-grpc-prometheus name them.

Counted by :class:`labelwatch.grpc.interceptor.MetricsInterceptor` around every call.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from labelwatch.metrics.buckets import LATENCY_BUCKETS

GRPC_LABELS = ("grpc_service", "grpc_method", "grpc_type")
"""Labels of every gRPC family (``grpc_server_handled_total`` adds ``grpc_code``)."""


class GrpcServerMetrics:
    """``grpc_server_started_total``, ``..._handled_total`` and ``..._handling_seconds``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server.",
            GRPC_LABELS,
            registry=registry,
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            [*GRPC_LABELS, "grpc_code"],
            registry=registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its end, as seen by the server.",
            GRPC_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
