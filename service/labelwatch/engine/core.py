"""The engine: model, artifact, batcher, outbox and flag delivery, metrics, assembled once.

Every transport is a thin adapter over one :class:`Engine`: it decodes what it
received with :attr:`Engine.decoder`, scores with :meth:`Engine.score` (the
batcher merges concurrent callers into one model call, and the pipeline records
each batch's flags in the outbox before a result is returned), and encodes the
results back. The engine knows nothing of gRPC, NATS or HTTP.

Lifecycle, in this order (each step either completes or undoes itself)::

    engine = Engine(settings)          # model + artifact, outbox, batcher, adapter, verdicts
    engine.serve_metrics(host, port)   # optional: /metrics on a port (0 = any free port)
    engine.start()                     # sinks and upkeep (bad sink config: StartupError)
    ...                                # transports call engine.score(...)
    engine.close()                     # drain the batcher, stop delivery, close the outbox

An :class:`Engine` is a context manager: leaving the ``with`` block closes it, so a
start-up that fails after the engine was built leaves nothing running.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from types import TracebackType

from prometheus_client import CollectorRegistry

from labelwatch import __version__
from labelwatch.batcher import Batcher
from labelwatch.codec import ExampleDecoder
from labelwatch.config import Settings
from labelwatch.delivery import Delivery
from labelwatch.domain import LabeledExample, ModelSpec, ScoredBatch
from labelwatch.engine.endpoint import MetricsEndpoint
from labelwatch.engine.loading import (
    adapter_from,
    calibration_rates,
    load_pipeline,
    with_default_model,
)
from labelwatch.errors import StartupError
from labelwatch.metrics import AnnotatorCollector, Metrics, VerdictMetrics
from labelwatch.outbox import Outbox
from labelwatch.pipeline import Pipeline
from labelwatch.security.limits import ExampleLimits
from labelwatch.verdicts import VerdictBook
from labelwatch.watch import FlagFeed

log = logging.getLogger(__name__)


class Engine:
    """One process's scoring engine, built from ``settings`` (see the module docs).

    ``registry``: where every metric goes (a fresh one if None). ``environ``:
    where sink secrets are read from (default ``os.environ``). Raises
    :class:`StartupError` (having closed whatever it opened) if the model, the
    artifact or the limits are unusable.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = with_default_model(settings)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.environ = os.environ if environ is None else environ
        self.metrics_endpoint: MetricsEndpoint | None = None
        self._closed = False
        with contextlib.ExitStack() as stack:
            self.metrics = Metrics(self.registry)
            self.delivery = Delivery(self.settings, registry=self.registry, environ=self.environ)
            stack.callback(self.delivery.stop)
            self.pipeline: Pipeline = load_pipeline(
                self.settings, self.metrics, outbox=self.delivery.outbox
            )
            self.decoder = ExampleDecoder(self.pipeline.spec, _limits(self.settings))
            self.adapter = adapter_from(self.settings, self.pipeline, self.delivery.outbox)
            if self.adapter is not None:
                stack.callback(self.adapter.stop)
            self.batcher = Batcher(
                self.pipeline,
                max_batch=self.settings.max_batch,
                window_seconds=self.settings.batch_window_ms / 1000.0,
            )
            stack.callback(self.batcher.close)
            self.verdicts = self._verdict_book()
            self._describe_in_metrics()
            self._resources = stack.pop_all()

    # -- what transports use ---------------------------------------------------------------

    @property
    def spec(self) -> ModelSpec:
        """What an example must match: input kind, feature length, classes."""
        return self.pipeline.spec

    @property
    def outbox(self) -> Outbox:
        """The flag outbox every scored batch's flags are stored in."""
        return self.delivery.outbox

    @property
    def feed(self) -> FlagFeed:
        """The live flag feed (WatchFlags)."""
        return self.delivery.feed

    def score(
        self, examples: Sequence[LabeledExample], *, deadline: float | None = None
    ) -> ScoredBatch:
        """Score validated ``examples`` as part of a merged batch; their flags are stored.

        ``deadline``: :func:`time.monotonic` seconds after which queued work is dropped
        with :class:`~labelwatch.errors.DeadlineExpired` (None: no deadline).
        """
        return self.batcher.score(examples, deadline=deadline)

    # -- lifecycle -------------------------------------------------------------------------

    def serve_metrics(self, host: str, port: int | None) -> int | None:
        """Serve ``/metrics`` on ``host:port`` (0: any free port; None: off); the bound port."""
        if port is None:
            return None
        self.metrics_endpoint = MetricsEndpoint(host, port, self.registry)
        return self.metrics_endpoint.port

    @property
    def metrics_port(self) -> int | None:
        """The bound ``/metrics`` port, or None when off."""
        return self.metrics_endpoint.port if self.metrics_endpoint is not None else None

    def start(self) -> None:
        """Build the configured sinks and start delivery; :class:`StartupError` if misconfigured."""
        self.delivery.start(self.spec.class_names)

    def close(self) -> None:
        """Finish queued scoring, stop delivery, close the outbox, then ``/metrics``.

        Idempotent: a second call does nothing.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._resources.close()  # the batcher first: its recorder writes to the outbox
        finally:
            if self.metrics_endpoint is not None:
                self.metrics_endpoint.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _verdict_book(self) -> VerdictBook:
        """Reviewers' verdicts on flags (WatchFlags, Label Studio), counted in the metrics."""
        if self.settings.annotator_metrics < 0:
            raise StartupError("--annotator-metrics must be 0 (aggregates only) or more")
        verdict_metrics = VerdictMetrics(
            self.registry, self.spec.class_names, max_class_series=self.metrics.max_class_series
        )
        verdicts = VerdictBook(self.delivery.outbox, on_recorded=verdict_metrics.count)
        self.registry.register(
            AnnotatorCollector(verdicts.annotators, top=self.settings.annotator_metrics)
        )
        return verdicts

    def _describe_in_metrics(self) -> None:
        pipeline = self.pipeline
        model = pipeline.model
        self.metrics.build_info.labels(__version__).set(1)
        self.metrics.model_info.labels(
            model.name if model else "probabilities-only",
            pipeline.model_version,
            model.sha256 if model else "",
        ).set(1)
        self.metrics.set_calibration(pipeline.artifact.class_names, calibration_rates(pipeline))


def _limits(settings: Settings) -> ExampleLimits:
    try:
        return ExampleLimits(settings.max_labels_per_example, settings.max_text_bytes)
    except ValueError as exc:
        raise StartupError(
            "--max-labels-per-example and --max-text-bytes must be at least 1, got "
            f"{settings.max_labels_per_example} and {settings.max_text_bytes}"
        ) from exc
