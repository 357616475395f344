"""``labelwatch serve``: one engine, its gRPC and HTTP adapters, graceful shutdown.

Start-up either completes or undoes itself: every step registers its undo on an
exit stack, so a step that fails (a port in use, a bad sink configuration, ...)
leaves no port bound, no thread running and the outbox closed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

import grpc
from grpc_health.v1 import health
from prometheus_client import CollectorRegistry

from labelwatch.adaptation import Adapter
from labelwatch.batcher import Batcher
from labelwatch.config import Settings
from labelwatch.delivery import Delivery
from labelwatch.engine import Engine, with_default_model
from labelwatch.grpc.app import GrpcApp
from labelwatch.healthcheck import ServerState, write_state
from labelwatch.labelstudio.http import LabelStudioHttp
from labelwatch.labelstudio.http import from_settings as label_studio_http
from labelwatch.metrics import Metrics
from labelwatch.pipeline import Pipeline
from labelwatch.ports import shown
from labelwatch.security.layer import SecurityLayer, build_security

log = logging.getLogger(__name__)


class RunningServer:
    """A started server: its engine, its bound ports, and the handles needed to stop it."""

    def __init__(
        self,
        engine: Engine,
        grpc_app: GrpcApp,
        security: SecurityLayer,
        label_studio_http: LabelStudioHttp | None,
        resources: contextlib.ExitStack,
    ) -> None:
        self.engine = engine
        self.grpc_app = grpc_app
        self.security = security
        self.label_studio_http = label_studio_http
        self._resources = resources
        self.stopped = threading.Event()

    @property
    def port(self) -> int:
        """The bound gRPC port."""
        return self.grpc_app.port

    @property
    def metrics_port(self) -> int | None:
        """The bound ``/metrics`` port, or None when off."""
        return self.engine.metrics_port

    @property
    def http_port(self) -> int | None:
        """The bound Label Studio HTTP port, or None when off."""
        return self.label_studio_http.port if self.label_studio_http is not None else None

    @property
    def adapter(self) -> Adapter | None:
        """The cut-off adapter (``--adapt-to-verdicts``), or None."""
        return self.engine.adapter

    @property
    def server(self) -> grpc.Server:
        return self.grpc_app.server

    @property
    def health(self) -> health.HealthServicer:
        return self.grpc_app.health

    @property
    def pipeline(self) -> Pipeline:
        return self.engine.pipeline

    @property
    def batcher(self) -> Batcher:
        return self.engine.batcher

    @property
    def metrics(self) -> Metrics:
        return self.engine.metrics

    @property
    def delivery(self) -> Delivery:
        return self.engine.delivery

    def stop(self, grace_seconds: float) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight ones finish within the grace."""
        try:
            self.health.enter_graceful_shutdown()
            if self.label_studio_http is not None:
                self.label_studio_http.stop()  # its queued annotations still need the batcher
            self.engine.feed.close()  # WatchFlags streams end now rather than at the grace
            self.grpc_app.stop(grace_seconds)
            self.engine.close()
        finally:
            self._resources.close()  # whatever is left (each undo runs once)
            self.stopped.set()


def start(
    settings: Settings, *, registry: CollectorRegistry | None = None, reuse_port: bool = False
) -> RunningServer:
    """Build and start the server ``settings`` describe; undo every step if one fails.

    ``reuse_port`` lets several worker processes bind the same ports (SO_REUSEPORT);
    the kernel then spreads connections across them. Raises :class:`StartupError`.
    """
    registry = registry if registry is not None else CollectorRegistry()
    with contextlib.ExitStack() as stack:
        security = build_security(settings, registry)  # bad certs/tokens/limits fail before loading
        engine = stack.enter_context(Engine(settings, registry=registry))
        settings = engine.settings
        grpc_app = GrpcApp(engine, settings, security, reuse_port=reuse_port)
        stack.callback(grpc_app.stop, None)
        engine.serve_metrics(settings.host, settings.metrics_port)
        engine.start()  # sink config errors stop start-up here
        ls_http = None
        if settings.http_port is not None:
            ls_http = label_studio_http(settings, engine, os.environ, reuse_port=reuse_port)
            stack.callback(ls_http.stop)
            ls_http.start()
        # last: grpcio cannot release the port of a server that never started
        port = grpc_app.bind(settings.host, settings.port)
        grpc_app.start()
        # for `python -m labelwatch.healthcheck` (the image's HEALTHCHECK): the real port and TLS
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
        resources = stack.pop_all()  # started: from now on RunningServer.stop undoes it all
    return RunningServer(engine, grpc_app, security, ls_http, resources)


def listening_line(settings: Settings, running: RunningServer) -> str:
    """The start-up line on stdout: every bound port (scripts and tests read them back)."""
    return (
        f"labelwatch listening on {settings.host}:{running.port} "
        f"metrics_port={shown(running.metrics_port)} http_port={shown(running.http_port)}"
    )


def serve_forever(
    settings: Settings,
    *,
    reuse_port: bool = False,
    on_ready: Callable[[RunningServer], object] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT, then drain within ``grace_seconds``; return the exit code.

    ``on_ready`` is called with the running server once it accepts calls (used by
    ``--workers``); without it, the start-up line goes to stdout.
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
    engines: list[Engine] = []

    def _on_hangup(_signum: int, _frame: FrameType | None) -> None:
        for engine in engines:  # none yet while starting: the version on disk then serves
            engine.request_reload()

    signal.signal(signal.SIGHUP, _on_hangup)
    running = start(settings, reuse_port=reuse_port)
    engines.append(running.engine)
    model = running.pipeline.model
    log.info(
        "event=started address=%s:%d metrics_port=%s model=%s model_sha256=%s artifact=%s "
        "classes=%d input=%s filter_by=%s version=%s http_port=%s model_concurrency=%d",
        settings.host,
        running.port,
        shown(running.metrics_port),
        model.path if model else "none",
        model.sha256 if model else "none",
        settings.thresholds or settings.model_repository,
        running.pipeline.spec.n_classes,
        running.pipeline.spec.input_kind.value,
        running.pipeline.filter_by.value,
        running.pipeline.model_version,
        shown(running.http_port),
        running.engine.batcher.concurrency,
    )
    if on_ready is None:
        print(listening_line(settings, running), flush=True)
    else:
        on_ready(running)
    # wake now and then: a signal the kernel hands to another thread runs its Python handler
    # only once the main thread runs (a SIGHUP reload would otherwise wait for the next signal)
    while not stop_requested.wait(1.0):
        pass
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
