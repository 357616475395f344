"""The Prometheus ``/metrics`` endpoint: one HTTP listener over the engine's registry."""

from __future__ import annotations

import logging
import threading

from prometheus_client import CollectorRegistry, start_http_server

from labelwatch.errors import StartupError

log = logging.getLogger(__name__)


class MetricsEndpoint:
    """Serves ``registry`` on ``http://host:port/metrics`` from a daemon thread.

    ``port`` 0 asks for any free port; :attr:`port` is the bound one. Raises
    :class:`StartupError` when the port cannot be bound.
    """

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        try:
            self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise StartupError(f"cannot bind metrics port {host}:{port}: {exc}") from exc
        self.host = host
        self.port = int(self._httpd.server_port)
        self._closed = False
        self._lock = threading.Lock()
        log.info("event=listening listener=metrics address=%s:%d", host, self.port)

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
