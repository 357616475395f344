"""Flag-delivery metrics (outbox backlog, deliveries, dead letters, pruning) on a given registry.

The names are the ones ``deploy/prometheus/alerts.yml`` and ``docs/metrics.md`` use.
Backlog gauges are read from the outbox at scrape time, so they are exact
whenever Prometheus looks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from labelwatch.outbox import Outbox, OutboxError

OUTCOMES = ("delivered", "retry", "unavailable", "dead_letter")
"""``outcome`` label values of ``labelwatch_deliveries_total``."""

_WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class DeliveryMetrics:
    """The delivery metrics on ``registry``; :meth:`track` adds the per-sink backlog gauges.

    * ``labelwatch_deliveries_total{sink,outcome}``: flags per delivery attempt
      result: ``delivered``; ``retry`` (the sink answered with a retryable
      error); ``unavailable`` (the sink could not be reached; the attempt does
      not count towards the dead-letter limit); ``dead_letter``.
    * ``labelwatch_dead_letters_total{sink}``: flags set aside after their last attempt.
    * ``labelwatch_outbox_pruned_total`` / ``labelwatch_outbox_pruned_unsent_total``:
      flags removed by retention / of those, flags some consumer had not acknowledged.
    * ``labelwatch_outbox_writable``: 1 while the outbox accepts writes, else 0.
    * ``labelwatch_outbox_write_seconds``: time to store one batch's flags.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.deliveries = Counter(
            "labelwatch_deliveries_total",
            "Flags by delivery attempt result (delivered, retry, unavailable, dead_letter).",
            ["sink", "outcome"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "labelwatch_dead_letters_total",
            "Flags that exhausted their delivery attempts and were set aside.",
            ["sink"],
            registry=registry,
        )
        self.pruned = Counter(
            "labelwatch_outbox_pruned_total",
            "Flags removed from the outbox by retention (age or size).",
            registry=registry,
        )
        self.pruned_unsent = Counter(
            "labelwatch_outbox_pruned_unsent_total",
            "Flags removed by retention before every consumer had acknowledged them.",
            registry=registry,
        )
        self.writable = Gauge(
            "labelwatch_outbox_writable",
            "1 while the flag outbox accepts writes; 0 = scoring answers UNAVAILABLE.",
            registry=registry,
        )
        self.write_seconds = Histogram(
            "labelwatch_outbox_write_seconds",
            "Time to store one scored batch's flags in the outbox (one transaction).",
            buckets=_WRITE_BUCKETS,
            registry=registry,
        )

    def init_sink(self, sink: str) -> None:
        """Create the zero-valued series of ``sink`` so rates and alerts see them at once."""
        for outcome in OUTCOMES:
            self.deliveries.labels(sink, outcome)
        self.dead_letters.labels(sink)

    def track(
        self,
        outbox: Outbox,
        sinks: Sequence[str],
        *,
        leading: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Export the outbox's metrics; backlog gauges per sink while ``leading()`` is true.

        Only the process that delivers (see :mod:`labelwatch.delivery`) exports
        ``labelwatch_outbox_pending`` and ``..._oldest_pending_age_seconds``, so
        summing across ``--workers`` processes does not count a backlog twice.
        """
        for sink in sinks:
            self.init_sink(sink)
        self.writable.set(1 if outbox.writable else 0)
        outbox.add_writable_listener(lambda ok: self.writable.set(1 if ok else 0))
        outbox.write_observer = self.write_seconds.observe
        self.registry.register(_BacklogCollector(outbox, tuple(sinks), leading, clock))


class _BacklogCollector:
    """Reads each sink's backlog from the outbox when scraped."""

    def __init__(
        self,
        outbox: Outbox,
        sinks: tuple[str, ...],
        leading: Callable[[], bool],
        clock: Callable[[], float],
    ) -> None:
        self._outbox = outbox
        self._sinks = sinks
        self._leading = leading
        self._clock = clock

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "labelwatch_outbox_pending",
                "Flags waiting in the outbox for this sink (incl. requeued dead letters).",
                labels=["sink"],
            ),
            GaugeMetricFamily(
                "labelwatch_outbox_oldest_pending_age_seconds",
                "Age of the oldest flag waiting for this sink (0 when none).",
                labels=["sink"],
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        pending, age = self._families()
        now = self._clock()
        for sink in self._sinks if self._leading() else ():
            try:
                backlog = self._outbox.backlog("sink", sink)
            except OutboxError:
                continue  # the gauges go missing; labelwatch_outbox_writable says why
            pending.add_metric([sink], float(backlog.pending))
            oldest = backlog.oldest_created_at
            age.add_metric([sink], max(0.0, now - oldest) if oldest is not None else 0.0)
        return [pending, age]
