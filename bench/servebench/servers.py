"""labelwatch and the MLServer peer as subprocesses on 127.0.0.1, with their memory and CPU.

Both servers are sized for the benchmark's 64 concurrent clients (see
:data:`LABELWATCH_CAPACITY_FLAGS`); everything else is their default unless a
:class:`LabelwatchConfig` says otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from servebench.workloads import REPO, ServedModel

PEER_DIR = REPO / "bench" / "peer"
PEER_VENV = REPO / "bench" / ".venv-mlserver"
LABELWATCH_CAPACITY_FLAGS = (
    # one handler thread per open stream or running call, for up to 64 clients at once;
    # the defaults (8 threads, 4 streams, 32 queued calls) shed the 64-client cells
    "--threads",
    "80",
    "--max-streams",
    "72",
    "--max-queued-calls",
    "64",
    "--max-inflight",
    "16384",
)
_LISTENING = re.compile(r"labelwatch listening on (\S+):(\d+)")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class LabelwatchConfig:
    """Server flags the benchmark varies; None keeps labelwatch's default."""

    workers: int = 1
    intra_op_threads: int | None = None
    model_concurrency: str | None = None  # None: labelwatch's default (auto)
    spinning: bool = False  # labelwatch's default: off
    batch_window_ms: float | None = None
    outbox_sync: str | None = None
    extra: tuple[str, ...] = ()

    def flags(self) -> list[str]:
        """The ``labelwatch serve`` flags for this configuration (capacity flags included)."""
        out = [*LABELWATCH_CAPACITY_FLAGS, "--workers", str(self.workers)]
        if self.intra_op_threads is not None:
            out += ["--intra-op-threads", str(self.intra_op_threads)]
        if self.model_concurrency is not None:
            out += ["--model-concurrency", self.model_concurrency]
        if self.spinning:
            out.append("--ort-spinning")
        if self.batch_window_ms is not None:
            out += ["--batch-window-ms", str(self.batch_window_ms)]
        if self.outbox_sync is not None:
            out += ["--outbox-sync", self.outbox_sync]
        return out + list(self.extra)

    def label(self) -> str:
        """A short name for tables, e.g. ``w2 intra1 nospin``."""
        parts = [f"w{self.workers}"]
        if self.intra_op_threads is not None:
            parts.append(f"intra{self.intra_op_threads}")
        if self.model_concurrency is not None:
            parts.append(f"calls-{self.model_concurrency}")
        parts.append("spin" if self.spinning else "nospin")
        if self.batch_window_ms is not None:
            parts.append(f"window{self.batch_window_ms:g}ms")
        if self.outbox_sync is not None:
            parts.append(f"outbox-{self.outbox_sync}")
        return " ".join(parts)


@dataclass(frozen=True)
class Memory:
    """Resident memory summed over a server's processes, in bytes."""

    rss: int
    peak: int  # sum of each process's VmHWM


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory(pid: int) -> Memory:
    """RSS and peak RSS (VmHWM) of ``pid`` and its descendants."""
    pids = process_tree(pid)
    return Memory(
        rss=sum(_status_kib(p, "VmRSS") for p in pids) * 1024,
        peak=sum(_status_kib(p, "VmHWM") for p in pids) * 1024,
    )


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its live descendants."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _CLK_TCK


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for servers that cannot take port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class _Proc:
    process: subprocess.Popen[str]
    log: Path
    lines: list[str] = field(default_factory=list)

    def pump(self) -> None:
        assert self.process.stdout is not None
        with self.log.open("a", encoding="utf-8") as out:
            for line in self.process.stdout:
                self.lines.append(line)
                out.write(line)
                out.flush()

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in reversed(process_tree(self.process.pid)):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> _Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("$ " + " ".join(cmd) + "\n", encoding="utf-8")
    process = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=log.parent,
    )
    proc = _Proc(process, log)
    threading.Thread(target=proc.pump, daemon=True).start()
    return proc


class _ServerProcess:
    """A server child process started by a subclass's ``__enter__``; stopped on exit."""

    target: str = ""
    _proc: _Proc | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.process.pid

    def memory(self) -> Memory:
        """Memory of the server's processes (all workers) now."""
        return tree_memory(self.pid)

    def cpu_seconds(self) -> float:
        """CPU seconds the server's processes used so far."""
        return tree_cpu_seconds(self.pid)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            self._proc.stop()


class LabelwatchServer(_ServerProcess):
    """``labelwatch serve`` in a subprocess (its own data dir under ``work_dir``)."""

    def __init__(
        self,
        served: ServedModel,
        config: LabelwatchConfig,
        work_dir: Path,
        *,
        start_timeout: float = 120.0,
    ) -> None:
        self.served = served
        self.config = config
        self.work_dir = work_dir
        self.start_timeout = start_timeout
        self.target = ""
        self._proc = None

    def command(self) -> list[str]:
        """The exact command line run."""
        cmd = [sys.executable, "-m", "labelwatch.cli", "serve"]
        if self.served.model is not None:
            cmd += ["--model", str(self.served.model)]
        cmd += ["--thresholds", str(self.served.thresholds), "--port", "0", "--metrics-port", "off"]
        cmd += ["--data-dir", str(self.work_dir / "data")]
        return cmd + self.config.flags()

    def __enter__(self) -> LabelwatchServer:
        if self.work_dir.exists():
            shutil.rmtree(self.work_dir)
        self.work_dir.mkdir(parents=True)
        self._proc = _spawn(self.command(), self.work_dir / "server.log")
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            for line in list(self._proc.lines):
                match = _LISTENING.search(line)
                if match:
                    self.target = f"{match.group(1)}:{match.group(2)}"
                    return self
            if self._proc.process.poll() is not None:
                break
            time.sleep(0.05)
        self._proc.stop()
        tail = "".join(self._proc.lines[-20:])
        raise RuntimeError(f"labelwatch did not start ({self.config.label()}):\n{tail}")


def peer_available() -> bool:
    """Whether bench/.venv-mlserver (``bench/peer/setup_mlserver.sh``) exists."""
    return (PEER_VENV / "bin" / "mlserver").is_file()


@dataclass(frozen=True)
class PeerConfig:
    """MLServer settings the benchmark sets: inference processes and adaptive batching."""

    parallel_workers: int = 1
    max_batch_size: int = 64
    max_batch_time_s: float = 0.002
    intra_op_threads: int = 0

    def label(self) -> str:
        """A short name for tables."""
        batching = f"adaptive {self.max_batch_size}/{self.max_batch_time_s * 1e3:g}ms"
        if self.max_batch_size <= 1:
            batching = "no batching"
        return f"parallel_workers={self.parallel_workers} {batching}"


class MlserverServer(_ServerProcess):
    """MLServer (bench/.venv-mlserver) serving ``served.model`` with bench/peer/onnx_runtime.py."""

    MODEL_NAME = "model"

    def __init__(
        self,
        served: ServedModel,
        config: PeerConfig,
        work_dir: Path,
        *,
        start_timeout: float = 180.0,
    ) -> None:
        if served.model is None:
            raise ValueError("the peer serves a model; thresholds-only workloads have none")
        self.served = served
        self.config = config
        self.work_dir = work_dir
        self.start_timeout = start_timeout
        self.target = ""
        self._proc = None

    def _write_settings(self, grpc_port: int, http_port: int) -> Path:
        model_dir = self.work_dir / "models" / self.MODEL_NAME
        model_dir.mkdir(parents=True)
        settings = {
            "debug": False,
            "host": "127.0.0.1",
            "grpc_port": grpc_port,
            "http_port": http_port,
            "metrics_endpoint": None,
            "parallel_workers": self.config.parallel_workers,
            "load_models_at_startup": True,
        }
        (self.work_dir / "models" / "settings.json").write_text(json.dumps(settings, indent=2))
        model_settings: dict[str, object] = {
            "name": self.MODEL_NAME,
            "implementation": "onnx_runtime.OnnxRuntime",
            "parameters": {
                "uri": str(self.served.model),
                "extra": {"intra_op_threads": self.config.intra_op_threads},
            },
        }
        if self.config.max_batch_size > 1:
            model_settings["max_batch_size"] = self.config.max_batch_size
            model_settings["max_batch_time"] = self.config.max_batch_time_s
        (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
        return self.work_dir / "models"

    def __enter__(self) -> MlserverServer:
        from servebench.peer import wait_ready

        if self.work_dir.exists():
            shutil.rmtree(self.work_dir)
        self.work_dir.mkdir(parents=True)
        grpc_port, http_port = free_port(), free_port()
        models = self._write_settings(grpc_port, http_port)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(PEER_DIR)
        env.pop("VIRTUAL_ENV", None)
        cmd = [str(PEER_VENV / "bin" / "mlserver"), "start", str(models)]
        self._proc = _spawn(cmd, self.work_dir / "server.log", env=env)
        self.target = f"127.0.0.1:{grpc_port}"
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline and self._proc.process.poll() is None:
            if wait_ready(self.target, self.MODEL_NAME, timeout=1.0):
                return self
        self._proc.stop()
        tail = "".join(self._proc.lines[-30:])
        raise RuntimeError(f"MLServer did not start ({self.config.label()}):\n{tail}")
