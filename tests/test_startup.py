"""Start-up either completes or undoes itself; every listener can ask for any free port.

A step that fails late (a port in use, a bad sink configuration, NATS unreachable)
must leave nothing behind in the process: no thread, no bound port, no open outbox.
Checks wait on conditions with a deadline, never on sleeps.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from labelwatch import config_cli
from labelwatch.config import Settings
from labelwatch.errors import StartupError
from labelwatch.ingest import ConsumeOptions
from labelwatch.ingest_app import READY_LINE, consume_forever
from labelwatch.server import start
from support_delivery import nats_server, wait_until
from support_server import _env, write_artifact

NO_SECRET = "LABELWATCH_TEST_SECRET_THAT_IS_NOT_SET"


@pytest.fixture
def thresholds(tmp_path: Path) -> Path:
    return write_artifact(tmp_path / "thresholds.json")


def _settings(tmp_path: Path, thresholds: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "thresholds": thresholds,
        "port": 0,
        "metrics_port": 0,
        "data_dir": tmp_path / "data",
        "grace_seconds": 1.0,
        "webhook_secret_env": NO_SECRET,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@contextlib.contextmanager
def _taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that some other socket holds (listening) for the ``with`` body."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _is_free(port: int) -> bool:
    """Whether no socket listens on ``port`` (connections closed a moment ago may linger)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "held"
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _open_files_under(directory: Path) -> list[str]:
    """Files under ``directory`` that this process holds open (the outbox and its WAL...)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(directory)):
                held.append(target)
    return held


def _bound_ports(caplog: pytest.LogCaptureFixture, listener: str) -> list[int]:
    """Ports the ``event=listening`` log lines of ``listener`` reported."""
    pattern = rf"event=listening listener={listener} address=[\d.]+:(\d+)"
    return [int(m.group(1)) for r in caplog.records if (m := re.search(pattern, r.getMessage()))]


class _Leftovers:
    """What a failed start-up may have left running, measured against before it began."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.threads_before = set(threading.enumerate())

    def threads(self) -> list[str]:
        return sorted(
            t.name for t in threading.enumerate() if t not in self.threads_before and t.is_alive()
        )

    def assert_none(self, caplog: pytest.LogCaptureFixture, grpc_port: int | None = None) -> None:
        wait_until(lambda: not self.threads(), 10, f"threads to end: {self.threads()}")
        assert _open_files_under(self.data_dir) == []
        metrics = _bound_ports(caplog, "metrics")
        assert metrics, "the metrics port was bound before the failing step"
        assert all(_is_free(p) for p in metrics)
        for port in _bound_ports(caplog, "label_studio_http"):
            assert _is_free(port)
        if grpc_port is not None:
            assert _is_free(grpc_port)


def test_serve_with_its_grpc_port_taken_undoes_every_earlier_step(
    tmp_path: Path, thresholds: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    leftovers = _Leftovers(tmp_path / "data")
    with _taken_port() as port:
        settings = _settings(tmp_path, thresholds, port=port, http_port=0)
        with pytest.raises(StartupError, match=f"cannot bind 127.0.0.1:{port}"):
            start(settings, registry=CollectorRegistry())
    leftovers.assert_none(caplog)
    assert _bound_ports(caplog, "label_studio_http"), "the HTTP port was bound before gRPC"


def test_serve_with_a_bad_sink_config_undoes_every_earlier_step(
    tmp_path: Path, thresholds: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    leftovers = _Leftovers(tmp_path / "data")
    settings = _settings(tmp_path, thresholds, webhook_url="http://127.0.0.1:9/flags")
    with pytest.raises(StartupError, match=NO_SECRET):
        start(settings, registry=CollectorRegistry())
    leftovers.assert_none(caplog)


def test_serve_with_its_label_studio_port_taken_undoes_every_earlier_step(
    tmp_path: Path, thresholds: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    leftovers = _Leftovers(tmp_path / "data")
    with _taken_port() as port:
        settings = _settings(tmp_path, thresholds, http_port=port)
        with pytest.raises(StartupError, match=f"cannot bind HTTP port 127.0.0.1:{port}"):
            start(settings, registry=CollectorRegistry())
    leftovers.assert_none(caplog)


def test_a_stopped_server_leaves_nothing_running_and_releases_every_port(
    tmp_path: Path, thresholds: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    leftovers = _Leftovers(tmp_path / "data")
    running = start(_settings(tmp_path, thresholds, http_port=0), registry=CollectorRegistry())
    ports = (running.port, running.metrics_port, running.http_port)
    assert all(p for p in ports), ports  # 0 asked for any free port: each was bound
    assert _bound_ports(caplog, "metrics") == [running.metrics_port]
    assert _bound_ports(caplog, "label_studio_http") == [running.http_port]
    with urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics") as r:
        assert b"labelwatch_build_info" in r.read()
    running.stop(1.0)
    leftovers.assert_none(caplog, grpc_port=running.port)


def _consume_options(url: str) -> ConsumeOptions:
    return ConsumeOptions(
        url=url, stream="EXAMPLES", subject="examples.>", durable="t", connect_timeout_seconds=5
    )


def test_consume_with_a_bad_sink_config_undoes_every_earlier_step(
    tmp_path: Path, thresholds: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    leftovers = _Leftovers(tmp_path / "data")
    settings = _settings(tmp_path, thresholds, webhook_url="http://127.0.0.1:9/flags")
    with pytest.raises(StartupError, match=NO_SECRET):
        consume_forever(settings, _consume_options("nats://127.0.0.1:1"))
    leftovers.assert_none(caplog)


def test_consume_that_cannot_reach_nats_undoes_every_earlier_step(
    tmp_path: Path, thresholds: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    leftovers = _Leftovers(tmp_path / "data")
    with _taken_port() as port:  # listens, never answers the NATS handshake
        options = dataclasses.replace(
            _consume_options(f"nats://127.0.0.1:{port}"), connect_timeout_seconds=1.0
        )
        with pytest.raises((OSError, TimeoutError)):
            consume_forever(_settings(tmp_path, thresholds), options)
    leftovers.assert_none(caplog)


def test_consume_prints_its_bound_metrics_port_and_serves_metrics_there(
    tmp_path: Path, thresholds: Path
) -> None:
    with nats_server(tmp_path / "jetstream") as nats:
        cmd = [sys.executable, "-m", "labelwatch.cli", "consume", "--nats", nats.url]
        cmd += ["--thresholds", str(thresholds), "--data-dir", str(tmp_path / "data")]
        cmd += ["--metrics-port", "0"]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env()
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.fullmatch(rf"{READY_LINE} metrics_port=(\d+)\n", line)
            assert match, line
            url = f"http://127.0.0.1:{match.group(1)}/metrics"
            with urllib.request.urlopen(url, timeout=10) as r:
                assert b"labelwatch_ingest_in_flight_messages" in r.read()
            proc.terminate()
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.mark.parametrize(
    ("given", "expected"),
    [("0", 0), ("9464", 9464), ("off", None), ("OFF", None), ("none", None)],
)
def test_every_optional_listener_takes_a_port_zero_for_any_free_port_or_off(
    given: str, expected: int | None
) -> None:
    parser = _parser()
    for flag, field in (("--metrics-port", "metrics_port"), ("--http-port", "http_port")):
        from_flag = config_cli.settings_from(parser.parse_args([flag, given]), {})
        from_env = config_cli.settings_from(
            parser.parse_args([]), {"LABELWATCH_" + field.upper(): given}
        )
        assert getattr(from_flag, field) == getattr(from_env, field) == expected


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    config_cli.add_arguments(parser)
    return parser


def test_a_bad_port_is_refused_with_what_is_accepted() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "labelwatch.cli", "serve", "--metrics-port", "nine"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert out.returncode == 2
    accepted = "(a number 0-65535, 0 = any free port, or off)"
    assert f"argument --metrics-port: not a port: 'nine' {accepted}" in out.stderr
    with pytest.raises(ValueError, match="LABELWATCH_PORT: not a port number: 'off'"):
        config_cli.settings_from(
            _parser().parse_args([]), {"LABELWATCH_PORT": "off"}
        )  # gRPC: no off


def test_the_listener_defaults_and_the_port_convention_are_in_the_help() -> None:
    defaults = Settings()
    assert (defaults.port, defaults.metrics_port, defaults.http_port) == (50051, 9464, None)
    out = subprocess.run(
        [sys.executable, "-m", "labelwatch.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        check=True,
    ).stdout
    text = " ".join(out.split())
    assert "off = no endpoint" in text and "off = no HTTP server" in text
    assert text.count("0 = any free port") >= 3
