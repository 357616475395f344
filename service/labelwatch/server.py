"""Assemble the parts, bind the ports, serve, and shut down gracefully."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from types import FrameType
from wsgiref.simple_server import WSGIServer

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry, start_http_server

from labelwatch import __version__, default_model
from labelwatch.adaptation import Adapter
from labelwatch.batcher import Batcher
from labelwatch.calibration import CalibrationArtifact, load_artifact
from labelwatch.codec import ExampleDecoder
from labelwatch.config import Settings
from labelwatch.delivery import Delivery
from labelwatch.domain import InputKind
from labelwatch.errors import StartupError
from labelwatch.grpc.flag_feed import FLAG_FEED_SERVICE_NAME, FlagFeedServicer
from labelwatch.grpc.interceptor import MetricsInterceptor
from labelwatch.grpc.servicer import LabelQualityServicer
from labelwatch.healthcheck import ServerState, write_state
from labelwatch.labelstudio.http import LabelStudioHttp
from labelwatch.labelstudio.http import from_settings as label_studio_http
from labelwatch.metrics import AnnotatorCollector, Metrics, VerdictMetrics
from labelwatch.model import OnnxModel, SessionSettings, file_sha256
from labelwatch.outbox import Outbox
from labelwatch.pipeline import Pipeline
from labelwatch.portcheck import bind_problem
from labelwatch.scoring import FilterBy
from labelwatch.scoring.adapt import AdaptPolicy
from labelwatch.scoring.budget import check_budget
from labelwatch.security.layer import SecurityLayer, build_security
from labelwatch.verdicts import VerdictBook
from labelwatch_proto.labelwatch.v1 import flags_pb2_grpc
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["LabelQuality"].full_name
_INPUT_KIND = {
    InputKind.TEXT: pb.INPUT_KIND_TEXT,
    InputKind.FEATURES: pb.INPUT_KIND_FEATURES,
    InputKind.PROBABILITIES_ONLY: pb.INPUT_KIND_PROBABILITIES_ONLY,
}


def with_default_model(settings: Settings) -> Settings:
    """Fill in the embedded default model and artifact when neither flag was given."""
    if settings.model is not None or settings.thresholds is not None:
        return settings
    if not default_model.available():
        return settings
    return dataclasses.replace(
        settings,
        model=default_model.DEFAULT_MODEL,
        thresholds=default_model.DEFAULT_THRESHOLDS,
    )


def intra_op_threads_per_worker(requested: int, workers: int) -> int:
    """onnxruntime intra-op threads for one worker: ``requested``, or cores / workers if 0."""
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, workers))


def load_pipeline(
    settings: Settings, metrics: Metrics, *, outbox: Outbox | None = None
) -> Pipeline:
    """Load the model and artifact named by ``settings`` and check they belong together.

    With ``outbox``, the pipeline records every flag there before returning.
    """
    settings = with_default_model(settings)
    if settings.thresholds is None:
        raise StartupError(
            "no calibration artifact given: pass --thresholds thresholds.json (made by "
            "`labelwatch calibrate`) and --model model.onnx; with --thresholds alone the "
            "server scores client-computed probabilities only"
        )
    model = None
    if settings.model is not None:
        model = OnnxModel(
            settings.model,
            output_name=settings.model_output,
            outputs_logits=settings.model_outputs_logits,
            settings=SessionSettings(
                intra_op_threads_per_worker(settings.intra_op_threads, settings.workers),
                settings.inter_op_threads,
                allow_spinning=settings.ort_spinning,
            ),
        )
    try:
        artifact = load_artifact(settings.thresholds)
    except ValueError as exc:
        raise StartupError(str(exc)) from exc
    if model is not None and artifact.model_sha256 is None:
        log.warning(
            "event=artifact_without_model_hash artifact=%s: cannot verify it was calibrated "
            "for this model",
            settings.thresholds,
        )
    if settings.model_version:
        version = settings.model_version
    elif model is not None:
        version = f"{model.name}-{model.sha256[:12]}"
    else:
        version = f"probabilities-{file_sha256(settings.thresholds)[:12]}"
    # an explicit --filter-by wins over the rule the artifact records
    rule = settings.filter_by or artifact.filter_by
    budget = served_budget(settings, artifact, rule)
    pipeline = Pipeline(
        model=model,
        artifact=artifact,
        filter_by=rule,
        model_version=version,
        metrics=metrics,
        outbox=outbox,
        flag_budget=budget,
    )
    if budget is not None:
        metrics.flag_budget.set(budget)
    return pipeline


def served_budget(
    settings: Settings, artifact: CalibrationArtifact, rule: FilterBy
) -> float | None:
    """The flag budget to serve (``None``: not the budget rule); one-line StartupErrors."""
    fit = artifact.fit
    if rule is not FilterBy.BUDGET:
        if settings.flag_budget is not None:
            raise StartupError(
                f"--flag-budget applies to the budget rule only; the served rule is {rule.value}"
            )
        return None
    if fit.budget is None:
        raise StartupError(
            f"--filter-by budget needs a calibration artifact with a tag-context model, and "
            f"{settings.thresholds} has none; re-run `labelwatch calibrate` without --no-context"
        )
    if settings.flag_budget is None:
        return fit.budget.default
    try:
        return check_budget(settings.flag_budget, artifact.n_classes)
    except ValueError as exc:
        raise StartupError(f"--flag-budget: {exc}") from None


def calibration_rates(pipeline: Pipeline) -> NDArray[np.float64] | None:
    """The drift baseline: calibration flag rates of the served rule, ``(K, 2)`` or None.

    Under the budget rule served at another budget than the artifact's default, the
    rates are scaled by the ratio of the two (the volume moves with the budget).
    """
    fit = pipeline.artifact.fit
    rates = fit.flag_rates.get(pipeline.filter_by.value)
    if rates is None or pipeline.flag_budget is None or fit.budget is None:
        return rates
    return rates * (pipeline.flag_budget / fit.budget.default)


def model_info(pipeline: Pipeline) -> pb.ModelInfo:
    """Describe the loaded model and its calibration for GetModelInfo."""
    artifact: CalibrationArtifact = pipeline.artifact
    fit = artifact.fit
    model = pipeline.model
    rates = fit.flag_rates.get(pipeline.filter_by.value)
    info = pb.ModelInfo(
        name=model.name if model else "probabilities-only",
        version=pipeline.model_version,
        sha256=model.sha256 if model else "",
        input_kind=_INPUT_KIND[pipeline.spec.input_kind],
        input_shape=list(model.input_shape) if model else [-1, artifact.n_classes],
        class_names=list(artifact.class_names),
        server_version=__version__,
        calibration=pb.CalibrationSummary(
            schema_version=artifact.schema_version,
            calibration_size=fit.n_examples,
            pooling=fit.pooling.value,
            alpha=fit.alpha,
            temperature=fit.temperature,
            filter_by=pipeline.filter_by.value,
            created_at=artifact.created_at,
            flag_budget=pipeline.flag_budget or 0.0,
            context_tags=-1 if fit.context is None else fit.context.m,
        ),
    )
    th = fit.thresholds
    for k, name in enumerate(artifact.class_names):
        info.calibration.classes.add(
            label=name,
            t0=float(th.t0[k]),
            t1=float(th.t1[k]),
            n_pos=int(th.n_pos[k]),
            n_neg=int(th.n_neg[k]),
            missing_rate=float(rates[k, 0]) if rates is not None else 0.0,
            spurious_rate=float(rates[k, 1]) if rates is not None else 0.0,
        )
    return info


@dataclass
class RunningServer:
    """A started server: its bound ports and the handles needed to stop it."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    pipeline: Pipeline
    batcher: Batcher
    metrics: Metrics
    metrics_port: int | None = None
    metrics_httpd: WSGIServer | None = None
    security: SecurityLayer | None = None
    delivery: Delivery | None = None
    label_studio_http: LabelStudioHttp | None = None
    adapter: Adapter | None = None
    stopped: threading.Event = field(default_factory=threading.Event)

    def stop(self, grace_seconds: float) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight ones finish within the grace."""
        self.health.enter_graceful_shutdown()
        if self.label_studio_http is not None:
            self.label_studio_http.stop()  # its queued annotations still need the batcher
        if self.delivery is not None:
            self.delivery.feed.close()  # WatchFlags streams end now rather than at the grace
        self.server.stop(grace_seconds).wait()
        self.batcher.close()
        if self.adapter is not None:
            self.adapter.stop()
        if self.delivery is not None:
            self.delivery.stop()
        if self.metrics_httpd is not None:
            self.metrics_httpd.shutdown()
            self.metrics_httpd.server_close()
        self.stopped.set()


def adapter_from(settings: Settings, pipeline: Pipeline, outbox: Outbox) -> Adapter | None:
    """The cut-off adapter ``--adapt-to-verdicts`` asks for, started and wired into
    ``pipeline`` (None when off). Raises :class:`StartupError` for a bad target."""
    if not settings.adapt_to_verdicts:
        return None
    try:
        policy = AdaptPolicy(target=settings.target_precision)
    except ValueError as exc:
        raise StartupError(f"--target-precision: {exc}") from exc
    if settings.adapt_interval_seconds <= 0:
        raise StartupError("--adapt-interval-seconds must be > 0")
    adapter = Adapter(
        outbox,
        pipeline.spec.class_names,
        pipeline.model_version,
        policy,
        interval_seconds=settings.adapt_interval_seconds,
    )
    pipeline.cutoffs = lambda: adapter.cutoffs
    adapter.start()
    return adapter


def with_cutoffs(info: pb.ModelInfo, adapter: Adapter | None) -> pb.ModelInfo:
    """``info`` with the adapted cut-offs in force now (GetModelInfo; unchanged when off)."""
    if adapter is None:
        return info
    out = pb.ModelInfo()
    out.CopyFrom(info)
    cut = out.adaptive_cutoffs
    cut.enabled = True
    cut.target_precision = adapter.policy.target
    if adapter.version is not None:
        cut.version = adapter.version.version
        cut.updated_at = adapter.version.created_at
    cut.cutoffs.update(adapter.as_dict())
    return out


def start(
    settings: Settings, *, registry: CollectorRegistry | None = None, reuse_port: bool = False
) -> RunningServer:
    """Build and start the gRPC server (and the metrics endpoint) as ``settings`` say.

    ``reuse_port`` lets several worker processes bind the same port (SO_REUSEPORT);
    the kernel then spreads connections across them.
    """
    registry = registry if registry is not None else CollectorRegistry()
    metrics = Metrics(registry)
    security = build_security(settings, registry)  # bad certs/tokens/limits fail before loading
    delivery = Delivery(settings, registry=registry)
    pipeline = load_pipeline(settings, metrics, outbox=delivery.outbox)
    metrics.build_info.labels(__version__).set(1)
    info = model_info(pipeline)
    metrics.model_info.labels(info.name, info.version, info.sha256).set(1)
    metrics.set_calibration(pipeline.artifact.class_names, calibration_rates(pipeline))

    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="grpc"),
        # metrics outermost: calls refused by the security interceptors are still counted
        interceptors=[MetricsInterceptor(metrics), *security.interceptors],
        options=options,
        maximum_concurrent_rpcs=security.max_concurrent_rpcs,
    )
    batcher = Batcher(
        pipeline, max_batch=settings.max_batch, window_seconds=settings.batch_window_ms / 1000.0
    )
    adapter = adapter_from(settings, pipeline, delivery.outbox)
    servicer = LabelQualityServicer(
        ExampleDecoder(pipeline.spec, security.limits),
        batcher.score,
        functools.partial(with_cutoffs, info, adapter),
        max_batch=settings.max_batch,
        admission=security.admission,
    )
    pb_grpc.add_LabelQualityServicer_to_server(servicer, server)
    verdict_metrics = VerdictMetrics(
        registry, pipeline.spec.class_names, max_class_series=metrics.max_class_series
    )
    verdicts = VerdictBook(delivery.outbox, on_recorded=verdict_metrics.count)
    if settings.annotator_metrics < 0:
        raise StartupError("--annotator-metrics must be 0 (aggregates only) or more")
    registry.register(AnnotatorCollector(verdicts.annotators, top=settings.annotator_metrics))
    flags_pb2_grpc.add_FlagFeedServicer_to_server(FlagFeedServicer(delivery.feed, verdicts), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, FLAG_FEED_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
        server,
    )
    address = f"{settings.host}:{settings.port}"
    problem = bind_problem(settings.host, settings.port, reuse_port=reuse_port)
    if problem is not None:  # said here, in one line, rather than by gRPC core's log
        raise StartupError(f"cannot bind {address}: {problem}")
    try:
        port = security.bind(server, address)
    except RuntimeError as exc:
        raise StartupError(f"cannot bind {address}: {exc}") from exc
    if port == 0:
        raise StartupError(f"cannot bind {address}: is the port in use?")
    metrics_port = None
    metrics_httpd: WSGIServer | None = None
    if settings.metrics_port:
        try:
            metrics_httpd, _ = start_http_server(
                settings.metrics_port, addr=settings.host, registry=registry
            )
        except OSError as exc:
            raise StartupError(
                f"cannot bind metrics port {settings.host}:{settings.metrics_port}: {exc}"
            ) from exc
        metrics_port = settings.metrics_port
    delivery.start(pipeline.spec.class_names)  # sink config errors stop start-up here
    ls_http = None
    if settings.http_port:
        ls_http = label_studio_http(
            settings, pipeline, batcher.score, os.environ, reuse_port=reuse_port, verdicts=verdicts
        )
        ls_http.start()
    server.start()
    health_servicer.set(FLAG_FEED_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    def _outbox_health(writable: bool) -> None:
        # scoring without recording flags would lose them: NOT_SERVING until writable again
        serving = health_pb2.HealthCheckResponse.SERVING
        status = serving if writable else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, status)

    delivery.outbox.add_writable_listener(_outbox_health)
    _outbox_health(delivery.outbox.writable)
    # for `python -m labelwatch.healthcheck` (the image's HEALTHCHECK): the real port and TLS mode
    tls = security.credentials is not None and settings.tls_cert is not None
    write_state(
        settings.data_dir,
        ServerState(
            host=settings.host,
            port=port,
            tls_cert=str(settings.tls_cert.resolve()) if tls and settings.tls_cert else None,
            mutual_tls=tls and settings.tls_client_ca is not None,
            pid=os.getpid(),
        ),
    )
    return RunningServer(
        server=server,
        port=port,
        health=health_servicer,
        pipeline=pipeline,
        batcher=batcher,
        metrics=metrics,
        metrics_port=metrics_port,
        metrics_httpd=metrics_httpd,
        security=security,
        delivery=delivery,
        label_studio_http=ls_http,
        adapter=adapter,
    )


def serve_forever(
    settings: Settings,
    *,
    reuse_port: bool = False,
    on_ready: Callable[[], object] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT, then drain within ``grace_seconds``; return the exit code.

    ``on_ready`` is called once the server accepts calls (used by ``--workers``).
    """
    settings = with_default_model(settings)
    stop_requested = threading.Event()
    received: list[int] = []

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)  # no logging here: the handler may interrupt a log call
        stop_requested.set()

    # handlers first: a signal that arrives right after "listening" must drain, not kill
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    running = start(settings, reuse_port=reuse_port)
    model = running.pipeline.model
    log.info(
        "event=started address=%s:%d metrics_port=%s model=%s model_sha256=%s artifact=%s "
        "classes=%d input=%s filter_by=%s version=%s http_port=%s",
        settings.host,
        running.port,
        running.metrics_port or "off",
        settings.model or "none",
        model.sha256 if model else "none",
        settings.thresholds,
        running.pipeline.spec.n_classes,
        running.pipeline.spec.input_kind.value,
        running.pipeline.filter_by.value,
        running.pipeline.model_version,
        running.label_studio_http.port if running.label_studio_http else "off",
    )
    if on_ready is None:
        print(f"labelwatch listening on {settings.host}:{running.port}", flush=True)
    else:
        on_ready()
    stop_requested.wait()
    log.info(
        "event=shutdown_requested signal=%s grace_seconds=%s",
        signal.Signals(received[0]).name,
        settings.grace_seconds,
    )
    if settings.drain_delay_seconds > 0:
        running.health.enter_graceful_shutdown()  # NOT_SERVING, still answering calls
        log.info("event=drain_delay seconds=%s", settings.drain_delay_seconds)
        threading.Event().wait(settings.drain_delay_seconds)
    running.stop(settings.grace_seconds)
    log.info("event=stopped")
    return 0
