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
import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
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
    model_concurrency,
    with_default_model,
)
from labelwatch.engine.models import ModelHolder, ModelLifecycle, ReloadOutcome, check_compatible
from labelwatch.engine.shadow import SHADOW_QUEUE_EXAMPLES, Shadow
from labelwatch.errors import ReloadRefused, StartupError
from labelwatch.metrics import AnnotatorCollector, Metrics, VerdictMetrics
from labelwatch.metrics.models import ModelMetrics, ShadowMetrics
from labelwatch.outbox import Outbox
from labelwatch.pipeline import Pipeline
from labelwatch.repository import ModelRepository, ModelVersion, RepositoryError
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
        self.after_rpc_reload: Callable[[], object] | None = None  # set by --workers
        self._swap_listeners: list[Callable[[Pipeline], None]] = []
        with contextlib.ExitStack() as stack:
            self.metrics = Metrics(self.registry)
            self.model_metrics = ModelMetrics(self.registry)
            self.delivery = Delivery(self.settings, registry=self.registry, environ=self.environ)
            stack.callback(self.delivery.stop)
            self.repository = _repository(self.settings)
            self.models = ModelHolder(self._load_initial())
            self.decoder = ExampleDecoder(self.pipeline.spec, _limits(self.settings))
            self.adapter = adapter_from(self.settings, self.pipeline, self.delivery.outbox)
            if self.adapter is not None:
                stack.callback(self.adapter.stop)
            self.lifecycle: ModelLifecycle | None = None
            if self.repository is not None:
                self.lifecycle = ModelLifecycle(
                    self.models,
                    self.repository,
                    self._load_candidate,
                    self.model_metrics,
                    on_swap=self._swapped,
                    watch_seconds=(
                        self.settings.repository_poll_seconds
                        if self.settings.watch_repository
                        else None
                    ),
                )
                stack.callback(self.lifecycle.close)
            self.shadow = self._start_shadow()
            if self.shadow is not None:
                stack.callback(self.shadow.close)
            self.batcher = Batcher(
                self.models,
                max_batch=self.settings.max_batch,
                window_seconds=self.settings.batch_window_ms / 1000.0,
                on_batch=self.shadow.offer if self.shadow is not None else None,
                concurrency=model_concurrency(
                    self.settings.model_concurrency,
                    workers=self.settings.workers,
                    kind=self.pipeline.spec.input_kind,
                ),
            )
            stack.callback(self.batcher.close)
            model = self.pipeline.model
            log.info(
                "event=model_calls concurrency=%d requested=%s intra_op_threads=%s workers=%d",
                self.batcher.concurrency,
                self.settings.model_concurrency,
                model.session_settings.intra_op_threads if model is not None else "none",
                self.settings.workers,
            )
            self.verdicts = self._verdict_book()
            self._describe_in_metrics(self.pipeline)
            self._resources = stack.pop_all()

    def _load_initial(self) -> Pipeline:
        if self.repository is None:
            return load_pipeline(self.settings, self.metrics, outbox=self.delivery.outbox)
        try:
            version = self.repository.resolve()
        except RepositoryError as exc:
            raise StartupError(str(exc)) from exc
        return self._load_version(version, outbox=self.delivery.outbox)

    def _load_version(
        self, version: ModelVersion, *, outbox: Outbox | None, metrics: Metrics | None = None
    ) -> Pipeline:
        """The pipeline of one repository version (named by its folder)."""
        settings = dataclasses.replace(
            self.settings,
            model=version.model,
            thresholds=version.thresholds,
            model_version=version.name,
        )
        return load_pipeline(settings, metrics or self.metrics, outbox=outbox)

    def _load_candidate(self, version: ModelVersion) -> Pipeline:
        """A reload candidate: records flags in the outbox, gated like the serving pipeline."""
        pipeline = self._load_version(version, outbox=self.outbox)
        pipeline.cutoffs = self.pipeline.cutoffs  # --adapt-to-verdicts keeps its cut-offs
        return pipeline

    def _start_shadow(self) -> Shadow | None:
        name = self.settings.shadow_version
        if name is None:
            return None
        if self.repository is None:
            raise StartupError("--shadow-version needs --model-repository (the version's folder)")
        if not 0.0 <= self.settings.shadow_fraction <= 1.0:
            raise StartupError(
                f"--shadow-fraction must be in [0, 1], got {self.settings.shadow_fraction}"
            )
        try:
            version = self.repository.resolve(name)
        except RepositoryError as exc:
            raise StartupError(f"--shadow-version: {exc}") from exc
        # its timings must not mix into the live histograms: a registry of its own
        private = Metrics(CollectorRegistry(), process_metrics=False)
        pipeline = self._load_version(version, outbox=None, metrics=private)
        check_compatible(pipeline, self.pipeline)
        log.info(
            "event=shadow_started version=%s live_version=%s fraction=%s",
            name,
            self.pipeline.model_version,
            self.settings.shadow_fraction,
        )
        return Shadow(
            pipeline,
            ShadowMetrics(self.registry),
            fraction=self.settings.shadow_fraction,
            max_queued=SHADOW_QUEUE_EXAMPLES,
            max_class_series=self.metrics.max_class_series,
        )

    # -- what transports use ---------------------------------------------------------------

    @property
    def pipeline(self) -> Pipeline:
        """The serving pipeline (model + artifact + version); reloads replace it."""
        return self.models.current

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
        """Build the configured sinks and start delivery; :class:`StartupError` if misconfigured.

        Then start the model lifecycle (reload requests and the repository watch).
        """
        self.delivery.start(self.spec.class_names)
        if self.lifecycle is not None:
            self.lifecycle.start()

    # -- the model lifecycle ---------------------------------------------------------------

    @property
    def loaded_at(self) -> str:
        """When the serving version started serving, ISO-8601 UTC (``...Z``)."""
        moment = datetime.fromtimestamp(self.models.loaded_at, tz=timezone.utc)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def reload(self, trigger: str) -> ReloadOutcome:
        """Reload from the model repository now and return the outcome (see engine.models).

        Raises :class:`ReloadRefused` when the engine has no repository.
        """
        if self.lifecycle is None:
            raise ReloadRefused(
                "this server was started without --model-repository: there is nothing to "
                "reload from (restart it with --model-repository DIR)"
            )
        try:
            return self.lifecycle.reload(trigger)
        finally:
            if self.after_rpc_reload is not None and trigger == "rpc":
                self.after_rpc_reload()

    def request_reload(self) -> None:
        """Reload in the background (SIGHUP); safe inside a signal handler."""
        if self.lifecycle is not None:
            self.lifecycle.request_reload()

    def add_swap_listener(self, listener: Callable[[Pipeline], None]) -> None:
        """Call ``listener(new_pipeline)`` after every swap (e.g. Label Studio's /predict)."""
        self._swap_listeners.append(listener)

    def _swapped(self, old: Pipeline, new: Pipeline) -> None:
        self.metrics.model_info.clear()
        self._describe_in_metrics(new)
        for listener in self._swap_listeners:
            listener(new)

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

    def _describe_in_metrics(self, pipeline: Pipeline) -> None:
        model = pipeline.model
        self.metrics.build_info.labels(__version__).set(1)
        self.metrics.model_info.labels(
            model.name if model else "probabilities-only",
            pipeline.model_version,
            model.sha256 if model else "",
        ).set(1)
        self.metrics.set_calibration(pipeline.artifact.class_names, calibration_rates(pipeline))


def _repository(settings: Settings) -> ModelRepository | None:
    """The model repository ``settings`` name; StartupError when combined with --model."""
    if settings.model_repository is None:
        return None
    given = [
        flag
        for flag, value in (
            ("--model", settings.model),
            ("--thresholds", settings.thresholds),
            ("--model-version", settings.model_version),
        )
        if value is not None
    ]
    if given:
        raise StartupError(
            f"--model-repository names the model, its artifact and its version; drop "
            f"{', '.join(given)}"
        )
    return ModelRepository(settings.model_repository)


def _limits(settings: Settings) -> ExampleLimits:
    try:
        return ExampleLimits(settings.max_labels_per_example, settings.max_text_bytes)
    except ValueError as exc:
        raise StartupError(
            "--max-labels-per-example and --max-text-bytes must be at least 1, got "
            f"{settings.max_labels_per_example} and {settings.max_text_bytes}"
        ) from exc
