"""Test support for flag delivery: real nats-server, Label Studio, webhook receiver, servers.

* :func:`nats_server`: ``nats-server -js`` on a free loopback port with a temp
  store dir; it can be stopped and started again on the same port and store.
* :func:`label_studio`: one Label Studio per test session (first start on a
  fresh database 60-90 s), from the venv made by ``scripts/ci_delivery_deps.sh``;
  :func:`label_studio_handle` gives its address without starting it.
* :class:`WebhookReceiver`: a real HTTP server on 127.0.0.1 that records and
  answers what the test says.
* :func:`delivery_server`: ``labelwatch serve`` as a child process with extra
  environment and resource limits (e.g. a file-size limit = "disk full").

A missing nats-server or Label Studio venv skips the test with the reason,
unless ``CI=true``: then it fails, so CI cannot pass without the real servers.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from labelwatch.flag_record import Flag, FlagIssue, dedupe_key
from labelwatch.scoring import IssueKind
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from support_ports import free_port
from support_server import CLASS_NAMES, _env

LS_VENV = Path(os.environ.get("LABELWATCH_LS_VENV", "/opt/labelwatch-ci/label-studio-venv"))
LS_TOKEN = "labelwatch0test0token0123456789abcdef0123"
LS_USER = "labelwatch-tests@example.com"
LS_PASSWORD = "labelwatch-tests-password"
LS_FIRST_START_SECONDS = 300.0


def in_ci() -> bool:
    """Whether this run is CI (``CI=true``), where a missing dependency is a failure."""
    return os.environ.get("CI", "").lower() == "true"


def missing_dependency(reason: str) -> None:
    """Skip with ``reason`` locally; fail in CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: the delivery dependencies must be installed)")
    pytest.skip(reason)


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    """Poll ``condition`` until true; fail the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


# -- NATS --------------------------------------------------------------------------------


@dataclass
class NatsServer:
    """A ``nats-server -js`` child process; :meth:`stop`/:meth:`start` keep port and store."""

    binary: str
    port: int
    store_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port)]
        cmd += ["-sd", str(self.store_dir)]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}")
            time.sleep(0.05)
        raise RuntimeError("nats-server did not start listening within 20 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


@contextlib.contextmanager
def nats_server(store_dir: Path) -> Iterator[NatsServer]:
    """A fresh JetStream server on a free port, storing under ``store_dir``."""
    binary = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
    )
    if binary is None:
        missing_dependency("nats-server is not installed (run scripts/ci_delivery_deps.sh)")
        raise AssertionError("unreachable")
    server = NatsServer(binary, free_port(), store_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def stream_messages(url: str, stream: str, subject: str) -> list[tuple[str, dict[str, Any]]]:
    """Every message of ``stream`` in stream order: (Nats-Msg-Id, decoded JSON)."""
    import nats

    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        out: list[tuple[str, dict[str, Any]]] = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            headers = msg.headers or {}
            out.append((headers.get("Nats-Msg-Id", ""), json.loads(msg.data or b"{}")))
        return out
    finally:
        await nc.close()


# -- Label Studio -----------------------------------------------------------------------------


@dataclass
class LabelStudio:
    """A running Label Studio: ``url`` with a legacy API ``token``."""

    url: str
    token: str
    data_dir: Path
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def _cmd(self) -> list[str]:
        return [
            str(LS_VENV / "bin" / "label-studio"),
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "-db",
            str(self.data_dir / "ls.sqlite3"),
            "--username",
            LS_USER,
            "--password",
            LS_PASSWORD,
            "--user-token",
            self.token,
            "--enable-legacy-api-token",
        ]

    def start(self, timeout: float) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("LABELWATCH_")},
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
            "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
            "HOME": str(self.data_dir),
        }
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self._cmd(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.data_dir
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"Label Studio exited ({self.process.returncode}): {tail}")
            try:
                self.request("GET", "/api/projects?page_size=1")
                return
            except (OSError, urllib.error.URLError):
                time.sleep(1.0)
        raise RuntimeError(f"Label Studio did not answer within {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def project(self, title: str) -> dict[str, Any] | None:
        answer = self.request("GET", "/api/projects?" + urllib.parse.urlencode({"title": title}))
        found = [p for p in answer["results"] if p["title"] == title]
        return found[0] if found else None

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of a project, with annotations and predictions."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            query = urllib.parse.urlencode(
                {"project": project_id, "page": page, "page_size": 500, "fields": "all"}
            )
            try:
                answer = self.request("GET", f"/api/tasks?{query}")
            except urllib.error.HTTPError as exc:
                if exc.code == 404:  # past the last page
                    return out
                raise
            tasks = answer["tasks"]
            out.extend(tasks)
            if len(out) >= answer["total"] or not tasks:
                return out
            page += 1


_LS: LabelStudio | None = None


def _stop_label_studio() -> None:
    if _LS is not None:
        _LS.stop()
        shutil.rmtree(_LS.data_dir, ignore_errors=True)


def label_studio_handle() -> LabelStudio:
    """The session's Label Studio, running or not: its URL, port and token stay fixed.

    For a test that needs Label Studio's address while it is down (not started yet,
    or stopped with :meth:`LabelStudio.stop`); :func:`label_studio` starts it there.
    Skips/fails when Label Studio is not installed.
    """
    global _LS
    if not (LS_VENV / "bin" / "label-studio").exists():
        missing_dependency(
            f"Label Studio venv not found at {LS_VENV} (run scripts/ci_delivery_deps.sh)"
        )
    if _LS is None:
        data_dir = Path(tempfile.mkdtemp(prefix="labelwatch-ls-"))
        port = free_port()
        _LS = LabelStudio(
            f"http://127.0.0.1:{port}", LS_TOKEN, data_dir, port, data_dir / "label-studio.log"
        )
        atexit.register(_stop_label_studio)
    return _LS


def label_studio() -> LabelStudio:
    """The session's Label Studio, started on first use (skips/fails when not installed)."""
    if _LS is not None and _LS.process is not None and _LS.process.poll() is None:
        return _LS
    ls = label_studio_handle()
    ls.start(LS_FIRST_START_SECONDS)
    return ls


# -- webhook receiver -----------------------------------------------------------------------


@dataclass
class Received:
    """One request the receiver got."""

    headers: dict[str, str]
    body: bytes

    @property
    def flags(self) -> list[dict[str, Any]]:
        return list(json.loads(self.body)["flags"])


@dataclass
class WebhookReceiver:
    """Records POSTs; answers with the next status of ``statuses`` (then ``default_status``)."""

    statuses: list[int] = field(default_factory=list)
    default_status: int = 200
    refuse_flag_ids: set[str] = field(default_factory=set)
    delay_seconds: float = 0.0
    received: list[Received] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def request_count(self) -> int:
        with self._lock:
            return len(self.answered)

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if receiver.delay_seconds:
                    time.sleep(receiver.delay_seconds)
                with receiver._lock:
                    status = (
                        receiver.statuses.pop(0) if receiver.statuses else receiver.default_status
                    )
                    ids = {f["flag_id"] for f in json.loads(body or b'{"flags": []}')["flags"]}
                    if ids & receiver.refuse_flag_ids:
                        status = 422
                    receiver.answered.append(status)
                    if 200 <= status < 300:
                        receiver.received.append(Received(dict(self.headers.items()), body))
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def flag_ids(self) -> list[str]:
        with self._lock:
            return [f["flag_id"] for r in self.received for f in r.flags]


@contextlib.contextmanager
def webhook_receiver(**kwargs: Any) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(**kwargs)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


# -- examples and servers ----------------------------------------------------------------------


def make_flag(i: int, *, at: float = 1_700_000_000.0, model: str = "m-1") -> Flag:
    return Flag(
        flag_id=dedupe_key(f"ex-{i}", model, ["cat"]),
        example_id=f"ex-{i}",
        labels=("cat",),
        issues=(FlagIssue("dog", 1, IssueKind.MISSING, 0.97, 0.6),),
        suggested_labels=("cat", "dog"),
        label_quality=0.05 + (i % 10) / 100,
        model_version=model,
        annotator_id=f"ann-{i % 3}",
        metadata={"batch": "b1"},
        text=f"text {i}",
        input_kind="text",
        flagged_at=at + i,
    )


def flagged_example(i: int, *, annotator: str = "ann-1") -> pb.Example:
    """An example with a confident untagged class (i % K): flagged MISSING (+ SPURIOUS)."""
    k = len(CLASS_NAMES)
    values = [0.999 if c == i % k else 0.01 for c in range(k)]
    return pb.Example(
        id=f"flagged-{i}",
        probabilities=pb.Probabilities(values=values),
        labels=[CLASS_NAMES[(i + 1) % k]],
        annotator_id=annotator,
        metadata={"source": "tests", "n": str(i)},
    )


def clean_example(i: int) -> pb.Example:
    """An example whose tags agree with confident probabilities: not flagged."""
    k = len(CLASS_NAMES)
    values = [0.97 if c == i % k else 0.01 for c in range(k)]
    return pb.Example(
        id=f"clean-{i}", probabilities=pb.Probabilities(values=values), labels=[CLASS_NAMES[i % k]]
    )


@dataclass
class ChildServer:
    """``labelwatch serve`` running as a child process (see :func:`delivery_server`)."""

    process: subprocess.Popen[str]
    port: int
    stderr_path: Path
    metrics_port: int | None = None
    """The bound ``/metrics`` port (``--metrics-port 0`` asks for any free one)."""

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")


_FSIZE_SHIM = (
    "import os, resource, sys; limit = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)
"""Sets RLIMIT_FSIZE to argv[1] bytes, then execs argv[2:] (keeps the limit)."""


@contextlib.contextmanager
def delivery_server(
    args: Sequence[str],
    *,
    log_dir: Path,
    env: dict[str, str] | None = None,
    file_size_limit: int | None = None,
    timeout: float = 60.0,
) -> Iterator[ChildServer]:
    """Run ``labelwatch serve ARGS --port 0 --metrics-port off``; wait for "listening on".

    ``file_size_limit`` (bytes) sets RLIMIT_FSIZE in the child: writes past it
    fail with EFBIG, as on a full disk. stderr goes to a file in ``log_dir``.
    """
    cmd = [sys.executable, "-m", "labelwatch.cli", "serve", "--port", "0", "--metrics-port", "off"]
    cmd += list(args)

    if file_size_limit is not None:
        # Not ``preexec_fn``: that forks this (gRPC-running) process with its atfork
        # handlers, which restart gRPC's poller in the child just before subprocess
        # closes every inherited descriptor, and the child aborts with "epoll_wait
        # error: Bad file descriptor" before it ever execs. A tiny exec shim is safe.
        cmd = [sys.executable, "-c", _FSIZE_SHIM, str(file_size_limit), *cmd]

    stderr_path = log_dir / f"server-{time.monotonic_ns()}.log"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**_env(), **(env or {})},
        )
    try:
        assert proc.stdout is not None
        port = metrics_port = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            match = re.search(r"listening on [\d.]+:(\d+)", line)
            if match:
                port = int(match.group(1))
                bound = re.search(r"metrics_port=(\d+)", line)
                metrics_port = int(bound.group(1)) if bound else None
                break
        if port is None:
            proc.kill()
            proc.wait(10)
            raise RuntimeError(f"server did not start: {stderr_path.read_text()[-3000:]}")
        yield ChildServer(proc, port, stderr_path, metrics_port)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def channel(target: str) -> grpc.Channel:
    """An insecure channel to ``target``, ready (fails the test after 10 s)."""
    ch = grpc.insecure_channel(target)
    grpc.channel_ready_future(ch).result(timeout=10)
    return ch
