"""``--workers N``: several processes share one port and all of them answer."""

from __future__ import annotations

import signal
import socket
import urllib.request
from pathlib import Path

import grpc

from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_server import CLASS_NAMES, server_process, write_artifact


def _two_free_ports() -> int:
    """A port P such that P and P + 1 are free on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no two adjacent free ports")


def _scored(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("labelwatch_examples_scored_total{")
    )


def test_two_workers_share_the_port_and_both_answer(tmp_path: Path) -> None:
    art = write_artifact(tmp_path / "t.json")
    metrics = _two_free_ports()
    args = ["--thresholds", str(art), "--workers", "2", "--metrics-port", str(metrics)]
    with server_process(args) as proc:
        example = pb.Example(id="a", probabilities=pb.Probabilities(values=[0.5] * 5))
        assert len(CLASS_NAMES) == 5
        # each new channel is a new TCP connection; the kernel spreads them over workers
        for _ in range(60):
            with grpc.insecure_channel(
                proc.target, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                reply = pb_grpc.LabelQualityStub(channel).Score(
                    pb.ScoreRequest(examples=[example]), timeout=20
                )
                assert reply.results[0].id == "a"
            if _scored(metrics) > 0 and _scored(metrics + 1) > 0:
                break
        assert _scored(metrics) > 0 and _scored(metrics + 1) > 0
        assert _scored(metrics) + _scored(metrics + 1) <= 60
        proc.process.send_signal(signal.SIGTERM)
        assert proc.process.wait(timeout=60) == 0
