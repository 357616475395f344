"""The HTTP server on ``--http-port``: Label Studio webhooks and the ML backend protocol.

Routes: ``POST /webhook`` (header ``X-Labelwatch-Secret``, compared in constant
time; 401 otherwise), ``GET /health`` and ``GET /``, ``POST /setup``, ``POST
/predict``. Answers are JSON. A webhook is parsed, queued and answered at once
(202); scoring happens on the processor's worker, and write-backs go through the
durable queue of :mod:`labelwatch.labelstudio.writequeue`.

With a secret configured, ``/setup`` and ``/predict`` also need it, as the
password of HTTP Basic auth (any user name): Label Studio sends it when the ML
backend is connected with "Basic Auth" (``labelwatch label-studio connect`` does
that). ``/health`` stays open: it only tells the model version.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from labelwatch.config import Settings
from labelwatch.delivery import read_secret
from labelwatch.engine import Engine
from labelwatch.errors import StartupError
from labelwatch.labelstudio.client import LabelStudioClient
from labelwatch.labelstudio.leases import release_dead_leases
from labelwatch.labelstudio.ml_backend import MlBackend
from labelwatch.labelstudio.processor import AnnotationProcessor
from labelwatch.labelstudio.webhook import (
    Mappings,
    PayloadError,
    ProjectMapping,
    load_mappings,
    receive,
)
from labelwatch.labelstudio.writeback import TaskWriter
from labelwatch.labelstudio.writequeue import WriteBackQueue, WriteBackWorker
from labelwatch.metrics import LabelStudioMetrics
from labelwatch.outbox import Outbox, OutboxError
from labelwatch.sinks.base import RetryPolicy

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Labelwatch-Secret"
MAX_BODY_BYTES = 8 * 1024 * 1024
BASIC_AUTH_USER = "labelwatch"
"""The user name ``connect`` gives Label Studio for the ML backend (any name is accepted)."""


def basic_password(header: str | None) -> str | None:
    """The password of an ``Authorization: Basic ...`` header, or None.

    >>> basic_password("Basic " + base64.b64encode(b"labelwatch:s3cret").decode())
    's3cret'
    """
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, sep, password = decoded.partition(":")
    return password if sep else None


class LabelStudioHttp:
    """Serves the routes above on ``host:port`` (0 = a free port; see :attr:`port`)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        secret: str | None,
        mappings: Mappings,
        class_names: tuple[str, ...],
        outbox: Outbox,
        max_queued: int,
        processor: AnnotationProcessor,
        ml_backend: MlBackend,
        metrics: LabelStudioMetrics,
        writer: WriteBackWorker | None = None,
        reuse_port: bool = False,
    ) -> None:
        self._secret = secret.encode("utf-8") if secret else None
        self._mappings = mappings
        self._class_names = class_names
        self._outbox = outbox
        self._max_queued = max_queued
        self.processor = processor
        self.ml_backend = ml_backend
        self.metrics = metrics
        self.writer = writer
        metrics.track_queue(lambda: processor.depth)
        app = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "labelwatch"
            protocol_version = "HTTP/1.1"

            started = 0.0

            def parse_request(self) -> bool:
                self.started = time.perf_counter()
                return super().parse_request()

            def do_GET(self) -> None:
                if self.path.split("?")[0] in ("/", "/health"):
                    self._answer(200, app.ml_backend.health())
                else:
                    self._answer(404, {"error": f"no route GET {self.path}"})

            def do_POST(self) -> None:
                route = self.path.split("?")[0].rstrip("/")
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if not 0 <= length <= MAX_BODY_BYTES:
                    self.close_connection = True
                    self._answer(413, {"error": f"need a Content-Length up to {MAX_BODY_BYTES}"})
                    return
                raw = self.rfile.read(length)
                if route == "/webhook" and not app.authorized(self.headers.get(SECRET_HEADER)):
                    self._answer(401, {"error": f"missing or wrong {SECRET_HEADER} header"})
                    return
                if route in ("/predict", "/setup") and not app.ml_authorized(
                    self.headers.get("Authorization")
                ):
                    self._answer(
                        401,
                        {
                            "error": "this ML backend needs HTTP Basic auth with the shared secret "
                            "as password (labelwatch label-studio connect sets it up)"
                        },
                        {"WWW-Authenticate": 'Basic realm="labelwatch"'},
                    )
                    return
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    self._answer(400, {"error": "the body is not JSON"})
                    return
                try:
                    if route == "/webhook":
                        status, answer = app.webhook(body)
                    elif route == "/predict":
                        status, answer = 200, app.ml_backend.predict(body)
                    elif route == "/setup":
                        status, answer = 200, app.ml_backend.setup(body)
                    elif route == "/webhook-test":  # Label Studio's "test webhook" button
                        status, answer = 200, {"ok": True}
                    else:
                        status, answer = 404, {"error": f"no route POST {self.path}"}
                except PayloadError as exc:
                    status, answer = 400, {"error": str(exc)}
                self._answer(status, answer)

            def _answer(
                self, status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
            ) -> None:
                raw = json.dumps(body).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)
                app.metrics.observe_request(self.path, status, time.perf_counter() - self.started)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("event=http_request %s", format % args)

        self._httpd = ThreadingHTTPServer((host, port), Handler, bind_and_activate=False)
        self._httpd.daemon_threads = True
        if reuse_port:  # --workers: every worker process serves the same port
            self._httpd.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            self._httpd.server_bind()
            self._httpd.server_activate()
        except OSError:
            self._httpd.server_close()
            raise
        self.port = int(self._httpd.server_address[1])
        self._stopped = False
        log.info("event=listening listener=label_studio_http address=%s:%d", host, self.port)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="ls-http", daemon=True
        )

    def authorized(self, given: str | None) -> bool:
        """Whether ``given`` is the shared secret (constant-time; always False without one)."""
        if self._secret is None or given is None:
            return False
        return hmac.compare_digest(given.encode("utf-8"), self._secret)

    def ml_authorized(self, authorization: str | None) -> bool:
        """Whether a ``/setup`` or ``/predict`` request may pass (always, without a secret)."""
        if self._secret is None:
            return True
        password = basic_password(authorization)
        if password is None:
            return False
        return hmac.compare_digest(password.encode("utf-8"), self._secret)

    def webhook(self, body: Any) -> tuple[int, dict[str, Any]]:
        """Parse and store one webhook in the outbox: (HTTP status, JSON answer).

        202 only once the event is committed; 503 when ``max_queued`` events wait
        or the outbox cannot be written (Label Studio may resend).
        """
        received = receive(body, self._mappings, self._class_names)
        if received is None:
            return 200, {"ignored": str(body.get("action") if isinstance(body, dict) else "")}
        try:
            stored = self._outbox.put_ls_events(received.rows, max_queued=self._max_queued)
        except OutboxError as exc:
            log.error("event=ls_event_not_stored error=%r", str(exc))
            return 503, {"error": "labelwatch cannot store the event right now; resend later"}
        if not stored:
            return 503, {"error": "too many annotations waiting to be scored; resend later"}
        self.processor.wake()
        answer: dict[str, Any] = {"queued": received.example_id or len(received.rows)}
        if received.unknown_tags:
            answer["unknown_tags"] = list(received.unknown_tags)
        return 202, answer

    def start(self) -> None:
        """Serve in a background thread; process and write back (leftovers of an earlier run
        first; leases a killed process left are freed)."""
        try:
            release_dead_leases(self._outbox)
        except OutboxError as exc:  # the leases then end by themselves
            log.error("event=ls_dead_leases_not_released error=%r", str(exc))
        if self.writer is not None:
            self.writer.start()
        self.processor.start()
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting requests, then processing and writing back.

        Events not processed and write-backs not done by then stay in the outbox
        for the next start. Idempotent; releases the port also when :meth:`start`
        was never called.
        """
        if self._stopped:
            return
        self._stopped = True
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()
        self.processor.close()
        if self.writer is not None:
            self.writer.stop(5.0)


def from_settings(
    settings: Settings,
    engine: Engine,
    environ: Mapping[str, str],
    *,
    reuse_port: bool = False,
) -> LabelStudioHttp:
    """Build (not start) the HTTP server ``settings`` ask for (``--http-port``; 0 = any free).

    Annotations are scored by ``engine``; received events, their flags and the
    write-backs go to the engine's outbox. Raises :class:`StartupError` for an
    unreadable secret file, a write-back URL without a token, or a port that
    cannot be bound. Metrics go on the engine's registry; implicit verdicts
    (``--ls-implicit-verdicts on``) are counted through the engine's verdict book.
    """
    pipeline = engine.pipeline
    outbox = engine.outbox
    if settings.http_port is None:
        raise StartupError("the Label Studio HTTP port is off (--http-port off)")
    secret: str | None
    if settings.ls_webhook_secret_file is not None or environ.get(settings.ls_webhook_secret_env):
        secret = read_secret(
            "Label Studio webhook secret",
            settings.ls_webhook_secret_env,
            settings.ls_webhook_secret_file,
            environ,
            "--ls-webhook-secret-file",
        )
    else:
        secret = None
        log.warning(
            "event=ls_webhook_disabled reason=no_secret: set %s or --ls-webhook-secret-file; "
            "every POST /webhook is refused with 401, and /setup and /predict need no auth",
            settings.ls_webhook_secret_env,
        )
    default = ProjectMapping(settings.ls_text_key, settings.ls_choices_name)
    mappings = Mappings(default)
    if settings.ls_projects is not None:
        try:
            mappings = load_mappings(settings.ls_projects, default)
        except ValueError as exc:
            raise StartupError(str(exc)) from exc
    class_names = tuple(pipeline.spec.class_names)
    metrics = LabelStudioMetrics(engine.registry)
    queue: WriteBackQueue | None = None
    worker: WriteBackWorker | None = None
    policy = RetryPolicy(
        initial_seconds=settings.sink_retry_initial_seconds,
        max_seconds=settings.sink_retry_max_seconds,
    )
    if settings.ls_writeback_url:
        token = read_secret(
            "Label Studio token",
            settings.label_studio_token_env,
            settings.label_studio_token_file,
            environ,
            "--label-studio-token-file",
        )
        try:
            client = LabelStudioClient(settings.ls_writeback_url, token)
        except ValueError as exc:
            raise StartupError(str(exc)) from exc
        queue = WriteBackQueue(outbox)
        worker = WriteBackWorker(
            queue,
            TaskWriter(client),
            policy=policy,
            on_outcome=lambda outcome: metrics.writebacks.labels(outcome).inc(),
        )
        metrics.track_writebacks(queue)
    processor = AnnotationProcessor(
        outbox,
        engine.score,
        class_names,
        mappings,
        writeback=queue is not None,
        policy=policy,
        on_queued=(lambda: None) if queue is None else queue.notify,
        implicit_verdicts=settings.ls_implicit_verdicts == "on",
        on_verdict=engine.verdicts.counted_one,
        observe=metrics.observe_annotation,
    )
    backend = MlBackend(
        pipeline.model,
        class_names,
        pipeline.model_version,
        mappings,
        fit=pipeline.artifact.fit,
        filter_by=pipeline.filter_by,
    )
    engine.add_swap_listener(backend.serve)  # /predict follows model reloads
    try:
        return LabelStudioHttp(
            settings.host,
            settings.http_port,
            secret=secret,
            mappings=mappings,
            class_names=class_names,
            outbox=outbox,
            max_queued=settings.ls_queue_size,
            processor=processor,
            ml_backend=backend,
            metrics=metrics,
            writer=worker,
            reuse_port=reuse_port,
        )
    except OSError as exc:
        raise StartupError(
            f"cannot bind HTTP port {settings.host}:{settings.http_port}: {exc}"
        ) from exc
