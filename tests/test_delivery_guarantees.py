"""The delivery guarantees, with real processes: server, nats-server, Label Studio, webhook.

* kill -9 in the middle of a 10,000-example ScoreStream loses no flag the client
  saw; after a restart each sink gets each flag, and Label Studio and JetStream
  hold no duplicates; the outbox passes ``PRAGMA integrity_check``.
* A sink that is down (nats-server or Label Studio) does not slow scoring: every call is
  answered with its flags recorded and not yet delivered; the backlog grows and drains in
  order when the sink is back.
* A watch consumer that disconnects without acking gets the same flags again
  (also across a server restart); one that acked does not.
* An unwritable outbox (bad path, or a full disk) makes the server report
  NOT_SERVING and answer UNAVAILABLE rather than answer without recording flags.
"""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from labelwatch.flag_record import dedupe_key
from labelwatch.outbox import Outbox
from labelwatch_proto.labelwatch.v1 import flags_pb2 as fpb
from labelwatch_proto.labelwatch.v1 import flags_pb2_grpc as fpb_grpc
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc
from support_delivery import (
    channel,
    clean_example,
    delivery_server,
    flagged_example,
    label_studio,
    label_studio_handle,
    nats_server,
    stream_messages,
    wait_until,
    webhook_receiver,
)
from support_server import write_artifact

# slow: real server, nats-server and Label Studio processes, kill -9, restarts
pytestmark = pytest.mark.slow

STREAM, SUBJECT = "LABELWATCH_FLAGS", "labelwatch.flags"
N_EXAMPLES, PER_REQUEST = 10_000, 50
FAST_RETRY = ["--sink-retry-initial-seconds", "0.05", "--sink-retry-max-seconds", "0.5"]


def example(i: int) -> pb.Example:
    """Every 20th example is flagged; the rest are clean."""
    return flagged_example(i) if i % 20 == 0 else clean_example(i)


def flag_ids_of(request: pb.ScoreRequest, response: pb.ScoreResponse) -> list[str]:
    return [
        dedupe_key(ex.id, result.model_version, list(ex.labels))
        for ex, result in zip(request.examples, response.results, strict=True)
        if result.is_issue
    ]


def score_while_down(
    stub: pb_grpc.LabelQualityStub, start: int, n: int, pending: Callable[[], float | None]
) -> None:
    """Score batches ``start..start+n`` of 10 flagged examples each while a sink is down.

    Scoring does not wait for the sink: each call is answered with its 10 flags recorded and
    still pending for the sink (``pending()``, read right after the answer), so no call waited
    for a delivery.
    """
    before = pending() or 0.0
    for k, b in enumerate(range(start, start + n), start=1):
        request = pb.ScoreRequest(examples=[flagged_example(b * 10 + i) for i in range(10)])
        assert len(stub.Score(request, timeout=30).results) == 10
        assert pending() == before + 10 * k, f"call {k}: its flags are not all pending"


def scrape(metrics_url: str, name: str, **labels: str) -> float | None:
    """One sample of ``name`` with exactly ``labels`` from a /metrics page (None if absent)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        families = text_string_to_metric_families(response.read().decode())
    for family in families:
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def health_status(target: str) -> int:
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        status: int = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        return status


def test_kill_9_mid_stream_loses_no_flag_and_sinks_hold_no_duplicates(tmp_path: Path) -> None:
    ls = label_studio()
    title = f"labelwatch kill-9 {uuid.uuid4().hex[:8]}"
    (tmp_path / "ls-token").write_text(ls.token)
    (tmp_path / "hook-secret").write_text("kill9-secret")
    artifact = write_artifact(tmp_path / "thresholds.json")
    outbox_path = tmp_path / "outbox.sqlite3"
    with nats_server(tmp_path / "js") as nats, webhook_receiver() as hook:
        args = [
            "--thresholds", str(artifact),
            "--outbox", str(outbox_path),
            "--nats-url", nats.url,
            "--label-studio-url", ls.url,
            "--label-studio-token-file", str(tmp_path / "ls-token"),
            "--label-studio-project", title,
            "--webhook-url", hook.url,
            "--webhook-secret-file", str(tmp_path / "hook-secret"),
            *FAST_RETRY,
        ]  # fmt: skip
        requests = [
            pb.ScoreRequest(examples=[example(i) for i in range(s, s + PER_REQUEST)])
            for s in range(0, N_EXAMPLES, PER_REQUEST)
        ]
        seen: list[str] = []
        answered = 0
        with delivery_server(args, log_dir=tmp_path) as first:
            stub = pb_grpc.LabelQualityStub(channel(first.target))
            responses = stub.ScoreStream(iter(requests))
            with pytest.raises(grpc.RpcError):
                for request, response in zip(requests, responses, strict=False):
                    seen += flag_ids_of(request, response)
                    answered += 1
                    if answered == len(requests) // 2:
                        first.kill9()
        assert len(requests) // 2 <= answered < len(requests)
        assert len(seen) >= 200

        box = Outbox(outbox_path, create=False)
        assert box.integrity_check() == "ok"
        missing = [fid for fid in seen if box.get(fid) is None]
        assert missing == [], f"{len(missing)} flags the client saw are not in the outbox"
        stored = [f.flag_id for f in box.flags(limit=100_000)]

        with delivery_server(args, log_dir=tmp_path) as second:

            def drained() -> bool:
                return all(
                    box.backlog("sink", s).pending == 0 for s in ("label_studio", "nats", "webhook")
                )

            wait_until(drained, 180, "every sink to catch up after the restart", interval=0.5)
            second.kill9()

        nats_ids = [m for m, _ in asyncio.run(stream_messages(nats.url, STREAM, SUBJECT))]
        assert sorted(nats_ids) == sorted(set(nats_ids)), "duplicate messages in JetStream"
        assert set(nats_ids) == set(stored)
        hook_ids = hook.flag_ids()
        assert set(hook_ids) == set(stored)  # at least once; receivers dedupe on flag_id
    project = ls.project(title)
    assert project is not None
    ls_ids = [t["data"]["labelwatch_flag_id"] for t in ls.tasks(int(project["id"]))]
    assert len(ls_ids) == len(set(ls_ids)), "duplicate tasks in Label Studio"
    assert set(ls_ids) == set(stored)
    assert set(seen) <= set(stored)
    assert box.integrity_check() == "ok"
    box.close()


def test_a_down_sink_does_not_slow_scoring_and_drains_in_order(tmp_path: Path) -> None:
    artifact = write_artifact(tmp_path / "thresholds.json")
    outbox_path = tmp_path / "outbox.sqlite3"
    with nats_server(tmp_path / "js") as nats:
        args = ["--thresholds", str(artifact), "--outbox", str(outbox_path)]
        args += ["--nats-url", nats.url, *FAST_RETRY]
        args += ["--metrics-port", "0"]  # any free port, read back from the start-up line
        with delivery_server(args, log_dir=tmp_path) as server:
            metrics_url = f"http://127.0.0.1:{server.metrics_port}/metrics"
            stub = pb_grpc.LabelQualityStub(channel(server.target))
            box = Outbox(outbox_path, create=False)

            def pending() -> float:
                return float(box.backlog("sink", "nats").pending)

            def unavailable() -> float:
                labels = {"sink": "nats", "outcome": "unavailable"}
                return scrape(metrics_url, "labelwatch_deliveries_total", **labels) or 0.0

            for b in range(30):
                request = pb.ScoreRequest(examples=[flagged_example(b * 10 + i) for i in range(10)])
                stub.Score(request, timeout=30)
            wait_until(lambda: pending() == 0, 20, "delivery while up")
            nats.stop()
            score_while_down(stub, 30, 30, pending)
            assert pending() == 300
            # the worker keeps retrying meanwhile; scoring stays unaffected, nothing is dropped
            tried = unavailable()
            wait_until(lambda: unavailable() > tried, 30, "a retry on the down nats-server")
            assert pending() == 300
            nats.start()
            wait_until(lambda: box.backlog("sink", "nats").pending == 0, 60, "the backlog drain")
        got = asyncio.run(stream_messages(nats.url, STREAM, SUBJECT))
    stored = box.flags(limit=10_000)
    assert [m for m, _ in got] == [f.flag_id for f in stored]
    positions = [int(str(body["position"])) for _, body in got]
    assert positions == sorted(positions) and len(positions) == 600
    box.close()


def test_label_studio_down_does_not_slow_scoring_and_drains_in_order(tmp_path: Path) -> None:
    """The same guarantee with the Label Studio sink, through the real server.

    The sink points at the session's Label Studio while it is down (stopped, or not
    started yet in this session: its port is closed either way).
    """
    ls = label_studio_handle()
    title = f"labelwatch ls-down {uuid.uuid4().hex[:8]}"
    token_file = tmp_path / "ls-token"
    token_file.write_text(ls.token)
    common = ["--thresholds", str(write_artifact(tmp_path / "thresholds.json")), *FAST_RETRY]

    ls.stop()
    outbox_path = tmp_path / "outbox.sqlite3"
    metrics_url = ""  # known once the server has bound its metrics port
    args = [
        *common,
        "--outbox", str(outbox_path),
        "--metrics-port", "0",
        "--label-studio-url", ls.url,
        "--label-studio-token-file", str(token_file),
        "--label-studio-project", title,
    ]  # fmt: skip

    def pending() -> float | None:
        return scrape(metrics_url, "labelwatch_outbox_pending", sink="label_studio")

    def unavailable() -> float:
        sample = scrape(
            metrics_url, "labelwatch_deliveries_total", sink="label_studio", outcome="unavailable"
        )
        return sample or 0.0

    with delivery_server(args, log_dir=tmp_path) as server:
        metrics_url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        stub = pb_grpc.LabelQualityStub(channel(server.target))
        try:
            score_while_down(stub, 0, 15, pending)
            wait_until(lambda: unavailable() > 0, 30, "an attempt on the down Label Studio")
            assert pending() == 150
            tried = unavailable()
            score_while_down(stub, 15, 15, pending)
            assert pending() == 300  # the backlog grows with every scored batch
            # the worker keeps retrying meanwhile; nothing is dropped
            wait_until(lambda: unavailable() > tried, 30, "a retry on the down Label Studio")
            assert pending() == 300
        finally:
            label_studio()  # up again (a first start in this session takes 60-90 s)
        wait_until(lambda: pending() == 0, 120, "the backlog to drain into Label Studio", 0.5)

    box = Outbox(outbox_path, create=False)
    stored = [f.flag_id for f in box.flags(limit=10_000)]
    box.close()
    assert len(stored) == 300
    project = ls.project(title)
    assert project is not None, f"no Label Studio project {title!r}"
    tasks = sorted(ls.tasks(int(project["id"])), key=lambda t: int(t["id"]))
    assert [t["data"]["labelwatch_flag_id"] for t in tasks] == stored  # in order, no duplicates


def _watch(target: str, consumer: str, n: int) -> list[fpb.Flag]:
    with grpc.insecure_channel(target) as ch:
        call = fpb_grpc.FlagFeedStub(ch).WatchFlags(
            fpb.WatchFlagsRequest(consumer=consumer), timeout=5
        )
        out: list[fpb.Flag] = []
        try:
            for flag in call:
                out.append(flag)
                if len(out) == n:
                    break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        call.cancel()
        return out


def test_watch_consumer_without_ack_gets_flags_again_across_a_restart(tmp_path: Path) -> None:
    artifact = write_artifact(tmp_path / "thresholds.json")
    args = ["--thresholds", str(artifact), "--outbox", str(tmp_path / "outbox.sqlite3")]
    with delivery_server(args, log_dir=tmp_path) as server:
        stub = pb_grpc.LabelQualityStub(channel(server.target))
        stub.Score(pb.ScoreRequest(examples=[flagged_example(i) for i in range(6)]))
        lazy = [f.flag_id for f in _watch(server.target, "lazy", 6)]
        eager = _watch(server.target, "eager", 6)
        with grpc.insecure_channel(server.target) as ch:
            fpb_grpc.FlagFeedStub(ch).AckFlags(
                fpb.AckFlagsRequest(consumer="eager", up_to=eager[-1].position)
            )
        assert [f.flag_id for f in _watch(server.target, "lazy", 6)] == lazy
        server.kill9()
    with delivery_server(args, log_dir=tmp_path) as server:
        assert [f.flag_id for f in _watch(server.target, "lazy", 6)] == lazy
        stub = pb_grpc.LabelQualityStub(channel(server.target))
        stub.Score(pb.ScoreRequest(examples=[flagged_example(100)]))
        (only_new,) = _watch(server.target, "eager", 1)
        assert only_new.example_id == "flagged-100"


def test_an_unwritable_outbox_path_means_not_serving_and_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    args = ["--thresholds", str(write_artifact(tmp_path / "t.json"))]
    args += ["--outbox", str(blocker / "outbox.sqlite3")]
    with delivery_server(args, log_dir=tmp_path) as server:
        assert health_status(server.target) == health_pb2.HealthCheckResponse.NOT_SERVING
        stub = pb_grpc.LabelQualityStub(channel(server.target))
        with pytest.raises(grpc.RpcError) as err:
            stub.Score(pb.ScoreRequest(examples=[flagged_example(0)]), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "cannot record flags" in (err.value.details() or "")
        assert "event=outbox_unavailable_at_start" in server.log()
        # fixed while running: the server notices within seconds and serves again
        blocker.unlink()
        wait_until(
            lambda: health_status(server.target) == health_pb2.HealthCheckResponse.SERVING,
            10,
            "SERVING once the outbox path works",
        )
        assert stub.Score(pb.ScoreRequest(examples=[flagged_example(0)]), timeout=10).results


def test_a_full_disk_means_unavailable_and_no_answer_without_its_flags(tmp_path: Path) -> None:
    outbox_path = tmp_path / "outbox.sqlite3"
    args = ["--thresholds", str(write_artifact(tmp_path / "t.json"))]
    args += ["--outbox", str(outbox_path)]
    # every file the server writes is capped at 384 KiB: like a disk that fills up
    with delivery_server(args, log_dir=tmp_path, file_size_limit=384 * 1024) as server:
        stub = pb_grpc.LabelQualityStub(channel(server.target))
        answered: list[str] = []
        refused = None
        for b in range(200):
            request = pb.ScoreRequest(examples=[flagged_example(b * 20 + i) for i in range(20)])
            try:
                answered += flag_ids_of(request, stub.Score(request, timeout=10))
            except grpc.RpcError as exc:
                refused = exc
                break
        assert refused is not None, "the outbox never filled up"
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        assert health_status(server.target) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert len(answered) > 0
        # a request as large as the refused one: a smaller one may still fit in the last
        # bytes below the cap (where that boundary falls depends on the schema's size)
        again_request = pb.ScoreRequest(examples=[flagged_example(99_000 + i) for i in range(20)])
        with pytest.raises(grpc.RpcError) as again:
            stub.Score(again_request, timeout=10)
        assert again.value.code() == grpc.StatusCode.UNAVAILABLE
        server.kill9()
    box = Outbox(outbox_path, create=False)
    assert box.integrity_check() == "ok"
    assert [fid for fid in answered if box.get(fid) is None] == []
    box.close()
