"""``--workers N``: N server processes sharing one port, so model work is not held by one GIL.

Each worker is a full server (own model session, batcher and metrics) bound
with SO_REUSEPORT; the kernel spreads incoming connections across them. Worker
``i`` serves Prometheus metrics on ``--metrics-port + i`` (one exporter per
worker: sum across them in PromQL; with ``--metrics-port 0`` each worker binds
any free port). The parent fixes the shared ports first (0 = any free port),
prints them with every worker's metrics port once all are ready, forwards
SIGTERM/SIGINT and exits 0 once every worker drained and exited 0.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import sys
from multiprocessing.sharedctypes import SynchronizedArray
from multiprocessing.synchronize import Event as EventType
from types import FrameType

from labelwatch import logs
from labelwatch.config import Settings
from labelwatch.ports import shown

log = logging.getLogger(__name__)


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (not listen) a SO_REUSEPORT socket to fix the shared port; caller closes it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock, int(sock.getsockname()[1])


def _worker_main(
    settings: Settings, index: int, ready: EventType, metrics_ports: SynchronizedArray[int]
) -> None:
    from labelwatch.server import RunningServer, serve_forever

    logs.configure(settings.log_level, settings.log_format)
    logging.getLogger().handlers[0].addFilter(_WorkerTag(index))

    def _ready(running: RunningServer) -> None:
        # Admin.ReloadModel reaches one worker: the parent passes it on to all (SIGHUP)
        running.engine.after_rpc_reload = lambda: os.kill(os.getppid(), signal.SIGHUP)
        metrics_ports[index] = -1 if running.metrics_port is None else running.metrics_port
        ready.set()

    sys.exit(serve_forever(settings, reuse_port=True, on_ready=_ready))


def _worker_metrics_port(metrics_port: int | None, index: int) -> int | None:
    """Worker ``index``'s ``/metrics`` port: off, any free port (0), or ``metrics_port + index``."""
    return metrics_port + index if metrics_port else metrics_port


class _WorkerTag(logging.Filter):
    """Adds ``worker=<index>`` to every log line of a worker process."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def run_workers(settings: Settings, *, ready_timeout: float = 300.0) -> int:
    """Start ``settings.workers`` server processes on one port; return the exit code."""
    sock, port = reserve_port(settings.host, settings.port)
    reserved = [sock]
    http_port = settings.http_port
    if http_port is not None:
        http_sock, http_port = reserve_port(settings.host, http_port)
        reserved.append(http_sock)
    ctx = multiprocessing.get_context("spawn")
    metrics_ports = ctx.Array("i", [-1] * settings.workers)
    processes = []
    events = []
    for index in range(settings.workers):
        worker_settings = dataclasses.replace(
            settings,
            port=port,
            http_port=http_port,
            metrics_port=_worker_metrics_port(settings.metrics_port, index),
        )
        ready = ctx.Event()
        proc = ctx.Process(target=_worker_main, args=(worker_settings, index, ready, metrics_ports))
        proc.start()
        processes.append(proc)
        events.append(ready)

    def _forward(signum: int, _frame: FrameType | None) -> None:
        for proc in processes:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    signal.signal(signal.SIGHUP, _forward)  # every worker reloads its model
    try:
        for proc, ready in zip(processes, events, strict=True):
            while not ready.wait(0.1):
                if not proc.is_alive():
                    _forward(signal.SIGTERM, None)
                    for other in processes:
                        other.join()
                    return 2
                ready_timeout -= 0.1
                if ready_timeout <= 0:
                    _forward(signal.SIGTERM, None)
                    return 2
    finally:
        for reservation in reserved:  # the workers have bound (or failed): the reservations go
            reservation.close()
    bound = ",".join("off" if p < 0 else str(p) for p in metrics_ports[:])
    print(
        f"labelwatch listening on {settings.host}:{port} workers={settings.workers} "
        f"metrics_port={bound} http_port={shown(http_port)}",
        flush=True,
    )
    log.info(
        "event=workers_listening address=%s:%d workers=%d metrics_ports=%s http_port=%s",
        settings.host,
        port,
        settings.workers,
        bound,
        shown(http_port),
    )
    for proc in processes:
        proc.join()
    codes = [proc.exitcode for proc in processes]
    log.info("event=workers_stopped exit_codes=%s", codes)
    return 0 if all(code == 0 for code in codes) else 1
