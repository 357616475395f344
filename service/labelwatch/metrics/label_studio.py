"""Metrics of the Label Studio HTTP port (webhooks, ML backend, write-back) on a given registry.

``docs/metrics.md`` lists each one. The write-back backlog gauges are read from
the durable queue when scraped, so they are exact whenever Prometheus looks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from labelwatch.outbox import OutboxError

PATHS = ("/webhook", "/predict", "/setup", "/health", "/", "/webhook-test")
"""``path`` label values; any other path is counted as ``other``."""
ANNOTATION_OUTCOMES = ("scored", "deleted", "retry", "failed")
WRITEBACK_OUTCOMES = ("written", "retry", "dropped")

_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class WriteBackBacklog(Protocol):
    """What :meth:`LabelStudioMetrics.track_writebacks` reads (the durable write-back queue)."""

    def pending(self) -> tuple[int, float | None]:
        """(writes waiting, unix seconds the oldest was queued, or None when empty)."""
        ...


def path_label(path: str) -> str:
    """The ``path`` label of a request path (query string and trailing slash ignored).

    >>> path_label("/predict/?x=1"), path_label("/admin")
    ('/predict', 'other')
    """
    route = path.split("?")[0].rstrip("/") or "/"
    return route if route in PATHS else "other"


class LabelStudioMetrics:
    """The Label Studio metrics on ``registry``.

    * ``labelwatch_http_requests_total{path,status}``: requests answered on ``--http-port``.
    * ``labelwatch_http_request_seconds{path}``: time to answer one (a webhook is only queued).
    * ``labelwatch_ls_queue_depth``: events stored and waiting (see :meth:`track_queue`).
    * ``labelwatch_ls_annotations_total{outcome}``: events ``scored``, ``deleted`` (an
      annotation deletion applied), ``retry`` (failed, tried again later) or ``failed``
      (dropped after the last try, or unreadable).
    * ``labelwatch_ls_annotation_processing_seconds``: scoring one annotation and queueing its
      write-back (the time in the queue not included).
    * ``labelwatch_ls_writebacks_total{outcome}``: write-back attempts: ``written``, ``retry``
      (Label Studio down or answering 5xx/429/401/403; retried with backoff), ``dropped``
      (refused for good, e.g. the task was deleted).
    * ``labelwatch_ls_writeback_pending`` / ``..._oldest_pending_age_seconds``: the durable
      write-back queue (see :meth:`track_writebacks`).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "labelwatch_http_requests_total",
            "Requests answered on the Label Studio HTTP port, by path and HTTP status.",
            ["path", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "labelwatch_http_request_seconds",
            "Time to answer one request on the Label Studio HTTP port.",
            ["path"],
            buckets=_SECONDS_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "labelwatch_ls_queue_depth",
            "Label Studio events stored (answered 202) and waiting to be processed.",
            registry=registry,
        )
        self.annotations = Counter(
            "labelwatch_ls_annotations_total",
            "Label Studio events processed from the stored inbox, by outcome "
            "(scored, deleted, retry, failed).",
            ["outcome"],
            registry=registry,
        )
        self.processing_seconds = Histogram(
            "labelwatch_ls_annotation_processing_seconds",
            "Time to score one Label Studio annotation and queue its write-back.",
            buckets=_SECONDS_BUCKETS,
            registry=registry,
        )
        self.writebacks = Counter(
            "labelwatch_ls_writebacks_total",
            "Write-back attempts to Label Studio, by outcome (written, retry, dropped).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ANNOTATION_OUTCOMES:
            self.annotations.labels(outcome)
        for outcome in WRITEBACK_OUTCOMES:
            self.writebacks.labels(outcome)

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        label = path_label(path)
        self.requests.labels(label, str(status)).inc()
        self.request_seconds.labels(label).observe(seconds)

    def observe_annotation(self, outcome: str, seconds: float) -> None:
        """Count one event processed (an :data:`ANNOTATION_OUTCOMES` value)."""
        self.annotations.labels(outcome).inc()
        self.processing_seconds.observe(seconds)

    def track_queue(self, depth: Callable[[], int]) -> None:
        """Read ``labelwatch_ls_queue_depth`` from ``depth()`` at scrape time."""
        self.queue_depth.set_function(lambda: float(depth()))

    def track_writebacks(
        self, queue: WriteBackBacklog, *, clock: Callable[[], float] = time.time
    ) -> None:
        """Export the durable write-back queue's backlog, read at scrape time."""
        self.registry.register(_WriteBackCollector(queue, clock))


class _WriteBackCollector:
    """Reads the write-back queue's backlog when scraped."""

    def __init__(self, queue: WriteBackBacklog, clock: Callable[[], float]) -> None:
        self._queue = queue
        self._clock = clock

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "labelwatch_ls_writeback_pending",
                "Scored annotations waiting to be written back to Label Studio.",
            ),
            GaugeMetricFamily(
                "labelwatch_ls_writeback_oldest_pending_age_seconds",
                "Age of the oldest write-back waiting for Label Studio (0 when none).",
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        pending, age = self._families()
        try:
            count, oldest = self._queue.pending()
        except OutboxError:
            return []  # labelwatch_outbox_writable says why
        pending.add_metric([], float(count))
        age.add_metric([], max(0.0, self._clock() - oldest) if oldest is not None else 0.0)
        return [pending, age]
