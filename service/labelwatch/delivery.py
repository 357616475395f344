"""Assemble flag delivery from :class:`Settings`: outbox, watch feed, sink workers, upkeep.

:class:`Delivery` owns the outbox for the server. Sink workers and retention
run in one process only: with ``--workers N`` every worker process opens the
same outbox (SQLite serialises their writes) and serves WatchFlags, but only
the one holding an exclusive lock on ``<outbox>.delivery.lock`` runs the sink
workers, prunes and exports the backlog gauges. When that process dies the
kernel drops its lock and another worker takes over within seconds.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Literal

from prometheus_client import CollectorRegistry

from labelwatch.config import Settings
from labelwatch.errors import StartupError
from labelwatch.metrics import DeliveryMetrics
from labelwatch.outbox import Outbox, OutboxError, RetentionPolicy
from labelwatch.sinks.base import RetryPolicy, Sink, SinkWorker
from labelwatch.watch import FlagFeed

log = logging.getLogger(__name__)

UPKEEP_SECONDS = 1.0
"""How often the upkeep thread probes an unwritable outbox and tries to take the lead."""
PRUNE_SECONDS = 60.0
"""How often retention runs (in the leading process)."""


def read_secret(
    what: str, env_name: str, path: Path | None, environ: Mapping[str, str], file_flag: str
) -> str:
    """A secret from ``path`` (stripped) if given, else from the variable ``env_name``.

    Raises :class:`StartupError` naming both places when neither holds one.
    """
    if path is not None:
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise StartupError(f"cannot read the {what} from {path}: {exc}") from exc
        if not value:
            raise StartupError(f"the {what} file {path} is empty")
        return value
    value = environ.get(env_name, "").strip()
    if not value:
        raise StartupError(
            f"no {what}: set the environment variable {env_name} or pass {file_flag} FILE"
        )
    return value


def build_sinks(
    settings: Settings, class_names: Sequence[str], environ: Mapping[str, str]
) -> list[Sink]:
    """The sinks ``settings`` turn on (each needs its URL), in a fixed order."""
    sinks: list[Sink] = []
    if settings.label_studio_url:
        from labelwatch.labelstudio.sink import LabelStudioSink

        token = read_secret(
            "Label Studio token",
            settings.label_studio_token_env,
            settings.label_studio_token_file,
            environ,
            "--label-studio-token-file",
        )
        sinks.append(
            LabelStudioSink(
                settings.label_studio_url,
                token=token,
                class_names=class_names,
                project=settings.label_studio_project,
            )
        )
    if settings.nats_url:
        try:
            from labelwatch.sinks.nats import NatsSink
        except ImportError as exc:
            raise StartupError(
                f"--nats-url needs the nats-py package (pip install 'labelwatch[server]'): {exc}"
            ) from exc
        sinks.append(
            NatsSink(
                settings.nats_url,
                subject=settings.nats_subject,
                stream=settings.nats_stream,
                duplicate_window_seconds=settings.nats_duplicate_window_seconds,
            )
        )
    if settings.webhook_url:
        from labelwatch.sinks.webhook import WebhookSink

        secret = read_secret(
            "webhook secret",
            settings.webhook_secret_env,
            settings.webhook_secret_file,
            environ,
            "--webhook-secret-file",
        )
        try:
            sinks.append(
                WebhookSink(
                    settings.webhook_url,
                    secret=secret.encode("utf-8"),
                    timeout_seconds=settings.webhook_timeout_seconds,
                )
            )
        except ValueError as exc:
            raise StartupError(str(exc)) from exc
    return sinks


class _LeaderLock:
    """A non-blocking exclusive ``flock`` on a file next to the outbox."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[bytes] | None = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def try_acquire(self) -> bool:
        if self._handle is not None:
            return True
        try:
            handle = open(self.path, "ab")  # noqa: SIM115 - held open while leading
        except OSError:
            return False
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


class Delivery:
    """The outbox, the WatchFlags feed and the sink workers of one server process.

    Build it before the pipeline (which writes to :attr:`outbox`), then call
    :meth:`start` with the model's class names once they are known.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self._environ = os.environ if environ is None else environ
        sync: Literal["FULL", "NORMAL"] = "NORMAL" if settings.outbox_sync == "normal" else "FULL"
        self.outbox = Outbox(settings.outbox_path, synchronous=sync)
        if not self.outbox.writable:
            log.error(
                "event=outbox_unavailable_at_start path=%s error=%r: scoring answers "
                "UNAVAILABLE until it can be written",
                settings.outbox_path,
                self.outbox.last_error,
            )
        self.feed = FlagFeed(
            self.outbox,
            ack_timeout_seconds=settings.watch_ack_timeout_seconds,
            max_streams=max(1, settings.threads // 2),
        )
        self.metrics = DeliveryMetrics(registry)
        self.retention = RetentionPolicy(
            max_age_seconds=settings.outbox_retention_days * 86400.0,
            max_bytes=int(settings.outbox_max_mb * 1024 * 1024),
        )
        self.policy = RetryPolicy(
            max_attempts=settings.sink_max_attempts,
            initial_seconds=settings.sink_retry_initial_seconds,
            max_seconds=settings.sink_retry_max_seconds,
        )
        self.sinks: list[Sink] = []
        self.workers: list[SinkWorker] = []
        self._leader = _LeaderLock(Path(str(settings.outbox_path) + ".delivery.lock"))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_prune = 0.0

    @property
    def leading(self) -> bool:
        """Whether this process runs the sink workers and retention."""
        return self._leader.held

    def start(self, class_names: Sequence[str]) -> None:
        """Build the configured sinks (may raise :class:`StartupError`) and start upkeep."""
        self.sinks = build_sinks(self.settings, class_names, self._environ)
        self.metrics.track(self.outbox, [s.name for s in self.sinks], leading=lambda: self.leading)
        for sink in self.sinks:
            log.info("event=sink_configured sink=%s", sink.name)
        self._upkeep_once()
        self._thread = threading.Thread(target=self._upkeep, name="delivery-upkeep", daemon=True)
        self._thread.start()

    def _upkeep(self) -> None:
        while not self._stop.wait(UPKEEP_SECONDS):
            try:
                self._upkeep_once()
            except Exception:  # upkeep must keep running; the log says what broke
                log.exception("event=delivery_upkeep_failed")

    def _upkeep_once(self) -> None:
        if not self.outbox.writable:
            self.outbox.probe()
        if not self.leading and self._leader.try_acquire():
            log.info("event=delivery_leader sinks=%s", ",".join(s.name for s in self.sinks))
            for sink in self.sinks:
                worker = SinkWorker(sink, self.outbox, self.metrics, policy=self.policy)
                worker.start()
                self.workers.append(worker)
        if self.leading and time.monotonic() - self._last_prune >= PRUNE_SECONDS:
            self._last_prune = time.monotonic()
            self.prune()

    def prune(self) -> None:
        """Apply retention now and count what it removed."""
        try:
            result = self.outbox.prune(self.retention)
        except OutboxError as exc:
            log.error("event=outbox_prune_failed error=%r", str(exc))
            return
        if result.pruned:
            self.metrics.pruned.inc(result.pruned)
            log.info("event=outbox_pruned flags=%d unsent=%d", result.pruned, result.unsent)
        if result.unsent:
            self.metrics.pruned_unsent.inc(result.unsent)

    def stop(self, timeout: float = 5.0) -> None:
        """End watch streams, stop the workers (each gets ``timeout``), close the outbox."""
        self.feed.close()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for worker in self.workers:
            worker.stop(timeout)
        self._leader.release()
        self.outbox.close()
