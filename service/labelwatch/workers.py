"""``--workers N``: N server processes sharing one port, so model work is not held by one GIL.

Each worker is a full server (own model session, batcher and metrics) bound
with SO_REUSEPORT; the kernel spreads incoming connections across them. Worker
``i`` serves Prometheus metrics on ``--metrics-port + i`` (one exporter per
worker: sum across them in PromQL). The parent forwards SIGTERM/SIGINT and
exits 0 once every worker drained and exited 0.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import sys
from multiprocessing.synchronize import Event as EventType
from types import FrameType

from labelwatch import logs
from labelwatch.config import Settings

log = logging.getLogger(__name__)


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (not listen) a SO_REUSEPORT socket to fix the shared port; caller closes it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock, int(sock.getsockname()[1])


def _worker_main(settings: Settings, index: int, ready: EventType) -> None:
    from labelwatch.server import serve_forever

    logs.configure(settings.log_level, settings.log_format)
    logging.getLogger().handlers[0].addFilter(_WorkerTag(index))
    sys.exit(serve_forever(settings, reuse_port=True, on_ready=ready.set))


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
    ctx = multiprocessing.get_context("spawn")
    processes = []
    events = []
    for index in range(settings.workers):
        worker_settings = dataclasses.replace(
            settings,
            port=port,
            metrics_port=settings.metrics_port + index if settings.metrics_port else 0,
        )
        ready = ctx.Event()
        proc = ctx.Process(target=_worker_main, args=(worker_settings, index, ready))
        proc.start()
        processes.append(proc)
        events.append(ready)

    def _forward(signum: int, _frame: FrameType | None) -> None:
        for proc in processes:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
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
        sock.close()  # the workers have bound (or failed): the reservation can go
    print(f"labelwatch listening on {settings.host}:{port} workers={settings.workers}", flush=True)
    for proc in processes:
        proc.join()
    codes = [proc.exitcode for proc in processes]
    log.info("event=workers_stopped exit_codes=%s", codes)
    return 0 if all(code == 0 for code in codes) else 1
