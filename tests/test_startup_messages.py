"""What a newcomer reads at start-up: resolved paths, one-line bind errors, default target."""

from __future__ import annotations

import socket
import subprocess
import sys

from labelwatch import default_model
from labelwatch.portcheck import bind_problem
from labelwatch_client.cli import DEFAULT_TARGET
from support_server import _env


def test_serve_on_a_busy_port_says_so_in_one_line_without_grpc_core_noise() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "labelwatch.cli", "serve", "--port", str(port),
             "--metrics-port", "0"],
            capture_output=True, text=True, timeout=120, env=_env(), check=False,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        f"labelwatch serve: error: cannot bind 127.0.0.1:{port}: the port is in use "
        "(another server? stop it, or pick another port)"
    ], done.stderr
    assert "add_port" not in done.stderr and "GRPC_VERBOSITY" not in done.stderr
    # the configuration line names the files served, not model=None thresholds=None
    [config] = [line for line in done.stderr.splitlines() if "event=config" in line]
    assert f"model={default_model.DEFAULT_MODEL}" in config
    assert f"thresholds={default_model.DEFAULT_THRESHOLDS}" in config


def test_bind_problem_is_none_for_a_free_port_and_names_a_busy_one() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert bind_problem("127.0.0.1", port) is not None
    assert bind_problem("127.0.0.1", port) is None
    assert bind_problem("127.0.0.1", 0) is None
    assert "does not resolve" in (bind_problem("no-such-host.invalid", 5) or "")


def test_client_commands_default_to_the_servers_default_address() -> None:
    from labelwatch.cli import build_parser

    assert DEFAULT_TARGET == "127.0.0.1:50051"
    for command in (["info"], ["score", "--input", "x.jsonl"]):
        args = build_parser(command).parse_args(command)
        assert args.target == DEFAULT_TARGET
